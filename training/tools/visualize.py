"""Figures: DTP boundaries drawn over the patch grid."""

import os
import tempfile

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402


def save_figure_atomically(fig, path: str) -> str:
    """Saves to a temporary file beside `path`, then renames: a failure never leaves a half-written PNG."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".fig-", suffix=".png", dir=folder)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
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


def draw_boundaries(image: Image.Image, boundaries, path: str, title: str | None = None) -> str:
    """The image with its patch grid, each pooled segment in its own colour, and a red bar after each boundary."""
    b = np.asarray(boundaries, dtype=np.int64).reshape(-1)
    grid = int(round(len(b) ** 0.5))
    if grid * grid != len(b):
        raise ValueError(f"boundaries must cover a square patch grid, got {len(b)} patches")
    seg = segment_ids(b).reshape(grid, grid)
    width, height = image.size
    cell_w, cell_h = width / grid, height / grid
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(image, extent=(0, width, height, 0))
    colours = plt.get_cmap("tab20")(seg % 20)
    colours[..., 3] = 0.35
    ax.imshow(colours, extent=(0, width, height, 0), interpolation="nearest")
    for i in range(grid + 1):
        ax.axhline(i * cell_h, color="white", lw=0.5)
        ax.axvline(i * cell_w, color="white", lw=0.5)
    for index in np.flatnonzero(b):
        row, col = divmod(int(index), grid)
        x = (col + 1) * cell_w
        ax.plot([x, x], [row * cell_h, (row + 1) * cell_h], color="red", lw=3)
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_axis_off()
    ax.set_title(title or f"{int(b.sum())} boundaries, {int(seg.max()) + 1} segments / {len(b)} patches", fontsize=9)
    return save_figure_atomically(fig, path)


def unnormalize(pixel_values: torch.Tensor, mean, std) -> Image.Image:
    """The processed (resized, cropped) image back as PIL, so boundaries align with what the model saw."""
    array = pixel_values.detach().float().cpu().numpy().transpose(1, 2, 0) * np.asarray(std) + np.asarray(mean)
    return Image.fromarray((array.clip(0, 1) * 255).round().astype(np.uint8))


@torch.no_grad()
def visualize_boundaries(vision_model, image_processor, images, out_dir: str, prefix: str = "boundaries") -> list[str]:
    """Predicts boundaries (eval mode) for each PIL image and writes one PNG per image; returns the paths."""
    vision_model.eval()
    pixel_values = image_processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
    outputs = vision_model(pixel_values=pixel_values)
    paths = []
    for i, (pixels, bounds) in enumerate(zip(pixel_values, outputs.boundaries)):
        shown = unnormalize(pixels, image_processor.image_mean, image_processor.image_std)
        paths.append(draw_boundaries(shown, bounds.cpu().numpy(), os.path.join(out_dir, f"{prefix}_{i}.png")))
    return paths
