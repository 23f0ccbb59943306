import json
import os

import datasets
import numpy as np
import pytest
from PIL import Image

from leanvision.training.data.conversations import check_conversations, load_conversation_dataset
from leanvision.training.data.shapes_vqa import make_shapes_vqa_dataset
from leanvision.training.evaluation.vqa import (
    load_llava_bench,
    normalize_answer,
    question_type_prior_baseline,
    vqa_accuracy,
    write_llava_bench_answers,
)


def solid_image(color, size=(8, 6)):
    return Image.new("RGB", size, color)


def human(text):
    return {"from": "human", "value": text}


def gpt(text):
    return {"from": "gpt", "value": text}


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Two.", "2"), ("2", "2"), ("  TWENTY  ", "20"), ("The top-left", "top left"), ("a Red circle!", "red circle"),
        ("it's", "its"), ("3.5", "3.5"), ("yes, it is", "yes it is"), ("", ""), ("an apple", "apple"),
        ("theory", "theory"),
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_normalize_answer_refuses_non_strings():
    with pytest.raises(TypeError, match="must be a string"):
        normalize_answer(2)


def test_vqa_accuracy_is_exact_match_after_normalisation():
    result = vqa_accuracy(
        ["Red.", "two", "circle", "top left", "blue"],
        ["red", "2", "square", ["top-left", "upper left"], "green"],
        ["color", "count", "shape", "position", "color"],
    )
    assert result == {
        "accuracy": 3 / 5,
        "count": 5,
        "per_type": {"color": 1 / 2, "count": 1.0, "position": 1.0, "shape": 0.0},
    }
    assert vqa_accuracy(["x"], ["y"]) == {"accuracy": 0.0, "count": 1, "per_type": {}}
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        vqa_accuracy(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="at least one"):
        vqa_accuracy([], [])
    with pytest.raises(ValueError, match="question types"):
        vqa_accuracy(["a"], ["a"], ["color", "shape"])


def test_prior_baseline_on_a_hand_made_split():
    def rows(pairs):
        return [{"question_type": t, "answer": a} for t, a in pairs]

    train = rows([("color", "red"), ("color", "Red"), ("color", "blue"), ("count", "two"), ("count", "2"),
                  ("count", "3"), ("shape", "circle"), ("shape", "square")])  # shape: a tie, "circle" comes first
    test = rows([("color", "red"), ("color", "blue"), ("color", "red"), ("count", "2"), ("count", "three"),
                 ("shape", "square"), ("position", "top")])  # no position in train: always wrong
    result = question_type_prior_baseline(train, test)
    assert result == {
        "accuracy": 3 / 7,
        "count": 7,
        "per_type": {"color": 2 / 3, "count": 1 / 2, "position": 0.0, "shape": 0.0},
    }
    with pytest.raises(ValueError, match="at least one train row"):
        question_type_prior_baseline([], test)
    with pytest.raises(ValueError, match="'question_type' and 'answer'"):
        question_type_prior_baseline([{"answer": "red"}], test)


def test_prior_baseline_reads_a_dataset_without_decoding_images():
    train = make_shapes_vqa_dataset(40, seed=0, split="train")
    as_rows = train.remove_columns("image").to_list()
    assert question_type_prior_baseline(train, train) == question_type_prior_baseline(as_rows, as_rows)


def write_llava_folder(folder, entries, images):
    os.makedirs(folder, exist_ok=True)
    for name, image in images.items():
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        image.save(path)
    with open(os.path.join(folder, "data.json"), "w") as f:
        json.dump(entries, f)


ENTRIES = [
    {"id": "a1", "image": "pics/a.png",
     "conversations": [human("<image>\nWhat color is it?"), gpt("Red."), human("And the shape?"), gpt("a square")]},
    {"id": 7, "image": "b.png", "conversations": [human("Describe it.\n<image>"), gpt("blue")]},
    {"conversations": [human("What is two plus two?"), gpt("four")]},
]
IMAGES = {"pics/a.png": solid_image((255, 0, 0)), "b.png": solid_image((0, 0, 255), (5, 9))}


def test_llava_json_folder_round_trip(tmp_path):
    write_llava_folder(tmp_path, ENTRIES, IMAGES)
    data = load_conversation_dataset(str(tmp_path))
    assert list(data) == ["train"]
    rows = data["train"]
    assert rows["id"] == ["a1", "7", "2"]
    assert rows["answer"] == ["a square", "blue", "four"]
    assert rows["question_type"] == ["conversation"] * 3
    assert rows["conversations"] == [e["conversations"] for e in ENTRIES]
    images = rows["image"]
    assert np.array_equal(np.asarray(images[0]), np.asarray(IMAGES["pics/a.png"]))
    assert np.array_equal(np.asarray(images[1]), np.asarray(IMAGES["b.png"]))
    assert images[2] is None
    # The file itself, a separate image folder and a named split read the same rows.
    same = load_conversation_dataset(str(tmp_path / "data.json"), split="train")
    assert same.remove_columns("image").to_list() == rows.remove_columns("image").to_list()
    os.rename(tmp_path / "data.json", tmp_path.parent / f"{tmp_path.name}.json")
    elsewhere = str(tmp_path.parent / f"{tmp_path.name}.json")
    assert load_conversation_dataset(elsewhere, "train", image_folder=str(tmp_path))["answer"] == rows["answer"]
    with pytest.raises(ValueError, match="no split 'test'"):
        load_conversation_dataset(elsewhere, "test", image_folder=str(tmp_path))


def test_saved_datasets_load_in_the_schema(tmp_path):
    # A dataset with an Image column (the shapes VQA set, saved) comes back row for row.
    vqa = make_shapes_vqa_dataset(6, seed=0, split="test")
    vqa.save_to_disk(str(tmp_path / "vqa"))
    loaded = load_conversation_dataset(str(tmp_path / "vqa"), split="train")
    assert loaded.features == vqa.features
    assert loaded.cast_column("image", datasets.Image(decode=False)).to_list() == vqa.cast_column(
        "image", datasets.Image(decode=False)).to_list()
    # A dataset whose image column holds file names reads them from image_folder.
    write_llava_folder(tmp_path / "imgs", [], IMAGES)
    names = datasets.Dataset.from_list([{k: e[k] for k in ("image", "conversations")} for e in ENTRIES[:2]])
    names.save_to_disk(str(tmp_path / "names"))
    with pytest.raises(ValueError, match="pass image_folder"):
        load_conversation_dataset(str(tmp_path / "names"))
    loaded = load_conversation_dataset(str(tmp_path / "names"), "train", image_folder=str(tmp_path / "imgs"))
    assert loaded["answer"] == ["a square", "blue"] and loaded["id"] == ["0", "1"]
    assert np.array_equal(np.asarray(loaded[1]["image"]), np.asarray(IMAGES["b.png"]))


MALFORMED = {
    "missing image": ({"image": "nope.png", "conversations": [human("<image>\nq"), gpt("a")]},
                      "image file 'nope.png' not found"),
    "starts with gpt": ({"image": "b.png", "conversations": [gpt("<image>\nq"), human("a")]},
                        "turn 0 is from 'gpt', expected 'human'"),
    "not alternating": ({"image": "b.png", "conversations": [human("<image>\nq"), human("again"), gpt("a")]},
                        "turn 1 is from 'human', expected 'gpt'"),
    "unknown role": ({"conversations": [human("q"), {"from": "assistant", "value": "a"}]},
                     "turn 1 is from 'assistant'"),
    "ends with human": ({"conversations": [human("q"), gpt("a"), human("more?")]}, "ends with a human turn"),
    "no image token": ({"image": "b.png", "conversations": [human("q"), gpt("a")]},
                       "no <image> token in the first human turn"),
    "two image tokens": ({"image": "b.png", "conversations": [human("<image>\n<image>\nq"), gpt("a")]},
                         "more than one <image>"),
    "token in a later turn": ({"image": "b.png", "conversations": [human("<image>q"), gpt("a"), human("<image>"),
                                                                   gpt("b")]}, "first human turn only"),
    "token without image": ({"conversations": [human("<image>\nq"), gpt("a")]}, "the row has no image"),
    "no turns": ({"image": "b.png", "conversations": []}, "non-empty list of turns"),
    "escaping path": ({"image": "../b.png", "conversations": [human("<image>\nq"), gpt("a")]},
                      "must be relative to the image folder"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_conversations_are_named(tmp_path, case):
    entry, message = MALFORMED[case]
    write_llava_folder(tmp_path, [ENTRIES[1], dict(entry, id="bad-row")], IMAGES)
    with pytest.raises(ValueError, match=message) as err:
        load_conversation_dataset(str(tmp_path))
    assert "'bad-row'" in str(err.value)


def test_malformed_files_are_named(tmp_path):
    (tmp_path / "data.json").write_text("")
    with pytest.raises(ValueError, match="data.json is empty"):
        load_conversation_dataset(str(tmp_path))
    (tmp_path / "data.json").write_text("[]")
    with pytest.raises(ValueError, match="holds no conversations"):
        load_conversation_dataset(str(tmp_path))
    (tmp_path / "data.json").write_text("[{")
    with pytest.raises(ValueError, match="data.json is not valid JSON"):
        load_conversation_dataset(str(tmp_path))
    (tmp_path / "data.json").write_text('{"conversations": []}')
    with pytest.raises(ValueError, match="JSON list"):
        load_conversation_dataset(str(tmp_path))
    (tmp_path / "other.json").write_text("[]")
    with pytest.raises(ValueError, match="several .json files"):
        load_conversation_dataset(str(tmp_path))
    with pytest.raises(ValueError, match="is not a folder"):
        load_conversation_dataset(str(tmp_path / "data.json"), image_folder=str(tmp_path / "missing"))


def test_check_conversations_accepts_good_rows_and_names_the_index():
    check_conversations([{"image": "x.png", **ENTRIES[1]}, ENTRIES[2]])
    with pytest.raises(ValueError, match="conversation 1: turn 0"):
        check_conversations([ENTRIES[2], {"conversations": [gpt("a")]}])


def write_bench(folder, questions, references, images):
    os.makedirs(folder / "images")
    for name, image in images.items():
        image.save(folder / "images" / name)
    for name, lines in (("questions.jsonl", questions), ("answers_gpt4.jsonl", references)):
        (folder / name).write_text("".join(json.dumps(line) + "\n" for line in lines))


BENCH_QUESTIONS = [
    {"image": "001.png", "text": "What color is the wall?", "category": "conv", "question_id": 0},
    {"image": "002.png", "text": "Describe the scene in detail.", "category": "detail", "question_id": 1},
    {"image": "001.png", "text": "Why is the wall red?", "category": "complex", "question_id": 2},
]
BENCH_REFERENCES = [
    {"question_id": 2, "prompt": "Why is the wall red?", "text": "Paint.", "answer_id": "x", "model_id": "gpt-4"},
    {"question_id": 0, "prompt": "...", "text": "Red.", "answer_id": "y", "model_id": "gpt-4"},
    {"question_id": 1, "prompt": "...", "text": "A blue field.", "answer_id": "z", "model_id": "gpt-4"},
]
BENCH_IMAGES = {"001.png": solid_image((200, 10, 10)), "002.png": solid_image((10, 10, 200), (4, 4))}


def test_llava_bench_load_and_answer_round_trip(tmp_path):
    write_bench(tmp_path, BENCH_QUESTIONS, BENCH_REFERENCES, BENCH_IMAGES)
    rows = load_llava_bench(str(tmp_path))
    assert [(r["question_id"], r["question"], r["reference"], r["category"]) for r in rows] == [
        (0, "What color is the wall?", "Red.", "conv"),
        (1, "Describe the scene in detail.", "A blue field.", "detail"),
        (2, "Why is the wall red?", "Paint.", "complex"),
    ]
    for row, question in zip(rows, BENCH_QUESTIONS):
        assert np.array_equal(np.asarray(row["image"]), np.asarray(BENCH_IMAGES[question["image"]]))
    answers = ["It is red.", "A blue square.", "Someone painted it ünïcode."]
    path = write_llava_bench_answers(rows, answers, str(tmp_path / "answers" / "model.jsonl"), "dtp-llava-tiny")
    lines = [json.loads(line) for line in open(path, encoding="utf-8")]
    keys = ["question_id", "prompt", "text", "answer_id", "model_id", "metadata"]
    assert [list(line) for line in lines] == [keys] * 3
    assert [[line[k] for k in ("question_id", "prompt", "text", "model_id", "metadata")] for line in lines] == [
        [q["question_id"], q["text"], a, "dtp-llava-tiny", {}] for q, a in zip(BENCH_QUESTIONS, answers)
    ]
    ids = [line["answer_id"] for line in lines]
    assert len(set(ids)) == 3 and all(len(i) == 22 for i in ids)
    # Writing again gives the same file (stable answer ids); a failed write leaves it and no temporary file behind.
    before = open(path, "rb").read()
    write_llava_bench_answers(rows, answers, path, "dtp-llava-tiny")
    assert open(path, "rb").read() == before
    with pytest.raises(TypeError, match="question 1"):
        write_llava_bench_answers(rows, ["ok", None, "ok"], path, "dtp-llava-tiny")
    assert open(path, "rb").read() == before and os.listdir(tmp_path / "answers") == ["model.jsonl"]
    with pytest.raises(ValueError, match="3 questions but 2 answers"):
        write_llava_bench_answers(rows, answers[:2], path, "dtp-llava-tiny")
    with pytest.raises(ValueError, match="model_id"):
        write_llava_bench_answers(rows, answers, path, "")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda q, r: (q, r[1:]), "question 2 has no reference answer in answers_gpt4.jsonl"),
        (lambda q, r: ([dict(q[0], image="missing.png")], r), "image 'missing.png' not found"),
        (lambda q, r: ([{k: v for k, v in q[0].items() if k != "category"}], r), "line 1 has no 'category'"),
        (lambda q, r: ([], r), "questions.jsonl is empty"),
    ],
)
def test_llava_bench_faults_are_named(tmp_path, change, message):
    questions, references = change(BENCH_QUESTIONS, BENCH_REFERENCES)
    write_bench(tmp_path, questions, references, BENCH_IMAGES)
    with pytest.raises(ValueError, match=message):
        load_llava_bench(str(tmp_path))


def test_llava_bench_missing_files_are_named(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_llava_bench(str(tmp_path / "nowhere"))
    write_bench(tmp_path, BENCH_QUESTIONS, BENCH_REFERENCES, BENCH_IMAGES)
    with pytest.raises(ValueError, match="no reviews.jsonl"):
        load_llava_bench(str(tmp_path), reference_file="reviews.jsonl")
    (tmp_path / "questions.jsonl").write_text("{not json}\n")
    with pytest.raises(ValueError, match="questions.jsonl line 1 is not valid JSON"):
        load_llava_bench(str(tmp_path))
