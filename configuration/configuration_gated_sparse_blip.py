"""GatedSparseBlip configuration: a BLIP captioner over VAE latents with soft token gating and top-k attention."""

from huggingface_hub.dataclasses import strict
from transformers import BlipTextConfig, PreTrainedConfig


@strict
class GatedSparseBlipConfig(PreTrainedConfig):
    r"""
    Configuration of a [`GatedSparseBlipForConditionalGeneration`] model.

    The vision side is a small pre-LN transformer over VAE latents (SDXL-VAE style, `latent_channels x h x w`), the
    text side a BLIP text decoder (causal self-attention, cross-attention to the latent encoder, FFN) with an optional
    soft token gate in every layer and post-computation top-k sparse attention.

    The latent encoder width `vision_hidden_size` is the key/value input width of the decoder cross-attention:
    `text_config.encoder_hidden_size` is always overwritten with it (as `BlipConfig` does), so no projection is needed
    and a BLIP decoder whose `encoder_hidden_size` equals `vision_hidden_size` can be loaded unchanged.

    Args:
        text_config (`dict` or `BlipTextConfig`, *optional*):
            The BLIP text decoder configuration, stored in full inside this config. Its `label_smoothing` must be 0:
            the loss is transformers' causal-LM loss.
        latent_channels (`int`, *optional*, defaults to 4):
            Channels of the VAE latents.
        vae_scaling_factor (`float`, *optional*, defaults to 0.13025):
            Latents are stored unscaled and multiplied by this factor once, inside the model (SDXL VAE value).
        latent_patch_size (`int`, *optional*, defaults to 2):
            Side of the square latent patch embedded as one token; latent heights and widths must be multiples of it.
        max_latent_size (`tuple[int, int]`, *optional*, defaults to `(64, 64)`):
            Largest accepted latent `(height, width)`.
        vision_hidden_size (`int`, *optional*, defaults to 768):
            Width of the latent encoder (a multiple of 4 for the 2-D sin-cos positions, and of the head count).
        vision_num_hidden_layers (`int`, *optional*, defaults to 6):
            Number of latent encoder layers.
        vision_num_attention_heads (`int`, *optional*, defaults to 12):
            Attention heads of the latent encoder.
        vision_intermediate_size (`int`, *optional*, defaults to 3072):
            MLP width of the latent encoder.
        vision_hidden_act (`str`, *optional*, defaults to `"gelu"`):
            MLP activation of the latent encoder.
        layer_norm_eps (`float`, *optional*, defaults to 1e-5):
            LayerNorm epsilon of the latent encoder (the decoder uses `text_config.layer_norm_eps`).
        dropout (`float`, *optional*, defaults to 0.0):
            Dropout on attention probabilities and MLP outputs of the latent encoder.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal weight initialisation.
        vae_config (`dict`, *optional*):
            Keyword arguments of a diffusers `AutoencoderKL`. When set, the model holds that frozen VAE and accepts
            `pixel_values` in [-1, 1] instead of latents. `None` means the model only reads latents.
        use_token_gating (`bool`, *optional*, defaults to `True`):
            Whether every decoder layer starts with a soft token gate.
        token_gate_dropout (`float`, *optional*, defaults to 0.1):
            Dropout inside the token gate MLP.
        attention_sparsity (`float`, *optional*, defaults to 0.7):
            Fraction of the valid keys dropped per query by the top-k attention, in [0, 1); 0 is dense attention.
        sparse_self_attention (`bool`, *optional*, defaults to `True`):
            Whether decoder self-attention is sparse.
        sparse_cross_attention (`bool`, *optional*, defaults to `True`):
            Whether decoder cross-attention (to the latent tokens) is sparse.
        sparse_at_inference (`bool`, *optional*, defaults to `True`):
            Whether sparsity also applies in eval mode; `False` makes the sparsity a training-time regulariser only.
    """

    model_type = "gated_sparse_blip"
    sub_configs_defaults = {"text_config": BlipTextConfig}

    text_config: dict | BlipTextConfig | None = None
    latent_channels: int = 4
    vae_scaling_factor: int | float = 0.13025
    latent_patch_size: int = 2
    max_latent_size: list[int] | tuple[int, int] = (64, 64)
    vision_hidden_size: int = 768
    vision_num_hidden_layers: int = 6
    vision_num_attention_heads: int = 12
    vision_intermediate_size: int = 3072
    vision_hidden_act: str = "gelu"
    layer_norm_eps: int | float = 1e-5
    dropout: int | float = 0.0
    initializer_range: int | float = 0.02
    vae_config: dict | None = None
    use_token_gating: bool = True
    token_gate_dropout: int | float = 0.1
    attention_sparsity: int | float = 0.7
    sparse_self_attention: bool = True
    sparse_cross_attention: bool = True
    sparse_at_inference: bool = True

    def __post_init__(self, **kwargs):
        self.max_latent_size = list(self.max_latent_size)
        # The parent turns `text_config` (dict or None) into a `BlipTextConfig`.
        super().__post_init__(**kwargs)
        self.text_config.encoder_hidden_size = self.vision_hidden_size

    def validate_architecture(self):
        """Part of `@strict`-powered validation: rates, sizes, and the fit of the text and VAE configs."""
        if not 0.0 <= self.attention_sparsity < 1.0:
            raise ValueError(f"`attention_sparsity` must be a number in [0, 1), got {self.attention_sparsity!r}.")
        if not 0.0 <= self.token_gate_dropout < 1.0:
            raise ValueError(f"`token_gate_dropout` must be in [0, 1), got {self.token_gate_dropout!r}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1), got {self.dropout!r}.")
        for name in ("latent_channels", "latent_patch_size", "vision_hidden_size", "vision_num_hidden_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {getattr(self, name)!r}.")
        if self.vae_scaling_factor <= 0:
            raise ValueError(f"`vae_scaling_factor` must be positive, got {self.vae_scaling_factor!r}.")
        if (
            len(self.max_latent_size) != 2
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in self.max_latent_size)
            or any(s % self.latent_patch_size for s in self.max_latent_size)
        ):
            raise ValueError(
                f"`max_latent_size` must be two positive multiples of `latent_patch_size` "
                f"({self.latent_patch_size}), got {self.max_latent_size!r}."
            )
        if self.vision_hidden_size % self.vision_num_attention_heads:
            raise ValueError(
                f"`vision_hidden_size` ({self.vision_hidden_size}) must be a multiple of "
                f"`vision_num_attention_heads` ({self.vision_num_attention_heads})."
            )
        if self.vision_hidden_size % 4:
            raise ValueError(
                "`vision_hidden_size` must be a multiple of 4 for 2-D sin-cos positions, "
                f"got {self.vision_hidden_size}."
            )
        text_config = self.text_config
        if text_config.hidden_size < 2:
            raise ValueError(f"`text_config.hidden_size` must be at least 2, got {text_config.hidden_size}.")
        if text_config.hidden_size % text_config.num_attention_heads:
            raise ValueError(
                f"`text_config.hidden_size` ({text_config.hidden_size}) must be a multiple of "
                f"`text_config.num_attention_heads` ({text_config.num_attention_heads})."
            )
        if text_config.label_smoothing:
            raise ValueError(
                f"`text_config.label_smoothing` must be 0 (the loss is transformers' causal-LM loss, which has no "
                f"smoothing), got {text_config.label_smoothing!r}."
            )
        if self.vae_config is not None and self.vae_config.get("latent_channels", 4) != self.latent_channels:
            raise ValueError(
                f"`vae_config['latent_channels']` ({self.vae_config.get('latent_channels', 4)}) must equal "
                f"`latent_channels` ({self.latent_channels})."
            )

    @property
    def num_hidden_layers(self) -> int:
        """Decoder depth; generation sizes its `DynamicCache` from it."""
        return self.text_config.num_hidden_layers

    @property
    def tie_word_embeddings(self) -> bool:
        """The LM head shares the decoder word embeddings when the text config says so (BLIP does)."""
        return self.text_config.tie_word_embeddings


__all__ = ["GatedSparseBlipConfig"]
