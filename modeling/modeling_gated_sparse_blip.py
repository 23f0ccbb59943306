"""PyTorch GatedSparseBlip: a BLIP captioner that reads VAE latents, with soft token gating and top-k sparse attention.

Layout (names follow transformers' `modeling_blip.py` / `modeling_blip_text.py`):

- optional frozen diffusers `AutoencoderKL` turning `pixel_values` in [-1, 1] into (unscaled) latents;
- latent encoder: latents * `vae_scaling_factor` -> Conv2d patch embedding -> + 2-D sin-cos positions -> pre-LN
  transformer layers (BLIP vision style) -> LayerNorm. Padded latent positions are masked as keys;
- BLIP text decoder (post-LN BERT layers: causal self-attention, cross-attention to the latent tokens, FFN) whose
  every layer starts with a `TokenGate`, and whose attentions may use `TopKSparseAttention`;
- BLIP LM head (transform + decoder tied to the word embeddings).
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.generation import GenerationMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.utils import ModelOutput, can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg

from ..configuration.configuration_gated_sparse_blip import GatedSparseBlipConfig
# The pipeline that config.json's `custom_pipelines` names: imported so that `save_pretrained` of a remotely loaded
# captioner copies its file along with this one.
from ..processing.pipeline_image_to_text import ImageToTextPipeline  # noqa: F401
from .modeling_common import (
    BundleCodeFirstMixin,
    InterfaceAttention,
    additive_mask,
    eager_attention_forward,
    sincos_2d_position_embedding,
    split_heads,
)


@dataclass
class GatedSparseBlipModelOutput(ModelOutput):
    r"""
    Output of [`GatedSparseBlipModel`].

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`):
            Last decoder hidden states.
        image_embeds (`torch.FloatTensor` of shape `(batch_size, num_latent_tokens, vision_hidden_size)`, *optional*):
            Latent encoder output (`None` in generation steps that read the cross-attention keys from the cache).
        image_attention_mask (`torch.BoolTensor` of shape `(batch_size, num_latent_tokens)`, *optional*):
            `True` for real latent tokens, `False` for padding; `None` when nothing is padded.
        cache (`Cache`, *optional*):
            `EncoderDecoderCache` with the decoder self- and cross-attention keys and values, when `use_cache=True`.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            Decoder embeddings output and every decoder layer output, when `output_hidden_states=True`.
        attentions (`tuple(torch.FloatTensor)`, *optional*):
            Per layer, decoder self-attention probabilities `(batch_size, num_heads, query_length, key_length)` after
            top-k sparsification, when `output_attentions=True`.
        cross_attentions (`tuple(torch.FloatTensor)`, *optional*):
            Per layer, decoder cross-attention probabilities over the latent tokens, when `output_attentions=True`.
        gate_values (`tuple(torch.FloatTensor)`, *optional*):
            Per layer, token gate values `(batch_size, sequence_length)` in (0, 1), when `output_gate_values=True`.
    """

    last_hidden_state: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    image_attention_mask: torch.BoolTensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None
    gate_values: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class GatedSparseBlipForConditionalGenerationOutput(ModelOutput):
    r"""
    Output of [`GatedSparseBlipForConditionalGeneration`].

    Args:
        loss (`torch.FloatTensor` of shape `(1,)`, *optional*):
            Next-token cross-entropy (logits at position t predict `labels[t + 1]`, `-100` ignored), when `labels`
            are given.
        logits (`torch.FloatTensor` of shape `(batch_size, sequence_length, vocab_size)`):
            Language modelling scores.
        cache, image_embeds, image_attention_mask, hidden_states, attentions, cross_attentions, gate_values:
            As in [`GatedSparseBlipModelOutput`].
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: Cache | None = None
    image_embeds: torch.FloatTensor | None = None
    image_attention_mask: torch.BoolTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None
    gate_values: tuple[torch.FloatTensor, ...] | None = None


class GatedSparseBlipLatentEmbeddings(nn.Module):
    """`latents * vae_scaling_factor` -> Conv2d patches (row-major tokens) + 2-D sin-cos positions of their grid."""

    def __init__(self, config: GatedSparseBlipConfig):
        super().__init__()
        self.embed_dim = config.vision_hidden_size
        self.scaling_factor = config.vae_scaling_factor
        patch_size = config.latent_patch_size
        self.patch_embedding = nn.Conv2d(
            config.latent_channels, self.embed_dim, kernel_size=patch_size, stride=patch_size
        )

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        target_dtype = self.patch_embedding.weight.dtype
        patch_embeds = self.patch_embedding(latents.to(target_dtype) * self.scaling_factor)
        grid_height, grid_width = patch_embeds.shape[-2:]
        patch_embeds = patch_embeds.flatten(2).transpose(1, 2)
        positions = sincos_2d_position_embedding(
            grid_height, grid_width, self.embed_dim, device=patch_embeds.device, dtype=target_dtype
        )
        return patch_embeds + positions


class GatedSparseBlipTextEmbeddings(nn.Module):
    """BLIP text embeddings: word + absolute position (offset by the cached length), LayerNorm, dropout."""

    def __init__(self, text_config):
        super().__init__()
        self.word_embeddings = nn.Embedding(
            text_config.vocab_size, text_config.hidden_size, padding_idx=text_config.pad_token_id
        )
        self.position_embeddings = nn.Embedding(text_config.max_position_embeddings, text_config.hidden_size)
        self.LayerNorm = nn.LayerNorm(text_config.hidden_size, eps=text_config.layer_norm_eps)
        self.dropout = nn.Dropout(text_config.hidden_dropout_prob)

    def forward(self, input_ids: torch.LongTensor, past_length: int = 0) -> torch.Tensor:
        end = past_length + input_ids.shape[1]
        if end > self.position_embeddings.num_embeddings:
            raise ValueError(
                f"Sequence length {end} exceeds max_position_embeddings={self.position_embeddings.num_embeddings}."
            )
        positions = torch.arange(past_length, end, device=input_ids.device)
        embeddings = self.word_embeddings(input_ids) + self.position_embeddings(positions)[None]
        return self.dropout(self.LayerNorm(embeddings))


class TopKSparseAttention(nn.Module):
    r"""
    The score-to-output step of the decoder attentions: post-computation top-k sparse attention, or dense attention.

        S = Q K^T / sqrt(d) + M
        keep_ij = j is among the k_i largest S_i.,  k_i = max(1, floor((1 - sparsity) * n_i))   (`top_k_keep_mask`)
        A = softmax(S masked to -inf outside keep),  output = dropout(A) V

    `n_i` counts the valid keys of query `i` only (causal and padding masks in the additive mask `M`), so a decoder
    query at position t keeps `max(1, floor((1 - s) (t + 1)))` keys, the same with or without a KV cache. Sparsity
    is active when `sparsity > 0` and the module is training or `sparse_at_inference` is set: then the step is the
    "top_k_sparse" attention function; otherwise it is the dense function of `config._attn_implementation` ("eager",
    "sdpa", ...). No parameters.
    """

    def __init__(self, config, sparsity: float, sparse_at_inference: bool = True, dropout: float = 0.0):
        super().__init__()
        self.config = config
        self.sparsity = sparsity
        self.sparse_at_inference = sparse_at_inference
        self.dropout = dropout
        self.is_causal = False  # causality is part of the mask

    @property
    def is_sparse(self) -> bool:
        return self.sparsity > 0 and (self.training or self.sparse_at_inference)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """
        `query` (B, H, Q, d), `key`/`value` (B, H, K, d), `attention_mask` additive, broadcastable to (B, H, Q, K).
        Returns the output (B, Q, H, d) and the probabilities (B, H, Q, K) where the function gives them (sparse or
        eager).
        """
        if self.is_sparse:
            implementation, kwargs = "top_k_sparse", {**kwargs, "sparsity": self.sparsity}
        else:
            implementation = self.config._attn_implementation
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        return attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            scaling=query.shape[-1] ** -0.5,
            dropout=self.dropout if self.training else 0.0,
            **kwargs,
        )


class GatedSparseBlipVisionAttention(InterfaceAttention):
    """BLIP vision multi-head self-attention (fused qkv) through the config's attention function, padded keys masked."""

    def __init__(self, config: GatedSparseBlipConfig):
        super().__init__()
        self.config = config
        self.embed_dim = config.vision_hidden_size
        self.head_dim = self.embed_dim // config.vision_num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = config.dropout
        self.qkv = nn.Linear(self.embed_dim, 3 * self.embed_dim)
        self.projection = nn.Linear(self.embed_dim, self.embed_dim)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        query, key, value = (split_heads(x, self.head_dim) for x in self.qkv(hidden_states).chunk(3, dim=-1))
        context, probs = self.attend(query, key, value, attention_mask, **kwargs)
        return self.projection(context.reshape(*hidden_states.shape[:-1], -1)), probs


class GatedSparseBlipTextSelfAttention(nn.Module):
    """BLIP text multi-head attention (self or cross) whose score-to-output step is a `TopKSparseAttention`."""

    def __init__(self, config: GatedSparseBlipConfig, is_cross_attention: bool, layer_idx: int):
        super().__init__()
        text_config = config.text_config
        self.head_dim = text_config.hidden_size // text_config.num_attention_heads
        self.is_cross_attention = is_cross_attention
        self.layer_idx = layer_idx
        kv_width = text_config.encoder_hidden_size if is_cross_attention else text_config.hidden_size
        self.query = nn.Linear(text_config.hidden_size, text_config.hidden_size)
        self.key = nn.Linear(kv_width, text_config.hidden_size)
        self.value = nn.Linear(kv_width, text_config.hidden_size)
        is_sparse = config.sparse_cross_attention if is_cross_attention else config.sparse_self_attention
        self.sparse_attention = TopKSparseAttention(
            config,
            sparsity=config.attention_sparsity if is_sparse else 0.0,
            sparse_at_inference=config.sparse_at_inference,
            dropout=text_config.attention_probs_dropout_prob,
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        cache: EncoderDecoderCache | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        query = split_heads(self.query(hidden_states), self.head_dim)
        if self.is_cross_attention and cache is not None and cache.is_updated.get(self.layer_idx, False):
            # The latent tokens are fixed during generation: reuse their keys and values.
            key = cache.cross_attention_cache.layers[self.layer_idx].keys
            value = cache.cross_attention_cache.layers[self.layer_idx].values
        else:
            source = encoder_hidden_states if self.is_cross_attention else hidden_states
            key = split_heads(self.key(source), self.head_dim)
            value = split_heads(self.value(source), self.head_dim)
            if cache is not None and self.is_cross_attention:
                key, value = cache.cross_attention_cache.update(key, value, self.layer_idx)
                cache.is_updated[self.layer_idx] = True
            elif cache is not None:
                key, value = cache.self_attention_cache.update(key, value, self.layer_idx)

        context, probs = self.sparse_attention(query, key, value, attention_mask, **kwargs)
        return context.reshape(*hidden_states.shape[:-1], -1), probs


class GatedSparseBlipTextSelfOutput(nn.Module):
    def __init__(self, text_config):
        super().__init__()
        self.dense = nn.Linear(text_config.hidden_size, text_config.hidden_size)
        self.LayerNorm = nn.LayerNorm(text_config.hidden_size, eps=text_config.layer_norm_eps)
        self.dropout = nn.Dropout(text_config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


class GatedSparseBlipTextAttention(nn.Module):
    """Post-LN attention block: `LN(h + Dropout(Dense(Attention(h, ...))))`."""

    def __init__(self, config: GatedSparseBlipConfig, is_cross_attention: bool, layer_idx: int):
        super().__init__()
        self.self = GatedSparseBlipTextSelfAttention(config, is_cross_attention, layer_idx)
        self.output = GatedSparseBlipTextSelfOutput(config.text_config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        cache: EncoderDecoderCache | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        context, probs = self.self(hidden_states, attention_mask, encoder_hidden_states, cache, **kwargs)
        return self.output(context, hidden_states), probs


class GatedSparseBlipVisionMLP(nn.Module):
    def __init__(self, config: GatedSparseBlipConfig):
        super().__init__()
        self.activation_fn = ACT2FN[config.vision_hidden_act]
        self.fc1 = nn.Linear(config.vision_hidden_size, config.vision_intermediate_size)
        self.fc2 = nn.Linear(config.vision_intermediate_size, config.vision_hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(hidden_states)))


class GatedSparseBlipVisionLayer(GradientCheckpointingLayer):
    """Pre-LN encoder layer: `h = h + Attn(LN(h))`, `h = h + MLP(LN(h))` (dropout on both branches)."""

    def __init__(self, config: GatedSparseBlipConfig):
        super().__init__()
        self.self_attn = GatedSparseBlipVisionAttention(config)
        self.layer_norm1 = nn.LayerNorm(config.vision_hidden_size, eps=config.layer_norm_eps)
        self.mlp = GatedSparseBlipVisionMLP(config)
        self.layer_norm2 = nn.LayerNorm(config.vision_hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        attn_output, _ = self.self_attn(self.layer_norm1(hidden_states), attention_mask)
        hidden_states = hidden_states + self.dropout(attn_output)
        return hidden_states + self.dropout(self.mlp(self.layer_norm2(hidden_states)))


class GatedSparseBlipTextIntermediate(nn.Module):
    def __init__(self, text_config):
        super().__init__()
        self.dense = nn.Linear(text_config.hidden_size, text_config.intermediate_size)
        self.intermediate_act_fn = ACT2FN[text_config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(hidden_states))


class GatedSparseBlipTextOutput(nn.Module):
    def __init__(self, text_config):
        super().__init__()
        self.dense = nn.Linear(text_config.intermediate_size, text_config.hidden_size)
        self.LayerNorm = nn.LayerNorm(text_config.hidden_size, eps=text_config.layer_norm_eps)
        self.dropout = nn.Dropout(text_config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


class GatedSparseBlipTextLayer(GradientCheckpointingLayer):
    r"""
    BLIP decoder layer with a soft token gate in front:

        h = g(h) * h                        (TokenGate, when `use_token_gating`)
        h = LN(h + SelfAttn(h))             (causal, optionally top-k sparse)
        h = LN(h + CrossAttn(h, latents))   (optionally top-k sparse)
        h = LN(h + FFN(h))

    Gating the layer input scales both the token's residual stream and the keys/values it offers to later tokens;
    the post-LN blocks renormalise, so repeated gating across layers does not shrink the stream to zero.
    """

    def __init__(self, config: GatedSparseBlipConfig, layer_idx: int):
        super().__init__()
        text_config = config.text_config
        self.token_gate = (
            TokenGate(text_config.hidden_size, config.token_gate_dropout) if config.use_token_gating else None
        )
        self.attention = GatedSparseBlipTextAttention(config, is_cross_attention=False, layer_idx=layer_idx)
        self.crossattention = GatedSparseBlipTextAttention(config, is_cross_attention=True, layer_idx=layer_idx)
        self.intermediate = GatedSparseBlipTextIntermediate(text_config)
        self.output = GatedSparseBlipTextOutput(text_config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        cache: EncoderDecoderCache | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """`attention_mask` (causal + padding) and `encoder_attention_mask` (latent padding) are additive masks."""
        gate = None
        if self.token_gate is not None:
            gate = self.token_gate(hidden_states)
            hidden_states = hidden_states * gate
        attention_output, self_probs = self.attention(hidden_states, attention_mask, cache=cache, **kwargs)
        attention_output, cross_probs = self.crossattention(
            attention_output, encoder_attention_mask, encoder_hidden_states, cache, **kwargs
        )
        layer_output = self.output(self.intermediate(attention_output), attention_output)
        return layer_output, self_probs, cross_probs, gate


class TokenGate(nn.Module):
    r"""
    Soft token gate: one importance score per token that scales, never drops, the token.

        g = sigmoid(W_2 Dropout(GELU(W_1 h + b_1)) + b_2),   W_1: D -> D/2,  W_2: D/2 -> 1
        h <- g * h
    """

    def __init__(self, hidden_size: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, hidden_size // 2)
        self.act = nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden_size // 2, 1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Returns the gate values `(batch, sequence, 1)`."""
        return torch.sigmoid(self.fc2(self.dropout(self.act(self.fc1(hidden_states)))))


def latent_mask_to_patch_mask(latent_mask: torch.Tensor, patch_size: int) -> torch.BoolTensor:
    """
    Turn a latent-resolution mask `(batch, height, width)` (1 = real latent, 0 = padding) into a per-token mask
    `(batch, (height / patch_size) * (width / patch_size))`, row-major like the patch embedding. Padding must cover
    whole patches, and every sample needs at least one real patch.
    """
    if latent_mask.ndim != 3:
        raise ValueError(f"`latent_mask` must have shape (batch, height, width), got {tuple(latent_mask.shape)}.")
    batch, height, width = latent_mask.shape
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"`latent_mask` height and width must be multiples of latent_patch_size={patch_size}, "
            f"got {(height, width)}."
        )
    patches = latent_mask.bool().reshape(batch, height // patch_size, patch_size, width // patch_size, patch_size)
    patch_mask = patches.all(dim=4).all(dim=2)
    if not torch.equal(patch_mask, patches.any(dim=4).any(dim=2)):
        raise ValueError("`latent_mask` must be constant inside every latent patch (pad whole patches).")
    patch_mask = patch_mask.reshape(batch, -1)
    if not patch_mask.any(dim=-1).all():
        raise ValueError("`latent_mask` marks every position of a sample as padding.")
    return patch_mask


class GatedSparseBlipLatentEncoder(nn.Module):
    """Latent patch embeddings -> pre-LN layers -> LayerNorm; padded tokens are masked keys and zeroed outputs."""

    def __init__(self, config: GatedSparseBlipConfig):
        super().__init__()
        self.embeddings = GatedSparseBlipLatentEmbeddings(config)
        self.layers = nn.ModuleList(
            [GatedSparseBlipVisionLayer(config) for _ in range(config.vision_num_hidden_layers)]
        )
        self.post_layernorm = nn.LayerNorm(config.vision_hidden_size, eps=config.layer_norm_eps)

    def forward(self, latents: torch.Tensor, patch_mask: torch.BoolTensor | None = None) -> torch.Tensor:
        hidden_states = self.embeddings(latents)
        key_mask = None if patch_mask is None else additive_mask(patch_mask[:, None, None, :], hidden_states.dtype)
        for layer in self.layers:
            hidden_states = layer(hidden_states, key_mask)
        hidden_states = self.post_layernorm(hidden_states)
        if patch_mask is not None:
            hidden_states = hidden_states * patch_mask[..., None].to(hidden_states.dtype)
        return hidden_states


class GatedSparseBlipTextModel(nn.Module):
    """BLIP text decoder stack (embeddings + gated sparse layers) attending to the latent encoder output."""

    def __init__(self, config: GatedSparseBlipConfig):
        super().__init__()
        self.text_config = config.text_config
        self.embeddings = GatedSparseBlipTextEmbeddings(config.text_config)
        self.layers = nn.ModuleList(
            [GatedSparseBlipTextLayer(config, layer_idx) for layer_idx in range(config.text_config.num_hidden_layers)]
        )

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.BoolTensor | None = None,
        cache: Cache | None = None,
        use_cache: bool = False,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        output_gate_values: bool = False,
    ) -> GatedSparseBlipModelOutput:
        if use_cache:
            # Self-attention keys grow with the text; cross-attention keys are the latent tokens, computed once.
            if cache is None:
                cache = DynamicCache(config=self.text_config)
            if not isinstance(cache, EncoderDecoderCache):
                cache = EncoderDecoderCache(cache, DynamicCache(config=self.text_config))
        else:
            cache = None
        past_length = cache.get_seq_length() if cache is not None else 0

        batch_size, query_length = input_ids.shape
        key_length = past_length + query_length
        self_mask = torch.ones(query_length, key_length, dtype=torch.bool, device=input_ids.device)
        self_mask = self_mask.tril(diagonal=past_length)[None, None].expand(batch_size, 1, -1, -1)
        if attention_mask is not None:
            if attention_mask.shape != (batch_size, key_length):
                raise ValueError(
                    f"`attention_mask` must have shape {(batch_size, key_length)} (cached + new tokens), "
                    f"got {tuple(attention_mask.shape)}."
                )
            self_mask = self_mask & attention_mask.bool()[:, None, None, :]
        hidden_states = self.embeddings(input_ids, past_length)
        self_mask = additive_mask(self_mask, hidden_states.dtype)
        cross_mask = None
        if encoder_attention_mask is not None:
            cross_mask = additive_mask(encoder_attention_mask[:, None, None, :], hidden_states.dtype)

        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_self, all_cross, all_gates = [], [], []
        for layer in self.layers:
            hidden_states, self_probs, cross_probs, gate = layer(
                hidden_states,
                self_mask,
                encoder_hidden_states=encoder_hidden_states,
                encoder_attention_mask=cross_mask,
                cache=cache,
                output_attentions=output_attentions,
            )
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_self += [self_probs] if self_probs is not None else []
                all_cross += [cross_probs] if cross_probs is not None else []
            if gate is not None:
                all_gates.append(gate.squeeze(-1))

        return GatedSparseBlipModelOutput(
            last_hidden_state=hidden_states,
            cache=cache,
            hidden_states=all_hidden_states,
            attentions=tuple(all_self) if output_attentions else None,
            cross_attentions=tuple(all_cross) if output_attentions else None,
            gate_values=tuple(all_gates) if output_gate_values and all_gates else None,
        )


class GatedSparseBlipTextPredictionHeadTransform(nn.Module):
    def __init__(self, text_config):
        super().__init__()
        self.dense = nn.Linear(text_config.hidden_size, text_config.hidden_size)
        self.transform_act_fn = ACT2FN[text_config.hidden_act]
        self.LayerNorm = nn.LayerNorm(text_config.hidden_size, eps=text_config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.transform_act_fn(self.dense(hidden_states)))


class GatedSparseBlipTextLMHead(nn.Module):
    """BLIP LM head: Dense -> act -> LayerNorm -> vocabulary projection (weight tied to the word embeddings)."""

    def __init__(self, text_config):
        super().__init__()
        self.transform = GatedSparseBlipTextPredictionHeadTransform(text_config)
        self.decoder = nn.Linear(text_config.hidden_size, text_config.vocab_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(hidden_states))


def _cross_attention_is_cached(cache: Cache | None) -> bool:
    return isinstance(cache, EncoderDecoderCache) and bool(cache.is_updated.get(0, False))


class GatedSparseBlipPreTrainedModel(BundleCodeFirstMixin, PreTrainedModel):
    config_class = GatedSparseBlipConfig
    config: GatedSparseBlipConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _no_split_modules = ["GatedSparseBlipVisionLayer", "GatedSparseBlipTextLayer"]

    def _init_weights(self, module):
        """Normal(0, initializer_range) weights and zero biases (pad embedding row zero); LayerNorm to identity."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None and not getattr(module.weight, "_is_hf_initialized", False):
                init.zeros_(module.weight[module.padding_idx])
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
            init.ones_(module.weight)
            init.zeros_(module.bias)


class GatedSparseBlipModel(GatedSparseBlipPreTrainedModel):
    r"""
    Latent encoder + gated sparse BLIP text decoder (+ optional frozen VAE), without the LM head.

    Inputs on the vision side are either `latents` `(batch, latent_channels, h, w)` (unscaled VAE latents, `h` and `w`
    multiples of `latent_patch_size`, at most `max_latent_size`) or `pixel_values` `(batch, 3, H, W)` in [-1, 1]
    when the config has a `vae_config`. A batch mixing latent sizes is padded bottom/right to a common size with a
    `latent_mask` `(batch, h, w)`: 1 on each sample's real `[:h_i, :w_i]` block, 0 on padding (see
    `GatedSparseBlipProcessor.pad_latents`); padded tokens are masked in encoder self-attention and as cross-attention
    keys, so every sample gets the same output as alone.
    """

    def __init__(self, config: GatedSparseBlipConfig):
        super().__init__(config)
        self.vae = self._build_frozen_vae(config.vae_config) if config.vae_config is not None else None
        self.vision_model = GatedSparseBlipLatentEncoder(config)
        self.text_model = GatedSparseBlipTextModel(config)
        self.post_init()

    @staticmethod
    def _build_frozen_vae(vae_config: dict) -> nn.Module:
        try:
            from diffusers import AutoencoderKL
        except ImportError as error:
            raise ImportError("`vae_config` needs the `diffusers` package (`pip install diffusers`).") from error
        vae = AutoencoderKL(**vae_config).requires_grad_(False).eval()
        # The VAE keeps diffusers' initialisation: `_init_weights` (normal, std 0.02) would shrink a random VAE's
        # latents about 20x. Real use loads pretrained VAE weights over it.
        for module in vae.modules():
            module._is_hf_initialized = True
        return vae

    def train(self, mode: bool = True):
        # The VAE stays frozen in every mode. `from_pretrained` loads fresh (trainable) parameters and then calls
        # `eval()`, which re-freezes them here.
        super().train(mode)
        if self.vae is not None:
            self.vae.requires_grad_(False)
            self.vae.eval()
        return self

    def get_input_embeddings(self) -> nn.Module:
        return self.text_model.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Module):
        self.text_model.embeddings.word_embeddings = value

    def encode_pixel_values(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Frozen VAE encoding: the mean of the latent distribution, unscaled (scaling happens in the encoder)."""
        if self.vae is None:
            raise ValueError("`pixel_values` need a VAE: build the model with `vae_config`, or pass `latents`.")
        in_channels = self.vae.config.in_channels
        if pixel_values.ndim != 4 or pixel_values.shape[1] != in_channels:
            raise ValueError(
                f"`pixel_values` must have shape (batch, {in_channels}, height, width), "
                f"got {tuple(pixel_values.shape)}."
            )
        if not torch.isfinite(pixel_values).all():
            raise ValueError("`pixel_values` contain NaN or inf values.")
        vae_dtype = next(self.vae.parameters()).dtype
        with torch.no_grad():
            return self.vae.encode(pixel_values.to(vae_dtype)).latent_dist.mean

    def _check_latents(self, latents: torch.Tensor):
        config = self.config
        if latents.ndim != 4:
            raise ValueError(
                f"`latents` must have rank 4 (batch, channels, height, width), got shape {tuple(latents.shape)}."
            )
        if latents.shape[1] != config.latent_channels:
            raise ValueError(
                f"`latents` must have {config.latent_channels} channels, got {latents.shape[1]} "
                f"(shape {tuple(latents.shape)})."
            )
        height, width = latents.shape[-2:]
        max_height, max_width = config.max_latent_size
        if height > max_height or width > max_width:
            raise ValueError(
                f"`latents` size {(height, width)} is larger than max_latent_size {(max_height, max_width)}."
            )
        if height % config.latent_patch_size or width % config.latent_patch_size:
            raise ValueError(
                f"`latents` height and width must be multiples of latent_patch_size={config.latent_patch_size}, "
                f"got {(height, width)}."
            )
        if not latents.is_floating_point():
            raise ValueError(f"`latents` must be a floating point tensor, got {latents.dtype}.")
        if not torch.isfinite(latents).all():
            raise ValueError("`latents` contain NaN or inf values.")

    def get_image_features(
        self,
        latents: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        latent_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.BoolTensor | None]:
        """Latent tokens `(batch, num_tokens, vision_hidden_size)` and their validity mask (`None` if unpadded)."""
        if (latents is None) == (pixel_values is None):
            raise ValueError("Pass exactly one of `latents` and `pixel_values`.")
        if pixel_values is not None:
            latents = self.encode_pixel_values(pixel_values)
        self._check_latents(latents)
        patch_mask = None
        if latent_mask is not None:
            if latent_mask.shape != (latents.shape[0], *latents.shape[-2:]):
                raise ValueError(
                    f"`latent_mask` must have shape {(latents.shape[0], *latents.shape[-2:])}, "
                    f"got {tuple(latent_mask.shape)}."
                )
            patch_mask = latent_mask_to_patch_mask(latent_mask, self.config.latent_patch_size)
        return self.vision_model(latents, patch_mask), patch_mask

    @can_return_tuple
    @deprecate_kwarg("past_key_values", version="5.40.0", new_name="cache")
    def forward(
        self,
        latents: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        latent_mask: torch.Tensor | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        output_gate_values: bool | None = None,
    ) -> GatedSparseBlipModelOutput:
        r"""
        latents (`torch.FloatTensor` of shape `(batch_size, latent_channels, height, width)`, *optional*):
            Unscaled VAE latents.
        pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, H, W)`, *optional*):
            Images in [-1, 1], encoded by the frozen VAE (needs `config.vae_config`).
        latent_mask (`torch.Tensor` of shape `(batch_size, height, width)`, *optional*):
            1 for real latent positions, 0 for padding. Kept through generation to mask the cached latent keys.
        input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
            Decoder tokens, starting with the BOS (`[DEC]`) token.
        attention_mask (`torch.Tensor` of shape `(batch_size, cached_length + sequence_length)`, *optional*):
            1 for real tokens, 0 for text padding.
        cache (`Cache`, *optional*):
            Decoder KV cache (`past_key_values` is accepted as the deprecated name). Once it holds the cross-attention
            keys, `latents`/`pixel_values` may be omitted.
        output_gate_values (`bool`, *optional*):
            Return the per-layer token gate values.
        """
        if input_ids is None:
            raise ValueError("`input_ids` are required (start captions with the BOS token).")
        use_cache = use_cache if use_cache is not None else self.config.text_config.use_cache
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        if not use_cache:
            cache = None

        image_embeds = None
        if latents is not None or pixel_values is not None:
            image_embeds, image_mask = self.get_image_features(latents, pixel_values, latent_mask)
        elif _cross_attention_is_cached(cache):
            image_mask = None
            if latent_mask is not None:
                image_mask = latent_mask_to_patch_mask(latent_mask, self.config.latent_patch_size)
        else:
            raise ValueError(
                "Pass `latents` or `pixel_values` (only generation steps whose cache already holds the latent keys "
                "may omit them)."
            )

        text_outputs = self.text_model(
            input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_mask,
            cache=cache,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            output_gate_values=bool(output_gate_values),
        )
        text_outputs.image_embeds = image_embeds
        text_outputs.image_attention_mask = image_mask
        return text_outputs


class GatedSparseBlipForConditionalGeneration(GatedSparseBlipPreTrainedModel, GenerationMixin):
    r"""
    GatedSparseBlip captioner: [`GatedSparseBlipModel`] + BLIP LM head. Captions are `[DEC] tokens [SEP]`;
    `generate(latents=...)` (or `pixel_values=...` with a VAE) starts from `text_config.bos_token_id` and stops at
    `text_config.sep_token_id`, as BLIP does.
    """

    _tied_weights_keys = {"lm_head.decoder.weight": "model.text_model.embeddings.word_embeddings.weight"}
    # Trainer passes `num_items_in_batch` (label tokens of the whole accumulated batch) and skips its own division.
    accepts_loss_kwargs = True

    # BLIP checkpoint prefixes -> ours; the layer internals share BLIP's names.
    _blip_text_key_prefixes = (
        ("text_decoder.bert.embeddings.", "model.text_model.embeddings."),
        ("text_decoder.bert.encoder.layer.", "model.text_model.layers."),
        ("text_decoder.cls.predictions.transform.", "lm_head.transform."),
        ("text_decoder.cls.predictions.decoder.", "lm_head.decoder."),
    )

    def __init__(self, config: GatedSparseBlipConfig):
        super().__init__(config)
        self.model = GatedSparseBlipModel(config)
        self.lm_head = GatedSparseBlipTextLMHead(config.text_config)
        self.post_init()
        text_config = config.text_config
        self.generation_config.bos_token_id = text_config.bos_token_id
        self.generation_config.eos_token_id = text_config.sep_token_id
        self.generation_config.pad_token_id = text_config.pad_token_id

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head.decoder

    def set_output_embeddings(self, new_embeddings: nn.Module):
        self.lm_head.decoder = new_embeddings

    @can_return_tuple
    @deprecate_kwarg("past_key_values", version="5.40.0", new_name="cache")
    def forward(
        self,
        latents: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        latent_mask: torch.Tensor | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        output_gate_values: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        num_items_in_batch: int | torch.Tensor | None = None,
    ) -> GatedSparseBlipForConditionalGenerationOutput:
        r"""
        Inputs as in [`GatedSparseBlipModel.forward`], plus:

        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Usually `input_ids` with padding set to -100. The loss (`self.loss_function`, transformers' causal-LM loss)
            is the mean cross-entropy of `logits[:, t]` against `labels[:, t + 1]` over labels that are not -100.
            Disables the cache.
        num_items_in_batch (`int` or `torch.Tensor`, *optional*):
            With gradient accumulation: the number of predicted label tokens in the whole accumulated batch; the loss
            is then the summed cross-entropy divided by it, so every token weighs the same in every micro-batch.
        logits_to_keep (`int` or `torch.Tensor`, *optional*):
            Compute logits for the last `logits_to_keep` positions only (0 = all), or for the given indices.
        """
        if labels is not None:
            use_cache = False
        outputs = self.model(
            latents=latents,
            pixel_values=pixel_values,
            latent_mask=latent_mask,
            input_ids=input_ids,
            attention_mask=attention_mask,
            cache=cache,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            output_gate_values=output_gate_values,
        )
        positions = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(outputs.last_hidden_state[:, positions])

        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, logits.shape[-1], num_items_in_batch=num_items_in_batch)

        return GatedSparseBlipForConditionalGenerationOutput(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            image_embeds=outputs.image_embeds,
            image_attention_mask=outputs.image_attention_mask,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            cross_attentions=outputs.cross_attentions,
            gate_values=outputs.gate_values,
        )

    @deprecate_kwarg("past_key_values", version="5.40.0", new_name="cache")
    def prepare_inputs_for_generation(
        self, input_ids, cache=None, latents=None, is_first_iteration=False, **kwargs
    ) -> dict:
        # The parent drops `pixel_values` after the first step when caching; `latents` likewise. Later steps read the
        # latent keys/values from the cross-attention cache, while `latent_mask` is always passed to mask them.
        model_inputs = super().prepare_inputs_for_generation(
            input_ids, cache=cache, is_first_iteration=is_first_iteration, **kwargs
        )
        if is_first_iteration or not kwargs.get("use_cache", True):
            model_inputs["latents"] = latents
        return model_inputs

    @classmethod
    def from_blip_pretrained(cls, pretrained_model_name_or_path, **config_overrides):
        r"""
        Build a model whose text decoder (embeddings, all layers, LM head) is copied from a transformers
        `BlipForConditionalGeneration` checkpoint. The latent encoder and the token gates start fresh (BLIP reads
        pixels, not latents). The encoder width is set to the BLIP decoder's `encoder_hidden_size`, so BLIP's
        cross-attention key/value weights fit unchanged; `vision_num_attention_heads` and `vision_intermediate_size`
        default to BLIP's vision tower. `config_overrides` are [`GatedSparseBlipConfig`] arguments (`text_config`
        entries are merged into BLIP's text config). The tokenizer can be loaded from the same folder
        (`GatedSparseBlipProcessor.from_blip_pretrained`).
        """
        from transformers import BlipForConditionalGeneration

        blip = BlipForConditionalGeneration.from_pretrained(pretrained_model_name_or_path)
        text_config = blip.config.text_config.to_dict()
        text_config.update(config_overrides.pop("text_config", None) or {})
        width = blip.config.text_config.encoder_hidden_size
        if config_overrides.setdefault("vision_hidden_size", width) != width:
            raise ValueError(
                f"`vision_hidden_size` must equal the BLIP decoder's encoder_hidden_size ({width}) so that the "
                f"copied cross-attention weights fit, got {config_overrides['vision_hidden_size']}."
            )
        config_overrides.setdefault("vision_num_attention_heads", blip.config.vision_config.num_attention_heads)
        config_overrides.setdefault("vision_intermediate_size", blip.config.vision_config.intermediate_size)
        model = cls(cls.config_class(text_config=text_config, **config_overrides))

        own_params = dict(model.named_parameters(remove_duplicate=False))
        copied = set()
        with torch.no_grad():
            for blip_key, tensor in blip.state_dict().items():
                for blip_prefix, own_prefix in cls._blip_text_key_prefixes:
                    if blip_key.startswith(blip_prefix):
                        own_key = own_prefix + blip_key[len(blip_prefix) :]
                        if own_key not in own_params:
                            raise ValueError(f"BLIP weight {blip_key} has no counterpart {own_key} in this model.")
                        own_params[own_key].copy_(tensor)
                        copied.add(own_key)
        expected = {
            key
            for key in own_params
            if key.startswith(("model.text_model.", "lm_head.")) and ".token_gate." not in key
        }
        if expected - copied:
            raise ValueError(f"The BLIP checkpoint lacks decoder weights: {sorted(expected - copied)}.")
        return model


__all__ = [
    "GatedSparseBlipForConditionalGeneration",
    "GatedSparseBlipModel",
    "GatedSparseBlipPreTrainedModel",
    "TokenGate",
    "TopKSparseAttention",
]
