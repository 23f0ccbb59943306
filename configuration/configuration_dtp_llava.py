"""Configuration of DTP-LLaVA: a LLaVA-style assistant whose vision tower is a DTP-ViT (Dynamic Token Pooling)."""

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from ..configuration.configuration_common import FullSubConfigsMixin
from ..configuration.configuration_dtp_vit import DTPViTConfig


@strict
class DTPLlavaConfig(FullSubConfigsMixin, PreTrainedConfig):
    r"""
    Configuration of a [`DTPLlavaForConditionalGeneration`]: DTP-ViT image tower -> multi-modal projector (LLaVA-1.5's
    MLP) -> any causal language model. Each `<image>` token of the prompt stands for one image and is replaced by that
    image's own visual tokens: the tower's segments (about `vision_config.compression_rate` x the patches), the CLS
    token too with `vision_feature_select_strategy="full"`.

    Args:
        vision_config (`dict` or [`DTPViTConfig`], *optional*): the image tower (ViT-B/32 widths by default).
        text_config (`dict` or `PreTrainedConfig`, *optional*): the language model, any config with a causal-LM class
            in `AutoModelForCausalLM` (`{"model_type": "qwen2", ...}`); a Llama config by default.
        image_token_id (`int`, *optional*): id of the `<image>` token in the tokenizer; required to build a model.
        vision_feature_layer (`int`): which tower hidden state feeds the projector, indexed as the tower's
            `hidden_states` (0 = embeddings, -1 = the last layer's output after the final LayerNorm, -2 = the input of
            the last layer, LLaVA's choice). With pooling it must be a state after the pooling (index >=
            `vision_config.num_pre_layers`): the earlier ones are per patch.
        vision_feature_select_strategy (`str`): `"default"` drops the CLS token, `"full"` keeps it.
        projector_depth (`int`): linear layers of the projector (2 in LLaVA-1.5), with `projector_hidden_act` between.
        projector_hidden_act (`str`): activation between projector layers.
        multimodal_projector_bias (`bool`): biases in the projector's linear layers.
        freeze_vision_tower (`bool`): keep the tower's weights fixed (LLaVA's stages 1 and 2); a frozen tower also stays
            in eval mode, so its boundaries are the deterministic inference ones in training too.
    """

    model_type = "dtp_llava"
    sub_configs_defaults = {
        "vision_config": DTPViTConfig,
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }
    keys_to_ignore_at_inference = ["cache", "hidden_states", "attentions", "image_hidden_states", "attention_mask"]

    vision_config: dict | DTPViTConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    image_token_id: int | None = None
    vision_feature_layer: int = -2
    vision_feature_select_strategy: str = "default"
    projector_depth: int = 2
    projector_hidden_act: str = "gelu"
    multimodal_projector_bias: bool = True
    freeze_vision_tower: bool = True

    def validate_architecture(self):
        """Part of `@strict`-powered validation. The tower is checked by model_type: a remotely loaded DTPViTConfig
        is another class object."""
        if getattr(self.vision_config, "model_type", None) != DTPViTConfig.model_type:
            raise ValueError(f"DTPLlavaConfig.vision_config must be a DTPViTConfig, got {type(self.vision_config)}")
        if not isinstance(self.text_config, PreTrainedConfig):
            raise ValueError(f"DTPLlavaConfig.text_config must be a transformers config, got {type(self.text_config)}")
        if self.vision_feature_select_strategy not in ("default", "full"):
            raise ValueError(
                "DTPLlavaConfig.vision_feature_select_strategy must be 'default' or 'full', got "
                f"{self.vision_feature_select_strategy!r}"
            )
        num_states = self.vision_config.num_hidden_layers + 1
        if not -num_states <= self.vision_feature_layer < num_states:
            raise ValueError(
                f"DTPLlavaConfig.vision_feature_layer must index the tower's {num_states} hidden states "
                f"([{-num_states}, {num_states - 1}]), got {self.vision_feature_layer}"
            )
        layer = self.vision_feature_layer % num_states
        if self.vision_config.compression_rate < 1.0 and layer < self.vision_config.num_pre_layers:
            raise ValueError(
                f"DTPLlavaConfig.vision_feature_layer {self.vision_feature_layer} selects a state before the token "
                f"pooling (the tower has {self.vision_config.num_pre_layers} pre-layers): choose one of "
                f"[{self.vision_config.num_pre_layers}, {num_states - 1}] or a negative index after them"
            )
        if self.projector_depth < 1:
            raise ValueError(f"DTPLlavaConfig.projector_depth must be >= 1, got {self.projector_depth}")
        if self.image_token_id is not None and self.image_token_id < 0:
            raise ValueError(f"DTPLlavaConfig.image_token_id must be >= 0, got {self.image_token_id}")


__all__ = ["DTPLlavaConfig"]
