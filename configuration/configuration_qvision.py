"""QVisionMultiModel configuration: frozen CLIP vision tower -> Q-Former -> GPT-Neo with gated cross-attention."""

from huggingface_hub.dataclasses import strict
from transformers import CLIPVisionConfig, GPTNeoConfig, PreTrainedConfig


# GPT-Neo-125M (`EleutherAI/gpt-neo-125m`), the default text decoder, written out so no download is needed.
GPT_NEO_125M = {
    "vocab_size": 50257,
    "max_position_embeddings": 2048,
    "hidden_size": 768,
    "num_layers": 12,
    "num_heads": 12,
    "attention_types": [[["global", "local"], 6]],
    "window_size": 256,
    "activation_function": "gelu_new",
    "resid_dropout": 0.0,
    "embed_dropout": 0.0,
    "attention_dropout": 0.0,
    "layer_norm_epsilon": 1e-5,
    "bos_token_id": 50256,
    "eos_token_id": 50256,
}

# The decoder of the original QVision project: a 24-block, 1024-wide GPT-Neo (355,798,016 parameters, the widths
# EleutherAI published as `EleutherAI/gpt-neo-350M`), written out the same way.
GPT_NEO_350M = {
    **GPT_NEO_125M,
    "hidden_size": 1024,
    "num_layers": 24,
    "num_heads": 16,
    "attention_types": [[["global", "local"], 12]],
}


@strict
class QVisionConfig(PreTrainedConfig):
    r"""
    Configuration of [`QVisionForConditionalGeneration`] and [`QVisionModel`].

    The model encodes an image with a frozen CLIP vision tower, projects its patch tokens (CLS dropped) to the Q-Former
    width, lets a Q-Former (one optional global token + `num_query_tokens` learned queries) read them, projects the
    refined tokens to the language-model width, and feeds them to GPT-Neo through Flamingo-style gated cross-attention
    blocks inserted before every `cross_attention_every_n`-th decoder block.

    Args:
        vision_config (`dict` or `CLIPVisionConfig`, *optional*):
            CLIP vision tower configuration. Defaults to CLIP ViT-B/32.
        text_config (`dict` or `GPTNeoConfig`, *optional*):
            GPT-Neo configuration. Defaults to GPT-Neo-125M.
        num_query_tokens (`int`, *optional*, defaults to 64):
            Number of learned query tokens of the Q-Former.
        use_global_token (`bool`, *optional*, defaults to `True`):
            Whether to prepend one learned global-context token to the queries.
        qformer_hidden_size (`int`, *optional*, defaults to 768):
            Width of the Q-Former.
        qformer_num_layers (`int`, *optional*, defaults to 6):
            Number of Q-Former blocks.
        qformer_num_heads (`int`, *optional*, defaults to 8):
            Attention heads of the Q-Former; must divide `qformer_hidden_size`.
        qformer_dropout (`float`, *optional*, defaults to 0.1):
            Dropout on attention weights and residual branches of the Q-Former.
        qformer_intermediate_size (`int`, *optional*):
            Q-Former feed-forward width. Defaults to `4 * qformer_hidden_size`.
        vision_feature_layer (`int`, *optional*, defaults to -1):
            Index into the CLIP hidden states (0 = embeddings, -1 = last layer) whose patch tokens feed the Q-Former.
        patch_position_encoding (`bool`, *optional*, defaults to `False`):
            Add a fixed 2D sine-cosine position encoding to the (layer-normed) patch features the Q-Former attends
            to. A pretrained CLIP's features already carry position; a randomly initialised frozen tower's barely do
            (its position embeddings are small next to the patch content), so a model trained from scratch cannot
            tell where things are without it. Needs `qformer_hidden_size` divisible by 4.
        cross_attention_every_n (`int`, *optional*, defaults to 4):
            A gated cross-attention block is inserted before decoder block `i` whenever `(i + 1) % n == 0`
            (the Flamingo / OpenFlamingo convention). Must be between 1 and the number of decoder blocks.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialisation of the new (non-pretrained) weights.

    Example:

    ```python
    >>> from leanvision.configuration.configuration_qvision import QVisionConfig
    >>> config = QVisionConfig.original_size_config()  # CLIP ViT-B/32 vision + a 24-block, 1024-wide GPT-Neo
    >>> config.num_hidden_layers
    24

    ```
    """

    model_type = "qvision_multimodel"
    sub_configs_defaults = {"vision_config": CLIPVisionConfig, "text_config": GPTNeoConfig}

    vision_config: dict | CLIPVisionConfig | None = None
    text_config: dict | GPTNeoConfig | None = None
    num_query_tokens: int = 64
    use_global_token: bool = True
    qformer_hidden_size: int = 768
    qformer_num_layers: int = 6
    qformer_num_heads: int = 8
    qformer_dropout: int | float = 0.1
    qformer_intermediate_size: int | None = None
    vision_feature_layer: int = -1
    patch_position_encoding: bool = False
    cross_attention_every_n: int = 4
    initializer_range: int | float = 0.02

    def __post_init__(self, **kwargs):
        if self.text_config is None:
            self.text_config = dict(GPT_NEO_125M)
        if self.qformer_intermediate_size is None:
            self.qformer_intermediate_size = 4 * self.qformer_hidden_size
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Part of `@strict`-powered validation: sizes, and the fit of the Q-Former to the two towers."""
        for name in (
            "num_query_tokens",
            "qformer_hidden_size",
            "qformer_num_layers",
            "qformer_num_heads",
            "qformer_intermediate_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {getattr(self, name)!r}.")
        if self.patch_position_encoding and self.qformer_hidden_size % 4 != 0:
            raise ValueError(
                f"`patch_position_encoding` needs `qformer_hidden_size` divisible by 4, got {self.qformer_hidden_size}."
            )
        if self.qformer_hidden_size % self.qformer_num_heads != 0:
            raise ValueError(
                f"`qformer_num_heads` ({self.qformer_num_heads}) must divide `qformer_hidden_size` "
                f"({self.qformer_hidden_size})."
            )
        if not 0.0 <= self.qformer_dropout < 1.0:
            raise ValueError(f"`qformer_dropout` must be in [0, 1), got {self.qformer_dropout!r}.")
        num_vision_states = self.vision_config.num_hidden_layers + 1
        if not -num_vision_states <= self.vision_feature_layer < num_vision_states:
            raise ValueError(
                f"`vision_feature_layer` must index one of the {num_vision_states} CLIP hidden states "
                f"(from {-num_vision_states} to {num_vision_states - 1}), got {self.vision_feature_layer}."
            )
        num_text_layers = self.text_config.num_layers
        if not 1 <= self.cross_attention_every_n <= num_text_layers:
            raise ValueError(
                f"`cross_attention_every_n` must be between 1 and the number of decoder blocks ({num_text_layers}), "
                f"got {self.cross_attention_every_n}."
            )
        if self.initializer_range <= 0:
            raise ValueError(f"`initializer_range` must be positive, got {self.initializer_range!r}.")

    @classmethod
    def original_size_config(cls, **kwargs) -> "QVisionConfig":
        """
        The size of the original QVision project's model, built without any download: the CLIP ViT-B/32 vision tower,
        a Q-Former 1024 wide (so the patch projection is 768 -> 1024, as in the original) and a 24-block, 1024-wide
        GPT-Neo (`GPT_NEO_350M`). The original loaded the whole CLIP model, text tower included though unused; this
        model keeps only the vision tower. `kwargs` override any field.
        """
        kwargs = {"qformer_hidden_size": 1024, **kwargs}
        return cls(vision_config=CLIPVisionConfig(), text_config=GPTNeoConfig(**GPT_NEO_350M), **kwargs)

    @classmethod
    def gpt_neo_125m_config(cls, **kwargs) -> "QVisionConfig":
        """
        A smaller variant on public checkpoints, built without any download: the CLIP ViT-B/32 vision tower, a Q-Former
        768 wide and GPT-Neo-125M (`EleutherAI/gpt-neo-125m`, 12 blocks, 768 wide), the decoder `QVisionConfig()`
        defaults to. `benchmarks/bench_qvision.py` measures this one. `kwargs` override any field.
        """
        return cls(vision_config=CLIPVisionConfig(), text_config=GPTNeoConfig(**GPT_NEO_125M), **kwargs)

    @property
    def cross_attention_layers(self) -> list[int]:
        """Indices of the decoder blocks that are preceded by a gated cross-attention block."""
        n = self.cross_attention_every_n
        return [i for i in range(self.text_config.num_layers) if (i + 1) % n == 0]

    @property
    def num_hidden_layers(self) -> int:
        """Number of decoder blocks (read by `DynamicCache` and generation)."""
        return self.text_config.num_layers

    @property
    def bos_token_id(self) -> int | None:
        return self.text_config.bos_token_id

    @bos_token_id.setter
    def bos_token_id(self, value):
        self.text_config.bos_token_id = value

    @property
    def eos_token_id(self) -> int | list[int] | None:
        return self.text_config.eos_token_id

    @eos_token_id.setter
    def eos_token_id(self, value):
        self.text_config.eos_token_id = value

    @property
    def pad_token_id(self) -> int | None:
        return self.text_config.pad_token_id

    @pad_token_id.setter
    def pad_token_id(self, value):
        self.text_config.pad_token_id = value

    @property
    def vocab_size(self) -> int:
        return self.text_config.vocab_size


__all__ = ["QVisionConfig"]
