"""Deterministic visual question answering over the shapes images, in the conversation schema (`conversations.py`).

Each image of `shapes.py` (one to `max_objects` coloured shapes, one per cell of a 3x3 grid) gets questions of four
types, each with a unique short answer read from the drawn content:

    color     "what color is the circle?" / "what color is the shape at the top left?"        -> "red"
    shape     "what shape is at the top left?" / "what shape is the red one?"                  -> "square"
    position  "where is the blue triangle?" / "where is the triangle?" / "... the blue shape?" -> "top left"
    count     "how many shapes are there?" / "how many objects are in the image?"              -> "2" (digits)

A question naming a shape, a colour or a (colour, shape) pair is asked only when exactly one object matches it; a
position names one object by construction. Types take turns across the rows, so each type is a quarter of a split
(up to a rare skip when an image has no unique-answer question of a type), and within a type the answer spreads over
the colours, shapes, positions and counts drawn: answering each type's most frequent train answer is a weak baseline
(`evaluation.vqa.question_type_prior_baseline`). Train and test images come from `shapes.py`'s disjoint splits, so
test images are held out; the same call gives byte-identical images and identical rows.
"""

import itertools
import math

import numpy as np
from datasets import Dataset, DatasetDict, Features, Image

from .conversations import IMAGE_TOKEN, conversation_dataset
from .shapes import COLORS, POSITIONS, SHAPES, SPLITS, make_shapes_dataset

QUESTION_TYPES = ("color", "shape", "position", "count")
MAX_QUESTIONS_PER_IMAGE = len(QUESTION_TYPES)
# Stage-1 (feature alignment) prompts for caption data; a row's prompt is chosen by its index.
CAPTION_PROMPTS = (
    "Describe the image.",
    "What is in this picture?",
    "Give a short description of the image.",
    "List the shapes in the image and where they are.",
)


def _unique(values, value) -> bool:
    return values.count(value) == 1


def candidate_questions(colors, shapes, positions) -> dict[str, list[tuple[str, str]]]:
    """Every unique-answer (question, answer) of an image's objects, by question type."""
    pairs = list(zip(colors, shapes))
    candidates = {kind: [] for kind in QUESTION_TYPES}
    for color, shape, position in zip(colors, shapes, positions):
        candidates["color"].append((f"what color is the shape at the {position}?", color))
        candidates["shape"].append((f"what shape is at the {position}?", shape))
        if _unique(shapes, shape):
            candidates["color"].append((f"what color is the {shape}?", color))
            candidates["position"].append((f"where is the {shape}?", position))
        if _unique(colors, color):
            candidates["shape"].append((f"what shape is the {color} one?", shape))
            candidates["position"].append((f"where is the {color} shape?", position))
        if _unique(pairs, (color, shape)):
            candidates["position"].append((f"where is the {color} {shape}?", position))
    count = str(len(colors))
    candidates["count"] = [("how many shapes are there?", count), ("how many objects are in the image?", count)]
    return candidates


def vocabulary_texts() -> list[str]:
    """Every question and answer text a shapes VQA row can hold (all colours, shapes, positions and counts), and the
    stage-1 prompts: the words a fresh word-level tokenizer needs for both built-in sets, whichever one it is built on
    (stage 2 reuses stage 1's tokenizer)."""
    texts = list(CAPTION_PROMPTS) + [str(count) for count in range(1, len(POSITIONS) + 1)]
    for color, shape, position in itertools.product(COLORS, SHAPES, POSITIONS):
        for items in candidate_questions([color], [shape], [position]).values():
            texts += [text for pair in items for text in pair]
    return texts


def _pick_questions(candidates, count: int, first_type: int, rng) -> list[tuple[str, str, str]]:
    """`count` distinct (type, question, answer), types in turn from `first_type`; a type with no question left is
    skipped."""
    left = {kind: list(items) for kind, items in candidates.items()}
    picked, turn = [], first_type
    while len(picked) < count:
        kind = QUESTION_TYPES[turn % len(QUESTION_TYPES)]
        turn += 1
        if left[kind]:
            question, answer = left[kind].pop(int(rng.integers(len(left[kind]))))
            picked.append((kind, question, answer))
    return picked


def make_shapes_vqa_dataset(num_rows: int, seed: int, image_size: int = 64, max_objects: int = 3,
                            questions_per_image: int = 2, split: str = "train") -> Dataset:
    """`num_rows` question rows over the first `ceil(num_rows / questions_per_image)` images of
    `make_shapes_dataset(..., split=split)`, `questions_per_image` distinct questions each (the last image may get
    fewer). Row ids are "shapes-vqa-<split>-<image index>-<question index>"."""
    if not isinstance(num_rows, int) or num_rows < 0:
        raise ValueError(f"num_rows must be a non-negative int, got {num_rows!r}")
    if not isinstance(questions_per_image, int) or not 1 <= questions_per_image <= MAX_QUESTIONS_PER_IMAGE:
        raise ValueError(
            f"questions_per_image must be an int in [1, {MAX_QUESTIONS_PER_IMAGE}], got {questions_per_image!r}"
        )
    num_images = math.ceil(num_rows / questions_per_image)
    shapes = make_shapes_dataset(num_images, seed, image_size=image_size, max_objects=max_objects, split=split)
    stored = shapes.cast_column("image", Image(decode=False))["image"]
    images, rows = [], []
    for index, (image, colors, kinds, positions) in enumerate(
        zip(stored, shapes["colors"], shapes["shapes"], shapes["positions"])
    ):
        count = min(questions_per_image, num_rows - len(rows))
        rng = np.random.default_rng([seed, SPLITS.index(split), index])
        picked = _pick_questions(
            candidate_questions(colors, kinds, positions), count, index * questions_per_image, rng
        )
        for number, (kind, question, answer) in enumerate(picked):
            images.append(image)
            rows.append(
                {
                    "id": f"shapes-vqa-{split}-{index:05d}-{number}",
                    "conversations": [
                        {"from": "human", "value": f"{IMAGE_TOKEN}\n{question}"},
                        {"from": "gpt", "value": answer},
                    ],
                    "question_type": kind,
                }
            )
    return conversation_dataset(Dataset.from_dict({"image": images}, features=Features({"image": Image()})), rows)


def shapes_vqa_splits(train: int = 1000, test: int = 200, seed: int = 0, image_size: int = 64, max_objects: int = 3,
                      questions_per_image: int = 2) -> DatasetDict:
    """A `DatasetDict` with "train" and "test" question rows (`train` / `test` rows each, see
    `make_shapes_vqa_dataset`); no test image is a train image."""
    return DatasetDict(
        {
            name: make_shapes_vqa_dataset(size, seed, image_size=image_size, max_objects=max_objects,
                                          questions_per_image=questions_per_image, split=name)
            for name, size in (("train", train), ("test", test))
        }
    )


def captions_to_conversations(dataset: Dataset, prompts=CAPTION_PROMPTS) -> Dataset:
    """Stage-1 rows from a captioning dataset (an `Image` column "image" and a string column "caption", such as
    `shapes.py`'s): "<image>\\n<prompt>" -> the caption, question_type "caption"; row i asks `prompts[i % len]`.
    Ids are the dataset's "id" column when it has one, else "caption-<index>"."""
    missing = [column for column in ("image", "caption") if column not in dataset.column_names]
    if missing:
        raise ValueError(f"dataset has no column {missing[0]!r}; columns: {dataset.column_names}")
    if not isinstance(dataset.features["image"], Image):
        raise ValueError(f"the 'image' column must be a datasets.Image column, got {dataset.features['image']}")
    if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ValueError(f"prompts must be a non-empty list of non-empty strings, got {prompts!r}")
    if any(IMAGE_TOKEN in p for p in prompts):
        raise ValueError(f"prompts must not contain {IMAGE_TOKEN}; it is added in front of each prompt")
    ids = dataset["id"] if "id" in dataset.column_names else [f"caption-{i:06d}" for i in range(len(dataset))]
    rows = [
        {
            "id": str(row_id),
            "conversations": [
                {"from": "human", "value": f"{IMAGE_TOKEN}\n{prompts[index % len(prompts)]}"},
                {"from": "gpt", "value": caption},
            ],
            "question_type": "caption",
        }
        for index, (row_id, caption) in enumerate(zip(ids, dataset["caption"]))
    ]
    return conversation_dataset(dataset.select_columns(["image"]), rows)
