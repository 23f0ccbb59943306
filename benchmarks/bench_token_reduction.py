"""Token reduction on digits: dense DTP-ViT, DTP rate mode, DTP adaptive (calibrated threshold) mode and ToMe.

    python benchmarks/bench_token_reduction.py --dtp DTP_DIR --dense DENSE_DIR [--threads 1] [--batch 128]
        [--repeats 15] [--tome-r 4 8 12 16 24] [--figure docs/token_reduction_digits.png]

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
"""

import argparse
import copy
import os
import statistics
import sys

import torch
from bench_dtp_vit import time_round_robin

from leanvision.modeling.modeling_dtp_vit import calibrate_boundary_threshold, padding_waste
from leanvision.modeling.modeling_tome import ToMeViT
from leanvision.training.data.digits import digits_dataset
from leanvision.training.inference import load_classifier


def pixels_and_labels(processor, split) -> tuple[torch.Tensor, torch.Tensor]:
    images = [image.convert("RGB") for image in split["image"]]
    return processor(images=images, return_tensors="pt")["pixel_values"], torch.tensor(split["label"])


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


@torch.no_grad()
def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtp", required=True, help="saved DTP-ViT digits classifier (compression < 1)")
    parser.add_argument("--dense", required=True, help="saved DTP-ViT digits classifier at compression 1.0")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--tome-r", type=int, nargs="+", default=[4, 8, 12, 16, 24])
    parser.add_argument("--figure", help="write accuracy vs images/s to this PNG")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    _, dtp, processor = load_classifier(args.dtp)
    _, dense, _ = load_classifier(args.dense)
    if dtp.config.compression_rate >= 1.0 or dense.config.compression_rate != 1.0:
        raise ValueError("--dtp needs a pooling model (compression < 1), --dense a model at compression 1.0")
    data = digits_dataset()
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
    counts = out.segment_mask.sum(-1)
    quartiles = torch.quantile(counts.float(), torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])).tolist()
    batch_counts = counts[: args.batch]
    chunk = adaptive.config.inference_chunk_size

    batch = test_pixels[: args.batch]
    times = time_round_robin({name: (lambda model=model: model(batch)) for name, model in models.items()}, args.repeats)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads on {os.cpu_count()} cores (load average "
          f"{load}), digits test split ({len(labels)} images), batch {args.batch}, {args.repeats} rounds, eval")
    print(f"adaptive threshold {theta:.4f} (fitted on {len(train_pixels)} training images at rate {rate}): test "
          f"boundary rate {out.boundary_ratio.mean().item():.3f}; segments per image min/q1/median/q3/max "
          f"{' / '.join(f'{q:g}' for q in quartiles)}; padding waste at batch {args.batch}: one padded batch "
          f"{padding_waste(batch_counts):.1%}, count-sorted chunks of " + ", ".join(
              f"{size}: {padding_waste(batch_counts, size):.1%}" for size in (64, 32, 16, 8)
          ) + f" (the model's inference_chunk_size: {chunk})")
    print()
    print("| setting | test accuracy | mean tokens per layer | images/s | x dense [quartiles] |")
    print("|---|---|---|---|---|")
    for name in models:
        ratios = [d / t for d, t in zip(times["dense"], times[name])]
        q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        rows[name]["images_per_s"] = args.batch / statistics.median(times[name])
        rows[name]["speedup"] = statistics.median(ratios)
        print(f"| {name} | {rows[name]['accuracy']:.3f} | {rows[name]['tokens']:.1f} | "
              f"{rows[name]['images_per_s']:.0f} | {rows[name]['speedup']:.2f} [{q1:.2f}, {q3:.2f}] |")
    if args.figure:
        plot(rows, args.figure, f"digits, batch {args.batch}, {torch.get_num_threads()} thread(s), load {load}")
        print(f"\nfigure: {args.figure}", file=sys.stderr)


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
