import re
from collections import Counter

import datasets
import numpy as np
import pytest

from leanvision.training.data.conversations import check_conversations, conversation_features
from leanvision.training.data.shapes import BACKGROUND, COLORS, POSITIONS, SHAPES, make_shapes_dataset
from leanvision.training.data.shapes_vqa import (
    CAPTION_PROMPTS,
    QUESTION_TYPES,
    captions_to_conversations,
    make_shapes_vqa_dataset,
    shapes_vqa_splits,
)
from leanvision.training.evaluation.vqa import question_type_prior_baseline

# The referent of a question, read independently of the generator: which attribute is asked about which object.
_COLOR, _SHAPE, _POSITION = "|".join(COLORS), "|".join(SHAPES), "|".join(POSITIONS)
QUESTION_PATTERNS = [
    (re.compile(rf"what color is the shape at the (?P<position>{_POSITION})\?"), "color"),
    (re.compile(rf"what color is the (?P<shape>{_SHAPE})\?"), "color"),
    (re.compile(rf"what shape is at the (?P<position>{_POSITION})\?"), "shape"),
    (re.compile(rf"what shape is the (?P<color>{_COLOR}) one\?"), "shape"),
    (re.compile(rf"where is the (?P<color>{_COLOR}) (?P<shape>{_SHAPE})\?"), "position"),
    (re.compile(rf"where is the (?P<shape>{_SHAPE})\?"), "position"),
    (re.compile(rf"where is the (?P<color>{_COLOR}) shape\?"), "position"),
    (re.compile(r"how many (shapes are there|objects are in the image)\?"), "count"),
]


def image_bytes(ds):
    return [row["bytes"] for row in ds.cast_column("image", datasets.Image(decode=False))["image"]]


def metadata(ds):
    return ds.remove_columns("image").to_list()


def undecoded(ds):
    return ds.cast_column("image", datasets.Image(decode=False)).to_list()


def grid_edges(size):
    return [round(i * size / 3) for i in range(4)]


def occupied_cells(pixels):
    """Grid cells holding any non-background pixel."""
    edges = grid_edges(pixels.shape[0])
    background = np.all(pixels == BACKGROUND, axis=-1)
    return [3 * r + c for r in range(3) for c in range(3)
            if not background[edges[r]:edges[r + 1], edges[c]:edges[c + 1]].all()]


def test_same_call_gives_identical_rows_and_image_bytes():
    a, b = shapes_vqa_splits(train=40, test=20, seed=3), shapes_vqa_splits(train=40, test=20, seed=3)
    for split in ("train", "test"):
        assert image_bytes(a[split]) == image_bytes(b[split])
        assert metadata(a[split]) == metadata(b[split])
    c = shapes_vqa_splits(train=40, test=20, seed=4)
    assert image_bytes(c["train"]) != image_bytes(a["train"])


def test_test_images_are_held_out_and_are_the_shapes_images():
    splits = shapes_vqa_splits(train=600, test=200, seed=0)
    assert {name: len(ds) for name, ds in splits.items()} == {"train": 600, "test": 200}
    train, test = set(image_bytes(splits["train"])), set(image_bytes(splits["test"]))
    assert not train & test
    # Row i's image is image i // questions_per_image of the shapes split of the same name.
    shapes_test = image_bytes(make_shapes_dataset(100, 0, split="test"))
    assert image_bytes(splits["test"]) == [shapes_test[i // 2] for i in range(200)]


def test_every_answer_follows_from_the_drawn_content_and_is_unique():
    ds = make_shapes_vqa_dataset(240, seed=1, questions_per_image=3, split="train")
    shapes = make_shapes_dataset(80, seed=1, split="train")
    assert ds.features == conversation_features()
    check_conversations(undecoded(ds))
    for row in ds:
        index = int(row["id"].split("-")[3])
        drawn = shapes[index]
        objects = list(zip(drawn["colors"], drawn["shapes"], drawn["positions"], drawn["boxes"]))
        human, gpt = row["conversations"]
        assert human["from"] == "human" and gpt["from"] == "gpt" and gpt["value"] == row["answer"]
        question = human["value"].removeprefix("<image>\n")
        match, asked = next((m, a) for p, a in QUESTION_PATTERNS if (m := p.fullmatch(question)))
        assert asked == row["question_type"]
        pixels = np.asarray(row["image"])
        if asked == "count":
            # Counted from the pixels: one object per occupied cell.
            assert row["answer"] == str(len(objects)) == str(len(occupied_cells(pixels)))
            continue
        named = {key: value for key, value in match.groupdict().items() if value}
        fields = ("color", "shape", "position")
        referents = [o for o in objects if all(o[fields.index(k)] == v for k, v in named.items())]
        assert len(referents) == 1, (question, objects)  # the question names exactly one object
        color, shape, position, (x0, y0, x1, y1) = referents[0]
        assert row["answer"] == {"color": color, "shape": shape, "position": position}[asked]
        # The referent is drawn where its position says, in its colour (box centre pixel).
        cx, cy = (x0 + x1 - 1) // 2, (y0 + y1 - 1) // 2
        edges = grid_edges(pixels.shape[0])
        row_, col = (sum(v >= e for e in edges[1:3]) for v in (cy, cx))
        assert 3 * row_ + col == POSITIONS.index(position)
        assert tuple(pixels[cy, cx]) == COLORS[color]


def test_questions_per_image_rows_and_bad_arguments():
    ds = make_shapes_vqa_dataset(7, seed=0, questions_per_image=3, split="test")
    ids = ds["id"]
    assert len(ds) == 7 and len({i.rsplit("-", 1)[0] for i in ids}) == 3
    for image in {i.rsplit("-", 1)[0] for i in ids}:
        rows = [r for r in metadata(ds) if r["id"].startswith(image + "-")]
        questions = [r["conversations"][0]["value"] for r in rows]
        assert len(set(questions)) == len(questions)  # never the same question twice about one image
        assert len({r["question_type"] for r in rows}) == len(rows)  # types take turns
    four = make_shapes_vqa_dataset(40, seed=0, questions_per_image=4, split="train")
    assert all(abs(n - 10) <= 2 for n in Counter(four["question_type"]).values())
    for bad in ({"questions_per_image": 0}, {"questions_per_image": 5}, {"num_rows": -1}, {"split": "dev"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            make_shapes_vqa_dataset(**{"num_rows": 4, "seed": 0, **bad})


def test_types_are_balanced_and_the_prior_is_weak():
    splits = shapes_vqa_splits()
    train = metadata(splits["train"])
    types = Counter(r["question_type"] for r in train)
    assert set(types) == set(QUESTION_TYPES) and all(abs(n - 250) <= 25 for n in types.values())
    for kind in QUESTION_TYPES:
        answers = Counter(r["answer"] for r in train if r["question_type"] == kind)
        # Answers spread over all values of the type; none dominates.
        assert len(answers) == {"color": 6, "shape": 3, "position": 9, "count": 3}[kind]
        assert max(answers.values()) / sum(answers.values()) < 0.4
    prior = question_type_prior_baseline(splits["train"], splits["test"])
    assert prior["count"] == 200 and prior["accuracy"] < 0.3
    assert prior["per_type"]["color"] < 0.25 and prior["per_type"]["position"] < 0.2


def test_captions_to_conversations():
    shapes = make_shapes_dataset(6, seed=2)
    rows = captions_to_conversations(shapes)
    assert rows.features == conversation_features()
    assert image_bytes(rows) == image_bytes(shapes)
    check_conversations(undecoded(rows))
    for index, (row, caption) in enumerate(zip(metadata(rows), shapes["caption"])):
        assert row["answer"] == caption and row["question_type"] == "caption" and row["id"] == f"caption-{index:06d}"
        assert row["conversations"] == [
            {"from": "human", "value": "<image>\n" + CAPTION_PROMPTS[index % len(CAPTION_PROMPTS)]},
            {"from": "gpt", "value": caption},
        ]
    assert metadata(captions_to_conversations(shapes)) == metadata(rows)
    custom = captions_to_conversations(shapes, prompts=["Describe the image."])
    assert {r["conversations"][0]["value"] for r in metadata(custom)} == {"<image>\nDescribe the image."}
    with pytest.raises(ValueError, match="no column 'caption'"):
        captions_to_conversations(shapes.remove_columns("caption"))
    with pytest.raises(ValueError, match="must not contain <image>"):
        captions_to_conversations(shapes, prompts=["<image> describe"])
    with pytest.raises(ValueError, match="non-empty list"):
        captions_to_conversations(shapes, prompts=[])
    with pytest.raises(ValueError, match="non-empty list"):
        captions_to_conversations(shapes, prompts="Describe the image.")
