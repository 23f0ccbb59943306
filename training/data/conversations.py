"""LLaVA-format conversation data: the row schema every DTP-LLaVA training stage reads, its checks and the loader.

A row is

    {"id": "000000033471", "image": <PIL image or None>,
     "conversations": [{"from": "human", "value": "<image>\\nWhat color is the circle?"},
                       {"from": "gpt", "value": "red"}],
     "question_type": "color", "answer": "red"}

Turns alternate human / gpt, starting with human and ending with gpt; a row with an image carries exactly one
`<image>` placeholder, in its first human turn, and a row without one carries none. `answer` is the last gpt turn
(what VQA accuracy scores); `question_type` groups rows for per-type scores ("conversation" when the source has none).

The loader reads the LLaVA JSON layout (one `.json` file holding a list of `{"id", "image": "relative/file.jpg",
"conversations": [...]}`, images beside it or under `image_folder`) or a Hub / `save_to_disk` dataset with the same
columns, whose image column holds images or file names relative to `image_folder`.
"""

import json
import os

from datasets import Dataset, DatasetDict, Features, Image, List, Value

from .loading import load_any_dataset

IMAGE_TOKEN = "<image>"
ROLES = ("human", "gpt")
DEFAULT_QUESTION_TYPE = "conversation"
# JSON files `save_to_disk` writes itself; a folder holding one of them is a saved dataset, not LLaVA JSON.
_SAVED_DATASET_FILES = ("dataset_dict.json", "dataset_info.json", "state.json")


def conversation_features() -> Features:
    """The `datasets.Features` of a conversation dataset (the shapes VQA set and caption conversations too)."""
    return Features(
        {
            "id": Value("string"),
            "image": Image(),
            "conversations": List({"from": Value("string"), "value": Value("string")}),
            "question_type": Value("string"),
            "answer": Value("string"),
        }
    )


def _check_turns(turns, has_image: bool) -> None:
    """Raises a ValueError (without the row's name) for the first fault of one row's turns."""
    if not isinstance(turns, (list, tuple)) or not turns:
        raise ValueError(f"'conversations' must be a non-empty list of turns, got {turns!r}")
    images_seen = 0
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict) or not all(isinstance(turn.get(key), str) for key in ("from", "value")):
            raise ValueError(f"turn {index} must be a dict with string 'from' and 'value', got {turn!r}")
        expected = ROLES[index % 2]
        if turn["from"] != expected:
            raise ValueError(
                f"turn {index} is from {turn['from']!r}, expected {expected!r} (turns alternate human/gpt, "
                "starting with human)"
            )
        count = turn["value"].count(IMAGE_TOKEN)
        if count and not has_image:
            raise ValueError(f"turn {index} has an {IMAGE_TOKEN} token but the row has no image")
        if count and index > 0:
            raise ValueError(f"turn {index} has an {IMAGE_TOKEN} token; it belongs in the first human turn only")
        images_seen += count
    if images_seen > 1:
        raise ValueError(f"more than one {IMAGE_TOKEN} token ({images_seen}); a row has one image")
    if has_image and not images_seen:
        raise ValueError(f"no {IMAGE_TOKEN} token in the first human turn, but the row has an image")
    if len(turns) % 2:
        raise ValueError("the conversation ends with a human turn; it needs the gpt answer after it")


def check_conversations(rows) -> None:
    """Checks rows of the schema above (mappings with "conversations" and, when they show an image, a non-empty
    "image"); the ValueError names the row (its "id", else its index) and the fault."""
    for index, row in enumerate(rows):
        try:
            _check_turns(row.get("conversations"), row.get("image") not in (None, ""))
        except ValueError as err:
            name = row.get("id", index)
            raise ValueError(f"conversation {name!r}: {err}") from None


def _answer(turns) -> str:
    return turns[-1]["value"]


def _resolve_image(relative: str, image_folder: str, name) -> str:
    """The path of a row's image file inside `image_folder`; refuses absolute paths, escapes and missing files."""
    if os.path.isabs(relative) or os.path.normpath(relative).split(os.sep)[0] == os.pardir:
        raise ValueError(f"conversation {name!r}: image path {relative!r} must be relative to the image folder")
    path = os.path.join(image_folder, relative)
    if not os.path.isfile(path):
        raise ValueError(f"conversation {name!r}: image file {relative!r} not found in {image_folder!r}")
    return path


def conversation_dataset(images: Dataset, rows: list[dict]) -> Dataset:
    """A dataset of the schema from a one-column `images` dataset (an `Image` column, `None` for rows without one)
    and one checked row per image: its "conversations", optional "id" (default: its index) and "question_type";
    "answer" is the last gpt turn."""
    dataset = images
    columns = {
        "id": [str(row.get("id", index)) for index, row in enumerate(rows)],
        "conversations": [[{"from": t["from"], "value": t["value"]} for t in row["conversations"]] for row in rows],
        "question_type": [row.get("question_type") or DEFAULT_QUESTION_TYPE for row in rows],
        "answer": [_answer(row["conversations"]) for row in rows],
    }
    features = conversation_features()
    for name, values in columns.items():
        dataset = dataset.add_column(name, values, feature=features[name])
    return dataset.select_columns(list(features))


def _image_paths(rows: list[dict], image_folder: str) -> Dataset:
    paths = [
        _resolve_image(row["image"], image_folder, row.get("id", index)) if row.get("image") else None
        for index, row in enumerate(rows)
    ]
    return Dataset.from_dict({"image": paths}, features=Features({"image": Image()}))


def _from_llava_json(path: str, image_folder: str) -> Dataset:
    name = os.path.basename(path)
    if os.path.getsize(path) == 0:
        raise ValueError(f"{name} is empty; expected a JSON list of conversations")
    with open(path, encoding="utf-8") as f:
        try:
            rows = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{name} is not valid JSON: {err}") from None
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise ValueError(f"{name} must hold a JSON list of conversation objects")
    if not rows:
        raise ValueError(f"{name} holds no conversations (an empty list)")
    check_conversations(rows)
    return conversation_dataset(_image_paths(rows, image_folder), rows)


def _from_columns(dataset: Dataset, image_folder: str | None) -> Dataset:
    """A Hub / saved dataset with LLaVA columns in the schema; its image column is kept as stored (not decoded)."""
    if "conversations" not in dataset.column_names:
        raise ValueError(f"dataset has no 'conversations' column; columns: {dataset.column_names}")
    image_feature = dataset.features.get("image")
    fields = [c for c in ("id", "conversations", "question_type") if c in dataset.column_names]
    if isinstance(image_feature, Image):
        images = dataset.select_columns(["image"])
        stored = images.cast_column("image", Image(decode=False))["image"]
        rows = [dict(row, image=image) for row, image in zip(dataset.select_columns(fields).to_list(), stored)]
        check_conversations(rows)
        return conversation_dataset(images, rows)
    if image_feature is not None and image_feature != Value("string"):
        raise ValueError(f"the image column must hold images or file names, got {image_feature}")
    rows = dataset.select_columns(fields + (["image"] if image_feature is not None else [])).to_list()
    check_conversations(rows)
    if image_feature is not None and image_folder is None and any(row["image"] for row in rows):
        raise ValueError("the dataset's image column holds file names: pass image_folder, the folder they are in")
    return conversation_dataset(_image_paths(rows, image_folder), rows)


def _llava_json_file(name_or_path: str) -> str | None:
    """The LLaVA JSON file `name_or_path` names (the file itself, or the one `.json` file of a folder), else None."""
    if os.path.isfile(name_or_path) and name_or_path.endswith(".json"):
        return name_or_path
    if not os.path.isdir(name_or_path):
        return None
    found = sorted(
        name for name in os.listdir(name_or_path) if name.endswith(".json") and name not in _SAVED_DATASET_FILES
    )
    if any(os.path.exists(os.path.join(name_or_path, name)) for name in _SAVED_DATASET_FILES) or not found:
        return None
    if len(found) > 1:
        raise ValueError(f"folder {name_or_path!r} holds several .json files {found}; name the one to load")
    return os.path.join(name_or_path, found[0])


def load_conversation_dataset(name_or_path: str, split: str | None = None,
                              image_folder: str | None = None) -> Dataset | DatasetDict:
    """LLaVA-format conversations in the schema above: a `DatasetDict` (a local JSON file becomes its "train"
    split), or its `split` when one is named.

    `name_or_path` is a `.json` file, a folder holding one `.json` file and the images, a `save_to_disk` folder or a
    Hub dataset name. Image paths are relative to `image_folder`, by default the JSON file's folder. Rows are checked
    (`check_conversations`) and every image file must exist; the ValueError names the row and the fault.
    """
    if not isinstance(name_or_path, str) or not name_or_path:
        raise ValueError(f"name_or_path must be a non-empty string, got {name_or_path!r}")
    if image_folder is not None and not os.path.isdir(image_folder):
        raise ValueError(f"image_folder {image_folder!r} is not a folder")
    json_file = _llava_json_file(name_or_path)
    if json_file:
        data = DatasetDict(train=_from_llava_json(json_file, image_folder or os.path.dirname(json_file)))
    else:
        data = load_any_dataset(name_or_path)
        data = DatasetDict({name: _from_columns(dataset, image_folder) for name, dataset in data.items()})
    if split is None:
        return data
    if split not in data:
        raise ValueError(f"{name_or_path!r} has no split {split!r}; splits: {sorted(data)}")
    return data[split]
