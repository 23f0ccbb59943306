"""The model families leanvision trains and exports: one registry read by `train.py`, `export` and the CLI."""

import json
import os
from dataclasses import dataclass, field
from typing import Callable

from transformers import AutoImageProcessor

from ..configuration.configuration_dtp_vit import DTPViTConfig
from ..modeling.modeling_dtp_vit import DTPViTForImageClassification


@dataclass(frozen=True)
class Family:
    """What train/export need to know about one model family.

    `source_files` are package-relative modules copied flat into an export; `auto_map` maps each Auto class to
    `module.Class` inside that flat bundle; `load_processor` loads the processor saved next to a model.
    """

    name: str
    config_class: type
    model_class: type
    auto_map: dict[str, str]
    source_files: tuple[str, ...]
    pipeline_tag: str
    load_processor: Callable = AutoImageProcessor.from_pretrained
    task: str = ""
    extra: dict = field(default_factory=dict)


FAMILIES: dict[str, Family] = {
    "dtp_vit": Family(
        name="dtp_vit",
        config_class=DTPViTConfig,
        model_class=DTPViTForImageClassification,
        auto_map={
            "AutoConfig": "configuration_dtp_vit.DTPViTConfig",
            "AutoModel": "modeling_dtp_vit.DTPViTModel",
            "AutoModelForImageClassification": "modeling_dtp_vit.DTPViTForImageClassification",
        },
        source_files=("configuration/configuration_dtp_vit.py", "modeling/modeling_dtp_vit.py"),
        pipeline_tag="image-classification",
        task="image_classification",
    ),
}


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; known families: {sorted(FAMILIES)}")
    return FAMILIES[name]


def family_of_model_dir(model_dir: str) -> Family:
    """The family of a saved model folder, read from its config.json `model_type`."""
    config_path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(config_path):
        raise ValueError(f"{model_dir!r} is not a saved model folder: config.json is missing")
    try:
        with open(config_path) as f:
            model_type = json.load(f).get("model_type")
    except json.JSONDecodeError as err:
        raise ValueError(f"config.json in {model_dir!r} is not valid JSON: {err}") from None
    return get_family(model_type)
