"""`leanvision ablate gated_sparse_blip`: what attention sparsity and token gating really change.

Trains the shapes recipe with one seed for attention sparsity 0 / 0.5 / 0.7 x token gating on / off, scores each
model's greedy captions of the held-out shapes with COCO caption metrics, and measures what each switch did to the
model it trained: the saved config's `attention_sparsity` and `use_token_gating`, the fraction of attention
connections kept, from the attention probabilities (over every layer, head and real query token, (number of keys
with probability > 0) / (number of keys it may attend to: causal and padding masks), for the decoder self-attention
and the cross-attention to the latent tokens separately), and the mean token gate value over every layer and real
token (none without gating).

Each row shows one progress bar (on a terminal); Trainer's log lines and the run's info logs are kept off the
console, so the command prints the table at the end.
"""

import contextlib
import json
import logging
import os
import sys
import time
from itertools import product

import datasets
import torch
from transformers.utils import logging as transformers_logging

from ..arguments import parse_args, recipe_name
from ..data.captioning import load_caption_splits
from ..data.collators import CaptionCollator
from ..files import write_json_atomically
from ..inference import caption_images, decoding_kwargs, load_captioner
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
    `captions`: {"self": ..., "cross": ...}, summed over layers, heads and real query tokens; and "gate", the mean
    token gate value over layers and real tokens (None for a model without token gating)."""
    collator = CaptionCollator(processor, "caption", "image", max_length=64)
    model.set_attn_implementation("eager")  # dense attention returns its maps only when eager
    kept = {"self": 0, "cross": 0}
    allowed = {"self": 0, "cross": 0}
    gate_sum, gate_count = 0.0, 0
    for start in range(0, len(images), batch_size):
        rows = [{"image": image, "caption": caption} for image, caption in
                zip(images[start : start + batch_size], captions[start : start + batch_size])]
        batch = collator(rows)
        batch.pop("labels")
        outputs = model(**batch, output_attentions=True, output_gate_values=True)
        text_mask = batch["attention_mask"].bool()
        for gates in outputs.gate_values or ():  # (batch, sequence) per layer
            gate_sum += float(gates[text_mask].sum())
            gate_count += int(text_mask.sum())
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
    fractions = {name: kept[name] / allowed[name] for name in kept}
    return {**fractions, "gate": gate_sum / gate_count if gate_count else None}


@contextlib.contextmanager
def quiet_training():
    """Keeps a run's log lines off the console: Trainer's printed logs and metrics (stdout), leanvision's info logs,
    transformers' warnings and its save/load bars, datasets' progress bars; Trainer's own progress bar (stderr)
    stays."""
    loggers = {logging.getLogger("leanvision"): logging.WARNING, logging.getLogger("transformers"): logging.ERROR}
    levels = {logger: logger.level for logger in loggers}
    bars = (datasets.utils.logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled())
    for logger, level in loggers.items():
        logger.setLevel(level)
    datasets.disable_progress_bars()
    transformers_logging.disable_progress_bar()
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            yield
    finally:
        for logger, level in levels.items():
            logger.setLevel(level)
        if bars[0]:
            datasets.enable_progress_bars()
        if bars[1]:
            transformers_logging.enable_progress_bar()


def saved_switches(run_dir: str) -> dict:
    """The ablation switches as the trained model's saved config.json holds them."""
    with open(os.path.join(run_dir, "config.json")) as f:
        config = json.load(f)
    return {key: config[key] for key in ("attention_sparsity", "use_token_gating")}


def run_ablation(family: str = "gated_sparse_blip", quick: bool = False, out_dir: str = "outputs/ablation",
                 seed: int = 0, sparsities=SPARSITIES, gating=GATING, extra_args=(), metrics: str = METRICS,
                 progress: bool | None = None) -> list[dict]:
    """Trains and scores every grid point (`sparsities` x `gating`); returns one row per point and writes them to
    results.json. `extra_args` are more train.py flags for every run; `progress` (default: stderr is a terminal)
    shows each run's progress bar."""
    if family != "gated_sparse_blip":
        raise ValueError(f"the ablation covers gated_sparse_blip only, not {family!r}")
    progress = sys.stderr.isatty() if progress is None else progress
    extra = [*(QUICK_ARGS if quick else ()), *extra_args]
    grid = list(product(sparsities, gating))
    rows = []
    for number, (sparsity, gate) in enumerate(grid, 1):
        run_dir = os.path.join(out_dir, f"sparsity_{sparsity:g}_gating_{'on' if gate else 'off'}")
        argv = [RECIPE, "--output_dir", run_dir, "--seed", str(seed),
                "--caption_metrics", metrics, "--disable_tqdm", str(not progress).lower(), *extra]
        model_args, data_args, training_args = parse_args(argv)
        model_args.config_overrides.update(attention_sparsity=sparsity, use_token_gating=gate)
        if progress:
            print(f"[{number}/{len(grid)}] sparsity {sparsity:g}, gating {'on' if gate else 'off'}", file=sys.stderr)
        with quiet_training():
            start = time.time()
            metrics_of_run = train(model_args, data_args, training_args, recipe=recipe_name(argv))
            seconds = time.time() - start
            _, model, processor = load_captioner(run_dir)
            _, test = load_caption_splits(data_args, training_args.seed)  # the eval split of the training run
            captions = caption_images(model, processor, list(test["image"]), decoding_kwargs())
            measured = measure_kept_fraction(model, processor, list(test["image"]), list(test["caption"]))
        rows.append({
            "sparsity": sparsity,
            "gating": gate,
            "saved_config": saved_switches(run_dir),
            "bleu_4": metrics_of_run["eval_bleu_4"],
            "meteor": metrics_of_run.get("eval_meteor"),
            "rouge_l": metrics_of_run["eval_rouge_l"],
            "cider": metrics_of_run["eval_cider"],
            "kept_self": measured["self"],
            "kept_cross": measured["cross"],
            "mean_gate": measured["gate"],
            # Greedy captions of the eval images: 1 means the model writes one caption for every image, and rows
            # that write the same one score the same whatever their switches.
            "distinct_captions": len(set(captions)),
            "run_seconds": seconds,  # set-up (VAE latents), training and evaluation
        })
    write_json_atomically(os.path.join(out_dir, "results.json"), rows)
    return rows


def _cell(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_table(rows: list[dict]) -> str:
    """A markdown table of the ablation rows ("-": not measured, or no token gate)."""
    lines = [
        "| sparsity | gating | BLEU-4 | METEOR | ROUGE-L | CIDEr | kept (self-attn) | kept (cross-attn) | mean gate "
        "| distinct captions | run s |",
        "|---:|:---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        cells = [_cell(row.get(key)) for key in
                 ("bleu_4", "meteor", "rouge_l", "cider", "kept_self", "kept_cross", "mean_gate")]
        lines.append(
            f"| {row['sparsity']:g} | {'on' if row['gating'] else 'off'} | {' | '.join(cells)} "
            f"| {row.get('distinct_captions', '-')} | {row['run_seconds']:.0f} |"
        )
    return "\n".join(lines)
