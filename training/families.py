"""The model families leanvision trains and exports: one registry read by `train.py`, `export` and the CLI."""

import json
import os
from dataclasses import dataclass, field
from typing import Callable

from transformers import AutoImageProcessor, AutoTokenizer, BlipImageProcessorPil

from ..configuration.configuration_dtp_clip import DTPCLIPConfig
from ..configuration.configuration_dtp_vit import DTPViTConfig
from ..configuration.configuration_gated_sparse_blip import GatedSparseBlipConfig
from ..configuration.configuration_qvision import QVisionConfig
from ..modeling.modeling_dtp_clip import DTPCLIPModel
from ..modeling.modeling_dtp_vit import DTPViTForImageClassification
from ..modeling.modeling_gated_sparse_blip import GatedSparseBlipForConditionalGeneration
from ..modeling.modeling_qvision import QVisionForConditionalGeneration
from ..processing.processing_dtp_clip import DTPCLIPProcessor
from ..processing.processing_dtp_vit import build_image_processor
from ..processing.processing_gated_sparse_blip import GatedSparseBlipProcessor
from ..processing.processing_qvision import QVisionProcessor
from .data.tokenizers import word_level_tokenizer


@dataclass(frozen=True)
class Family:
    """What train/export need to know about one model family.

    `auto_map` maps each Auto class to `module.Class` inside the flat export bundle; `load_processor` loads the
    processor saved next to a model. `processor_auto_map` goes into the exported processor_config.json
    (`{"AutoProcessor": "module.Class"}`) and `custom_pipelines` into the exported config.json. The modules these
    name are the bundle's entry points: export ships them and every module they import relatively.

    Captioning families (`task="captioning"`) also give `build_captioner(model_args, config_overrides,
    train_captions) -> (model, processor)`, and `latent_inputs=True` when the model reads VAE latents (image data
    are then encoded once by the model's VAE before training).
    """

    name: str
    config_class: type
    model_class: type
    auto_map: dict[str, str]
    pipeline_tag: str
    load_processor: Callable = AutoImageProcessor.from_pretrained
    task: str = ""
    processor_auto_map: dict[str, str] = field(default_factory=dict)
    custom_pipelines: dict[str, dict] = field(default_factory=dict)
    build_captioner: Callable | None = None
    latent_inputs: bool = False


def image_to_text_pipeline_entry(model_auto_class: str) -> dict[str, dict]:
    """`custom_pipelines` of config.json: "image-to-text" served by the flat `pipeline_image_to_text` module."""
    return {
        "image-to-text": {
            "impl": "pipeline_image_to_text.ImageToTextPipeline",
            "pt": [model_auto_class],
            "type": "multimodal",
        }
    }


def _vae_init_config(vae) -> dict:
    """The `AutoencoderKL(**kwargs)` arguments of a loaded diffusers VAE (its config minus private keys)."""
    return {key: value for key, value in dict(vae.config).items() if not key.startswith("_")}


def load_captioner_with_overrides(model_class, processor_class, path: str, overrides: dict):
    """A saved captioner + processor, with config overrides applied (`text_config` entries to its text config)."""
    config = model_class.config_class.from_pretrained(path)
    overrides = dict(overrides)
    for key, value in (overrides.pop("text_config", None) or {}).items():
        setattr(config.text_config, key, value)
    for key, value in overrides.items():
        setattr(config, key, value)
    config.validate()
    return model_class.from_pretrained(path, config=config), processor_class.from_pretrained(path)


def build_gated_sparse_blip(model_args, overrides: dict, train_captions: list[str]):
    """GatedSparseBlip model + processor.

    From `model_name_or_path` (config overrides applied to its config, `text_config` entries to its text config);
    else a fresh model whose text decoder and tokenizer come from `init_from_blip` (a BLIP captioning checkpoint), or
    are new (tokenizer from `tokenizer_name_or_path`, or a word-level vocabulary of the training captions).
    `vae_name_or_path` loads a diffusers VAE (config, scaling factor and weights) into the model.
    """
    if model_args.model_name_or_path:
        return load_captioner_with_overrides(
            GatedSparseBlipForConditionalGeneration, GatedSparseBlipProcessor, model_args.model_name_or_path, overrides
        )

    vae = None
    if model_args.vae_name_or_path:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(model_args.vae_name_or_path)
        overrides.setdefault("vae_config", _vae_init_config(vae))
        overrides.setdefault("vae_scaling_factor", float(vae.config.scaling_factor))
    if model_args.init_from_blip:
        model = GatedSparseBlipForConditionalGeneration.from_blip_pretrained(model_args.init_from_blip, **overrides)
        tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name_or_path or model_args.init_from_blip)
    else:
        if model_args.tokenizer_name_or_path:
            tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name_or_path)
            if tokenizer.bos_token is None:
                tokenizer.add_special_tokens({"bos_token": "[DEC]"})
        else:
            tokenizer = word_level_tokenizer(train_captions)
        text_config = dict(overrides.pop("text_config", None) or {})
        text_config.update(
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            sep_token_id=tokenizer.sep_token_id,
            eos_token_id=tokenizer.sep_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        model = GatedSparseBlipForConditionalGeneration(GatedSparseBlipConfig(text_config=text_config, **overrides))
        tokenizer.model_max_length = model.config.text_config.max_position_embeddings
    if vae is not None:
        model.model.vae.load_state_dict(vae.state_dict())
    vae_config = model.config.vae_config or {}
    image_size = model_args.image_size or vae_config.get("sample_size") or 256
    image_processor = BlipImageProcessorPil(
        size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    return model, GatedSparseBlipProcessor(image_processor=image_processor, tokenizer=tokenizer)


def build_qvision(model_args, overrides: dict, train_captions: list[str]):
    """QVisionMultiModel model + processor.

    From `model_name_or_path` (config overrides applied); else around a pretrained CLIP and GPT-Neo
    (`vision_backbone` + `text_backbone`, both needed), their image processor and tokenizer; else a fresh model
    whose tokenizer comes from `tokenizer_name_or_path` or is a word-level vocabulary of the training captions
    (`[DEC]` starts, `[SEP]` ends a caption).
    """
    if model_args.model_name_or_path:
        return load_captioner_with_overrides(
            QVisionForConditionalGeneration, QVisionProcessor, model_args.model_name_or_path, overrides
        )
    vision, text = model_args.vision_backbone, model_args.text_backbone
    if vision or text:
        if not (vision and text):
            raise ValueError("qvision_multimodel needs both `vision_backbone` (CLIP) and `text_backbone` (GPT-Neo)")
        if "vision_config" in overrides or "text_config" in overrides:
            raise ValueError("`vision_config` / `text_config` overrides conflict with pretrained backbones")
        model = QVisionForConditionalGeneration.from_pretrained_backbones(vision=vision, text=text, **overrides)
        return model, QVisionProcessor.from_pretrained_backbones(vision=vision, text=text)
    if model_args.tokenizer_name_or_path:
        tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name_or_path)
    else:
        tokenizer = word_level_tokenizer(train_captions)
        tokenizer.add_special_tokens({"eos_token": "[SEP]"})
    text_config = dict(overrides.pop("text_config", None) or {})
    text_config.update(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    model = QVisionForConditionalGeneration(QVisionConfig(text_config=text_config, **overrides))
    tokenizer.model_max_length = model.config.text_config.max_position_embeddings
    image_size = model_args.image_size or model.config.vision_config.image_size
    return model, QVisionProcessor(build_image_processor(image_size), tokenizer)


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
        processor_auto_map={"AutoProcessor": "processing_dtp_clip.DTPCLIPProcessor"},
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
        processor_auto_map={"AutoProcessor": "processing_gated_sparse_blip.GatedSparseBlipProcessor"},
        custom_pipelines=image_to_text_pipeline_entry("AutoModelForImageTextToText"),
        build_captioner=build_gated_sparse_blip,
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
        processor_auto_map={"AutoProcessor": "processing_qvision.QVisionProcessor"},
        custom_pipelines=image_to_text_pipeline_entry("AutoModelForImageTextToText"),
        build_captioner=build_qvision,
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


def load_saved(model_dir: str) -> tuple[Family, object, object]:
    """(family, model in eval mode, processor) of a saved or exported model folder, with clear errors for a
    corrupted weights file and for missing processor files."""
    from safetensors import SafetensorError

    family = family_of_model_dir(model_dir)
    try:
        model = family.model_class.from_pretrained(model_dir).eval()
    except SafetensorError as err:
        raise ValueError(f"the weights in {model_dir!r} (model.safetensors) are corrupted or incomplete: {err}") from None
    try:
        processor = family.load_processor(model_dir)
    except OSError as err:
        raise ValueError(
            f"{model_dir!r} has no usable processor files (processor_config.json / preprocessor_config.json and the "
            f"tokenizer files): {str(err).splitlines()[0]}"
        ) from None
    return family, model, processor

