"""Visual question answering scores: exact-match accuracy after answer normalisation, the question-type prior
baseline, and the LLaVA-Bench (In-the-Wild) question format for an external judge.

Accuracy is `mean_i 1[normalize(prediction_i) in {normalize(r) : r in references_i}]`, overall and per question type.
The prior baseline answers every test question with the most frequent train answer of its question type.

LLaVA-Bench folders follow the benchmark's release (read by LLaVA's `model_vqa.py` and `eval_gpt_review_bench.py`):
`questions.jsonl` lines `{"question_id", "image", "text", "category"}`, images under `images/`, reference answers
in `answers_gpt4.jsonl` lines `{"question_id", "text", ...}`. Answers are written as the lines the review script
reads: `{"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}`, in question order. No judge is called.
"""

import hashlib
import json
import os
import re
import string
import tempfile
from collections import Counter

from datasets import Dataset

from ..files import open_image

_NUMBER_WORDS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty",
)
_DIGITS_OF_WORD = {word: str(number) for number, word in enumerate(_NUMBER_WORDS)}
_ARTICLES = {"a", "an", "the"}
# Apostrophes go ("it's" reads "its"), other punctuation becomes a space ("top-left" reads "top left"), except a
# comma or point between digits ("3.5").
_PUNCTUATION = re.compile(rf"(?!(?<=\d)[.,](?=\d))[{re.escape(string.punctuation)}]")

QUESTIONS_FILE = "questions.jsonl"
REFERENCE_FILE = "answers_gpt4.jsonl"
IMAGES_FOLDER = "images"


def normalize_answer(answer: str) -> str:
    """Lower-case, apostrophes dropped, other punctuation to spaces, articles dropped, number words zero..twenty as
    digits, single spaces: "Two." and "2" both read "2", "The top-left" reads "top left"."""
    if not isinstance(answer, str):
        raise TypeError(f"an answer must be a string, got {type(answer).__name__}")
    words = _PUNCTUATION.sub(" ", answer.lower().replace("'", "")).split()
    return " ".join(_DIGITS_OF_WORD.get(word, word) for word in words if word not in _ARTICLES)


def _references(reference) -> set[str]:
    """The normalised accepted answers of one question: a string, or a list of strings (any one counts)."""
    if isinstance(reference, str):
        return {normalize_answer(reference)}
    if isinstance(reference, (list, tuple)) and reference:
        return {normalize_answer(r) for r in reference}
    raise TypeError(f"a reference must be a string or a non-empty list of strings, got {reference!r}")


def vqa_accuracy(predictions, references, question_types=None) -> dict:
    """Exact-match accuracy after `normalize_answer`: {"accuracy", "count", "per_type": {type: accuracy}} (per_type
    is empty without `question_types`)."""
    predictions, references = list(predictions), list(references)
    if not predictions:
        raise ValueError("vqa_accuracy needs at least one prediction")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    question_types = None if question_types is None else list(question_types)
    if question_types is not None and len(question_types) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions but {len(question_types)} question types")
    correct = [normalize_answer(p) in _references(r) for p, r in zip(predictions, references)]
    per_type = {}
    for kind in sorted(set(question_types or ())):
        hits = [c for c, t in zip(correct, question_types) if t == kind]
        per_type[kind] = sum(hits) / len(hits)
    return {"accuracy": sum(correct) / len(correct), "count": len(correct), "per_type": per_type}


def _types_and_answers(rows) -> tuple[list[str], list[str]]:
    """(question types, answers) of conversation rows: a `datasets.Dataset` (images are not decoded) or mappings."""
    if isinstance(rows, Dataset):
        rows = rows.select_columns(["question_type", "answer"]).to_list()
    rows = list(rows)
    for row in rows:
        if "question_type" not in row or "answer" not in row:
            raise ValueError(f"a row needs 'question_type' and 'answer', got keys {sorted(row)}")
    return [row["question_type"] for row in rows], [row["answer"] for row in rows]


def question_type_prior_baseline(train_rows, test_rows) -> dict:
    """`vqa_accuracy` of answering each test question with the most frequent (normalised) train answer of its
    question type, ties to the alphabetically first; a type unseen in train answers "" (wrong)."""
    train_types, train_answers = _types_and_answers(train_rows)
    if not train_types:
        raise ValueError("the prior baseline needs at least one train row")
    counts = {}
    for kind, answer in zip(train_types, train_answers):
        counts.setdefault(kind, Counter())[normalize_answer(answer)] += 1
    prior = {kind: min(c, key=lambda a: (-c[a], a)) for kind, c in counts.items()}
    test_types, test_answers = _types_and_answers(test_rows)
    return vqa_accuracy([prior.get(kind, "") for kind in test_types], test_answers, test_types)


def _read_jsonl(path: str) -> list[dict]:
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise ValueError(f"no {name} in {os.path.dirname(path)!r}")
    lines = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{name} line {number} is not valid JSON: {err}") from None
            if not isinstance(value, dict):
                raise ValueError(f"{name} line {number} must be a JSON object, got {value!r}")
            lines.append(value)
    if not lines:
        raise ValueError(f"{name} is empty")
    return lines


def _fields(line: dict, names, source: str) -> list:
    missing = [name for name in names if name not in line]
    if missing:
        raise ValueError(f"{source} has no {missing[0]!r} (fields: {sorted(line)})")
    return [line[name] for name in names]


def load_llava_bench(folder: str, reference_file: str = REFERENCE_FILE) -> list[dict]:
    """The questions of a LLaVA-Bench folder, in file order: [{"question_id", "image" (PIL RGB), "question",
    "reference", "category"}]. `reference_file` names the reference-answer JSONL in `folder` (GPT-4's answers in the
    release); every question needs a reference. Missing files, fields and images raise a ValueError naming them."""
    if not os.path.isdir(folder):
        raise ValueError(f"LLaVA-Bench folder {folder!r} does not exist")
    references = {}
    for number, line in enumerate(_read_jsonl(os.path.join(folder, reference_file)), 1):
        question_id, text = _fields(line, ("question_id", "text"), f"{reference_file} line {number}")
        references[question_id] = text
    rows = []
    for number, line in enumerate(_read_jsonl(os.path.join(folder, QUESTIONS_FILE)), 1):
        question_id, image, text, category = _fields(
            line, ("question_id", "image", "text", "category"), f"{QUESTIONS_FILE} line {number}"
        )
        if question_id not in references:
            raise ValueError(f"question {question_id!r} has no reference answer in {reference_file}")
        image_path = os.path.join(folder, IMAGES_FOLDER, image)
        if not os.path.isfile(image_path):
            raise ValueError(f"question {question_id!r}: image {image!r} not found in {IMAGES_FOLDER}/")
        rows.append(
            {
                "question_id": question_id,
                "image": open_image(image_path),
                "question": text,
                "reference": references[question_id],
                "category": category,
            }
        )
    return rows


def _answer_id(model_id: str, question_id, text: str) -> str:
    """A stable 22-character id of one answer (LLaVA draws a random shortuuid of that length)."""
    return hashlib.blake2b(json.dumps([model_id, question_id, text]).encode(), digest_size=11).hexdigest()


def write_llava_bench_answers(rows, answers, path: str, model_id: str) -> str:
    """Writes one answer line per question, in the questions' order (the review script pairs lines by position),
    to `path` atomically (a temporary file beside it, then renamed); returns `path`."""
    rows, answers = list(rows), list(answers)
    if not rows:
        raise ValueError("no questions to write answers for")
    if len(rows) != len(answers):
        raise ValueError(f"{len(rows)} questions but {len(answers)} answers")
    if not isinstance(model_id, str) or not model_id.strip():
        raise ValueError(f"model_id must be a non-empty string, got {model_id!r}")
    lines = []
    for row, answer in zip(rows, answers):
        if not isinstance(answer, str):
            raise TypeError(f"the answer to question {row['question_id']!r} must be a string, got {answer!r}")
        line = {
            "question_id": row["question_id"],
            "prompt": row["question"],
            "text": answer,
            "answer_id": _answer_id(model_id, row["question_id"], answer),
            "model_id": model_id,
            "metadata": {},
        }
        lines.append(json.dumps(line, ensure_ascii=False) + "\n")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix=".tmp-", suffix=".jsonl", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(lines)
        os.replace(tmp_path, path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
    return path
