"""How informative a trained DTP-ViT's boundary probabilities are, on scikit-learn's digits (no timing).

    python benchmarks/bench_boundary_probabilities.py DIR [DIR ...]

Each DIR is a DTP-ViT digits classifier (compression r < 1), e.g. the digits recipe trained with and without Gumbel
temperature annealing (`boundary_temperature_final`). On the 360 test images of the split the model was trained on
(it depends on the training seed, read from the model's `leanvision_training.json`), per model:

- the spread of p_t: mean, standard deviation over all test patches, and the median within-image standard deviation
  (a predictor stuck at its prior has p_t ~ r everywhere, and both are near 0);
- the `"threshold"` mode at the paper's p > 0.5: its mean boundary rate against the prior r, and test accuracy;
- the `"rate"` mode (round(r x T) boundaries per image) and the calibrated adaptive mode (`calibrate_boundary_threshold`
  fitted on the 1,437 training images, no labels): test accuracy, and the adaptive mode's per-image segment counts.
"""

import argparse
import copy
import os

import torch
from bench_token_reduction import five_numbers, pixels_and_labels

from leanvision.modeling.modeling_dtp_vit import calibrate_boundary_threshold
from leanvision.training.arguments import recorded_seed
from leanvision.training.data.digits import digits_dataset
from leanvision.training.inference import load_classifier


def accuracy_and_counts(model, pixels: torch.Tensor, labels: torch.Tensor) -> tuple[float, torch.Tensor, float]:
    """(test accuracy, per-image segment counts, mean boundary rate) of one eval-mode forward."""
    out = model(pixels)
    accuracy = (out.logits.argmax(-1) == labels).float().mean().item()
    return accuracy, out.segment_mask.sum(-1), out.boundary_ratio.mean().item()


@torch.no_grad()
def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dirs", nargs="+", help="saved DTP-ViT digits classifiers (compression < 1)")
    args = parser.parse_args()
    print("| model | prior | mean p | std p | within-image std p | rate at p > 0.5 | accuracy at p > 0.5 | rate-mode "
          "accuracy | adaptive accuracy | adaptive theta | adaptive test rate | adaptive segments (min / q1 / median / "
          "q3 / max) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for model_dir in args.model_dirs:
        _, model, processor = load_classifier(model_dir)
        prior = model.config.compression_rate
        if prior >= 1.0:
            raise ValueError(f"{model_dir!r}: a pooling model (compression < 1) is needed, got {prior}")
        data = digits_dataset(seed=recorded_seed(model_dir))  # the model's own split (it depends on the seed)
        train_pixels, _ = pixels_and_labels(processor, data["train"])
        test_pixels, labels = pixels_and_labels(processor, data["test"])
        probs = model.dtp_vit.boundary_probabilities(test_pixels)
        rate_accuracy = accuracy_and_counts(model, test_pixels, labels)[0]

        half = copy.deepcopy(model)
        half.config.boundary_inference, half.config.boundary_threshold = "threshold", 0.5
        half_accuracy, _, half_rate = accuracy_and_counts(half, test_pixels, labels)

        adaptive = copy.deepcopy(model)
        theta = calibrate_boundary_threshold(adaptive.dtp_vit, train_pixels)
        adaptive_accuracy, counts, adaptive_rate = accuracy_and_counts(adaptive, test_pixels, labels)
        name = os.path.basename(os.path.normpath(model_dir))
        print(f"| {name} | {prior} | {probs.mean():.3f} | {probs.std():.3f} | {probs.std(-1).median():.3f} | "
              f"{half_rate:.3f} | {half_accuracy:.3f} | {rate_accuracy:.3f} | {adaptive_accuracy:.3f} | "
              f"{theta:.3f} | {adaptive_rate:.3f} | {five_numbers(counts)} |")


if __name__ == "__main__":
    main()
