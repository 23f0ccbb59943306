"""Figures: DTP boundaries drawn over the patch grid."""

import os
import tempfile

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from ..files import ordinary_file_mode  # noqa: E402


def save_figure_atomically(fig, path: str) -> str:
    """Saves to a temporary file beside `path`, then renames: a failure never leaves a half-written PNG."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".fig-", suffix=".png", dir=folder)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
        os.chmod(tmp, ordinary_file_mode())  # mkstemp's 0600 would make the figure private
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def segment_ids(boundaries) -> np.ndarray:
    """seg_t = cumsum(b)_t - b_t: a patch with b_t = 1 closes its segment (raster order)."""
    b = np.asarray(boundaries, dtype=np.int64)
    return np.cumsum(b) - b


def segment_edges(seg: np.ndarray) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Where neighbouring patches of a `(grid, grid)` segment-id map belong to different segments: `(row, col)` of
    each patch whose right edge, and of each patch whose bottom edge, is a segment border."""
    right = [tuple(int(v) for v in rc) for rc in np.argwhere(seg[:, :-1] != seg[:, 1:])]
    below = [tuple(int(v) for v in rc) for rc in np.argwhere(seg[:-1, :] != seg[1:, :])]
    return right, below


def is_grayscale(image: Image.Image) -> bool:
    """True for a single-channel image, or an RGB image whose three channels are equal (a grey picture)."""
    if image.mode in ("L", "I", "I;16", "F", "1"):
        return True
    pixels = np.asarray(image.convert("RGB"))
    return bool((pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all())


def draw_boundaries(image: Image.Image, boundaries, path: str, title: str | None = None) -> str:
    """The image (grey pictures in grayscale) with a faint patch grid and each border between pooled segments drawn
    as a line: the picture itself stays untinted and readable. The title: `title` (e.g. file name and prediction)
    over the segment count."""
    b = np.asarray(boundaries, dtype=np.int64).reshape(-1)
    grid = int(round(len(b) ** 0.5))
    if grid * grid != len(b):
        raise ValueError(f"boundaries must cover a square patch grid, got {len(b)} patches")
    seg = segment_ids(b).reshape(grid, grid)
    width, height = image.size
    cell_w, cell_h = width / grid, height / grid
    fig, ax = plt.subplots(figsize=(4, 4))
    if is_grayscale(image):
        ax.imshow(np.asarray(image.convert("L")), cmap="gray", vmin=0, vmax=255, extent=(0, width, height, 0))
    else:
        ax.imshow(image, extent=(0, width, height, 0))
    for i in range(grid + 1):
        ax.axhline(i * cell_h, color="0.6", lw=0.4, alpha=0.6)
        ax.axvline(i * cell_w, color="0.6", lw=0.4, alpha=0.6)
    right, below = segment_edges(seg)
    for row, col in right:
        x = (col + 1) * cell_w
        ax.plot([x, x], [row * cell_h, (row + 1) * cell_h], color="tab:orange", lw=2.5, solid_capstyle="butt")
    for row, col in below:
        y = (row + 1) * cell_h
        ax.plot([col * cell_w, (col + 1) * cell_w], [y, y], color="tab:orange", lw=2.5, solid_capstyle="butt")
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_axis_off()
    counts = f"{int(seg.max()) + 1} segments / {len(b)} patches (orange: segment borders)"
    ax.set_title(f"{title}\n{counts}" if title else counts, fontsize=9)
    return save_figure_atomically(fig, path)


def unnormalize(pixel_values: torch.Tensor, mean, std) -> Image.Image:
    """The processed (resized, cropped) image back as PIL, so boundaries align with what the model saw."""
    array = pixel_values.detach().float().cpu().numpy().transpose(1, 2, 0) * np.asarray(std) + np.asarray(mean)
    return Image.fromarray((array.clip(0, 1) * 255).round().astype(np.uint8))


@torch.no_grad()
def visualize_boundaries(vision_model, image_processor, images, out_dir: str, prefix: str = "boundaries",
                         titles: list[str] | None = None) -> list[str]:
    """Predicts boundaries (eval mode) for each PIL image and writes `{prefix}_{i}.png` per image, titled with
    `titles[i]` when given (file name, prediction); returns the paths."""
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"got {len(titles)} titles for {len(images)} images")
    vision_model.eval()
    pixel_values = image_processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
    outputs = vision_model(pixel_values=pixel_values)
    paths = []
    for i, (pixels, bounds) in enumerate(zip(pixel_values, outputs.boundaries)):
        shown = unnormalize(pixels, image_processor.image_mean, image_processor.image_std)
        if is_grayscale(images[i]):  # the processor's per-channel normalisation can tint a grey picture
            shown = shown.convert("L")
        paths.append(draw_boundaries(shown, bounds.cpu().numpy(), os.path.join(out_dir, f"{prefix}_{i}.png"),
                                     titles[i] if titles else None))
    return paths
