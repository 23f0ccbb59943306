"""What a QVision captioner looks at: attention maps and the token-similarity report of the original QVision project.

For each image (all maps averaged over attention heads, so every row is a probability distribution):

- query-to-patch: the Q-Former cross-attention of layer `qformer_layer` (default: the last), `A_qp` of shape
  `(T, P)` for the `T` Q-Former tokens (`[global; queries]`) over the `P` CLIP patches (7x7 for ViT-B/32 at 224);
- word-to-query: the attention of the language model's gated cross-attention blocks (averaged over the blocks)
  from the step that produced each caption token to the `T` Q-Former tokens, `A_wq` of shape `(K, T)`: row `k` is
  read at the position of token `k - 1`, whose output predicts token `k` (teacher forcing the caption equals
  cached generation);
- word-to-patch: `A_wp = A_wq A_qp`, the patches a word reaches through the queries (one-step attention rollout).

Token similarity (needs the global token): with `g_i` the global token and `q_ij` the queries of image `i` after the
Q-Former (its final layer norm), the global-vs-query matrix `S_ij = cos(g_i, q_ij)` and the global-vs-global
matrix `G_ik = cos(g_i, g_k)`. The discriminative power of the global token over the image set is
`1 - mean_{i<k} G_ik` (0 when it is the same vector for every image, larger when it separates the images); the
per-image value is `1 - mean_{k != i} G_ik`.

Every file is written atomically (temporary file in the same folder, then rename).
"""

import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers.utils import logging as transformers_logging  # noqa: E402

from ..files import image_files, open_image, write_json_atomically  # noqa: E402
from .visualize import save_figure_atomically, unnormalize  # noqa: E402


def _load_images(images) -> list[Image.Image]:
    return [open_image(str(im)) if isinstance(im, (str, os.PathLike)) else im.convert("RGB") for im in images]


def token_labels(num_tokens: int, has_global: bool) -> list[str]:
    """`g`, `q1`, `q2`, ... in Q-Former token order."""
    return (["g"] if has_global else []) + [f"q{j + 1}" for j in range(num_tokens - int(has_global))]


SINGLE_IMAGE_REASON = "needs at least two images: it compares the global tokens of different images"


def token_similarity(qformer_tokens: torch.Tensor) -> dict:
    """
    The report of the module docstring from the Q-Former output `(N, 1 + Q, D)` (global token first).
    For a single image there is no pair to compare: `discriminative_power` and its per-image values are `None` and
    `skipped` names them with the reason.
    """
    tokens = torch.nn.functional.normalize(qformer_tokens.double(), dim=-1)
    global_tokens, queries = tokens[:, 0], tokens[:, 1:]
    global_query = torch.einsum("nd,nqd->nq", global_tokens, queries)
    global_global = global_tokens @ global_tokens.T
    num_images = tokens.shape[0]
    report = {
        "num_images": num_images,
        "num_query_tokens": queries.shape[1],
        "global_query_cosine": global_query.tolist(),
        "mean_global_query_cosine": float(global_query.mean()),
        "global_global_cosine": global_global.tolist(),
        "discriminative_power": None,
        "per_image_discriminative_power": None,
        "definition": "discriminative_power = 1 - mean over image pairs i<k of cos(g_i, g_k); per image: "
        "1 - mean over k != i of cos(g_i, g_k); g = global token after the Q-Former",
        "skipped": {},
    }
    if num_images == 1:
        reason = SINGLE_IMAGE_REASON
        report["skipped"] = {"discriminative_power": reason, "per_image_discriminative_power": reason,
                             "global_global_cosine_figure": reason}
    if num_images > 1:
        off_diagonal = ~torch.eye(num_images, dtype=torch.bool)
        pairs = global_global[torch.triu(torch.ones_like(off_diagonal), diagonal=1)]
        report["discriminative_power"] = float(1 - pairs.mean())
        report["per_image_discriminative_power"] = (
            1 - (global_global * off_diagonal).sum(1) / (num_images - 1)
        ).tolist()
    return report


def _overlay(ax, image: Image.Image, weights: np.ndarray, title: str):
    grid = math.isqrt(weights.size)
    width, height = image.size
    ax.imshow(image, extent=(0, width, height, 0))
    ax.imshow(weights.reshape(grid, grid), extent=(0, width, height, 0), cmap="jet", alpha=0.5,
              interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()


def _panel_grid(num_panels: int, columns: int = 5):
    rows = math.ceil(num_panels / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.3 * rows), squeeze=False)
    for ax in axes.flat[num_panels:]:
        ax.set_axis_off()
    return fig, axes.flat


def plot_query_to_patch(image, query_to_patch: np.ndarray, labels: list[str], path: str, max_tokens: int = 33,
                        title: str | None = None) -> str:
    """The image, the mean map over all tokens, then one overlay per token: every token, or the first `max_tokens`
    with the subset named in the figure title."""
    shown = list(range(min(max_tokens, len(labels))))
    fig, axes = _panel_grid(2 + len(shown))
    axes[0].imshow(image)
    axes[0].set_title("image", fontsize=8)
    axes[0].set_axis_off()
    _overlay(axes[1], image, query_to_patch.mean(0), f"mean over all {len(labels)} tokens")
    for ax, j in zip(axes[2:], shown):
        _overlay(ax, image, query_to_patch[j], f"{labels[j]} -> patches")
    subset = (f"every Q-Former token ({len(labels)})" if len(shown) == len(labels)
              else f"tokens {labels[0]}..{labels[shown[-1]]} shown, {len(shown)} of {len(labels)}")
    fig.suptitle(f"{title + ': ' if title else ''}query -> patch attention, {subset}", fontsize=9)
    return save_figure_atomically(fig, path)


def plot_word_to_query(words: list[str], word_to_query: np.ndarray, labels: list[str], path: str,
                       title: str | None = None) -> str:
    """Heat map: one row per caption token, one column per Q-Former token."""
    fig, ax = plt.subplots(figsize=(max(4.0, 0.18 * len(labels) + 2), max(2.0, 0.3 * len(words) + 1)))
    im = ax.imshow(word_to_query, aspect="auto", cmap="viridis", vmin=0)
    step = max(1, len(labels) // 16)
    ax.set_xticks(range(0, len(labels), step), [labels[j] for j in range(0, len(labels), step)], fontsize=7)
    ax.set_yticks(range(len(words)), [repr(w) for w in words], fontsize=7)
    ax.set_xlabel("Q-Former token")
    ax.set_title(f"{title + chr(10) if title else ''}word -> query attention (gated cross-attention, mean over heads "
                 "and blocks)", fontsize=8)
    fig.colorbar(im, ax=ax)
    return save_figure_atomically(fig, path)


def plot_word_to_patch(image, words: list[str], word_to_patch: np.ndarray, path: str, max_words: int = 20,
                       title: str | None = None) -> str:
    """One overlay per caption token of `A_wq A_qp` (the first `max_words`, named in the title when fewer)."""
    shown = list(range(min(max_words, len(words))))
    fig, axes = _panel_grid(len(shown))
    for ax, k in zip(axes, shown):
        _overlay(ax, image, word_to_patch[k], repr(words[k]))
    subset = "every word" if len(shown) == len(words) else f"the first {len(shown)} of {len(words)} words"
    fig.suptitle(f"{title + ': ' if title else ''}word -> patch attention, {subset}", fontsize=9)
    return save_figure_atomically(fig, path)


def plot_token_similarity(report: dict, path: str) -> str:
    """Global-vs-query cosine matrix (images x queries) and, for two images or more, the global-vs-global matrix
    (images x images); for one image that panel is left out and the figure says why."""
    num_images, num_queries = report["num_images"], report["num_query_tokens"]
    pairs = num_images > 1
    fig, axes = plt.subplots(1, 2 if pairs else 1, figsize=(11 if pairs else 8, 3.5), squeeze=False,
                             gridspec_kw={"width_ratios": [3, 1] if pairs else [1]})
    left = axes[0, 0]
    im = left.imshow(np.asarray(report["global_query_cosine"]), aspect="auto", cmap="coolwarm", vmin=-1, vmax=1)
    step = max(1, num_queries // 16)
    left.set_xticks(range(0, num_queries, step), [f"q{j + 1}" for j in range(0, num_queries, step)], fontsize=7)
    left.set_yticks(range(num_images), range(num_images), fontsize=7)
    left.set_xlabel("query token")
    left.set_ylabel("image")
    left.set_title(f"cos(global, query); mean {report['mean_global_query_cosine']:.3f}", fontsize=9)
    fig.colorbar(im, ax=left)
    if not pairs:
        fig.suptitle(f"cos(global_i, global_k) and discriminative power skipped: {SINGLE_IMAGE_REASON}", fontsize=8)
        return save_figure_atomically(fig, path)
    right = axes[0, 1]
    im = right.imshow(np.asarray(report["global_global_cosine"]), cmap="coolwarm", vmin=-1, vmax=1)
    right.set_title(f"cos(global_i, global_k)\ndiscriminative power {report['discriminative_power']:.3f}", fontsize=9)
    right.set_xticks(range(num_images), range(num_images), fontsize=7)
    right.set_yticks(range(num_images), range(num_images), fontsize=7)
    right.set_xlabel("image")
    fig.colorbar(im, ax=right)
    return save_figure_atomically(fig, path)


def _caption_tokens(sequence: torch.Tensor, eos_token_id) -> list[int]:
    """Generated tokens after `bos`, up to (without) the first `eos`."""
    eos = set(eos_token_id if isinstance(eos_token_id, (list, tuple)) else [eos_token_id])
    tokens = []
    for token in sequence[1:].tolist():
        if token in eos:
            break
        tokens.append(token)
    return tokens


@torch.no_grad()
def analyze(
    model,
    processor,
    images,
    out_dir: str,
    captions: list[str] | None = None,
    qformer_layer: int = -1,
    max_new_tokens: int = 20,
    generation_kwargs: dict | None = None,
) -> dict:
    """
    Writes, for each image `i`, `query_to_patch_{i}.png`, `word_to_query_{i}.png` and `word_to_patch_{i}.png`
    (the last two only when the caption has tokens), `attention.json` with all maps, and (with a global token)
    `token_similarity.png` and `token_similarity.json`.

    Args:
        model: a `QVisionForConditionalGeneration`.
        processor: its `QVisionProcessor`.
        images: PIL images or image file paths.
        out_dir: folder for the files (created).
        captions: captions to teacher-force, one per image; by default each image's greedy caption is generated.
        qformer_layer: Q-Former block whose cross-attention gives the query-to-patch maps.
        max_new_tokens, generation_kwargs: passed to `model.generate` (greedy unless `generation_kwargs` says
            otherwise).

    Returns:
        `{"captions", "words", "query_to_patch" (N, T, P), "word_to_query" [(K_i, T)], "word_to_patch" [(K_i, P)],
        "token_similarity" (the JSON report, or None without a global token), "paths" {name: path or list}}`.
    """
    names = [os.path.basename(str(im)) if isinstance(im, (str, os.PathLike)) else f"image {i}"
             for i, im in enumerate(images)]
    images = _load_images(images)
    if captions is not None and len(captions) != len(images):
        raise ValueError(f"got {len(captions)} captions for {len(images)} images")
    model.eval()
    # Attention maps come from eager attention, as in transformers. The GPT-Neo decoder is eager-only and warns that
    # it cannot switch; it needs no switch (its own attention is not mapped), so that warning is muted here.
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        model.set_attn_implementation("eager")
    finally:
        transformers_logging.set_verbosity(verbosity)
    tokenizer = processor.tokenizer
    pixel_values = processor(images=images)["pixel_values"].to(model.device)
    image_outputs = model.get_image_features(pixel_values, output_attentions=True)
    query_to_patch = image_outputs.qformer_cross_attentions[qformer_layer].float().mean(1).cpu().numpy()
    has_global = model.config.use_global_token
    labels = token_labels(query_to_patch.shape[1], has_global)
    mean, std = processor.image_processor.image_mean, processor.image_processor.image_std
    shown_images = [unnormalize(p, mean, std) for p in pixel_values]

    os.makedirs(out_dir, exist_ok=True)
    paths = {"query_to_patch": [], "word_to_query": [], "word_to_patch": []}
    result = {"captions": [], "words": [], "query_to_patch": query_to_patch, "word_to_query": [], "word_to_patch": []}
    per_image = []
    for i, image in enumerate(shown_images):
        if captions is None:
            generated = model.generate(
                image_embeds=image_outputs.image_embeds[i : i + 1],
                **{"do_sample": False, "max_new_tokens": max_new_tokens, **(generation_kwargs or {})},
            )
            tokens = _caption_tokens(generated[0], model.generation_config.eos_token_id)
        else:
            tokens = tokenizer(captions[i], add_special_tokens=False)["input_ids"]
        input_ids = torch.tensor([[model.config.bos_token_id, *tokens]], device=model.device)
        outputs = model(
            image_embeds=image_outputs.image_embeds[i : i + 1], input_ids=input_ids, output_attentions=True,
            use_cache=False,
        )
        # Row k: attention at position k, which predicts token k + 1 of `input_ids` (caption token k).
        word_to_query = torch.stack(outputs.cross_attentions).float().mean((0, 2))[0, : len(tokens)].cpu().numpy()
        word_to_patch = word_to_query @ query_to_patch[i]
        words = [tokenizer.decode([token]) for token in tokens]

        result["captions"].append(tokenizer.decode(tokens))
        result["words"].append(words)
        result["word_to_query"].append(word_to_query)
        result["word_to_patch"].append(word_to_patch)
        title = f"{names[i]}, caption {result['captions'][-1]!r}"
        paths["query_to_patch"].append(plot_query_to_patch(
            image, query_to_patch[i], labels, os.path.join(out_dir, f"query_to_patch_{i}.png"), title=title
        ))
        if tokens:
            paths["word_to_query"].append(plot_word_to_query(
                words, word_to_query, labels, os.path.join(out_dir, f"word_to_query_{i}.png"), title=title
            ))
            paths["word_to_patch"].append(plot_word_to_patch(
                image, words, word_to_patch, os.path.join(out_dir, f"word_to_patch_{i}.png"), title=title
            ))
        per_image.append(
            {
                "caption": result["captions"][-1],
                "words": words,
                "query_to_patch": query_to_patch[i].tolist(),
                "word_to_query": word_to_query.tolist(),
                "word_to_patch": word_to_patch.tolist(),
            }
        )

    attention = {
        "qformer_layer": qformer_layer,
        "patch_grid": math.isqrt(query_to_patch.shape[2]),
        "tokens": labels,
        "images": per_image,
    }
    paths["attention_json"] = write_json_atomically(os.path.join(out_dir, "attention.json"), attention)

    result["token_similarity"] = None
    if has_global:
        report = token_similarity(image_outputs.qformer_last_hidden_state.cpu())
        result["token_similarity"] = report
        paths["token_similarity_json"] = write_json_atomically(os.path.join(out_dir, "token_similarity.json"), report)
        paths["token_similarity_png"] = plot_token_similarity(report, os.path.join(out_dir, "token_similarity.png"))
    result["paths"] = paths
    return result


def analyze_saved_model(model_dir: str, paths: list[str], out_dir: str, **kwargs) -> dict:
    """`analyze` for `leanvision analyze`: loads the QVision model and processor saved in `model_dir`."""
    from ..families import load_saved

    family, model, processor = load_saved(model_dir)
    if family.name != "qvision_multimodel":
        raise ValueError(f"{model_dir!r} holds a {family.name} model; `analyze` reads QVision's Q-Former attention")
    return analyze(model, processor, image_files(paths), out_dir, **kwargs)


__all__ = ["analyze", "analyze_saved_model", "token_similarity"]
