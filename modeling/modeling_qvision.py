"""PyTorch QVisionMultiModel: frozen CLIP tower -> Q-Former -> GPT-Neo with Flamingo-style gated cross-attention."""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import (
    CLIPVisionModel,
    GenerationConfig,
    GenerationMixin,
    GPTNeoForCausalLM,
    PreTrainedModel,
)
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput
from transformers.utils.deprecation import deprecate_kwarg

from ..configuration.configuration_qvision import QVisionConfig
# The pipeline that config.json's `custom_pipelines` names: imported so that `save_pretrained` of a remotely loaded
# captioner copies its file along with this one.
from ..processing.pipeline_image_to_text import ImageToTextPipeline  # noqa: F401
from .modeling_common import (
    BundleCodeFirstMixin, InterfaceAttention, check_pixel_values, sincos_2d_position_embedding, split_heads,
)


@dataclass
class QFormerOutput(ModelOutput):
    """
    Output of [`QFormer`].

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, num_tokens, qformer_hidden_size)`):
            Refined tokens: `[global token; queries]` (or only the queries without a global token), after the final
            layer norm.
        self_attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions=True`):
            One `(batch_size, num_heads, num_tokens, num_tokens)` map per Q-Former block.
        cross_attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions=True`):
            One `(batch_size, num_heads, num_tokens, num_patches)` map per Q-Former block.
    """

    last_hidden_state: torch.FloatTensor | None = None
    self_attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class QVisionModelOutput(ModelOutput):
    """
    Output of [`QVisionModel`]: the image tokens the language model attends to.

    Args:
        image_embeds (`torch.FloatTensor` of shape `(batch_size, num_tokens, text_hidden_size)`):
            Q-Former tokens projected to the language-model width.
        qformer_last_hidden_state (`torch.FloatTensor` of shape `(batch_size, num_tokens, qformer_hidden_size)`):
            Q-Former tokens before that projection.
        patch_features (`torch.FloatTensor` of shape `(batch_size, num_patches, qformer_hidden_size)`):
            Projected CLIP patch tokens (CLS dropped) of `config.vision_feature_layer`.
        qformer_self_attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions=True`):
            Q-Former self-attention maps, one per block.
        qformer_cross_attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions=True`):
            Q-Former attention maps over the image patches, one per block.
    """

    image_embeds: torch.FloatTensor | None = None
    qformer_last_hidden_state: torch.FloatTensor | None = None
    patch_features: torch.FloatTensor | None = None
    qformer_self_attentions: tuple[torch.FloatTensor, ...] | None = None
    qformer_cross_attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class QVisionCausalLMOutputWithPast(ModelOutput):
    """
    Output of [`QVisionForConditionalGeneration`].

    Args:
        loss (`torch.FloatTensor` of shape `(1,)`, *optional*, returned when `labels` is given):
            Next-token cross-entropy, labels shifted inside the model, `-100` ignored.
        logits (`torch.FloatTensor` of shape `(batch_size, sequence_length, vocab_size)`):
            Language-model scores.
        cache (`Cache`, *optional*, returned with `use_cache=True`):
            Key/value cache of the GPT-Neo self-attention layers.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned with `output_hidden_states=True`):
            The input of every GPT-Neo block (after its gated cross-attention block, if any) and the final output.
        attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions=True`):
            GPT-Neo self-attention maps, one per block.
        cross_attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions=True`):
            Maps of the text tokens over the image tokens, `(batch_size, num_heads, sequence_length, num_tokens)`,
            one per gated cross-attention block, in decoder order.
        image_embeds (`torch.FloatTensor` of shape `(batch_size, num_tokens, text_hidden_size)`):
            Image tokens the decoder attended to; generation passes them back in instead of recomputing them.
        qformer_self_attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions=True`):
            Q-Former self-attention maps (only when the image tokens were computed in this call).
        qformer_cross_attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions=True`):
            Q-Former maps over the image patches (only when the image tokens were computed in this call).
        image_key_values (`tuple(tuple(torch.FloatTensor))`, *optional*, returned with `use_cache=True`):
            `(key, value)` of the image tokens in every gated cross-attention block, in decoder order, each
            `(batch_size, num_heads, num_tokens, head_dim)`; generation passes them back in, so the image tokens are
            projected once per caption instead of once per generated token.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None
    image_embeds: torch.FloatTensor | None = None
    qformer_self_attentions: tuple[torch.FloatTensor, ...] | None = None
    qformer_cross_attentions: tuple[torch.FloatTensor, ...] | None = None
    image_key_values: tuple[tuple[torch.FloatTensor, torch.FloatTensor], ...] | None = None


class QVisionAttention(InterfaceAttention):
    """
    Multi-head attention `Attn(X, Y) = softmax(Q K^T / sqrt(d_head)) V W_o` with `Q = X W_q`, `K = Y W_k`,
    `V = Y W_v`; self-attention when `Y = X`. No mask: queries and image tokens are all valid. The softmax step is
    the config's attention function (`attn_implementation`). `(K, V)` of a fixed `Y` can be computed once with
    `project_key_value(Y)` and passed in as `key_value`.
    """

    def __init__(self, config: QVisionConfig, embed_dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"`num_heads` ({num_heads}) must divide `embed_dim` ({embed_dim}).")
        self.config = config
        self.head_dim = embed_dim // num_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = dropout
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def project_key_value(self, key_value_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(K, V)` of `key_value_states`, split into heads: `(batch_size, num_heads, length, head_dim)` each."""
        return (
            split_heads(self.k_proj(key_value_states), self.head_dim),
            split_heads(self.v_proj(key_value_states), self.head_dim),
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        key_value_states: torch.Tensor | None = None,
        key_value: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if key_value is None:
            key_value = self.project_key_value(hidden_states if key_value_states is None else key_value_states)
        key, value = key_value
        query = split_heads(self.q_proj(hidden_states), self.head_dim)
        context, weights = self.attend(query, key, value, None, **kwargs)
        return self.out_proj(context.reshape(*hidden_states.shape[:-1], -1)), weights


class QVisionMLP(nn.Module):
    """Feed-forward network `FFN(x) = W_2 GELU(W_1 x + b_1) + b_2`."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(intermediate_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


class QFormerBlock(GradientCheckpointingLayer):
    """
    One pre-LN Q-Former block over the tokens `h = [global; queries]` and image patch features `v`:

        h = h + Dropout(SelfAttn(LN_1(h)))
        h = h + Dropout(CrossAttn(LN_2(h), v))
        h = h + Dropout(FFN(LN_3(h)))
    """

    def __init__(self, config: QVisionConfig):
        super().__init__()
        hidden_size = config.qformer_hidden_size
        self.self_attn_layernorm = nn.LayerNorm(hidden_size)
        self.self_attn = QVisionAttention(config, hidden_size, config.qformer_num_heads, config.qformer_dropout)
        self.cross_attn_layernorm = nn.LayerNorm(hidden_size)
        self.cross_attn = QVisionAttention(config, hidden_size, config.qformer_num_heads, config.qformer_dropout)
        self.ffn_layernorm = nn.LayerNorm(hidden_size)
        self.ffn = QVisionMLP(hidden_size, config.qformer_intermediate_size)
        self.dropout = nn.Dropout(config.qformer_dropout)

    def forward(
        self, hidden_states: torch.Tensor, image_features: torch.Tensor, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        attn_output, self_weights = self.self_attn(self.self_attn_layernorm(hidden_states), **kwargs)
        hidden_states = hidden_states + self.dropout(attn_output)
        attn_output, cross_weights = self.cross_attn(
            self.cross_attn_layernorm(hidden_states), image_features, **kwargs
        )
        hidden_states = hidden_states + self.dropout(attn_output)
        hidden_states = hidden_states + self.dropout(self.ffn(self.ffn_layernorm(hidden_states)))
        return hidden_states, self_weights, cross_weights


class QFormer(nn.Module):
    """
    Querying transformer: learned tokens `h_0 = [g; q_1..q_Q]` (the global token `g` is optional) read the image
    features `v` through a stack of [`QFormerBlock`]s; output `LN(h_L)`. The image features are layer-normed once,
    `v = LN_v(patch_features)` (`+ E` with `config.patch_position_encoding`, `E` = the fixed 2-D sin-cos positions
    of the patch grid, `sincos_2d_position_embedding`), before every block attends to them.
    """

    def __init__(self, config: QVisionConfig):
        super().__init__()
        hidden_size = config.qformer_hidden_size
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_query_tokens, hidden_size))
        self.global_token = nn.Parameter(torch.zeros(1, 1, hidden_size)) if config.use_global_token else None
        self.image_layernorm = nn.LayerNorm(hidden_size)
        self.grid_size = config.vision_config.image_size // config.vision_config.patch_size
        # Not saved: computed here and by `_init_weights` when loading (None without the encoding).
        encoding = None
        if config.patch_position_encoding:
            encoding = sincos_2d_position_embedding(self.grid_size, self.grid_size, hidden_size)[None]
        self.register_buffer("patch_position", encoding, persistent=False)
        self.layers = nn.ModuleList([QFormerBlock(config) for _ in range(config.qformer_num_layers)])
        self.layernorm = nn.LayerNorm(hidden_size)

    def forward(self, patch_features: torch.Tensor, output_attentions: bool = False) -> QFormerOutput:
        """With `output_attentions`, the maps are returned where the attention function gives them (eager)."""
        batch_size = patch_features.shape[0]
        tokens = self.query_tokens
        if self.global_token is not None:
            tokens = torch.cat([self.global_token, tokens], dim=1)
        hidden_states = tokens.expand(batch_size, -1, -1)
        image_features = self.image_layernorm(patch_features)
        if self.patch_position is not None:
            image_features = image_features + self.patch_position.to(image_features.dtype)

        self_attentions = () if output_attentions else None
        cross_attentions = () if output_attentions else None
        for layer in self.layers:
            hidden_states, self_weights, cross_weights = layer(
                hidden_states, image_features, output_attentions=output_attentions
            )
            if output_attentions and self_weights is not None:
                self_attentions += (self_weights,)
                cross_attentions += (cross_weights,)

        return QFormerOutput(
            last_hidden_state=self.layernorm(hidden_states),
            self_attentions=self_attentions,
            cross_attentions=cross_attentions,
        )


class GatedCrossAttentionBlock(GradientCheckpointingLayer):
    """
    Flamingo gated cross-attention from the text hidden states `x` to the image tokens `y`:

        x = x + tanh(a) * XAttn(LN_1(x), y)
        x = x + tanh(b) * FFN(LN_2(x))

    with scalar gates `a = b = 0` at initialisation, so the block starts as the identity and the pretrained language
    model is exactly unchanged at step 0.
    """

    def __init__(self, config: QVisionConfig):
        super().__init__()
        text_config = config.text_config
        hidden_size, layer_norm_eps = text_config.hidden_size, text_config.layer_norm_epsilon
        dropout = text_config.resid_dropout
        self.attn_layernorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.attn = QVisionAttention(config, hidden_size, text_config.num_heads, dropout)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.ffn_layernorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.ffn = QVisionMLP(hidden_size, 4 * hidden_size)
        self.ffn_gate = nn.Parameter(torch.zeros(1))
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        hidden_states: torch.Tensor,
        image_embeds: torch.Tensor | None = None,
        image_key_value: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attends to `image_embeds`, or to their precomputed `image_key_value = self.attn.project_key_value(y)`."""
        attn_output, weights = self.attn(
            self.attn_layernorm(hidden_states), image_embeds, key_value=image_key_value, **kwargs
        )
        hidden_states = hidden_states + self.attn_gate.tanh() * self.dropout(attn_output)
        ffn_output = self.ffn(self.ffn_layernorm(hidden_states))
        hidden_states = hidden_states + self.ffn_gate.tanh() * self.dropout(ffn_output)
        return hidden_states, weights


class QVisionPreTrainedModel(BundleCodeFirstMixin, PreTrainedModel):
    config_class = QVisionConfig
    base_model_prefix = "qvision"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    # The CLIP tower, Q-Former and gated cross-attention blocks follow `attn_implementation`; GPT-Neo has no SDPA path
    # in transformers, so its blocks stay eager unless flash_attention_2 is asked for.
    _supports_sdpa = True
    _supports_attention_backend = True
    _no_split_modules = ["CLIPEncoderLayer", "QFormerBlock", "GatedCrossAttentionBlock", "GPTNeoBlock"]

    def _init_weights(self, module):
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, QFormer):
            init.normal_(module.query_tokens, mean=0.0, std=std)
            if module.global_token is not None:
                init.normal_(module.global_token, mean=0.0, std=std)
            if module.patch_position is not None:
                dim = module.patch_position.shape[-1]
                encoding = sincos_2d_position_embedding(module.grid_size, module.grid_size, dim)
                init.copy_(module.patch_position, encoding[None])
        elif isinstance(module, GatedCrossAttentionBlock):
            init.zeros_(module.attn_gate)
            init.zeros_(module.ffn_gate)

    def _build_image_encoder(self, config: QVisionConfig):
        """Frozen CLIP tower, trainable patch projection, Q-Former, and projection of its tokens to the LM width."""
        self.vision_model = CLIPVisionModel(config.vision_config)
        self.vision_model.requires_grad_(False)
        self.visual_projection = nn.Linear(config.vision_config.hidden_size, config.qformer_hidden_size)
        self.qformer = QFormer(config)
        self.language_projection = nn.Linear(config.qformer_hidden_size, config.text_config.hidden_size)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # `output_loading_info=True` gives a tuple
        # Loading replaces the parameters with new ones that require grad: freeze the CLIP tower again.
        model.vision_model.requires_grad_(False)
        return loaded

    def train(self, mode: bool = True):
        """Switch to training mode, keeping the frozen CLIP tower in eval mode."""
        super().train(mode)
        self.vision_model.eval()
        return self

    def get_image_features(self, pixel_values: torch.Tensor, output_attentions: bool = False) -> QVisionModelOutput:
        """Encode images into the image tokens the decoder attends to."""
        check_pixel_values(pixel_values)
        # No autograd graph through the tower while it is frozen.
        tower_trainable = any(p.requires_grad for p in self.vision_model.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and tower_trainable):
            vision_outputs = self.vision_model(
                pixel_values=pixel_values.to(self.vision_model.dtype), output_hidden_states=True
            )
        patch_tokens = vision_outputs.hidden_states[self.config.vision_feature_layer][:, 1:]  # drop CLS
        patch_features = self.visual_projection(patch_tokens)
        qformer_outputs = self.qformer(patch_features, output_attentions=output_attentions)
        return QVisionModelOutput(
            image_embeds=self.language_projection(qformer_outputs.last_hidden_state),
            qformer_last_hidden_state=qformer_outputs.last_hidden_state,
            patch_features=patch_features,
            qformer_self_attentions=qformer_outputs.self_attentions,
            qformer_cross_attentions=qformer_outputs.cross_attentions,
        )


class QVisionModel(QVisionPreTrainedModel):
    """
    The image side of QVisionMultiModel (for `AutoModel`): frozen CLIP tower -> projection -> Q-Former -> projection
    to the language-model width. Loading a [`QVisionForConditionalGeneration`] checkpoint into it keeps the image
    weights and ignores the decoder ones.
    """

    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def __init__(self, config: QVisionConfig):
        super().__init__(config)
        self._build_image_encoder(config)
        self.post_init()

    def forward(
        self, pixel_values: torch.Tensor, output_attentions: bool | None = None, return_dict: bool | None = None
    ) -> QVisionModelOutput | tuple:
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.get_image_features(pixel_values, output_attentions=output_attentions)
        return outputs if return_dict else outputs.to_tuple()


class QVisionForConditionalGeneration(QVisionPreTrainedModel, GenerationMixin):
    """
    Image captioner: the image tokens of [`QVisionModel`] condition GPT-Neo through [`GatedCrossAttentionBlock`]s
    placed before the decoder blocks listed in `config.cross_attention_layers`.

    Module names (for freezing by pattern): `vision_model.*` (frozen CLIP), `visual_projection.*`, `qformer.*`,
    `language_projection.*`, `cross_attention_blocks.{i}.*` (the block before decoder block `i`),
    `language_model.transformer.{wte,wpe,h.{i},ln_f}.*` and `language_model.lm_head` (tied to `wte`).

    Batched generation with text prompts of different lengths needs left padding and the attention mask; captioning
    from images alone starts every row from the same `bos` token, so no padding is involved.
    """

    # Trainer passes `num_items_in_batch` (label tokens of the whole accumulated batch) and skips its own division.
    accepts_loss_kwargs = True

    def __init__(self, config: QVisionConfig):
        super().__init__(config)
        self._build_image_encoder(config)
        text_config = config.text_config
        self.cross_attention_blocks = nn.ModuleDict(
            {str(i): GatedCrossAttentionBlock(config) for i in config.cross_attention_layers}
        )
        # GPT-Neo has eager and flash_attention_2 paths only; another choice (sdpa) applies to the rest of the model.
        requested = text_config._attn_implementation
        if requested not in (None, "eager") and not requested.startswith("flash_attention"):
            text_config._attn_implementation = "eager"
        self.language_model = GPTNeoForCausalLM(text_config)
        self.post_init()
        self.generation_config = self.default_generation_config(config)

    # The original QVision recipe sampled its captions: `generate(..., **ORIGINAL_SAMPLING)` (or `leanvision caption
    # --temperature 0.7`) does the same. The default is greedy, so that the same image always gets the same caption.
    ORIGINAL_SAMPLING = {"do_sample": True, "temperature": 0.7}

    @staticmethod
    def default_generation_config(config: QVisionConfig) -> GenerationConfig:
        """Greedy decoding of captions of up to 20 new tokens (pad falls back to eos for GPT-Neo)."""
        text_config = config.text_config
        pad_token_id = text_config.pad_token_id if text_config.pad_token_id is not None else text_config.eos_token_id
        return GenerationConfig(
            do_sample=False,
            max_new_tokens=20,
            bos_token_id=text_config.bos_token_id,
            eos_token_id=text_config.eos_token_id,
            pad_token_id=pad_token_id,
        )

    @classmethod
    def from_pretrained_backbones(cls, vision: str, text: str, **config_kwargs) -> "QVisionForConditionalGeneration":
        """
        Build the model around a pretrained CLIP (a `CLIPModel` or `CLIPVisionModel` checkpoint) and a pretrained
        `GPTNeoForCausalLM`; `config_kwargs` set the Q-Former fields of [`QVisionConfig`]. The new modules are
        randomly initialised, the gates at 0, so the decoder starts as the pretrained language model.
        """
        vision_model = CLIPVisionModel.from_pretrained(vision)
        language_model = GPTNeoForCausalLM.from_pretrained(text)
        config = QVisionConfig(
            vision_config=vision_model.config.to_dict(), text_config=language_model.config.to_dict(), **config_kwargs
        )
        model = cls(config)
        model.vision_model.load_state_dict(vision_model.state_dict())
        model.language_model.load_state_dict(language_model.state_dict())
        return model

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module):
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, new_embeddings: nn.Module):
        self.language_model.set_output_embeddings(new_embeddings)

    def decoder_blocks(self) -> list[nn.Module]:
        """The GPT-Neo blocks, bottom to top (for freezing the lowest fraction of the decoder)."""
        return list(self.language_model.transformer.h)

    def component_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Parameters per component; each parameter appears in exactly one list (`lm_head` is tied to `wte`)."""
        return {
            "vision": list(self.vision_model.parameters()),
            "projection": [*self.visual_projection.parameters(), *self.language_projection.parameters()],
            "qformer": list(self.qformer.parameters()),
            "cross_attention": list(self.cross_attention_blocks.parameters()),
            "lm": list(self.language_model.parameters()),
        }

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        image_embeds: torch.FloatTensor | None = None,
        image_key_values: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        return_dict: bool | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
    ) -> QVisionCausalLMOutputWithPast | tuple:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, image_size, image_size)`):
            CLIP-normalised images. Not needed when `image_embeds` is given.
        input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
            Caption tokens, starting with `bos`. With a `cache`, only the tokens not yet in it.
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Usually `input_ids` with padding set to `-100`; shifted inside the model (`self.loss_function`,
            transformers' causal-LM loss). Disables the cache.
        num_items_in_batch (`int` or `torch.Tensor`, *optional*):
            With gradient accumulation: the number of predicted label tokens in the whole accumulated batch; the loss
            is then the summed cross-entropy divided by it, so every token weighs the same in every micro-batch.
        cache (`Cache`, *optional*):
            GPT-Neo key/value cache from a previous call (`past_key_values` is accepted as its older name).
        image_embeds (`torch.FloatTensor` of shape `(batch_size, num_tokens, text_hidden_size)`, *optional*):
            Precomputed image tokens (`outputs.image_embeds`), used instead of `pixel_values`.
        image_key_values (`tuple(tuple(torch.FloatTensor, torch.FloatTensor))`, *optional*):
            The image keys and values of every gated cross-attention block from a previous call with the same image
            tokens and `use_cache=True` (`outputs.image_key_values`); they are computed when not given.
        logits_to_keep (`int` or `torch.Tensor`, *optional*, defaults to 0):
            Compute logits only for the last `logits_to_keep` positions (0: all), or for the given indices.
        """
        text_config = self.language_model.config
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        use_cache = use_cache if use_cache is not None else text_config.use_cache
        if labels is not None:
            use_cache = False
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds`.")

        image_outputs = None
        if image_embeds is None:
            if pixel_values is None:
                raise ValueError("Pass `pixel_values` or precomputed `image_embeds`.")
            image_outputs = self.get_image_features(pixel_values, output_attentions=output_attentions)
            image_embeds = image_outputs.image_embeds

        # GPT-Neo's own forward, with a gated cross-attention block interleaved before the selected blocks.
        transformer = self.language_model.transformer
        if inputs_embeds is None:
            inputs_embeds = transformer.wte(input_ids)
        if use_cache and cache is None:
            cache = DynamicCache(config=text_config)
        if position_ids is None:
            past_seen_tokens = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen_tokens
            position_ids = position_ids.unsqueeze(0)
        causal_mask = create_causal_mask(
            config=text_config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            cache=cache,
            position_ids=position_ids,
        )
        if int(position_ids.max()) >= text_config.max_position_embeddings:
            raise ValueError(
                f"Sequence length {int(position_ids.max()) + 1} exceeds max_position_embeddings="
                f"{text_config.max_position_embeddings}."
            )
        hidden_states = transformer.drop(inputs_embeds + transformer.wpe(position_ids))
        image_embeds = image_embeds.to(hidden_states.dtype)
        blocks = self.cross_attention_blocks
        if use_cache and image_key_values is None:
            image_key_values = tuple(block.attn.project_key_value(image_embeds) for block in blocks.values())
        block_key_values = dict(zip(blocks, image_key_values)) if image_key_values is not None else {}

        all_hidden_states = () if output_hidden_states else None
        all_self_attentions = () if output_attentions else None
        all_cross_attentions = () if output_attentions else None
        for i, block in enumerate(transformer.h):
            if str(i) in blocks:
                hidden_states, cross_weights = blocks[str(i)](
                    hidden_states,
                    image_embeds,
                    image_key_value=block_key_values.get(str(i)),
                    output_attentions=output_attentions,
                )
                if output_attentions and cross_weights is not None:
                    all_cross_attentions += (cross_weights,)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            hidden_states, self_weights = block(
                hidden_states,
                layer_past=cache,
                attention_mask=causal_mask,
                use_cache=use_cache,
                output_attentions=output_attentions,
            )
            if output_attentions:
                all_self_attentions += (self_weights,)
        hidden_states = transformer.ln_f(hidden_states)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)

        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.language_model.lm_head(hidden_states[:, keep, :])

        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, logits.shape[-1], num_items_in_batch=num_items_in_batch)

        output = QVisionCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=cache if use_cache else None,
            hidden_states=all_hidden_states,
            attentions=all_self_attentions,
            cross_attentions=all_cross_attentions,
            image_embeds=image_embeds,
            qformer_self_attentions=image_outputs.qformer_self_attentions if image_outputs is not None else None,
            qformer_cross_attentions=image_outputs.qformer_cross_attentions if image_outputs is not None else None,
            image_key_values=image_key_values if use_cache else None,
        )
        return output if return_dict else output.to_tuple()

    def generate(self, inputs: torch.Tensor | None = None, **kwargs):
        """
        [`~GenerationMixin.generate`]; with images and no prompt, every row starts from `bos`. The all-ones attention
        mask is passed explicitly because GPT-Neo's `bos` is also its pad token, so it cannot be inferred.
        """
        images = kwargs.get("pixel_values", kwargs.get("image_embeds"))
        has_prompt = any(x is not None for x in (inputs, kwargs.get("input_ids"), kwargs.get("inputs_embeds")))
        if images is not None and not has_prompt:
            generation_config = kwargs.get("generation_config") or self.generation_config
            bos_token_id = kwargs.get("bos_token_id", generation_config.bos_token_id)
            kwargs["input_ids"] = torch.full((images.shape[0], 1), bos_token_id, device=images.device)
            kwargs["attention_mask"] = torch.ones_like(kwargs["input_ids"])
        return super().generate(inputs, **kwargs)

    def prepare_inputs_for_generation(self, input_ids, pixel_values=None, image_embeds=None, **kwargs):
        model_inputs = super().prepare_inputs_for_generation(input_ids, **kwargs)
        # The image tokens are computed once, in the first step, then passed back in (see below).
        if image_embeds is not None:
            model_inputs["image_embeds"] = image_embeds
        else:
            model_inputs["pixel_values"] = pixel_values
        return model_inputs

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, *args, **kwargs):
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, *args, **kwargs)
        model_kwargs["image_embeds"] = outputs.image_embeds
        if outputs.image_key_values is not None:
            model_kwargs["image_key_values"] = outputs.image_key_values
        return model_kwargs


__all__ = [
    "QVisionPreTrainedModel",
    "QVisionModel",
    "QVisionForConditionalGeneration",
    "QFormer",
    "QFormerBlock",
]
