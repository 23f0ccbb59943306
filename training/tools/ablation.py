"""`leanvision ablate gated_sparse_blip`: what attention sparsity and token gating really change.

Trains the shapes recipe with one seed for attention sparsity 0 / 0.5 / 0.7 x token gating on / off, scores each
model's greedy captions of the held-out shapes with COCO caption metrics, and measures the fraction of attention
connections each model keeps from its attention probabilities: over every layer, head and real query token,
(number of keys with probability > 0) / (number of keys it may attend to: causal and padding masks), for the
decoder self-attention and the cross-attention to the latent tokens separately.
"""

import os
import time
from itertools import product

import torch

from ..arguments import parse_args, recipe_name
from ..data.captioning import load_caption_splits
from ..data.collators import CaptionCollator
from ..files import write_json_atomically
from ..inference import load_captioner
from ..train import train

RECIPES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes")
RECIPE = os.path.join(RECIPES, "gated_sparse_blip_shapes.yaml")
SPARSITIES = (0.0, 0.5, 0.7)
GATING = (True, False)
METRICS = "bleu,meteor,rouge_l,cider"
# CI-size runs: a quarter of the images and epochs.
QUICK_ARGS = ("--max_train_samples", "500", "--max_eval_samples", "50", "--num_train_epochs", "3")


@torch.no_grad()
def measure_kept_fraction(model, processor, images, captions, batch_size: int = 32) -> dict[str, float]:
    """Fraction of allowed (query, key) connections with non-zero attention probability, teacher-forced on
    `captions`: {"self": ..., "cross": ...}, summed over layers, heads and real query tokens."""
    collator = CaptionCollator(processor, "caption", "image", max_length=64)
    model.set_attn_implementation("eager")  # dense attention returns its maps only when eager
    kept = {"self": 0, "cross": 0}
    allowed = {"self": 0, "cross": 0}
    for start in range(0, len(images), batch_size):
        rows = [{"image": image, "caption": caption} for image, caption in
                zip(images[start : start + batch_size], captions[start : start + batch_size])]
        batch = collator(rows)
        batch.pop("labels")
        outputs = model(**batch, output_attentions=True)
        text_mask = batch["attention_mask"].bool()
        length = text_mask.shape[1]
        self_allowed = torch.ones(length, length, dtype=torch.bool).tril()[None] & text_mask[:, None, :]
        self_allowed &= text_mask[:, :, None]  # real queries only
        if outputs.image_attention_mask is not None:
            cross_allowed = text_mask[:, :, None] & outputs.image_attention_mask[:, None, :]
        else:
            cross_allowed = text_mask[:, :, None].expand(-1, -1, outputs.cross_attentions[0].shape[-1])
        for name, maps, mask in (
            ("self", outputs.attentions, self_allowed),
            ("cross", outputs.cross_attentions, cross_allowed),
        ):
            for probs in maps:  # (batch, heads, queries, keys)
                heads_mask = mask[:, None].expand_as(probs)
                kept[name] += int(((probs > 0) & heads_mask).sum())
                allowed[name] += int(heads_mask.sum())
    return {name: kept[name] / allowed[name] for name in kept}


def run_ablation(family: str = "gated_sparse_blip", quick: bool = False, out_dir: str = "outputs/ablation",
                 seed: int = 0) -> list[dict]:
    """Trains and scores every grid point; returns one row per (sparsity, gating) and writes them to results.json."""
    if family != "gated_sparse_blip":
        raise ValueError(f"the ablation covers gated_sparse_blip only, not {family!r}")
    extra = list(QUICK_ARGS) if quick else []
    rows = []
    for sparsity, gating in product(SPARSITIES, GATING):
        run_dir = os.path.join(out_dir, f"sparsity_{sparsity:g}_gating_{'on' if gating else 'off'}")
        argv = [RECIPE, "--output_dir", run_dir, "--seed", str(seed), "--caption_metrics", METRICS,
                "--disable_tqdm", "true", *extra]
        model_args, data_args, training_args = parse_args(argv)
        model_args.config_overrides.update(attention_sparsity=sparsity, use_token_gating=gating)
        start = time.time()
        metrics = train(model_args, data_args, training_args, recipe=recipe_name(argv))
        seconds = time.time() - start
        _, model, processor = load_captioner(run_dir)
        _, test = load_caption_splits(data_args, training_args.seed)  # the eval split of the training run
        kept = measure_kept_fraction(model, processor, list(test["image"]), list(test["caption"]))
        rows.append({
            "sparsity": sparsity,
            "gating": gating,
            "bleu_4": metrics["eval_bleu_4"],
            "meteor": metrics["eval_meteor"],
            "rouge_l": metrics["eval_rouge_l"],
            "cider": metrics["eval_cider"],
            "kept_self": kept["self"],
            "kept_cross": kept["cross"],
            "run_seconds": seconds,  # set-up (VAE latents), training and evaluation
        })
    write_json_atomically(os.path.join(out_dir, "results.json"), rows)
    return rows


def format_table(rows: list[dict]) -> str:
    """A markdown table of the ablation rows."""
    lines = [
        "| sparsity | gating | BLEU-4 | METEOR | ROUGE-L | CIDEr | kept (self-attn) | kept (cross-attn) | run s |",
        "|---:|:---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['sparsity']:g} | {'on' if row['gating'] else 'off'} | {row['bleu_4']:.3f} | {row['meteor']:.3f} "
            f"| {row['rouge_l']:.3f} | {row['cider']:.3f} | {row['kept_self']:.3f} | {row['kept_cross']:.3f} "
            f"| {row['run_seconds']:.0f} |"
        )
    return "\n".join(lines)
