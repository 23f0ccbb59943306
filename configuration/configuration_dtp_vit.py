"""Configuration of DTP-ViT: a Vision Transformer with Dynamic Token Pooling (Nawrot et al., 2023)."""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig


@strict
class DTPViTConfig(PreTrainedConfig):
    r"""
    Configuration of a [`DTPViTModel`]. The defaults give ViT-B/32 widths: 224x224 images, 32x32 patches,
    768 hidden units, 12 heads, 2 pre-layers and 10 shortened layers.

    Layout: patch embedding (+ CLS token and positions) -> `num_pre_layers` transformer layers -> boundary
    predictor over the patch tokens -> pooling of each segment to its mean -> `num_shortened_layers` layers ->
    final LayerNorm -> pooler (`"mean"` over valid segments, or `"cls"`).

    Args:
        image_size (`int`): input resolution (square).
        patch_size (`int`): patch side; `image_size` must be divisible by it.
        num_channels (`int`): image channels.
        hidden_size, num_attention_heads, intermediate_size, hidden_act, layer_norm_eps: transformer widths.
        hidden_dropout_prob, attention_probs_dropout_prob: dropout rates.
        num_pre_layers (`int`): layers on the full patch sequence before pooling.
        num_shortened_layers (`int`): layers on the pooled (shortened) sequence.
        compression_rate (`float`): prior probability of a boundary, 0 < r <= 1. A sequence of T patches keeps
            about r*T segments; r = 1 keeps every patch (no pooling, a dense ViT).
        boundary_temperature (`float`): temperature of the Gumbel-sigmoid in training (0.5 in the official code).
        boundary_temperature_final (`float`, *optional*): when set, training anneals the temperature from
            `boundary_temperature` at the first step to this value at the last (`BoundaryTemperatureCallback`, which
            `training/train.py` adds); `None` keeps it constant.
        boundary_temperature_schedule (`str`): the anneal's shape, `"linear"` or `"cosine"`.
        boundary_predictor_hidden_size (`int`, *optional*): hidden width of the boundary MLP; default 4 x
            hidden_size, the official dynamic-pooling code's `d_inner`.
        boundary_loss_weight (`float`): weight of the binomial boundary loss in the total loss.
        boundary_inference (`str`): how eval mode picks boundaries, deterministically (the official code keeps
            sampling Gumbel noise at evaluation for this predictor). `"rate"`: the round(compression_rate * T) most
            probable patches (the compression the model was trained for, whatever the spread of the
            probabilities). `"threshold"`: every patch with p > 0.5 (the rule the official code uses for its
            entropy / unigram predictors; it keeps the trained rate only once p is near 0 or 1), or p >
            `boundary_threshold` when set: each image then gets its own token count.
        boundary_threshold (`float`): the `"threshold"` mode's cut on p, 0.5 by default;
            `calibrate_boundary_threshold` fits it on held-out images so that their mean boundary rate equals
            `compression_rate`.
        inference_chunk_size (`int`, *optional*): at inference (eval mode, no hidden states or attentions asked
            for), the stages before the shortened layers run on chunks of this many images, so full-length
            activations exist for one chunk at a time and peak memory falls with compression; in the
            `"threshold"` mode the shortened layers run on chunks of images sorted by token count, each trimmed to
            its longest row (bounded padding). `None` runs the whole batch at once.
        pre_layernorm (`bool`): LayerNorm after the embeddings (CLIP's `pre_layrnorm`).
        pooler_type (`str`): `"mean"` (masked mean of the final segment tokens) or `"cls"` (the CLS token).
        initializer_range (`float`): std of the truncated-normal weight init.
    """

    model_type = "dtp_vit"
    # Trainer's evaluation keeps only `logits` and `boundary_ratio` from the outputs.
    keys_to_ignore_at_inference = ["boundaries", "segment_mask", "boundary_loss", "hidden_states", "attentions"]

    image_size: int = 224
    patch_size: int = 32
    num_channels: int = 3
    hidden_size: int = 768
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: int | float = 1e-6
    hidden_dropout_prob: int | float = 0.0
    attention_probs_dropout_prob: int | float = 0.0
    num_pre_layers: int = 2
    num_shortened_layers: int = 10
    compression_rate: int | float = 0.5
    boundary_temperature: int | float = 0.5
    boundary_temperature_final: int | float | None = None
    boundary_temperature_schedule: str = "linear"
    boundary_predictor_hidden_size: int | None = None
    boundary_loss_weight: int | float = 1.0
    boundary_inference: str = "rate"
    boundary_threshold: int | float = 0.5
    inference_chunk_size: int | None = 32
    pre_layernorm: bool = False
    pooler_type: str = "mean"
    initializer_range: int | float = 0.02

    def __post_init__(self, **kwargs):
        if self.boundary_predictor_hidden_size is None:
            self.boundary_predictor_hidden_size = 4 * self.hidden_size
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Part of `@strict`-powered validation: sizes, rates and choices."""
        positive = ("image_size", "patch_size", "num_channels", "hidden_size", "num_attention_heads",
                    "intermediate_size", "boundary_predictor_hidden_size")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"DTPViTConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("num_pre_layers", "num_shortened_layers"):
            if getattr(self, name) < 0:
                raise ValueError(f"DTPViTConfig.{name} must be a non-negative integer, got {getattr(self, name)!r}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"DTPViTConfig.image_size ({self.image_size}) must be divisible by patch_size ({self.patch_size})"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"DTPViTConfig.hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        if not 0.0 < self.compression_rate <= 1.0:
            raise ValueError(f"DTPViTConfig.compression_rate must be in (0, 1], got {self.compression_rate!r}")
        if not self.boundary_temperature > 0.0:
            raise ValueError(f"DTPViTConfig.boundary_temperature must be > 0, got {self.boundary_temperature!r}")
        if self.boundary_temperature_final is not None and not self.boundary_temperature_final > 0.0:
            raise ValueError(
                f"DTPViTConfig.boundary_temperature_final must be > 0 or None, got {self.boundary_temperature_final!r}"
            )
        if self.boundary_temperature_schedule not in ("linear", "cosine"):
            raise ValueError(
                "DTPViTConfig.boundary_temperature_schedule must be 'linear' or 'cosine', "
                f"got {self.boundary_temperature_schedule!r}"
            )
        if self.boundary_loss_weight < 0.0:
            raise ValueError(f"DTPViTConfig.boundary_loss_weight must be >= 0, got {self.boundary_loss_weight!r}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"DTPViTConfig.{name} must be in [0, 1), got {getattr(self, name)!r}")
        if self.boundary_inference not in ("rate", "threshold"):
            raise ValueError(
                f"DTPViTConfig.boundary_inference must be 'rate' or 'threshold', got {self.boundary_inference!r}"
            )
        if not 0.0 < self.boundary_threshold < 1.0:
            raise ValueError(f"DTPViTConfig.boundary_threshold must be in (0, 1), got {self.boundary_threshold!r}")
        if self.inference_chunk_size is not None and self.inference_chunk_size < 1:
            raise ValueError(
                "DTPViTConfig.inference_chunk_size must be a positive integer or None, "
                f"got {self.inference_chunk_size!r}"
            )
        if self.pooler_type not in ("mean", "cls"):
            raise ValueError(f"DTPViTConfig.pooler_type must be 'mean' or 'cls', got {self.pooler_type!r}")

    @property
    def num_hidden_layers(self) -> int:
        return self.num_pre_layers + self.num_shortened_layers

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


__all__ = ["DTPViTConfig"]
