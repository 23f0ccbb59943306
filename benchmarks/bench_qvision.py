"""Caption latency of QVision (CLIP ViT-B/32 + GPT-Neo-125M) against transformers' BLIP-base captioner, on CPU.

    python benchmarks/bench_qvision.py [--batches 1 8] [--repeats 7] [--threads N] [--quick]

Both models have random weights and run in eval mode, float32, under no_grad, greedy, with the KV cache:
- QVision: `QVisionConfig.gpt_neo_125m_config()` (CLIP ViT-B/32 at 224x224 -> 49 patch tokens; a 6-layer Q-Former
  -> 1 global + 64 query tokens; GPT-Neo-125M with a gated cross-attention block before every 4th block);
- peer: `BlipForConditionalGeneration(BlipConfig())`, the BLIP-base widths (ViT-B/16 at 384x384 -> 577 image
  tokens, a 12-layer BERT-base decoder cross-attending to all of them in every layer).

Each call generates exactly 20 new tokens (`max_new_tokens = min_new_tokens = 20`, checked on the outputs), for one
batch of random images (the image encoder is part of the timed call). The (model, batch) settings are timed
round-robin, one call each per round with the starting setting rotating, so machine noise hits all alike; the
table gives the median latency over `--repeats` rounds and the median over rounds of the per-round ratio
peer / QVision. Target (issue 4): QVision >= 2x faster than the peer at batch 1.

Achieved rate: GMACs of the whole generate call (image encoder, prefill and the 19 cached steps after it), counted
op by op on that call (`counted_gmacs`, eager attention), x 2 / median latency, and its share of this machine's float32
GEMM rate (a 2048^3 `torch.mm`, one more entry of the same rounds). `--profile` prints the aten ops of one batch-1
call per model.
"""

import argparse
import functools
import os
import platform
import statistics
import sys

import torch
from bench_dtp_vit import GEMM, GEMM_SIZE, counted_gmacs, gemm_call, gemm_gflops, op_profile, time_round_robin
from transformers import BlipConfig, BlipForConditionalGeneration

from leanvision.configuration.configuration_qvision import QVisionConfig
from leanvision.modeling.modeling_qvision import QVisionForConditionalGeneration

NEW_TOKENS = 20
QVISION, PEER = "qvision", "blip"


def build(name: str) -> tuple[torch.nn.Module, int]:
    """The model (random weights, eval) and its input image size."""
    torch.manual_seed(0)
    if name == QVISION:
        config = QVisionConfig.gpt_neo_125m_config()
        return QVisionForConditionalGeneration(config).eval(), config.vision_config.image_size
    config = BlipConfig()
    return BlipForConditionalGeneration(config).eval(), config.vision_config.image_size


def image_tokens(name: str, model) -> str:
    """What the decoder cross-attends to."""
    if name == QVISION:
        config = model.config
        patches = (config.vision_config.image_size // config.vision_config.patch_size) ** 2
        return f"{int(config.use_global_token) + config.num_query_tokens} (Q-Former over {patches} patches)"
    vision = model.config.vision_config
    return str((vision.image_size // vision.patch_size) ** 2 + 1)


@torch.no_grad()
def caption(model, pixel_values: torch.Tensor) -> torch.Tensor:
    sequences = model.generate(
        pixel_values=pixel_values, do_sample=False, num_beams=1, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS
    )
    if sequences.shape != (pixel_values.shape[0], 1 + NEW_TOKENS):  # one start token + the new ones
        raise RuntimeError(f"{type(model).__name__} generated {tuple(sequences.shape)}, not {NEW_TOKENS} new tokens")
    return sequences


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=7, help="timing rounds (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 rounds")
    parser.add_argument("--profile", action="store_true", help="print the aten op profile of one batch-1 call each")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.repeats = 2

    models = {}
    for name in (QVISION, PEER):
        model, image_size = build(name)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        models[name] = (model, image_size, params)
        print(f"built {type(model).__name__}: {params:.1f} M parameters, {image_size}px", file=sys.stderr)

    generator = torch.Generator().manual_seed(0)
    calls, gmacs = {}, {}
    for batch in args.batches:
        for name, (model, image_size, _) in models.items():
            pixels = torch.randn(batch, 3, image_size, image_size, generator=generator)
            calls[(name, batch)] = functools.partial(caption, model, pixels)  # the first call checks the 20 tokens
            gmacs[(name, batch)] = counted_gmacs(model, calls[(name, batch)])
            if args.profile and batch == 1:
                print(f"profile {name}, batch 1: {op_profile(calls[(name, batch)])}", file=sys.stderr)
    times = time_round_robin({GEMM: gemm_call(), **calls}, args.repeats)
    gemm = gemm_gflops(times[GEMM])

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads on {os.cpu_count()} cores "
          f"({platform.machine()}, load average {load}), {args.repeats} rounds, float32, eval, greedy, {NEW_TOKENS} "
          f"new tokens per caption, random weights; float32 GEMM ({GEMM_SIZE}^3 torch.mm, timed in the same rounds) "
          f"{gemm:.1f} GFLOP/s")
    print()
    print("| batch | model | params (M) | input | image tokens read by the decoder | latency (ms) | ms / caption "
          "| speed-up vs peer | GMACs per call | GFLOP/s | % GEMM |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    speedups = {}
    for batch in args.batches:
        peer_times = times[(PEER, batch)]
        for name in (QVISION, PEER):
            model, image_size, params = models[name]
            latency = statistics.median(times[(name, batch)]) * 1000
            speedup = statistics.median(p / t for p, t in zip(peer_times, times[(name, batch)]))
            speedups[(name, batch)] = speedup
            label = "QVision (GPT-Neo-125M)" if name == QVISION else "BlipForConditionalGeneration (BLIP-base, peer)"
            gflops = 2 * gmacs[(name, batch)] / latency * 1e3
            print(f"| {batch} | {label} | {params:.1f} | {image_size}x{image_size} | {image_tokens(name, model)} | "
                  f"{latency:.0f} | {latency / batch:.0f} | {speedup:.2f}x | {gmacs[(name, batch)]:.1f} | "
                  f"{gflops:.1f} | {100 * gflops / gemm:.0f} |")
    print()
    if 1 in args.batches:
        speedup = speedups[(QVISION, 1)]
        print(f"- batch 1: QVision is {speedup:.2f}x faster than the peer (target >= 2x): "
              f"{'met' if speedup >= 2 else 'NOT met'}")


if __name__ == "__main__":
    main()
