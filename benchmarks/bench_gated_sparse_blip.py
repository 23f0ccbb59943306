"""GatedSparseBlip speed: training step and cached generation per token, sparsity 0 vs 0.7, gating on vs off, against
transformers' `BlipForConditionalGeneration` of the same widths, all measured in one run (random weights).

    python benchmarks/bench_gated_sparse_blip.py [--preset base|small] [--threads 1] [--batch 4] [--passes 3]

What is timed:
- training step: forward + backward + AdamW step on a batch of (latents or pixels, 20-token captions). Our models read
  SDXL-style latents of 256x256 images (4 x 32 x 32, 2x2 patches: 256 latent tokens); BLIP reads 384x384 pixels
  (16x16 patches: 577 tokens), as the released BLIP captioner does.
- generation: greedy `generate()` with the KV cache for exactly L new tokens, batch 1, at several L. The per-token
  time is (t(L) - t(1)) / (L - 1), which leaves out the image encoding and the first step; it stays flat as L grows
  when the cache works. One row repeats the last variant with `use_cache=False` for contrast (every step then
  re-encodes the latents and re-reads the whole caption, so the per-token time grows with L).
The models are measured in turn, pass after pass (`--passes`); each time is the fastest over the passes, each run
after a warm-up run. Tables: absolute times, then ratios to our dense, ungated model and to BLIP, then the achieved
rate against this machine's float32 GEMM rate (a 2048^3 `torch.mm` timed before every model in every pass, fastest):
- training step: 3 x the MACs of one training forward (the backward counted as twice the forward), counted op by op
  (`counted_gmacs`, eager attention);
- generation: the MACs per token (M(L) - M(1)) / (L - 1), M(L) counted on the whole generate call of L tokens, over
  the per-token time; first token: M(1) over t(1).
GFLOP/s = 2 x MACs / time.
"""

import argparse
import os
import time

import torch
from bench_dtp_vit import GEMM_SIZE, counted_gmacs, gemm_call, gemm_gflops, op_profile
from transformers import BlipConfig, BlipForConditionalGeneration

from leanvision.configuration.configuration_gated_sparse_blip import GatedSparseBlipConfig
from leanvision.modeling.modeling_gated_sparse_blip import GatedSparseBlipForConditionalGeneration

# BLIP-base (Salesforce/blip-image-captioning-base) widths, and a small preset for quick CPU runs.
PRESETS = {
    "base": dict(hidden=768, layers=12, heads=12, intermediate=3072, vision_layers=12, our_vision_layers=6,
                 image_size=384, latent_size=32),
    "small": dict(hidden=256, layers=4, heads=4, intermediate=1024, vision_layers=4, our_vision_layers=2,
                  image_size=192, latent_size=16),
}
VOCAB = 30524
CAPTION_TOKENS = 20
GENERATION_LENGTHS = (1, 8, 16, 32)
VARIANTS = [  # (name, attention_sparsity, use_token_gating)
    ("ours: dense, no gate", 0.0, False),
    ("ours: dense, gate", 0.0, True),
    ("ours: sparse 0.7, no gate", 0.7, False),
    ("ours: sparse 0.7, gate", 0.7, True),
]


def text_config(p: dict) -> dict:
    return dict(vocab_size=VOCAB, hidden_size=p["hidden"], intermediate_size=p["intermediate"],
                num_hidden_layers=p["layers"], num_attention_heads=p["heads"], max_position_embeddings=512,
                bos_token_id=30522, sep_token_id=102, eos_token_id=102, pad_token_id=0)


def our_model(p: dict, sparsity: float, gating: bool) -> GatedSparseBlipForConditionalGeneration:
    config = GatedSparseBlipConfig(
        text_config=text_config(p), vision_hidden_size=p["hidden"], vision_num_hidden_layers=p["our_vision_layers"],
        vision_num_attention_heads=p["heads"], vision_intermediate_size=p["intermediate"],
        max_latent_size=(p["latent_size"], p["latent_size"]), attention_sparsity=sparsity, use_token_gating=gating,
    )
    return GatedSparseBlipForConditionalGeneration(config)


def blip_model(p: dict) -> BlipForConditionalGeneration:
    config = BlipConfig(
        text_config=text_config(p),
        vision_config=dict(hidden_size=p["hidden"], intermediate_size=p["intermediate"],
                           num_hidden_layers=p["vision_layers"], num_attention_heads=p["heads"],
                           image_size=p["image_size"], patch_size=16),
    )
    return BlipForConditionalGeneration(config)


def timed(fn) -> float:
    """Seconds of one run of `fn` after a warm-up run."""
    fn()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def captions(batch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1000, VOCAB - 2, (batch, CAPTION_TOKENS), generator=generator)
    input_ids[:, 0] = 30522
    return input_ids


def generate_call(model, vision_inputs: dict, length: int, use_cache: bool):
    """Greedy generation of exactly `length` tokens for the first image (batch 1)."""
    single = {key: value[:1] for key, value in vision_inputs.items()}
    return lambda: model.generate(**single, max_new_tokens=length, min_new_tokens=length, do_sample=False,
                                  num_beams=1, use_cache=use_cache)


def measure_once(model, vision_inputs: dict, batch: int, train: bool, use_cache: bool) -> dict:
    """One timing of a training step (when `train`) and of greedy generation of exactly L tokens for each L."""
    times = {}
    if train:
        input_ids = captions(batch)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        model.train()

        def train_step():
            loss = model(**vision_inputs, input_ids=input_ids, labels=input_ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        times["train_step"] = timed(train_step)
    model.eval()
    with torch.no_grad():
        for length in GENERATION_LENGTHS:
            times[f"generate@{length}"] = timed(generate_call(model, vision_inputs, length, use_cache))
    return times


def count_macs(model, vision_inputs: dict, batch: int, train: bool, use_cache: bool) -> dict:
    """GMACs of what `measure_once` times: the training step as 3 x one training forward (backward = 2 x forward),
    and each whole generate call."""
    macs = {}
    if train:
        input_ids = captions(batch)
        model.train()
        macs["train_step"] = 3 * counted_gmacs(
            model, lambda: model(**vision_inputs, input_ids=input_ids, labels=input_ids)
        )
    model.eval()
    for length in GENERATION_LENGTHS:
        macs[f"generate@{length}"] = counted_gmacs(model, generate_call(model, vision_inputs, length, use_cache))
    return macs


def derive(times: dict) -> dict:
    """Training step, first generated token, and per-token value (x(L) - x(1)) / (L - 1) for each L > 1 (of times or
    of MACs)."""
    first = times["generate@1"]
    row = {"train_step": times.get("train_step"), "first_token": first}
    for length in GENERATION_LENGTHS[1:]:
        row[f"per_token@{length}"] = (times[f"generate@{length}"] - first) / (length - 1)
    return row


def markdown(rows: dict[str, dict], columns: list[str], fmt) -> str:
    lines = ["| model | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for name, values in rows.items():
        cells = [fmt(name, c, values[c]) if values.get(c) is not None else "-" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="base")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--batch", type=int, default=4, help="training batch size")
    parser.add_argument("--passes", type=int, default=3,
                        help="passes over all models; each time is the fastest over the passes")
    parser.add_argument("--profile", action="store_true",
                        help="print the aten op profile of one cached 32-token generate call per model")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    p = PRESETS[args.preset]
    torch.manual_seed(0)
    latents = {"latents": torch.randn(args.batch, 4, p["latent_size"], p["latent_size"]) / 0.13025}
    pixels = {"pixel_values": torch.randn(args.batch, 3, p["image_size"], p["image_size"])}
    # (name, builder, inputs, time a training step, use the KV cache). The last variant is repeated without the
    # cache: what per-token growth looks like when nothing is reused.
    specs = [(name, lambda s=sparsity, g=gating: our_model(p, s, g), latents, True, True)
             for name, sparsity, gating in VARIANTS]
    sparsity, gating = VARIANTS[-1][1:]
    specs.append((f"{VARIANTS[-1][0]}, cache off", lambda: our_model(p, sparsity, gating), latents, False, False))
    specs.append(("BLIP (transformers)", lambda: blip_model(p), pixels, True, True))

    # Models are measured in turn, pass after pass, so that load from other processes spreads over all of them.
    # The GEMM is timed before every model, so it sees the same machine load; its fastest time is used, as for the
    # models.
    best: dict[str, dict] = {}
    gemm, gemm_times = gemm_call(), []
    gemm()
    for index in range(args.passes):
        for name, build, inputs, train, use_cache in specs:
            start = time.perf_counter()
            gemm()
            gemm_times.append(time.perf_counter() - start)
            torch.manual_seed(0)
            times = measure_once(build(), inputs, args.batch, train, use_cache)
            best[name] = {k: min(v, best.get(name, {}).get(k, v)) for k, v in times.items()}
        print(f"pass {index + 1}/{args.passes} done", flush=True)
    rows = {name: derive(times) for name, times in best.items()}
    gemm_rate = gemm_gflops([min(gemm_times)])
    macs = {}
    for name, build, inputs, train, use_cache in specs:
        torch.manual_seed(0)
        model = build()
        macs[name] = derive(count_macs(model, inputs, args.batch, train, use_cache))
        if args.profile and use_cache:
            profile = op_profile(generate_call(model.eval(), inputs, GENERATION_LENGTHS[-1], use_cache))
            print(f"profile {name}, generate {GENERATION_LENGTHS[-1]} tokens: {profile}", flush=True)

    columns = list(rows["BLIP (transformers)"])
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\npreset {args.preset} (hidden {p['hidden']}, {p['layers']} text layers, {p['heads']} heads), "
          f"batch {args.batch} x {CAPTION_TOKENS} tokens for training, batch 1 for generation, "
          f"{torch.get_num_threads()} thread(s) on {os.cpu_count()} cores (load average {load}), fastest of "
          f"{args.passes} passes; float32 GEMM ({GEMM_SIZE}^3 torch.mm, timed before every model) "
          f"{gemm_rate:.1f} GFLOP/s\n")
    print("Times in ms:\n")
    print(markdown(rows, columns, lambda n, c, v: f"{1000 * v:.1f}"))
    dense = rows[VARIANTS[0][0]]
    blip = rows["BLIP (transformers)"]
    print("\nRatio to our dense, ungated model (sparse-path target: training step <= 1.2x):\n")
    print(markdown(rows, columns, lambda n, c, v: f"{v / dense[c]:.2f}x"))
    print("\nRatio to BLIP:\n")
    print(markdown(rows, columns, lambda n, c, v: f"{v / blip[c]:.2f}x"))
    print("\nGMACs (training step: 3 x forward; generation: per token):\n")
    print(markdown(macs, columns, lambda n, c, v: f"{v:.3f}"))
    print(f"\nAchieved GFLOP/s (2 x MACs / time) and its share of the {gemm_rate:.1f} GFLOP/s GEMM rate:\n")
    print(markdown(rows, columns,
                   lambda n, c, v: f"{2 * macs[n][c] / v:.1f} ({200 * macs[n][c] / v / gemm_rate:.0f}%)"))


if __name__ == "__main__":
    main()
