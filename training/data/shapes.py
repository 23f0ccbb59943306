"""Deterministic synthetic captioning data: coloured shapes on a plain background.

Each image shows one to ``max_objects`` shapes (circle, square, triangle) in six colours, each in its own cell of a
3x3 grid, so objects never overlap. Captions follow a fixed grammar and list the objects in raster order of their
cells (left to right, top to bottom), which a tiny captioner can learn:

    "a red circle at the top left and a blue square at the bottom"

Every example also carries paraphrased reference captions with the same content (for multi-reference COCO metrics),
the structured content (``colors``, ``shapes``, ``positions``, ``boxes``) and the class of its first object
(``label`` such as "red circle", ``label_id`` its index in :func:`class_names`) for zero-shot classification.

Splits are disjoint by construction: every drawn configuration is hashed to one split ("train", "validation" or
"test"), and a split keeps only the configurations hashed to it. The same call gives byte-identical images.
"""

import hashlib

import datasets
import numpy as np
from PIL import Image, ImageDraw

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
    "purple": (140, 60, 170),
    "orange": (240, 140, 30),
}
SHAPES = ("circle", "square", "triangle")
# Grid cells in raster order: cell index = 3 * row + column.
POSITIONS = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)
BACKGROUND = (235, 235, 235)
SPLITS = ("train", "validation", "test")

# Paraphrases of "at the <position>" used by the reference captions.
_POSITION_IN = {
    "top left": "in the top left", "top": "along the top", "top right": "in the top right",
    "left": "on the left", "center": "in the center", "right": "on the right",
    "bottom left": "in the bottom left", "bottom": "along the bottom", "bottom right": "in the bottom right",
}
_POSITION_CORNER = {
    "top left": "in the upper left corner", "top": "at the top middle", "top right": "in the upper right corner",
    "left": "at the middle left", "center": "in the middle", "right": "at the middle right",
    "bottom left": "in the lower left corner", "bottom": "at the bottom middle",
    "bottom right": "in the lower right corner",
}
_NUMBER_WORDS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Object side length as a fraction of the smallest cell side (at least half, so the object covers the cell centre).
_SIZE_RANGE = (0.5, 0.8)
_MIN_IMAGE_SIZE = 24


def _article(word):
    return "an" if word[0] in "aeiou" else "a"


def class_names():
    """The 18 zero-shot classes "<color> <shape>", colours outer, shapes inner."""
    return [f"{color} {shape}" for color in COLORS for shape in SHAPES]


def prompt(label):
    """Zero-shot text prompt for a class name: "a photo of a red circle"."""
    if label not in class_names():
        raise ValueError(f"label {label!r} is not one of class_names()")
    return f"a photo of {_article(label)} {label}"


def _join(phrases):
    return " and ".join(phrases)


def canonical_caption(colors, shapes, positions):
    """The training caption: "a red circle at the top left and a blue square at the bottom"."""
    return _join(f"{_article(c)} {c} {s} at the {p}" for c, s, p in zip(colors, shapes, positions))


def reference_captions(colors, shapes, positions):
    """Five reference captions with the same content; the first one is the canonical caption."""
    objects = list(zip(colors, shapes, positions))
    count = len(objects)
    count_phrase = f"{_NUMBER_WORDS[count - 1]} shape{'s' if count > 1 else ''}"
    canonical = canonical_caption(colors, shapes, positions)
    return [
        canonical,
        "there is " + _join(f"{_article(c)} {c} {s} {_POSITION_IN[p]}" for c, s, p in objects),
        _join(f"{_article(c)} {c} {s} {_POSITION_CORNER[p]}" for c, s, p in objects),
        "a picture of " + _join(f"{_article(c)} {c} colored {s} at the {p}" for c, s, p in objects),
        f"{count_phrase} on a plain background: {canonical}",
    ]


def _cell_bounds(cell, image_size):
    """Pixel bounds (x0, y0, x1, y1), x1/y1 exclusive, of grid cell ``cell`` (raster index)."""
    row, col = divmod(cell, 3)
    edges = [round(i * image_size / 3) for i in range(4)]
    return edges[col], edges[row], edges[col + 1], edges[row + 1]


def _draw_configuration(rng, image_size, max_objects):
    """Draw the content of one image: a tuple of (color, shape, cell, x0, y0, side) sorted by cell."""
    num_objects = int(rng.integers(1, max_objects + 1))
    cells = sorted(int(c) for c in rng.choice(9, size=num_objects, replace=False))
    min_cell = image_size // 3
    side_lo, side_hi = int(np.ceil(_SIZE_RANGE[0] * min_cell)), int(_SIZE_RANGE[1] * min_cell)
    objects = []
    for cell in cells:
        color = list(COLORS)[int(rng.integers(len(COLORS)))]
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        side = int(rng.integers(side_lo, side_hi + 1))
        cx0, cy0, cx1, cy1 = _cell_bounds(cell, image_size)
        x0 = cx0 + int(rng.integers(0, cx1 - cx0 - side + 1))
        y0 = cy0 + int(rng.integers(0, cy1 - cy0 - side + 1))
        objects.append((color, shape, cell, x0, y0, side))
    return tuple(objects)


def _split_of(configuration, image_size):
    """The split a configuration belongs to, from a stable hash of its content."""
    digest = hashlib.blake2b(repr((image_size, configuration)).encode(), digest_size=8).digest()
    return SPLITS[int.from_bytes(digest, "little") % len(SPLITS)]


def _render(configuration, image_size):
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for color, shape, _, x0, y0, side in configuration:
        fill = COLORS[color]
        x1, y1 = x0 + side - 1, y0 + side - 1  # PIL boxes are inclusive
        if shape == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif shape == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        else:
            draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=fill)
    return image


def features():
    """The ``datasets.Features`` of a shapes dataset."""
    strings = datasets.List(datasets.Value("string"))
    return datasets.Features(
        {
            "image": datasets.Image(),
            "caption": datasets.Value("string"),
            "captions": strings,
            "colors": strings,
            "shapes": strings,
            "positions": strings,
            # One [x0, y0, x1, y1] pixel box per object; x1 and y1 are exclusive.
            "boxes": datasets.List(datasets.List(datasets.Value("int32"), length=4)),
            "label": datasets.Value("string"),
            "label_id": datasets.ClassLabel(names=class_names()),
        }
    )


def make_shapes_dataset(num_examples, seed, image_size=64, max_objects=3, split="train"):
    """Build ``num_examples`` shapes examples of ``split`` deterministically from ``seed``.

    ``max_objects=1`` gives single-object images for zero-shot classification. Different splits never share an
    image, whatever their sizes and seeds.
    """
    if not isinstance(num_examples, int) or num_examples < 0:
        raise ValueError(f"num_examples must be a non-negative int, got {num_examples!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if not isinstance(image_size, int) or image_size < _MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be an int >= {_MIN_IMAGE_SIZE}, got {image_size!r}")
    if not isinstance(max_objects, int) or not 1 <= max_objects <= len(POSITIONS):
        raise ValueError(f"max_objects must be an int in [1, {len(POSITIONS)}], got {max_objects!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")

    rng = np.random.default_rng([seed, SPLITS.index(split)])
    rows = {name: [] for name in features()}
    while len(rows["image"]) < num_examples:
        configuration = _draw_configuration(rng, image_size, max_objects)
        if _split_of(configuration, image_size) != split:
            continue
        colors = [obj[0] for obj in configuration]
        shapes = [obj[1] for obj in configuration]
        positions = [POSITIONS[obj[2]] for obj in configuration]
        rows["image"].append(_render(configuration, image_size))
        rows["caption"].append(canonical_caption(colors, shapes, positions))
        rows["captions"].append(reference_captions(colors, shapes, positions))
        rows["colors"].append(colors)
        rows["shapes"].append(shapes)
        rows["positions"].append(positions)
        rows["boxes"].append([[x0, y0, x0 + side, y0 + side] for _, _, _, x0, y0, side in configuration])
        rows["label"].append(f"{colors[0]} {shapes[0]}")
        rows["label_id"].append(class_names().index(rows["label"][-1]))
    return datasets.Dataset.from_dict(rows, features=features(), split=split)


def shapes_splits(train=1000, test=200, validation=0, seed=0, image_size=64, max_objects=3):
    """A ``DatasetDict`` with disjoint "train", "test" and (if ``validation`` > 0) "validation" splits."""
    sizes = {"train": train, "validation": validation, "test": test}
    return datasets.DatasetDict(
        {
            name: make_shapes_dataset(size, seed, image_size=image_size, max_objects=max_objects, split=name)
            for name, size in sizes.items()
            if name != "validation" or size > 0
        }
    )
