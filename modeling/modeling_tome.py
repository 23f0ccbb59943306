"""ToMe: token merging (Bolya et al., 2023, "Token Merging: Your ViT But Faster") on DTP-ViT's dense tower.

A training-free peer of dynamic token pooling: inside every layer, between attention and MLP, the r most similar
token pairs are merged (bipartite soft matching on the attention keys), and attention is made proportional to how many
patches each token stands for. Written here from the paper and the authors' description in facebookresearch/ToMe;
it runs the weights of a dense `DTPViTModel` (compression 1.0) unchanged, so r = 0 is that model exactly.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import ModelOutput

from .modeling_common import check_pixel_values, split_heads
from .modeling_dtp_vit import DTPViTLayer, DTPViTModel


@dataclass
class ToMeOutput(ModelOutput):
    """
    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch, tokens, hidden)`): CLS first, then the merged tokens,
            after the final LayerNorm.
        pooler_output (`torch.FloatTensor` of shape `(batch, hidden)`): CLS, or the size-weighted mean of the other
            tokens (the mean over the original patches) for `pooler_type="mean"`.
        sizes (`torch.FloatTensor` of shape `(batch, tokens)`): patches each token stands for (CLS: 1).
        token_counts (`tuple[int, ...]`): tokens each layer's attention saw, layer by layer, then the final count.
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    sizes: torch.FloatTensor | None = None
    token_counts: tuple[int, ...] | None = None


def bipartite_soft_matching(metric: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""ToMe's matching of r token pairs, token 0 (CLS) protected.

    Tokens alternate into A (even positions) and B (odd). Each a in A finds its most similar b in B,
    `dst(a) = argmax_b cos(m_a, m_b)`; the r tokens of A with the highest `max_b cos(m_a, m_b)` merge into their
    `dst`, the rest of A stays. CLS (position 0, in A) never merges. `metric` (batch, tokens, dim); `r` at most
    (tokens - 1) // 2. Returns the indices into A of the kept tokens (batch, |A| - r, in their original order), of the
    merged ones (batch, r) and their destinations in B (batch, r).
    """
    metric = metric / metric.norm(dim=-1, keepdim=True)
    scores = metric[:, ::2] @ metric[:, 1::2].transpose(-1, -2)
    scores[:, 0] = -torch.inf
    best, destination = scores.max(dim=-1)
    order = best.argsort(dim=-1, descending=True)
    merged = order[:, :r]
    kept = order[:, r:].sort(dim=-1).values
    return kept, merged, destination.gather(-1, merged)


def merge_weighted(
    hidden: torch.Tensor, sizes: torch.Tensor, kept: torch.Tensor, merged: torch.Tensor, destination: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Size-weighted merge: for every b in B, `x_b <- (s_b x_b + sum_{a -> b} s_a x_a) / s'_b`, `s'_b = s_b +
    sum_{a -> b} s_a`; merged A tokens are dropped. Returns ([kept A; B] tokens, their sizes), (batch, tokens - r,
    ...)."""
    width = hidden.shape[-1]
    weighted = hidden * sizes[..., None]
    a, b = weighted[:, ::2], weighted[:, 1::2]
    size_a, size_b = sizes[:, ::2], sizes[:, 1::2]
    sources = a.gather(1, merged[..., None].expand(-1, -1, width))
    b = b.scatter_add(1, destination[..., None].expand(-1, -1, width), sources)
    size_b = size_b.scatter_add(1, destination, size_a.gather(1, merged))
    a, size_a = a.gather(1, kept[..., None].expand(-1, -1, width)), size_a.gather(1, kept)
    sizes = torch.cat([size_a, size_b], dim=1)
    return torch.cat([a, b], dim=1) / sizes[..., None], sizes


class ToMeLayer(nn.Module):
    r"""A `DTPViTLayer`'s weights run with merging between attention and MLP:

        h = x + Attn(LN1(x)),  attention softmax(Q K^T / sqrt(d) + log s) (proportional attention; s = token sizes)
        h, s = merge_weighted(h, s, bipartite_soft_matching(mean_heads(K), r))
        out = h + FFN(LN2(h))
    """

    def __init__(self, layer: DTPViTLayer):
        super().__init__()
        self.layer = layer

    def forward(self, hidden: torch.Tensor, sizes: torch.Tensor, r: int, merged_before: bool):
        layer, attn = self.layer, self.layer.self_attn
        normed = layer.layer_norm1(hidden)
        query = split_heads(attn.q_proj(normed), attn.head_dim)
        key = split_heads(attn.k_proj(normed), attn.head_dim)
        value = split_heads(attn.v_proj(normed), attn.head_dim)
        # Sizes are all 1 until a merge: log 1 = 0, so no mask (bit-for-bit the dense layer).
        bias = sizes.log()[:, None, None, :].to(hidden.dtype) if merged_before else None
        context, _ = attn.attend(query, key, value, bias)
        hidden = hidden + layer.dropout(attn.out_proj(context.reshape(*hidden.shape[:-1], -1)))
        if r > 0:
            hidden, sizes = merge_weighted(hidden, sizes, *bipartite_soft_matching(key.mean(dim=1), r))
        hidden = hidden + layer.dropout(layer.mlp(layer.layer_norm2(hidden)))
        return hidden, sizes


def tome_schedule(num_tokens: int, num_layers: int, r: int) -> list[int]:
    """Tokens merged in each layer: ToMe's constant r, capped at (tokens - 1) // 2 (CLS protected, half of A)."""
    schedule = []
    for _ in range(num_layers):
        schedule.append(min(r, (num_tokens - 1) // 2))
        num_tokens -= schedule[-1]
    return schedule


class ToMeViT(nn.Module):
    """A dense `DTPViTModel` (compression 1.0) run with ToMe, `r` tokens merged per layer (eval, inference)."""

    def __init__(self, dense: DTPViTModel, r: int):
        super().__init__()
        if dense.pools:
            raise ValueError("ToMe runs on a dense tower: pass a DTPViTModel with compression_rate=1.0")
        if r < 0:
            raise ValueError(f"r must be >= 0, got {r}")
        self.dense, self.r = dense, r
        self.layers = nn.ModuleList([ToMeLayer(layer) for layer in (*dense.pre_layers, *dense.shortened_layers)])

    def forward(self, pixel_values: torch.Tensor) -> ToMeOutput:
        dense = self.dense
        check_pixel_values(pixel_values)
        hidden = dense.embeddings(pixel_values)
        if dense.pre_layrnorm is not None:
            hidden = dense.pre_layrnorm(hidden)
        hidden = dense.dropout(hidden)
        sizes = hidden.new_ones(hidden.shape[:2])
        counts, merged_before = [], False
        for layer, r in zip(self.layers, tome_schedule(hidden.shape[1], len(self.layers), self.r)):
            counts.append(hidden.shape[1])
            hidden, sizes = layer(hidden, sizes, r, merged_before)
            merged_before = merged_before or r > 0
        hidden = dense.post_layernorm(hidden)
        if dense.config.pooler_type == "cls":
            pooled = hidden[:, 0]
        else:
            weights = sizes[:, 1:, None]
            pooled = (hidden[:, 1:] * weights).sum(dim=1) / weights.sum(dim=1)
        return ToMeOutput(hidden, pooled, sizes, tuple(counts) + (hidden.shape[1],))


__all__ = ["ToMeViT", "ToMeLayer", "ToMeOutput", "bipartite_soft_matching", "merge_weighted", "tome_schedule"]
