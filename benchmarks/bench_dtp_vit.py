"""DTP-ViT at compression 1.0 / 0.5 / 0.25 / 0.1 against transformers' CLIPVisionModel (ViT-B/32), on CPU.

    python benchmarks/bench_dtp_vit.py [--batch 32] [--repeats 15] [--threads N] [--quick] [--memory-batch 256]
        [--compile 1.0 0.1] [--profile]

Both models have ViT-B/32 widths and random weights and run in eval mode, under no_grad, in float32, with SDPA
attention. DTP-ViT is configured as `DTPViTModel.from_clip_vision_pretrained` builds it from a CLIP ViT-B/32
(2 pre-layers, 10 shortened layers, CLIP's pre-layernorm and quick-GELU), so compression 1.0 computes what the peer
computes. Targets (issue 5): compression 0.1 >= 3x the peer's images/s, 0.25 >= 2x, 1.0 within 10% (>= 0.9x).
Eval-mode boundaries are the predictor's own (`boundary_inference="rate"`: the round(rate * 49) most probable patches).

Prints a markdown table; every "x peer" column is ours / peer measured in the same run:
- GMACs: fvcore, one image, eager attention (SDPA hides the attention matmuls from the counter), with the model's
  own predicted boundaries; the boundary predictor's MACs included.
- images/s: batch `--batch`; the settings are timed round-robin, one forward each per round (the starting setting
  rotates), so machine noise hits all of them alike; median over `--repeats` rounds. The x-peer column is the
  median over rounds of the per-round ratio (peer time / our time), with its quartiles in brackets.
- peak forward memory: the largest total size of tensors alive at once during one batch forward (weights and input
  excluded), tracked op by op with a TorchDispatchMode (`LiveTensorPeak`). It is exact and free of machine noise,
  unlike resident-memory readings (torch's CPU allocations are invisible to tracemalloc); it leaves out scratch
  buffers that kernels allocate and free inside one op, and allocator overhead. Measured at `--memory-batch` images
  (default: `--batch`).
- GFLOP/s and % GEMM: the model's fvcore MACs x 2 x batch / median time, and that rate as a share of this machine's
  large float32 matrix-multiply rate at the same thread count (a 2048^3 `torch.mm`, timed as one more entry of the
  round-robin rounds, median).
- `--compile SETTINGS`: adds `torch.compile`d rows (inductor) for those settings, timed in the same rounds.
- `--profile`: per model, the ops one forward runs (torch.profiler): count, total self time, and the largest op
  kinds, to show where the time beyond the matrix multiplies goes.
"""

import argparse
import functools
import os
import platform
import statistics
import sys
import time

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from transformers import CLIPVisionConfig, CLIPVisionModel

from leanvision.modeling.modeling_dtp_vit import DTPViTModel, dtp_vit_config_from_clip_vision
from leanvision.training.tools.flops import count_gmacs

RATES = (1.0, 0.5, 0.25, 0.1)
PEER = "peer"
SETTINGS = (PEER,) + tuple(str(rate) for rate in RATES)
IMAGE_SIZE = 224


def build(setting: str, attn_implementation: str = "sdpa") -> torch.nn.Module:
    """The peer (`"peer"`) or DTP-ViT at compression `float(setting)`, ViT-B/32 widths, random weights, eval."""
    torch.manual_seed(0)
    if setting == PEER:
        config = CLIPVisionConfig(image_size=IMAGE_SIZE, patch_size=32)
        config._attn_implementation = attn_implementation
        return CLIPVisionModel(config).eval()
    config = dtp_vit_config_from_clip_vision(CLIPVisionConfig(image_size=IMAGE_SIZE, patch_size=32),
                                             compression_rate=float(setting))
    config._attn_implementation = attn_implementation
    return DTPViTModel(config).eval()


def label(setting: str) -> str:
    return "CLIPVisionModel (peer)" if setting == PEER else "DTPViTModel"


class LiveTensorPeak(TorchDispatchMode):
    """Peak bytes of the tensor storages that ops create inside the mode and that are still alive.

    After every op, storages whose tensors were all freed are dropped and the op's new output storages added;
    `peak` is the largest total seen. Storages that existed before (`existing`: weights, buffers, input) and views
    of them are not counted.
    """

    def __init__(self, existing: list[torch.Tensor]):
        super().__init__()
        self.existing = {t.untyped_storage().data_ptr() for t in existing}
        self.live = {}
        self.current = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for key in [key for key, (ref, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(key)[1]
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self.existing and key not in self.live:
                    self.live[key] = (StorageWeakRef(storage), storage.nbytes())
                    self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        return out


@torch.no_grad()
def peak_forward_memory_mb(model: torch.nn.Module, pixels: torch.Tensor) -> float:
    """MB of activations and temporaries alive at once, at the peak of one forward (deterministic)."""
    tracker = LiveTensorPeak([*model.parameters(), *model.buffers(), pixels])
    with tracker:
        model(pixel_values=pixels)
    return tracker.peak / 2**20


@torch.no_grad()
def gmacs_and_tokens(setting: str, batch_pixels: torch.Tensor) -> tuple[float, float]:
    """fvcore GMACs of one image (eager attention) and the mean number of tokens the shortened layers see.

    The eval-mode boundary predictor cannot be traced (its top-k count is computed from a shape), so DTP-ViT is
    counted with its own predicted boundaries passed in, plus the predictor's two linear layers counted alone.
    """
    model = build(setting, attn_implementation="eager")
    if setting == PEER:
        return count_gmacs(model, (batch_pixels[:1],)), float((IMAGE_SIZE // 32) ** 2 + 1)
    out = model(pixel_values=batch_pixels)
    gmacs = count_gmacs(model, (batch_pixels[:1], out.boundaries[:1]))
    if model.boundary_predictor is not None:
        predictor = model.boundary_predictor
        patches = torch.zeros(1, model.config.num_patches, model.config.hidden_size)
        gmacs += count_gmacs(torch.nn.Sequential(predictor.dense, predictor.out), (patches,))
    return gmacs, 1 + out.segment_mask.sum(-1).float().mean().item()


GEMM_SIZE = 2048
GEMM = "float32 GEMM"


def gemm_call(size: int = GEMM_SIZE):
    """A large float32 matrix multiply (`size`^3 MACs), timed with the models: this machine's GEMM rate at the
    current thread count is 2 size^3 / its median time (`gemm_gflops`)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    return lambda: torch.mm(a, b)


def gemm_gflops(seconds: list[float], size: int = GEMM_SIZE) -> float:
    """GFLOP/s of `gemm_call(size)` from its timings: 2 size^3 / median time."""
    return 2 * size**3 / statistics.median(seconds) / 1e9


def counted_gmacs(model: torch.nn.Module, call) -> float:
    """GMACs of everything `call()` runs, counted op by op (torch's FlopCounterMode: matrix multiplies and
    convolutions), with `model`'s attention switched to eager for the count and back after (the counter does not see
    the matmuls inside SDPA on CPU).

    Unlike fvcore it needs no trace, so it counts whole `generate()` calls and DTP's data-dependent eval-mode pooling;
    on ViT-B/32 it gives 4.408 GMACs where fvcore gives 4.413 (fvcore also counts the layer norms).
    """
    from torch.utils.flop_counter import FlopCounterMode

    from transformers.utils import logging

    implementation, verbosity = model.config._attn_implementation, logging.get_verbosity()
    logging.set_verbosity_error()  # submodels that are eager-only (GPT-Neo, BLIP) warn that they cannot switch
    try:
        model.set_attn_implementation("eager")
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            call()
    finally:
        model.set_attn_implementation(implementation)
        logging.set_verbosity(verbosity)
    return counter.get_total_flops() / 2e9


@torch.no_grad()
def op_profile(call, top: int = 6) -> str:
    """`call()` once under torch.profiler (after one untimed call): aten op count, summed self time, and the `top`
    op kinds by self time."""
    from torch.profiler import ProfilerActivity, profile

    call()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call()
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    total_count = sum(e.count for e in events)
    total_ms = sum(e.self_cpu_time_total for e in events) / 1e3
    kinds = sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]
    parts = ", ".join(f"{e.key[6:]} {e.count}x {e.self_cpu_time_total / 1e3:.0f} ms" for e in kinds)
    return f"{total_count} aten ops, {total_ms:.0f} ms self time ({1e3 * total_ms / total_count:.0f} us/op): {parts}"


@torch.no_grad()
def time_round_robin(calls: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each entry, `repeats` rounds, one call per entry per round, rotating the start."""
    for call in calls.values():  # warm-up
        for _ in range(2):
            call()
    names = list(calls)
    times = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - start)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=15, help="timing rounds (median reported)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's, one per core)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 timing rounds")
    parser.add_argument("--memory-batch", type=int, help="batch of the peak-memory column (default: --batch)")
    parser.add_argument("--compile", nargs="*", default=[], choices=[str(rate) for rate in RATES],
                        help="also time torch.compile'd DTP-ViT at these compressions")
    parser.add_argument("--profile", action="store_true", help="print each model's op profile (torch.profiler)")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 3
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    pixels = torch.randn(args.batch, 3, IMAGE_SIZE, IMAGE_SIZE)
    memory_pixels = torch.randn(args.memory_batch or args.batch, 3, IMAGE_SIZE, IMAGE_SIZE)
    rows = {}
    for setting in SETTINGS:
        gmacs, tokens = gmacs_and_tokens(setting, pixels)
        model = build(setting)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        memory = peak_forward_memory_mb(model, memory_pixels)
        rows[setting] = {"gmacs": gmacs, "tokens": tokens, "params": params, "memory_mb": memory, "model": model}
        print(f"built {label(setting)} {setting}: {params:.2f} M parameters, {gmacs:.2f} GMACs", file=sys.stderr)
    del memory_pixels
    for setting in args.compile:
        compiled = dict(rows[setting], model=torch.compile(build(setting)))
        compiled["model"](pixel_values=pixels)  # compiles
        rows[setting + " compiled"] = compiled
        print(f"compiled {setting}", file=sys.stderr)
    settings = list(rows)
    if args.profile:
        for setting in settings:
            model = rows[setting]["model"]
            print(f"profile {setting}: {op_profile(lambda: model(pixel_values=pixels))}", file=sys.stderr)

    calls = {s: functools.partial(rows[s].pop("model"), pixel_values=pixels) for s in settings}
    times = time_round_robin({GEMM: gemm_call(), **calls}, args.repeats)
    gemm = gemm_gflops(times[GEMM])
    for setting in settings:
        rows[setting]["images_per_s"] = args.batch / statistics.median(times[setting])
        ratios = [p / t for p, t in zip(times[PEER], times[setting])]
        rows[setting]["speedup"] = statistics.median(ratios)
        rows[setting]["speedup_iqr"] = statistics.quantiles(ratios, n=4)[::2] if len(ratios) > 1 else ratios * 2
        print(f"timed {setting}: {rows[setting]['images_per_s']:.1f} images/s", file=sys.stderr)

    peer = rows[PEER]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads on {os.cpu_count()} cores "
          f"({platform.machine()}, load average {load}), batch {args.batch}, {args.repeats} timing rounds, "
          f"float32, SDPA, eval; peak memory at batch {args.memory_batch or args.batch}; float32 GEMM "
          f"({GEMM_SIZE}^3 torch.mm, timed in the same rounds) {gemm:.1f} GFLOP/s")
    print()
    print("| model | compression | tokens in last layers | GMACs | x peer | params (M) | x peer | images/s | x peer "
          "| GFLOP/s | % GEMM | peak forward memory (MB) | x peer |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for setting in settings:
        row = rows[setting]
        compression = "-" if setting == PEER else setting
        q1, q3 = row["speedup_iqr"]
        gflops = 2 * row["gmacs"] * row["images_per_s"]
        print(f"| {label(setting)} | {compression} | {row['tokens']:.1f} | {row['gmacs']:.2f} | "
              f"{row['gmacs'] / peer['gmacs']:.2f} | {row['params']:.2f} | {row['params'] / peer['params']:.3f} | "
              f"{row['images_per_s']:.1f} | {row['speedup']:.2f} [{q1:.2f}, {q3:.2f}] | {gflops:.1f} | "
              f"{100 * gflops / gemm:.0f} | {row['memory_mb']:.0f} | {row['memory_mb'] / peer['memory_mb']:.2f} |")
    print()
    for setting, target in (("1.0", 0.9), ("0.25", 2.0), ("0.1", 3.0)):
        speedup = rows[setting]["speedup"]
        print(f"- compression {setting}: {speedup:.2f}x the peer's images/s (target >= {target}x): "
              f"{'met' if speedup >= target else 'NOT met'}")


if __name__ == "__main__":
    main()
