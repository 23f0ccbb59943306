"""Configuration of DTP-CLIP: a CLIP whose image tower is a DTP-ViT (Vision Transformer with Dynamic Token Pooling)."""

import math

from huggingface_hub.dataclasses import strict
from transformers import CLIPTextConfig, PreTrainedConfig

from ..configuration.configuration_common import FullSubConfigsMixin
from ..configuration.configuration_dtp_vit import DTPViTConfig


@strict
class DTPCLIPConfig(FullSubConfigsMixin, PreTrainedConfig):
    r"""
    Configuration of a [`DTPCLIPModel`]: a DTP-ViT image tower and a CLIP text tower, each projected (without bias)
    to `projection_dim`, compared by cosine similarity times a learned temperature `exp(logit_scale)`.

    Args:
        vision_config (`dict` or [`DTPViTConfig`], *optional*): the image tower (ViT-B/32 widths by default).
        text_config (`dict` or `CLIPTextConfig`, *optional*): the text tower (CLIP's defaults by default).
        projection_dim (`int`): width of the shared image-text embedding space.
        logit_scale_init_value (`float`): initial `logit_scale` (CLIP's log(1 / 0.07) = 2.6592).
        initializer_factor (`float`): scale of the projection init (std = factor * width**-0.5, as CLIP).

    The total loss is the symmetric InfoNCE loss plus `vision_config.boundary_loss_weight` times the boundary loss.
    Both sub-configs are written in full to `config.json`.
    """

    model_type = "dtp_clip"
    sub_configs_defaults = {"text_config": CLIPTextConfig, "vision_config": DTPViTConfig}
    # Trainer's evaluation keeps the logits and the per-image boundary ratio.
    keys_to_ignore_at_inference = [
        "text_embeds", "image_embeds", "boundaries", "boundary_loss", "contrastive_loss", "text_model_output",
        "vision_model_output",
    ]

    text_config: dict | CLIPTextConfig | None = None
    vision_config: dict | DTPViTConfig | None = None
    projection_dim: int = 512
    logit_scale_init_value: int | float = 2.6592
    initializer_factor: int | float = 1.0

    def validate_architecture(self):
        """Part of `@strict`-powered validation. Sub-configs are checked by model_type: a remotely loaded
        DTPViTConfig is another class object."""
        if getattr(self.vision_config, "model_type", None) != DTPViTConfig.model_type:
            raise ValueError(f"DTPCLIPConfig.vision_config must be a DTPViTConfig, got {type(self.vision_config)}")
        if getattr(self.text_config, "model_type", None) != CLIPTextConfig.model_type:
            raise ValueError(f"DTPCLIPConfig.text_config must be a CLIPTextConfig, got {type(self.text_config)}")
        if self.projection_dim <= 0:
            raise ValueError(f"DTPCLIPConfig.projection_dim must be a positive integer, got {self.projection_dim!r}")
        if not math.isfinite(self.logit_scale_init_value):
            raise ValueError(
                f"DTPCLIPConfig.logit_scale_init_value must be a finite number, got {self.logit_scale_init_value!r}"
            )
        if not self.initializer_factor > 0.0:
            raise ValueError(f"DTPCLIPConfig.initializer_factor must be > 0, got {self.initializer_factor!r}")


__all__ = ["DTPCLIPConfig"]
