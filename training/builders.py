"""Model + processor builders, one per family, reached through
`Family.build(model_args, config_overrides, ...) -> (model, processor)`.

Each says where its model comes from: a saved model (`model_name_or_path`), pretrained parts (CLIP, BLIP, GPT-Neo
checkpoints), or a fresh model of the family's config with the config overrides (a mapping, never changed here).
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModelForCausalLM, AutoTokenizer, BlipImageProcessorPil

from ..configuration.configuration_dtp_clip import DTPCLIPConfig
from ..configuration.configuration_dtp_llava import DTPLlavaConfig
from ..configuration.configuration_dtp_vit import DTPViTConfig
from ..configuration.configuration_gated_sparse_blip import GatedSparseBlipConfig
from ..configuration.configuration_qvision import QVisionConfig
from ..modeling.modeling_dtp_clip import DTPCLIPModel
from ..modeling.modeling_dtp_llava import DTPLlavaForConditionalGeneration
from ..modeling.modeling_dtp_vit import DTPViTForImageClassification, DTPViTModel
from ..modeling.modeling_gated_sparse_blip import GatedSparseBlipForConditionalGeneration
from ..modeling.modeling_qvision import QVisionForConditionalGeneration
from ..processing.processing_dtp_clip import DTPCLIPProcessor
from ..processing.processing_dtp_llava import DTPLlavaProcessor, add_chat_tokens
from ..processing.processing_dtp_vit import build_image_processor
from ..processing.processing_gated_sparse_blip import GatedSparseBlipProcessor
from ..processing.processing_qvision import QVisionProcessor
from .data.tokenizers import char_tokenizer, word_level_tokenizer


def build_dtp_vit(model_args, overrides: dict, labels: list[str]):
    """DTP-ViT classifier of `labels` + its image processor: loaded from `model_name_or_path` (overrides applied), or
    fresh from the overrides."""
    id2label = dict(enumerate(labels))
    label2id = {name: i for i, name in id2label.items()}
    overrides = dict(overrides, id2label=id2label, label2id=label2id)
    if model_args.model_name_or_path:
        model = DTPViTForImageClassification.from_pretrained(model_args.model_name_or_path, **overrides)
    else:
        model = DTPViTForImageClassification(DTPViTConfig(**overrides))
    return model, build_image_processor(model.config.image_size)


def build_dtp_clip(model_args, overrides: dict):
    """DTP-CLIP model + processor: from a saved model, from a transformers CLIP checkpoint (`init_from_clip`; the
    overrides' `vision_config` entries set compression rate, layer split, ...), or new (character tokenizer)."""
    overrides = dict(overrides)
    if model_args.model_name_or_path:
        model = DTPCLIPModel.from_pretrained(model_args.model_name_or_path)
        return model, DTPCLIPProcessor.from_pretrained(model_args.model_name_or_path)
    if model_args.init_from_clip:
        unknown = sorted(set(overrides) - {"vision_config"})
        if unknown:
            raise ValueError(f"with init_from_clip only `vision_config` overrides apply, got {unknown}")
        model = DTPCLIPModel.from_clip_pretrained(model_args.init_from_clip, **overrides.get("vision_config", {}))
        return model.train(), DTPCLIPProcessor.from_clip_pretrained(model_args.init_from_clip)
    text = dict(overrides.pop("text_config", None) or {})
    tokenizer = (
        AutoTokenizer.from_pretrained(model_args.tokenizer_name_or_path)
        if model_args.tokenizer_name_or_path
        else char_tokenizer(text.get("max_position_embeddings", 64))  # reads as many characters as the tower holds
    )
    text.update(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)
    text.setdefault("max_position_embeddings", min(tokenizer.model_max_length, 77))
    model = DTPCLIPModel(DTPCLIPConfig(text_config=text, **overrides))
    image_size = model_args.image_size or model.config.vision_config.image_size
    return model, DTPCLIPProcessor(build_image_processor(image_size), tokenizer)


def _vae_init_config(vae) -> dict:
    """The `AutoencoderKL(**kwargs)` arguments of a loaded diffusers VAE (its config minus private keys)."""
    return {key: value for key, value in dict(vae.config).items() if not key.startswith("_")}


def _load_with_overrides(model_class, processor_class, path: str, overrides: dict):
    """A saved captioner + processor, with config overrides applied (`text_config` entries to its text config)."""
    config = model_class.config_class.from_pretrained(path)
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
    overrides = dict(overrides)
    if model_args.model_name_or_path:
        return _load_with_overrides(
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
    overrides = dict(overrides)
    if model_args.model_name_or_path:
        return _load_with_overrides(
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


def load_vision_tower(name_or_path: str, **vision_overrides) -> DTPViTModel:
    """A DTP-ViT image tower from a DTP-CLIP model (its image tower as trained), a DTP-ViT model (a classifier's
    backbone) or a transformers CLIP checkpoint (ported by `DTPViTModel.from_clip_vision_pretrained`, exact at
    compression 1.0; `vision_overrides` set its compression rate, layer split, ...)."""
    model_type = AutoConfig.from_pretrained(name_or_path).model_type
    if model_type in ("clip", "clip_vision_model"):
        return DTPViTModel.from_clip_vision_pretrained(name_or_path, **vision_overrides)
    if vision_overrides:
        raise ValueError(f"vision_config overrides apply to a CLIP checkpoint, not to a trained {model_type} tower")
    if model_type == "dtp_clip":
        return DTPCLIPModel.from_pretrained(name_or_path).vision_model
    if model_type == "dtp_vit":
        return DTPViTModel.from_pretrained(name_or_path)
    raise ValueError(f"{name_or_path!r} is a {model_type!r} checkpoint, not a DTP-CLIP, DTP-ViT or CLIP one")


def build_dtp_llava(model_args, overrides: dict, train_texts: list[str]):
    """DTP-LLaVA model + processor.

    From `model_name_or_path` (a saved DTP-LLaVA, e.g. stage 1's output; overrides applied); else around pretrained
    parts, `vision_backbone` (DTP-CLIP / DTP-ViT / CLIP, see `load_vision_tower`) and `text_backbone` (any causal LM
    and its tokenizer; `add_chat_tokens` adds `<image>`, and the embeddings are resized; the processor keeps the
    tokenizer's own chat template when it has one); else fresh from the overrides (their `text_config` sizes the
    language model), with a word-level tokenizer of `train_texts` (or `tokenizer_name_or_path`), around the
    `vision_backbone` tower when that is given alone (a pretrained tower, the language model from scratch). The image
    processor is the vision checkpoint's, else CLIP's at the tower size.
    """
    overrides = dict(overrides)
    vision, text = model_args.vision_backbone, model_args.text_backbone
    if model_args.model_name_or_path:
        if vision or text:
            raise ValueError(
                "dtp_llava: give either `model_name_or_path` (a saved DTP-LLaVA, whole) or pretrained parts "
                "(`vision_backbone`, `text_backbone`), not both"
            )
        return _load_with_overrides(
            DTPLlavaForConditionalGeneration, DTPLlavaProcessor, model_args.model_name_or_path, overrides
        )
    if text and not vision:
        raise ValueError("dtp_llava: a pretrained `text_backbone` needs a `vision_backbone` (DTP-CLIP, DTP-ViT, CLIP)")
    tower = load_vision_tower(vision, **overrides.pop("vision_config", None) or {}) if vision else None
    if text:
        if "text_config" in overrides:
            raise ValueError("`text_config` overrides conflict with a pretrained `text_backbone`")
        tokenizer = add_chat_tokens(AutoTokenizer.from_pretrained(text))
        language_model = AutoModelForCausalLM.from_pretrained(text)
        language_model.resize_token_embeddings(len(tokenizer))
        config = DTPLlavaConfig(
            vision_config=tower.config.to_dict(), text_config=language_model.config.to_dict(),
            image_token_id=tokenizer.convert_tokens_to_ids("<image>"), **overrides,
        )
        model = DTPLlavaForConditionalGeneration(config)
        model.language_model.load_state_dict(language_model.state_dict())
    else:
        # A fresh language model (the overrides' `text_config`), around the pretrained tower when one is given.
        if model_args.tokenizer_name_or_path:
            tokenizer = add_chat_tokens(AutoTokenizer.from_pretrained(model_args.tokenizer_name_or_path))
        else:
            tokenizer = add_chat_tokens(word_level_tokenizer(train_texts))
        text_config = dict(overrides.pop("text_config", None) or {})
        if not text_config:
            # transformers' default LlamaConfig is a 7B model: never what a from-scratch language model should be.
            raise ValueError(
                "dtp_llava: a language model trained from scratch needs its size in config_overrides' `text_config` "
                "(e.g. hidden_size, num_hidden_layers, as the shapes recipes give it), or a pretrained causal LM as "
                "`text_backbone`"
            )
        text_config.setdefault("model_type", "llama")
        text_config.update(
            vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        if tower is not None:
            overrides["vision_config"] = tower.config.to_dict()
        model = DTPLlavaForConditionalGeneration(
            DTPLlavaConfig(text_config=text_config, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                           **overrides)
        )
    if tower is not None:
        model.vision_tower.load_state_dict(tower.state_dict())
        try:
            image_processor = AutoImageProcessor.from_pretrained(vision)
        except OSError:
            image_processor = build_image_processor(model.config.vision_config.image_size)
    else:
        image_processor = build_image_processor(model_args.image_size or model.config.vision_config.image_size)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    # The tokenizer's own chat template (an instruct LM's) when it has one, else DEFAULT_CHAT_TEMPLATE.
    processor = DTPLlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                  chat_template=tokenizer.chat_template)
    return model, processor
