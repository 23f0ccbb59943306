import re

import datasets
import numpy as np
import pytest

from leanvision.training.data.shapes import (
    BACKGROUND,
    COLORS,
    class_names,
    features,
    make_shapes_dataset,
    prompt,
    shapes_splits,
)

ROWS = {"top": 0, "bottom": 2}
COLUMNS = {"left": 0, "right": 2}


def cell_of(position):
    """Grid (row, column) named by a position such as "top left", "bottom" or "center"."""
    words = position.split()
    row = next((ROWS[w] for w in words if w in ROWS), 1)
    col = next((COLUMNS[w] for w in words if w in COLUMNS), 1)
    return row, col


def colored_shapes(text):
    """(color, shape) pairs named in a caption, reading "red circle" and "red colored circle"."""
    words = [w for w in text.split() if w != "colored"]
    return [(w, n) for w, n in zip(words, words[1:]) if w in COLORS]


def image_bytes(ds):
    return [row["bytes"] for row in ds.cast_column("image", datasets.Image(decode=False))["image"]]


def test_same_call_gives_byte_identical_dataset():
    a = make_shapes_dataset(40, seed=3)
    b = make_shapes_dataset(40, seed=3)
    assert image_bytes(a) == image_bytes(b)
    assert a.remove_columns("image").to_list() == b.remove_columns("image").to_list()
    c = make_shapes_dataset(40, seed=4)
    assert image_bytes(c) != image_bytes(a)


def test_splits_are_disjoint_and_sized():
    splits = shapes_splits(train=300, test=100, validation=50, seed=0, max_objects=1)
    assert {name: len(ds) for name, ds in splits.items()} == {"train": 300, "validation": 50, "test": 100}
    train, val, test = (set(image_bytes(splits[name])) for name in ("train", "validation", "test"))
    assert not train & test and not train & val and not val & test
    # Disjoint whatever the seeds: a split owns its configurations.
    other_test = set(image_bytes(make_shapes_dataset(100, seed=7, max_objects=1, split="test")))
    assert not train & other_test
    assert "validation" not in shapes_splits(train=5, test=5)


def test_captions_match_drawn_content():
    size = 64
    ds = make_shapes_dataset(60, seed=1, image_size=size)
    edges = [round(i * size / 3) for i in range(4)]
    object_pattern = re.compile(r"an? (\w+) (\w+) at the ([a-z ]+)")
    for ex in ds:
        pixels = np.asarray(ex["image"])
        objects = list(zip(ex["colors"], ex["shapes"], ex["positions"], ex["boxes"]))
        # The canonical caption lists exactly these objects, in raster order of their cells.
        parsed = [object_pattern.fullmatch(part).groups() for part in ex["caption"].split(" and ")]
        assert parsed == [(c, s, p) for c, s, p, _ in objects]
        cells = [cell_of(p) for p in ex["positions"]]
        assert cells == sorted(set(cells))
        assert ex["captions"][0] == ex["caption"] and 3 <= len(ex["captions"]) <= 5
        for reference in ex["captions"]:
            # Every paraphrase names the same coloured shapes in the same order.
            assert colored_shapes(reference) == [(c, s) for c, s, _, _ in objects], reference
        covered = np.zeros(pixels.shape[:2], dtype=bool)
        for (color, shape, _, (x0, y0, x1, y1)), (row, col) in zip(objects, cells):
            # The box lies inside the named grid cell.
            assert edges[col] <= x0 < x1 <= edges[col + 1] and edges[row] <= y0 < y1 <= edges[row + 1]
            rgb = COLORS[color]
            assert tuple(pixels[(y0 + y1) // 2, (x0 + x1) // 2]) == rgb
            corners = [tuple(pixels[y, x]) for y, x in ((y0, x0), (y0, x1 - 1), (y1 - 1, x0), (y1 - 1, x1 - 1))]
            expected_corners = {
                "square": [rgb] * 4,
                "circle": [BACKGROUND] * 4,
                "triangle": [BACKGROUND, BACKGROUND, rgb, rgb],
            }[shape]
            assert corners == expected_corners, (shape, corners)
            covered[y0:y1, x0:x1] = True
        # Nothing is drawn outside the objects' boxes.
        assert (pixels[~covered] == BACKGROUND).all()


def test_class_names_prompts_and_single_object_mode():
    names = class_names()
    assert len(names) == len(set(names)) == 18
    assert names[0] == "red circle" and "orange triangle" in names
    assert prompt("red circle") == "a photo of a red circle"
    assert prompt("orange square") == "a photo of an orange square"
    with pytest.raises(ValueError, match="label"):
        prompt("pink circle")
    ds = make_shapes_dataset(50, seed=0, max_objects=1)
    assert all(len(c) == 1 for c in ds["colors"])
    for ex in ds:
        assert ex["label"] == f"{ex['colors'][0]} {ex['shapes'][0]}"
        assert names[ex["label_id"]] == ex["label"]
        assert ex["caption"] == f"{prompt(ex['label'])[len('a photo of '):]} at the {ex['positions'][0]}"
    # All classes occur in a modest sample.
    assert set(make_shapes_dataset(300, seed=0, max_objects=1)["label"]) == set(names)


def test_dataset_features_and_image_size():
    ds = make_shapes_dataset(4, seed=0, image_size=32, split="validation")
    assert ds.features == features()
    assert isinstance(ds.features["image"], datasets.Image)
    assert ds.features["label_id"].names == class_names()
    assert ds.split == "validation"
    image = ds[0]["image"]
    assert image.mode == "RGB" and image.size == (32, 32)
    assert max(len(c) for c in make_shapes_dataset(100, seed=0)["colors"]) == 3


@pytest.mark.parametrize(
    "kwargs, name",
    [({"image_size": 16}, "image_size"), ({"split": "dev"}, "split"), ({"max_objects": 0}, "max_objects"),
     ({"seed": -1}, "seed"), ({"num_examples": -2}, "num_examples")],
)
def test_bad_arguments_raise_naming_the_field(kwargs, name):
    args = {"num_examples": 2, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=name):
        make_shapes_dataset(**args)
