"""DTP-LLaVA at compression 1.0 / 0.5 / 0.25 / 0.1: what fewer visual tokens save the language model, on CPU.

    python benchmarks/bench_dtp_llava.py [--repeats 5] [--decode-tokens 16] [--threads N] [--tower l14-336] [--quick]

Realistic shapes, random weights (eval, no_grad, float32, SDPA): a ViT-B/16 DTP tower at 224 px (196 patches, built
as `dtp_vit_config_from_clip_vision` builds it from a CLIP ViT-B/16: 2 pre-layers + 10 shortened layers; with
`--tower l14-336` LLaVA-1.5's own tower shape instead, CLIP ViT-L/14 at 336 px: 576 patches, 2 + 22 layers),
LLaVA-1.5's 2-layer projector and a Qwen2-0.5B-shaped language model (24 layers, width 896, 14 query / 2 key-value
heads), batch 1, one image and a 32-token question. Every setting shares one language model and projector; only the
tower (its compression) is swapped. Compression 1.0 is the dense tower (one visual token per patch, LLaVA's own count).

Measured per setting, each "x dense" column is dense / ours from the same run:
- visual tokens: what the image costs the language model's prompt (CLS dropped, LLaVA's "default" strategy);
- prefill: one forward over image + prompt building the KV cache (tower + projector + language model; logits of the
  last position only, as `generate` computes them), timed
  round-robin (one forward per setting per round, the start rotating), median over `--repeats` rounds;
- decode: seconds per generated token after that prefill (`--decode-tokens` greedy steps with the cache), median;
- KV cache of the image: the bytes the cache holds for the visual tokens (keys and values of every layer), read off
  the cache object after prefill as (cache bytes with the image - cache bytes of the text alone);
- prefill GMACs (counted op by op on one prefill, `counted_gmacs`, eager attention), its GFLOP/s (2 x MACs / median
  prefill time) and % GEMM: that rate over this machine's float32 GEMM rate (a 2048^3 `torch.mm` timed in the same
  rounds).
Targets (issue 14): at 0.25 the prefill >= 2.5x faster than dense and the image's KV cache >= 3.5x smaller.
"""

import argparse
import os
import platform
import statistics
import sys
import time

import torch
from transformers import CLIPVisionConfig, Qwen2Config

from bench_dtp_vit import GEMM_SIZE, counted_gmacs, gemm_call, gemm_gflops
from leanvision.configuration.configuration_dtp_llava import DTPLlavaConfig
from leanvision.modeling.modeling_dtp_llava import DTPLlavaForConditionalGeneration
from leanvision.modeling.modeling_dtp_vit import DTPViTModel, dtp_vit_config_from_clip_vision

RATES = ("1.0", "0.5", "0.25", "0.1")
DENSE = "1.0"
# CLIP vision shapes of the tower: ViT-B/16 at 224 px (the default) and LLaVA-1.5's ViT-L/14 at 336 px.
TOWERS = {
    "b16-224": dict(image_size=224, patch_size=16),
    "l14-336": dict(image_size=336, patch_size=14, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                    num_attention_heads=16),
}
QUESTION_TOKENS = 32
IMAGE_TOKEN_ID = 151646  # Qwen2's vocabulary has room: any id below vocab_size works


def qwen2_05b_config() -> Qwen2Config:
    """The shape of Qwen2.5-0.5B(-Instruct): 494M parameters with its tied 151,936-token embedding."""
    return Qwen2Config(
        vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, max_position_embeddings=32768, tie_word_embeddings=True, rope_theta=1000000.0,
    )


class TowerSwitch:
    """One DTP-LLaVA (random weights, eval, SDPA) and a DTP tower per rate; `use(rate)` puts that rate's tower in."""

    def __init__(self, rates=RATES, tower="b16-224"):
        self.towers = {}
        for rate in rates:
            torch.manual_seed(0)
            vision = dtp_vit_config_from_clip_vision(CLIPVisionConfig(**TOWERS[tower]), compression_rate=float(rate))
            vision._attn_implementation = "sdpa"
            self.towers[rate] = DTPViTModel(vision).eval()
        config = DTPLlavaConfig(vision_config=self.towers[DENSE].config, text_config=qwen2_05b_config(),
                                image_token_id=IMAGE_TOKEN_ID)
        config._attn_implementation = "sdpa"
        self.model = DTPLlavaForConditionalGeneration(config).eval()

    def use(self, rate: str) -> DTPLlavaForConditionalGeneration:
        self.model.vision_tower = self.towers[rate]
        return self.model


def prompt() -> torch.LongTensor:
    """One `<image>` token followed by a 32-token question (random ids, fixed)."""
    generator = torch.Generator().manual_seed(0)
    question = torch.randint(100, 150000, (1, QUESTION_TOKENS), generator=generator)
    return torch.cat([torch.tensor([[IMAGE_TOKEN_ID]]), question], dim=1)


def cache_bytes(cache) -> int:
    """Bytes of every key and value tensor a transformers cache holds."""
    return sum(
        tensor.numel() * tensor.element_size()
        for layer in cache.layers for tensor in (layer.keys, layer.values) if tensor is not None
    )


@torch.no_grad()
def prefill(model, input_ids, pixels):
    return model(input_ids=input_ids, pixel_values=pixels, use_cache=True, logits_to_keep=1)


@torch.no_grad()
def decode_seconds_per_token(model, input_ids, pixels, steps: int) -> float:
    """Seconds per greedy step with the cache, after a prefill (not timed)."""
    out = prefill(model, input_ids, pixels)
    cache, mask = out.cache, out.attention_mask
    token = out.logits[:, -1:].argmax(-1)
    position = mask.sum(dim=1, keepdim=True)
    start = time.perf_counter()
    for _ in range(steps):
        mask = torch.cat([mask, mask.new_ones(1, 1)], dim=1)
        step = model.language_model(input_ids=token, attention_mask=mask, position_ids=position,
                                    cache=cache, use_cache=True, logits_to_keep=1)
        cache, token, position = step.cache, step.logits[:, -1:].argmax(-1), position + 1
    return (time.perf_counter() - start) / steps


@torch.no_grad()
def image_kv_bytes(model, input_ids, pixels) -> tuple[int, int]:
    """(visual tokens, bytes of the cache that belong to them): cache with the image minus cache of the text alone."""
    out = prefill(model, input_ids, pixels)
    text = model.language_model(input_ids=input_ids[:, 1:], use_cache=True, logits_to_keep=1)
    return int(out.image_token_counts[0]), cache_bytes(out.cache) - cache_bytes(text.cache)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timing rounds (median reported)")
    parser.add_argument("--decode-tokens", type=int, default=16, help="greedy steps timed after each prefill")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's, one per core)")
    parser.add_argument("--tower", choices=sorted(TOWERS), default="b16-224",
                        help="the tower's CLIP shape: ViT-B/16 at 224 px, or LLaVA-1.5's ViT-L/14 at 336 px")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 rounds, 4 decode steps")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.decode_tokens = 2, 4
    if args.threads:
        torch.set_num_threads(args.threads)

    switch = TowerSwitch(tower=args.tower)
    language_params = sum(p.numel() for p in switch.model.language_model.parameters()) / 1e6
    tower_params = sum(p.numel() for p in switch.towers[DENSE].parameters()) / 1e6
    print(f"built: tower {tower_params:.1f} M, language model {language_params:.1f} M parameters", file=sys.stderr)
    torch.manual_seed(0)
    image_size = TOWERS[args.tower]["image_size"]
    pixels = torch.randn(1, 3, image_size, image_size)
    input_ids = prompt()

    rows = {rate: dict(zip(("tokens", "kv_bytes"), image_kv_bytes(switch.use(rate), input_ids, pixels)))
            for rate in RATES}
    for rate in RATES:  # warm-up
        model = switch.use(rate)
        prefill(model, input_ids, pixels)
        rows[rate]["gmacs"] = counted_gmacs(model, lambda: prefill(model, input_ids, pixels))
    prefill_times = {rate: [] for rate in RATES}
    decode_times = {rate: [] for rate in RATES}
    gemm, gemm_times = gemm_call(), []
    gemm()
    for round_index in range(args.repeats):
        start = time.perf_counter()
        gemm()
        gemm_times.append(time.perf_counter() - start)
        shift = round_index % len(RATES)
        for rate in RATES[shift:] + RATES[:shift]:
            model = switch.use(rate)
            start = time.perf_counter()
            prefill(model, input_ids, pixels)
            prefill_times[rate].append(time.perf_counter() - start)
            decode_times[rate].append(decode_seconds_per_token(model, input_ids, pixels, args.decode_tokens))
        print(f"round {round_index + 1}/{args.repeats} done", file=sys.stderr)

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    gemm = gemm_gflops(gemm_times)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads on {os.cpu_count()} cores "
          f"({platform.machine()}, load average {load}), float32 GEMM {gemm:.0f} GFLOP/s (timed in the same rounds), "
          f"{args.tower} tower, batch 1, {QUESTION_TOKENS}-token question, {args.repeats} rounds, "
          f"{args.decode_tokens} decode steps, SDPA, eval")
    print()
    print("| compression | visual tokens | x dense | prefill (s) | x dense | prefill GMACs | GFLOP/s | % GEMM "
          "| decode (ms/token) | x dense | image KV cache (MB) | x dense |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    dense_prefill = prefill_times[DENSE]
    for rate in RATES:
        row = rows[rate]
        prefill_s = statistics.median(prefill_times[rate])
        speedup = statistics.median(d / t for d, t in zip(dense_prefill, prefill_times[rate]))
        decode_ms = statistics.median(decode_times[rate]) * 1e3
        decode_x = statistics.median(decode_times[DENSE]) * 1e3 / decode_ms
        row["prefill_x"], row["kv_x"] = speedup, rows[DENSE]["kv_bytes"] / row["kv_bytes"]
        gflops = 2 * row["gmacs"] / prefill_s
        print(f"| {rate} | {row['tokens']} | {rows[DENSE]['tokens'] / row['tokens']:.2f} | {prefill_s:.3f} | "
              f"{speedup:.2f} | {row['gmacs']:.1f} | {gflops:.1f} | {100 * gflops / gemm:.0f} | {decode_ms:.1f} | "
              f"{decode_x:.2f} | {row['kv_bytes'] / 2**20:.2f} | {row['kv_x']:.2f} |")
    print()
    quarter = rows["0.25"]
    for name, value, target in (("prefill", quarter["prefill_x"], 2.5), ("image KV cache", quarter["kv_x"], 3.5)):
        print(f"- compression 0.25: {name} {value:.2f}x smaller/faster than dense (target >= {target}x): "
              f"{'met' if value >= target else 'NOT met'}")


if __name__ == "__main__":
    main()
