"""The model families leanvision trains and exports: one registry read by `train.py`, the tools, the Hub side and the
CLI, and the one lookup from a config's `model_type` (or a saved folder) to its family."""

import json
import os
from dataclasses import dataclass, field
from typing import Callable

from transformers import AutoImageProcessor

from ..configuration.configuration_dtp_clip import DTPCLIPConfig
from ..configuration.configuration_dtp_llava import DTPLlavaConfig
from ..configuration.configuration_dtp_vit import DTPViTConfig
from ..configuration.configuration_gated_sparse_blip import GatedSparseBlipConfig
from ..configuration.configuration_qvision import QVisionConfig
from ..modeling.modeling_dtp_clip import DTPCLIPModel
from ..modeling.modeling_dtp_llava import DTPLlavaForConditionalGeneration
from ..modeling.modeling_dtp_vit import DTPViTForImageClassification
from ..modeling.modeling_gated_sparse_blip import GatedSparseBlipForConditionalGeneration
from ..modeling.modeling_qvision import QVisionForConditionalGeneration
from ..processing.processing_dtp_clip import DTPCLIPProcessor
from ..processing.processing_dtp_llava import DTPLlavaProcessor
from ..processing.processing_gated_sparse_blip import GatedSparseBlipProcessor
from ..processing.processing_qvision import QVisionProcessor
from .builders import build_dtp_clip, build_dtp_llava, build_dtp_vit, build_gated_sparse_blip, build_qvision


@dataclass(frozen=True)
class Family:
    """What train/export need to know about one model family. Its `name` is its config's `model_type`.

    `auto_map` maps each Auto class to `module.Class` inside the flat export bundle; `load_processor` loads the
    processor saved next to a model. `processor_auto_map` goes into the exported processor_config.json
    (`{"AutoProcessor": "module.Class"}`) and `custom_pipelines` into the exported config.json. The modules these
    name are the bundle's entry points: export ships them and every module they import relatively.

    `task` names the training task (`tasks.TASKS`), which calls `build(model_args, config_overrides, ...) -> (model,
    processor)` (see `builders.py`): with the class names for "image_classification", the training captions for
    "captioning", nothing more for "contrastive". `latent_inputs=True` marks a captioner that reads VAE latents (image data are
    then encoded once by the model's VAE before training).
    `pretrained_parts` maps a start flag that replaces one part of a fresh model to the `config_overrides` keys it
    replaces: given alone, the recipe's other overrides still describe the fresh rest; any other pretrained start (or
    several) replaces them all.
    """

    name: str
    config_class: type
    model_class: type
    auto_map: dict[str, str]
    pipeline_tag: str
    task: str = ""
    build: Callable | None = None
    load_processor: Callable = AutoImageProcessor.from_pretrained
    processor_auto_map: dict[str, str] = field(default_factory=dict)
    custom_pipelines: dict[str, dict] = field(default_factory=dict)
    latent_inputs: bool = False
    pretrained_parts: dict[str, tuple[str, ...]] = field(default_factory=dict)


def image_to_text_pipeline_entry(model_auto_class: str) -> dict[str, dict]:
    """`custom_pipelines` of config.json: "image-to-text" served by the flat `pipeline_image_to_text` module."""
    return {
        "image-to-text": {
            "impl": "pipeline_image_to_text.ImageToTextPipeline",
            "pt": [model_auto_class],
            "type": "multimodal",
        }
    }


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
        pipeline_tag="image-classification",
        task="image_classification",
        build=build_dtp_vit,
        # Images through the bundle's loader (16-bit PNGs scaled, URL timeout), empty input refused.
        custom_pipelines={
            "image-classification": {
                "impl": "pipeline_image_classification.ImageClassificationPipeline",
                "pt": ["AutoModelForImageClassification"],
                "type": "image",
            }
        },
    ),
    "dtp_clip": Family(
        name="dtp_clip",
        config_class=DTPCLIPConfig,
        model_class=DTPCLIPModel,
        auto_map={
            "AutoConfig": "configuration_dtp_clip.DTPCLIPConfig",
            "AutoModel": "modeling_dtp_clip.DTPCLIPModel",
            "AutoModelForZeroShotImageClassification": "modeling_dtp_clip.DTPCLIPModel",
        },
        pipeline_tag="zero-shot-image-classification",
        load_processor=DTPCLIPProcessor.from_pretrained,
        task="contrastive",
        build=build_dtp_clip,
        processor_auto_map={"AutoProcessor": "processing_dtp_clip.DTPCLIPProcessor"},
        # Labels given as one comma-separated string, empty labels refused, leanvision's image loader.
        custom_pipelines={
            "zero-shot-image-classification": {
                "impl": "pipeline_zero_shot.ZeroShotImageClassificationPipeline",
                "pt": ["AutoModelForZeroShotImageClassification"],
                "type": "multimodal",
            }
        },
    ),
    "gated_sparse_blip": Family(
        name="gated_sparse_blip",
        config_class=GatedSparseBlipConfig,
        model_class=GatedSparseBlipForConditionalGeneration,
        auto_map={
            "AutoConfig": "configuration_gated_sparse_blip.GatedSparseBlipConfig",
            "AutoModel": "modeling_gated_sparse_blip.GatedSparseBlipModel",
            "AutoModelForImageTextToText": "modeling_gated_sparse_blip.GatedSparseBlipForConditionalGeneration",
        },
        pipeline_tag="image-to-text",
        load_processor=GatedSparseBlipProcessor.from_pretrained,
        task="captioning",
        build=build_gated_sparse_blip,
        processor_auto_map={"AutoProcessor": "processing_gated_sparse_blip.GatedSparseBlipProcessor"},
        custom_pipelines=image_to_text_pipeline_entry("AutoModelForImageTextToText"),
        latent_inputs=True,
    ),
    "qvision_multimodel": Family(
        name="qvision_multimodel",
        config_class=QVisionConfig,
        model_class=QVisionForConditionalGeneration,
        auto_map={
            "AutoConfig": "configuration_qvision.QVisionConfig",
            "AutoModel": "modeling_qvision.QVisionModel",
            "AutoModelForImageTextToText": "modeling_qvision.QVisionForConditionalGeneration",
        },
        pipeline_tag="image-to-text",
        load_processor=QVisionProcessor.from_pretrained,
        task="captioning",
        build=build_qvision,
        processor_auto_map={"AutoProcessor": "processing_qvision.QVisionProcessor"},
        custom_pipelines=image_to_text_pipeline_entry("AutoModelForImageTextToText"),
    ),
    "dtp_llava": Family(
        name="dtp_llava",
        config_class=DTPLlavaConfig,
        model_class=DTPLlavaForConditionalGeneration,
        auto_map={
            "AutoConfig": "configuration_dtp_llava.DTPLlavaConfig",
            "AutoModelForImageTextToText": "modeling_dtp_llava.DTPLlavaForConditionalGeneration",
        },
        pipeline_tag="image-text-to-text",
        load_processor=DTPLlavaProcessor.from_pretrained,
        task="visual_instruction",
        build=build_dtp_llava,
        # A pretrained tower alone keeps the recipe's fresh language model (its `text_config`).
        pretrained_parts={"vision_backbone": ("vision_config",)},
        processor_auto_map={"AutoProcessor": "processing_dtp_llava.DTPLlavaProcessor"},
    ),
}


def get_family(name: str) -> Family:
    """The family called `name`, which is also its config's `model_type`."""
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


def load_saved(model_dir: str) -> tuple[Family, object, object]:
    """(family, model in eval mode, processor) of a saved or exported model folder, with clear errors for a
    corrupted weights file and for missing processor files."""
    from huggingface_hub.errors import StrictDataclassError
    from safetensors import SafetensorError
    from transformers.utils import logging as transformers_logging

    family = family_of_model_dir(model_dir)
    # No "Loading weights" bar on the tools' console: a local folder loads in a blink.
    bar = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        model = family.model_class.from_pretrained(model_dir).eval()
    except SafetensorError as err:
        raise ValueError(f"the weights in {model_dir!r} (model.safetensors) are corrupted or incomplete: {err}") from None
    except StrictDataclassError as err:
        raise ValueError(f"config.json in {model_dir!r} is invalid: {' '.join(str(err).split())}") from None
    finally:
        if bar:
            transformers_logging.enable_progress_bar()
    try:
        processor = family.load_processor(model_dir)
    except OSError as err:
        raise ValueError(
            f"{model_dir!r} has no usable processor files (processor_config.json / preprocessor_config.json and the "
            f"tokenizer files): {str(err).splitlines()[0]}"
        ) from None
    return family, model, processor

