"""Token reduction on digits: dense DTP-ViT, DTP rate mode, DTP adaptive (calibrated threshold) mode and ToMe; and
DTP-CLIP zero-shot on shapes in its rate and adaptive modes.

    python benchmarks/bench_token_reduction.py --dtp DTP_DIR --dense DENSE_DIR [--threads 1] [--batch 128]
        [--repeats 15] [--tome-r 4 8 12 16 24] [--figure docs/token_reduction_digits.png]
    python benchmarks/bench_token_reduction.py --task zero-shot --dtp-clip CLIP_DIR [--threads 1] [--batch 128]
        [--repeats 15]

`DTP_DIR` is a DTP-ViT classifier trained with the digits recipe (compression r < 1), `DENSE_DIR` the same recipe at
compression 1.0. On scikit-learn's digits test split (360 images), all in eval mode, float32, under no_grad:

- dense: the dense model; ToMe r: the dense model's weights run with token merging (`modeling_tome.ToMeViT`), r tokens
  merged per layer; no training.
- DTP rate: the DTP model as trained (`boundary_inference="rate"`: round(r x T) boundaries in every image).
- DTP adaptive: the same weights with `calibrate_boundary_threshold` fitted on the training images (no labels):
  p > theta, so the mean rate is the prior and each image gets its own count.

Columns: test accuracy; mean tokens per layer (over layers and images; a ToMe layer counts the mean of what its
attention and its MLP see); images/s at batch `--batch`, all settings timed round-robin in one run (median of
`--repeats` rounds), with x dense the median of per-round ratios. For the adaptive mode it also prints the spread of
per-image segment counts and the padding waste (`padding_waste`) of one padded batch against count-sorted chunks.
Both tasks also time this machine's float32 GEMM (a 2048^3 `torch.mm`) in the same rounds and print each setting's
GMACs per image (counted on the timed batch, `counted_gmacs`), its achieved GFLOP/s and that as % of the GEMM rate.

`--task zero-shot`: `CLIP_DIR` is a DTP-CLIP trained with `training/recipes/dtp_clip_shapes.yaml`. On the 300 held-out
images of the shapes split the recipe evaluated (generated with the training seed, read from the model's
`leanvision_training.json`), prompted "a photo of a red circle" over the 18 classes: zero-shot top-1 / top-5 of the
rate mode and of the adaptive mode (threshold fitted on the split's 2,000 training images, no captions), the spread of
per-image segment counts of each, images/s of the image tower (`get_image_features`) at batch `--batch`, timed
round-robin in one run, and the padding waste of each mode's counts; and the spread of the predictor's p_t over the
test patches (a predictor stuck at its prior has p_t ~ r everywhere).
"""

import argparse
import copy
import os
import statistics
import sys

import torch
from bench_dtp_vit import GEMM, counted_gmacs, gemm_call, gemm_gflops, time_round_robin

from leanvision.modeling.modeling_dtp_vit import calibrate_boundary_threshold, padding_waste
from leanvision.modeling.modeling_tome import ToMeViT
from leanvision.training.arguments import recorded_seed
from leanvision.training.data import shapes
from leanvision.training.data.digits import digits_dataset
from leanvision.training.evaluation.zero_shot import shapes_prompts, zero_shot_accuracy
from leanvision.training.inference import load_classifier


def pixels_and_labels(processor, split, label_column: str = "label") -> tuple[torch.Tensor, torch.Tensor]:
    images = [image.convert("RGB") for image in split["image"]]
    return processor(images=images, return_tensors="pt")["pixel_values"], torch.tensor(split[label_column])


def five_numbers(counts: torch.Tensor) -> str:
    """"min / q1 / median / q3 / max" of per-image segment counts."""
    quartiles = torch.quantile(counts.float(), torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])).tolist()
    return " / ".join(f"{q:g}" for q in quartiles)


def count_spread(counts: torch.Tensor, batch: int) -> str:
    """The spread of per-image segment counts, and the padding waste of the first `batch` images padded as one batch
    and in count-sorted chunks."""
    batch_counts = counts[:batch]
    return (f"segments per image min/q1/median/q3/max {five_numbers(counts)}; padding waste at "
            f"batch {len(batch_counts)}: one padded batch {padding_waste(batch_counts):.1%}, count-sorted chunks of "
            + ", ".join(f"{size}: {padding_waste(batch_counts, size):.1%}" for size in (64, 32, 16, 8)))


def load_average() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


class ToMeClassifier(torch.nn.Module):
    """A dense DTP-ViT classifier's tower run with ToMe, then its own classifier head."""

    def __init__(self, classifier, r: int):
        super().__init__()
        self.tome, self.head = ToMeViT(classifier.dtp_vit, r), classifier.classifier

    def forward(self, pixel_values):
        out = self.tome(pixel_values)
        return self.head(out.pooler_output), out.token_counts


def mean_tokens_per_layer(setting: str, model, pixels: torch.Tensor) -> float:
    if setting.startswith("ToMe"):
        counts = model(pixels[:1])[1]
        return sum((counts[i] + counts[i + 1]) / 2 for i in range(len(counts) - 1)) / (len(counts) - 1)
    config = model.config
    out = model(pixels)
    shortened = 1 + out.segment_mask.sum(-1).float().mean().item()
    pre = 1 + config.num_patches
    return (config.num_pre_layers * pre + config.num_shortened_layers * shortened) / config.num_hidden_layers


def logits_of(model, pixels):
    out = model(pixels)
    return out[0] if isinstance(out, tuple) else out.logits


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=["digits", "zero-shot"], default="digits")
    parser.add_argument("--dtp", help="digits: saved DTP-ViT digits classifier (compression < 1)")
    parser.add_argument("--dense", help="digits: saved DTP-ViT digits classifier at compression 1.0")
    parser.add_argument("--dtp-clip", help="zero-shot: saved DTP-CLIP trained with the shapes recipe")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--tome-r", type=int, nargs="+", default=[4, 8, 12, 16, 24])
    parser.add_argument("--figure", help="digits: write accuracy vs images/s to this PNG")
    args = parser.parse_args()
    needed = ("dtp", "dense") if args.task == "digits" else ("dtp_clip",)
    missing = [f"--{name.replace('_', '-')}" for name in needed if getattr(args, name) is None]
    if missing:
        parser.error(f"--task {args.task} needs {' and '.join(missing)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    with torch.no_grad():
        if args.task == "digits":
            digits(args)
        else:
            zero_shot(args)


def digits(args):
    _, dtp, processor = load_classifier(args.dtp)
    _, dense, _ = load_classifier(args.dense)
    if dtp.config.compression_rate >= 1.0 or dense.config.compression_rate != 1.0:
        raise ValueError("--dtp needs a pooling model (compression < 1), --dense a model at compression 1.0")
    seed = recorded_seed(args.dtp)
    if recorded_seed(args.dense) != seed:
        raise ValueError("--dtp and --dense were trained with different seeds, so on different digits splits")
    data = digits_dataset(seed=seed)  # the split the models were trained on (it depends on the seed)
    train_pixels, _ = pixels_and_labels(processor, data["train"])
    test_pixels, labels = pixels_and_labels(processor, data["test"])

    adaptive = copy.deepcopy(dtp)
    theta = calibrate_boundary_threshold(adaptive.dtp_vit, train_pixels)
    rate = dtp.config.compression_rate
    models = {"dense": dense, f"DTP rate {rate}": dtp, f"DTP adaptive {rate}": adaptive}
    models.update({f"ToMe r={r}": ToMeClassifier(dense, r).eval() for r in args.tome_r})

    rows = {}
    for name, model in models.items():
        predictions = logits_of(model, test_pixels).argmax(-1)
        rows[name] = {"accuracy": (predictions == labels).float().mean().item(),
                      "tokens": mean_tokens_per_layer(name, model, test_pixels)}
    out = adaptive(test_pixels)
    chunk = adaptive.config.inference_chunk_size

    batch = test_pixels[: args.batch]
    calls = {name: (lambda model=model: model(batch)) for name, model in models.items()}
    gmacs = {name: counted_gmacs(dense, call) / len(batch) for name, call in calls.items()}  # ToMe runs dense's layers
    times = time_round_robin({**calls, GEMM: gemm_call()}, args.repeats)
    gemm = gemm_gflops(times[GEMM])
    load = load_average()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads on {os.cpu_count()} cores (load average "
          f"{load}), digits test split of seed {seed} ({len(labels)} images), batch {args.batch}, {args.repeats} "
          f"rounds, eval, float32 GEMM {gemm:.1f} GFLOP/s (timed in the same rounds)")
    print(f"adaptive threshold {theta:.4f} (fitted on {len(train_pixels)} training images at rate {rate}): test "
          f"boundary rate {out.boundary_ratio.mean().item():.3f}; {count_spread(out.segment_mask.sum(-1), args.batch)} "
          f"(the model's inference_chunk_size: {chunk})")
    print()
    print("| setting | test accuracy | mean tokens per layer | GMACs per image | images/s | x dense [quartiles] "
          "| GFLOP/s | % GEMM |")
    print("|---|---|---|---|---|---|---|---|")
    for name in models:
        ratios = [d / t for d, t in zip(times["dense"], times[name])]
        q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        rows[name]["images_per_s"] = args.batch / statistics.median(times[name])
        rows[name]["speedup"] = statistics.median(ratios)
        gflops = 2 * gmacs[name] * rows[name]["images_per_s"]
        print(f"| {name} | {rows[name]['accuracy']:.3f} | {rows[name]['tokens']:.1f} | {gmacs[name]:.4f} | "
              f"{rows[name]['images_per_s']:.0f} | {rows[name]['speedup']:.2f} [{q1:.2f}, {q3:.2f}] | {gflops:.1f} | "
              f"{100 * gflops / gemm:.0f} |")
    if args.figure:
        plot(rows, args.figure, f"digits, batch {args.batch}, {torch.get_num_threads()} thread(s), load {load}")
        print(f"\nfigure: {args.figure}", file=sys.stderr)


def zero_shot(args):
    _, rate_model, processor = load_classifier(args.dtp_clip)
    if rate_model.config.vision_config.compression_rate >= 1.0:
        raise ValueError("--dtp-clip needs a DTP-CLIP with a pooling image tower (compression < 1)")
    seed = recorded_seed(args.dtp_clip)
    data = shapes.shapes_splits(train=2000, test=300, seed=seed, max_objects=1)
    train_pixels, _ = pixels_and_labels(processor, data["train"], "label_id")
    test_pixels, _ = pixels_and_labels(processor, data["test"], "label_id")
    prompts = shapes_prompts()

    adaptive = copy.deepcopy(rate_model)
    theta = calibrate_boundary_threshold(adaptive.vision_model, train_pixels)
    rate = rate_model.config.vision_config.compression_rate
    models = {f"DTP-CLIP rate {rate}": rate_model, f"DTP-CLIP adaptive {rate}": adaptive}
    rows = {}
    for name, model in models.items():
        scores = zero_shot_accuracy(model, processor, data["test"], prompts, label_column="label_id")
        out = model.vision_model(test_pixels)
        rows[name] = dict(scores, counts=out.segment_mask.sum(-1), rate=out.boundary_ratio.mean().item())

    batch = test_pixels[: args.batch]
    calls = {name: (lambda model=model: model.get_image_features(batch)) for name, model in models.items()}
    gmacs = {name: counted_gmacs(models[name], call) / len(batch) for name, call in calls.items()}
    times = time_round_robin({**calls, GEMM: gemm_call()}, args.repeats)
    gemm = gemm_gflops(times[GEMM])
    first = next(iter(models))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads on {os.cpu_count()} cores (load average "
          f"{load_average()}), shapes test split of seed {seed} ({len(test_pixels)} images, 18 classes, chance top-1 "
          f"{1 / len(prompts):.3f}), image tower at batch {len(batch)}, {args.repeats} rounds, eval, float32 GEMM "
          f"{gemm:.1f} GFLOP/s (timed in the same rounds)")
    probs = rate_model.vision_model.boundary_probabilities(test_pixels)
    print(f"adaptive threshold {theta:.4f} (fitted on {len(train_pixels)} training images at rate {rate}); the test "
          f"patches' p: mean {probs.mean():.4f}, std {probs.std():.4f}, median within-image std "
          f"{probs.std(-1).median():.4f}")
    for name, row in rows.items():
        print(f"- {name}: test boundary rate {row['rate']:.3f}; {count_spread(row['counts'], args.batch)}")
    print()
    print("| setting | zero-shot top-1 | top-5 | test boundary rate | segments per image (min / q1 / median / q3 / "
          "max) | GMACs per image | images/s | x rate mode [quartiles] | GFLOP/s | % GEMM |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        ratios = [r / t for r, t in zip(times[first], times[name])]
        q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        images_per_s = len(batch) / statistics.median(times[name])
        gflops = 2 * gmacs[name] * images_per_s
        print(f"| {name} | {row['zero_shot_top1']:.3f} | {row['zero_shot_top5']:.3f} | {row['rate']:.3f} | "
              f"{five_numbers(row['counts'])} | {gmacs[name]:.4f} | {images_per_s:.0f} | "
              f"{statistics.median(ratios):.2f} [{q1:.2f}, {q3:.2f}] | {gflops:.1f} | {100 * gflops / gemm:.0f} |")


def plot(rows: dict, path: str, subtitle: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    tome = [name for name in rows if name.startswith("ToMe")]
    ax.plot([rows[n]["images_per_s"] for n in tome], [rows[n]["accuracy"] for n in tome], "o-", color="tab:gray",
            label="ToMe (r = " + ", ".join(n.split("=")[1] for n in tome) + ")")
    for name, marker, color in (("dense", "s", "black"), ("DTP rate", "^", "tab:blue"),
                                ("DTP adaptive", "D", "tab:orange")):
        for row_name in [n for n in rows if n.startswith(name)]:
            ax.plot(rows[row_name]["images_per_s"], rows[row_name]["accuracy"], marker, color=color, ms=8,
                    label=row_name)
    ax.set_xlabel("images/s")
    ax.set_ylabel("test accuracy")
    ax.set_title("Token reduction on digits\n" + subtitle, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
