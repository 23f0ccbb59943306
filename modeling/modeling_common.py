"""Pieces shared by the model files: attention functions, masks, heads and fixed 2-D positions.

Every attention layer of every family projects its inputs, splits heads with `split_heads`, and hands query, key and
value to `ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation, eager_attention_forward)` ("eager",
"sdpa", or any function registered in transformers' `AttentionInterface`), exactly as transformers' own models do.
Top-k sparse attention is one more named function in that table, registered here as `"top_k_sparse"`. Masks are
additive: 0 where a key is allowed, the dtype's minimum where it is not (`additive_mask`).

Exported bundles carry this file next to the model files (remote code is flat); it imports only torch and
transformers.
"""

from collections.abc import Callable

import torch
from torch import nn
from transformers.dynamic_module_utils import get_class_from_dynamic_module
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface


def check_pixel_values(pixel_values: torch.Tensor) -> None:
    """Refuses an empty batch and NaN / inf pixels (they would give NaN outputs or empty captions without a word).
    One `aminmax` reduction per forward (NaN and +-inf reach the min or max; `isfinite` would allocate a copy of the
    batch), skipped under `torch.compile` (a data-dependent branch would break the graph)."""
    if pixel_values.dim() >= 1 and pixel_values.shape[0] == 0:
        shape = tuple(pixel_values.shape)
        raise ValueError(f"`pixel_values` is an empty batch (shape {shape}): pass at least one image.")
    if torch.compiler.is_compiling():
        return
    if pixel_values.is_floating_point() and not torch.isfinite(torch.stack(torch.aminmax(pixel_values))).all():
        raise ValueError("`pixel_values` contain NaN or inf values.")


def split_heads(states: torch.Tensor, head_dim: int) -> torch.Tensor:
    """`(batch, length, heads * head_dim)` -> `(batch, heads, length, head_dim)`."""
    return states.view(*states.shape[:-1], -1, head_dim).transpose(1, 2)


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean mask (True = the key may be attended) -> additive mask: 0 where allowed, `finfo(dtype).min` elsewhere."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
        ~allowed.bool(), torch.finfo(dtype).min
    )


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""
    A = softmax(Q K^T * scaling + M) (softmax in float32), output = dropout(A) V.

    `query` (B, H, Q, d), `key`/`value` (B, H, K, d), `attention_mask` M additive, broadcastable to (B, H, Q, K).
    Returns the output transposed to (B, Q, H, d) and the probabilities A (B, H, Q, K).
    """
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    return _softmax_attention(module, scores, value, dropout)


def _softmax_attention(module, scores, value, dropout):
    """softmax (in float32) of the scores, dropout, times V; output transposed to (B, Q, H, d)."""
    probs = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    output = torch.matmul(nn.functional.dropout(probs, p=dropout, training=module.training), value)
    return output.transpose(1, 2).contiguous(), probs


def top_k_keep_mask(scores: torch.Tensor, allowed: torch.BoolTensor, sparsity: float) -> torch.BoolTensor:
    r"""
    Which scores survive top-k sparsification, exactly `k_i` per query row `i`:

        n_i = number of allowed keys of row i (causal and padding masks)
        k_i = min(n_i, max(1, floor((1 - sparsity) * n_i)))

    `scores` must already hold a very negative value at disallowed keys. The `k_i` largest scores are taken from
    `torch.topk` indices and scattered into the mask, so tied scores never keep more than `k_i` keys. The floor is
    taken in float64 with a 1e-9 guard so that, e.g., `(1 - 0.9) * 20` gives 2 and not 1. Rows without any allowed
    key keep nothing.
    """
    num_allowed = allowed.sum(dim=-1, keepdim=True)
    k = torch.floor(num_allowed.double() * (1.0 - sparsity) + 1e-9).long().clamp(min=1)
    k = torch.minimum(k, num_allowed).expand(*scores.shape[:-1], 1)
    k_max = int(k.max())
    top_indices = scores.topk(k_max, dim=-1).indices
    top_is_kept = torch.arange(k_max, device=scores.device) < k
    return torch.zeros_like(scores, dtype=torch.bool).scatter(-1, top_indices, top_is_kept)


def top_k_sparse_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    sparsity: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""
    Post-computation top-k sparse attention: the full scores are computed, then each query keeps its `k_i` best keys.

        S = Q K^T * scaling + M
        keep_ij = j is among the k_i largest S_i.,  k_i = max(1, floor((1 - sparsity) * n_i))   (`top_k_keep_mask`)
        A = softmax(S with every key outside `keep` set to finfo.min),  output = dropout(A) V

    `n_i` counts the keys M allows for query `i` (causal and padding masks), so a decoder query at position t keeps
    `max(1, floor((1 - s) (t + 1)))` keys, with or without a KV cache. Shapes and returns as
    `eager_attention_forward`.
    """
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
        allowed = (attention_mask == 0).expand_as(scores)
    else:
        allowed = torch.ones_like(scores, dtype=torch.bool)
    keep = top_k_keep_mask(scores, allowed, sparsity)
    return _softmax_attention(module, scores.masked_fill(~keep, torch.finfo(scores.dtype).min), value, dropout)


# Beside transformers' own ("sdpa", "flash_attention_2", "flex_attention", ...); "eager" is each caller's default.
AttentionInterface.register("top_k_sparse", top_k_sparse_attention_forward)


class InterfaceAttention(nn.Module):
    """Base of the attention layers: `attend` hands query, key and value to the function registered in transformers'
    `ALL_ATTENTION_FUNCTIONS` for the config's `_attn_implementation` (eager by default). Subclasses set `config`,
    `scaling` and `dropout`; causality, where there is any, is part of the mask."""

    is_causal = False

    def attend(self, query, key, value, attention_mask, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`query` (B, H, Q, d), `key`/`value` (B, H, K, d) -> output (B, Q, H, d), probabilities or None."""
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation or "eager", eager_attention_forward
        )
        dropout = self.dropout if self.training else 0.0
        return attention_interface(
            self, query, key, value, attention_mask, scaling=self.scaling, dropout=dropout, **kwargs
        )


def sincos_2d_position_embedding(
    height: int, width: int, dim: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    r"""
    Fixed 2-D sin-cos positions (MAE style) for a `height x width` grid, row-major, shape `(height * width, dim)`:

        w_i = 10000^(-i / (dim / 4)),  i = 0 .. dim/4 - 1
        pos(r, c) = [sin(r w), cos(r w), sin(c w), cos(c w)]

    A patch's embedding depends only on its (row, column), so a sample padded into a larger grid keeps its positions.
    """
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64, device=device) / quarter)
    rows = torch.arange(height, dtype=torch.float64, device=device)[:, None] * omega
    cols = torch.arange(width, dtype=torch.float64, device=device)[:, None] * omega
    row_embed = torch.cat([rows.sin(), rows.cos()], dim=-1)[:, None, :].expand(height, width, 2 * quarter)
    col_embed = torch.cat([cols.sin(), cols.cos()], dim=-1)[None, :, :].expand(height, width, 2 * quarter)
    return torch.cat([row_embed, col_embed], dim=-1).reshape(height * width, dim).to(dtype)


class BundleCodeFirstMixin:
    """`from_pretrained(path, trust_remote_code=True)` runs the code a bundle ships, also where an installed copy of
    these classes is registered with the Auto classes (transformers prefers registered classes, so an export and the
    installed package could drift apart unnoticed). Without `trust_remote_code=True`, or for folders that ship no
    code (no `auto_map` entry naming this class), the class loads the folder itself."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, trust_remote_code=None, **kwargs):
        if trust_remote_code:
            config = kwargs.get("config")
            if config is None:
                config = cls.config_class.from_pretrained(pretrained_model_name_or_path)
            refs = [ref for ref in (getattr(config, "auto_map", None) or {}).values()
                    if ref.rsplit(".", 1)[-1] == cls.__name__]
            if refs:
                bundle_class = get_class_from_dynamic_module(refs[0], pretrained_model_name_or_path)
                if bundle_class is not cls:
                    if "config" in kwargs:  # the bundle's own config class, with the same values
                        kwargs["config"] = bundle_class.config_class.from_dict(config.to_dict())
                    return bundle_class.from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)


__all__ = [
    "check_pixel_values",
    "BundleCodeFirstMixin",
    "InterfaceAttention",
    "additive_mask",
    "eager_attention_forward",
    "sincos_2d_position_embedding",
    "split_heads",
    "top_k_keep_mask",
    "top_k_sparse_attention_forward",
]
