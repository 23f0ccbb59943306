"""Image-text data for the contrastive task (DTP-CLIP).

Sources: the built-in single-object shapes set (default; every image has five paraphrased captions; zero-shot classes
are the 18 "<colour> <shape>" names, prompted with `zero_shot_template`, by default "a photo of a red circle"), the
built-in "shapes_scenes" (one to three shapes per image, captions naming each with its position; no zero-shot classes:
a tower for DTP-LLaVA's questions about several objects), a Hub or local dataset with an image and a caption column,
or webdataset tar shards (LAION format: `{key}.jpg` + `{key}.txt`). An eval split with a ClassLabel `label_column` is
also scored zero-shot with `zero_shot_template`.
"""

import glob
import os

from datasets import ClassLabel, load_dataset

from ..evaluation.zero_shot import prompts_for, shapes_prompts
from . import shapes
from .loading import load_any_dataset, training_splits

SCENES = "shapes_scenes"


def _webdataset_shards(name: str) -> list[str]:
    if os.path.isdir(name):
        return sorted(glob.glob(os.path.join(name, "*.tar")))
    return [name] if name.endswith(".tar") else []


def load_image_text_splits(data_args, seed: int):
    """(train, eval, caption column, image column, zero-shot spec or None) for the contrastive task.

    The zero-shot spec is `(label_column, prompts)` for an eval split with class labels.
    """
    name = data_args.dataset_name
    if not name or name == SCENES:
        data = shapes.shapes_splits(
            train=data_args.max_train_samples or 2000, test=data_args.max_eval_samples or 300, seed=seed,
            max_objects=3 if name else 1,
        )
        zero_shot = None if name else ("label_id", shapes_prompts(data_args.zero_shot_template))
        return data["train"], data["test"], "captions", "image", zero_shot
    shards = _webdataset_shards(name)
    data = load_dataset("webdataset", data_files={"train": shards}) if shards else load_any_dataset(
        name, data_args.dataset_config_name
    )
    train, evaluation = training_splits(data, data_args, seed)
    image_col = _column(train, data_args.image_column, ("jpg", "jpeg", "png", "webp"))
    caption_col = _column(train, data_args.caption_column, ("txt", "text", "caption", "captions"))
    labels = evaluation.features.get(data_args.label_column)
    zero_shot = None
    if isinstance(labels, ClassLabel):
        zero_shot = (data_args.label_column, prompts_for(labels.names, data_args.zero_shot_template))
    return train, evaluation, caption_col, image_col, zero_shot


def _column(dataset, preferred: str, fallbacks: tuple[str, ...]) -> str:
    for column in (preferred, *fallbacks):
        if column in dataset.column_names:
            return column
    raise ValueError(f"dataset has no column {preferred!r} (nor {list(fallbacks)}); columns: {dataset.column_names}")
