"""Attention goes through transformers' attention interface in every family: eager and SDPA agree, a function
registered in `AttentionInterface` is the one that runs, and top-k sparse attention keeps exactly k keys per query."""

import os

import pytest
import torch
from transformers import (
    AttentionInterface,
    AutoModelForImageClassification,
    AutoModelForImageTextToText,
    AutoModelForZeroShotImageClassification,
)
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

import leanvision  # noqa: F401  (registers the Auto classes)
from leanvision.modeling.modeling_common import eager_attention_forward

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "saved_v0_1")
AUTO_CLASS = {
    "dtp_vit": AutoModelForImageClassification,
    "dtp_clip": AutoModelForZeroShotImageClassification,
    "gated_sparse_blip": AutoModelForImageTextToText,
    "qvision_multimodel": AutoModelForImageTextToText,
}
# Attention layers one forward of `inputs` runs through the interface: (pre + shortened layers), + CLIP text
# layers, (latent encoder + 2 per decoder layer), (CLIP tower + Q-Former self and cross + gated cross-attention).
NUM_ATTENTION_CALLS = {"dtp_vit": 3, "dtp_clip": 2 + 1, "gated_sparse_blip": 2 + 2 * 2, "qvision_multimodel": 1 + 4 + 4}


def randn(*shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


def inputs(family):
    """A batch whose rows differ in their padding, so that masks matter."""
    if family == "dtp_vit":
        boundaries = torch.zeros(2, 64)
        boundaries[0, ::2] = 1  # 32 segments
        boundaries[1, ::8] = 1  # 8 segments: 24 padded ones in this batch
        return {"pixel_values": randn(2, 3, 32, 32), "boundaries": boundaries}
    if family == "dtp_clip":
        ids = torch.tensor([[1, 5, 7, 2], [1, 9, 2, 0]])
        return {"input_ids": ids, "attention_mask": (ids > 0).long(), "pixel_values": randn(2, 3, 32, 32)}
    ids = torch.tensor([[1, 5, 7, 8], [1, 9, 4, 0]])
    if family == "gated_sparse_blip":
        latent_mask = torch.ones(2, 16, 16)
        latent_mask[1, 8:] = 0  # the second sample is a 8x16 latent padded to 16x16
        return {"latents": randn(2, 8, 16, 16), "latent_mask": latent_mask, "input_ids": ids,
                "attention_mask": (ids > 0).long()}
    return {"pixel_values": randn(2, 3, 64, 64), "input_ids": ids, "attention_mask": (ids > 0).long()}


def load(family, attn_implementation, **kwargs):
    path = os.path.join(ROOT, family)
    return AUTO_CLASS[family].from_pretrained(path, attn_implementation=attn_implementation, **kwargs).eval()


def main_output(family, outputs):
    return outputs.logits_per_image if family == "dtp_clip" else outputs.logits


@pytest.mark.parametrize("family", sorted(AUTO_CLASS))
def test_eager_and_sdpa_agree(family):
    eager, sdpa = load(family, "eager"), load(family, "sdpa")
    assert sdpa.config._attn_implementation == "sdpa"
    with torch.no_grad():
        expected, got = main_output(family, eager(**inputs(family))), main_output(family, sdpa(**inputs(family)))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", sorted(AUTO_CLASS))
def test_a_registered_attention_function_is_the_one_that_runs(family):
    calls = []

    def counting_attention(module, query, key, value, attention_mask, **kwargs):
        calls.append(type(module).__name__)
        return eager_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("leanvision_test_counting", counting_attention)
    # transformers' towers (CLIP text) build their causal masks by the same name.
    AttentionMaskInterface.register("leanvision_test_counting", ALL_MASK_ATTENTION_FUNCTIONS["eager"])
    overrides = {"attention_sparsity": 0.0} if family == "gated_sparse_blip" else {}
    model = load(family, "leanvision_test_counting", **overrides)
    reference = load(family, "eager", **overrides)
    with torch.no_grad():
        got = main_output(family, model(**inputs(family)))
        expected = main_output(family, reference(**inputs(family)))
    assert len(calls) == NUM_ATTENTION_CALLS[family], calls
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_top_k_attention_keeps_exactly_k_keys_at_sparsity_0_7(attn_implementation):
    model = load("gated_sparse_blip", attn_implementation)
    assert model.config.attention_sparsity == 0.7
    batch = inputs("gated_sparse_blip")
    batch["input_ids"] = torch.tensor([[1, 5, 7, 8, 9, 10, 11, 12, 13, 14], [1, 9, 4, 6, 5, 7, 8, 0, 0, 0]])
    batch["attention_mask"] = (batch["input_ids"] > 0).long()
    with torch.no_grad():
        out = model(**batch, output_attentions=True)
    layers = model.config.text_config.num_hidden_layers
    assert len(out.attentions) == len(out.cross_attentions) == layers
    # Self-attention: query t of a row sees the valid tokens up to t; it keeps max(1, floor(0.3 * n)).
    valid = batch["attention_mask"].bool()
    n_self = (torch.ones(10, 10, dtype=torch.bool).tril()[None] & valid[:, None, :]).sum(-1)
    # Cross-attention: 16 latent tokens (4x4 patches of 4x4 latents) for sample 0, 8 for the half-padded sample 1.
    n_cross = torch.tensor([16, 8])[:, None].expand(2, 10)
    for self_probs, cross_probs in zip(out.attentions, out.cross_attentions):
        heads = self_probs.shape[1]
        for probs, n in ((self_probs, n_self), (cross_probs, n_cross)):
            kept = torch.clamp(torch.floor(0.3 * n.double() + 1e-9).long(), min=1)
            assert torch.equal((probs > 0).sum(-1), kept[:, None, :].expand(-1, heads, -1))
            torch.testing.assert_close(probs.sum(-1), torch.ones_like(probs.sum(-1)))
    assert out.cross_attentions[0][1, ..., 8:].abs().max() == 0  # padded latent tokens are never kept


def test_output_attentions_returns_maps_with_eager_and_none_with_sdpa_as_in_transformers():
    for attn_implementation, expected_maps in (("eager", 3), ("sdpa", 0)):
        model = load("dtp_vit", attn_implementation)
        with torch.no_grad():
            out = model(**inputs("dtp_vit"), output_attentions=True)
        assert len(out.attentions) == expected_maps
    assert out.logits.shape == (2, 10)
