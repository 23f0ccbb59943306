"""Tests for GatedSparseBlip: top-k sparse attention, token gating, latent padding, KV cache, VAE path, BLIP init."""

import math

import pytest
from huggingface_hub.errors import StrictDataclassError
import torch
import torch.nn.functional as F
from transformers import AutoProcessor, BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessorPil

from leanvision.configuration.configuration_gated_sparse_blip import GatedSparseBlipConfig
from leanvision.modeling.modeling_gated_sparse_blip import (
    GatedSparseBlipForConditionalGeneration,
    GatedSparseBlipModel,
    TokenGate,
    TopKSparseAttention,
)
from leanvision.modeling.modeling_common import additive_mask, top_k_keep_mask
from leanvision.processing.processing_gated_sparse_blip import GatedSparseBlipProcessor


BOS, SEP, PAD = 12, 3, 0
TEXT_CONFIG = dict(
    vocab_size=40,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=64,
    bos_token_id=BOS,
    sep_token_id=SEP,
    eos_token_id=SEP,
    pad_token_id=PAD,
)
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
    up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
    block_out_channels=[8, 16],
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=4,
    sample_size=16,
)
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "cat", "dog", "on", "the", "mat", "sits"]


def tiny_config(**overrides) -> GatedSparseBlipConfig:
    kwargs = dict(
        text_config=dict(TEXT_CONFIG),
        vision_hidden_size=16,
        vision_num_hidden_layers=2,
        vision_num_attention_heads=2,
        vision_intermediate_size=32,
        max_latent_size=(16, 16),
        # A wide init makes the latents and the gates matter visibly in the logits.
        initializer_range=0.2,
        token_gate_dropout=0.0,
    )
    kwargs.update(overrides)
    return GatedSparseBlipConfig(**kwargs)


def tiny_model(seed: int = 0, **overrides) -> GatedSparseBlipForConditionalGeneration:
    torch.manual_seed(seed)
    return GatedSparseBlipForConditionalGeneration(tiny_config(**overrides)).eval()


def same_weights(source, **overrides) -> GatedSparseBlipForConditionalGeneration:
    """A model with another config but `source`'s weights (missing/extra gate weights allowed)."""
    model = tiny_model(**overrides)
    model.load_state_dict(source.state_dict(), strict=False)
    return model


def caption_ids(batch: int = 2, length: int = 7, seed: int = 1) -> torch.LongTensor:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 40, (batch, length), generator=generator)
    ids[ids == BOS] = 5
    ids[:, 0] = BOS
    return ids


def tiny_tokenizer() -> BertTokenizer:
    tokenizer = BertTokenizer(vocab={word: index for index, word in enumerate(WORDS)})
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    return tokenizer


def tiny_processor() -> GatedSparseBlipProcessor:
    image_processor = BlipImageProcessorPil(
        size={"height": 16, "width": 16}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    return GatedSparseBlipProcessor(image_processor=image_processor, tokenizer=tiny_tokenizer())


def expected_kept(num_valid: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Reference k = max(1, floor((1 - s) n)), computed in Python per entry."""
    return torch.tensor(
        [max(1, math.floor(round((1 - sparsity) * n, 9))) for n in num_valid.flatten().tolist()]
    ).view(num_valid.shape)


def mixed_bucket_batch():
    """Two latents of different aspect buckets (4x6x8, 4x8x6), padded into one batch."""
    generator = torch.Generator().manual_seed(2)
    singles = [torch.randn(4, 6, 8, generator=generator), torch.randn(4, 8, 6, generator=generator)]
    latents, latent_mask = GatedSparseBlipProcessor.pad_latents(singles)
    return singles, latents, latent_mask


# --- TopKSparseAttention -------------------------------------------------------------------------------------------


def top_k_attention(sparsity, attn_implementation="eager"):
    """A `TopKSparseAttention` whose dense path is `attn_implementation`."""
    config = GatedSparseBlipConfig()
    config._attn_implementation = attn_implementation
    return TopKSparseAttention(config, sparsity)


def test_top_k_keep_mask_breaks_ties_to_exactly_k():
    scores = torch.zeros(1, 1, 3, 10)
    scores[0, 0, 1, :4] = 1.0  # four tied maxima, only three may stay
    allowed = torch.ones_like(scores, dtype=torch.bool)
    allowed[0, 0, 2, 5:] = False  # a row with 5 valid keys
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)

    keep = top_k_keep_mask(scores, allowed, sparsity=0.7)

    assert keep.sum(-1).tolist() == [[[3, 3, 1]]]
    assert keep[0, 0, 1, 4:].sum() == 0  # row 1 keeps three of its tied maxima
    assert not (keep & ~allowed).any()
    # A threshold rule (score >= k-th largest) would keep every tied key of row 0.
    kth_largest = scores.topk(3, dim=-1).values[..., -1:]
    assert (scores >= kth_largest)[0, 0, 0].sum() == 10


def test_top_k_attention_with_tied_scores_returns_exactly_k_probabilities():
    query = torch.randn(1, 2, 4, 8)
    key = torch.ones(1, 2, 10, 8)  # identical keys: every score in a row ties
    value = torch.randn(1, 2, 10, 8)

    _, probs = top_k_attention(0.7)(query, key, value)

    assert torch.equal((probs > 0).sum(-1), torch.full((1, 2, 4), 3))
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, 2, 4))
    torch.testing.assert_close(probs[probs > 0], torch.full((24,), 1 / 3))


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7, 0.9])
def test_top_k_attention_counts_only_valid_keys(sparsity):
    torch.manual_seed(0)
    query, key, value = torch.randn(3, 2, 2, 9, 4).unbind(0)
    padding = torch.ones(2, 9, dtype=torch.bool)
    padding[1, 6:] = False
    mask = torch.ones(9, 9, dtype=torch.bool).tril()[None, None] & padding[:, None, None, :]

    _, probs = top_k_attention(sparsity)(query, key, value, additive_mask(mask, query.dtype))

    num_valid = mask.sum(-1).expand(2, 2, 9)
    assert torch.equal((probs > 0).sum(-1), expected_kept(num_valid, sparsity))
    assert probs.masked_select(~mask).abs().max() == 0
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 2, 9))


def test_top_k_attention_keeping_every_key_equals_sdpa():
    torch.manual_seed(0)
    query, key, value = torch.randn(3, 2, 2, 9, 4).unbind(0)
    padding = torch.ones(2, 9, dtype=torch.bool)
    padding[1, 6:] = False
    mask = torch.ones(9, 9, dtype=torch.bool).tril()[None, None] & padding[:, None, None, :]
    reference = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)

    additive = additive_mask(mask, query.dtype)
    sdpa_output, no_probs = top_k_attention(0.0, "sdpa")(query, key, value, additive)
    eager_output, _ = top_k_attention(0.0)(query, key, value, additive)
    # A tiny sparsity runs the top-k path with k_i = n_i.
    top_k_output, top_k_probs = top_k_attention(1e-12, "sdpa")(query, key, value, additive)

    assert no_probs is None
    assert torch.equal((top_k_probs > 0).sum(-1), mask.sum(-1).expand(2, 2, 9))
    for output in (sdpa_output, eager_output, top_k_output):
        torch.testing.assert_close(output.transpose(1, 2), reference, atol=1e-5, rtol=0)


# --- Model-level sparsity ------------------------------------------------------------------------------------------


def test_model_attention_probabilities_keep_exactly_k_valid_keys():
    model = tiny_model(attention_sparsity=0.7)
    _, latents, latent_mask = mixed_bucket_batch()
    input_ids = caption_ids()
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 4:] = 0

    out = model(
        latents=latents,
        latent_mask=latent_mask,
        input_ids=input_ids,
        attention_mask=attention_mask,
        output_attentions=True,
    )

    causal = torch.ones(7, 7, dtype=torch.bool).tril()
    num_self = (causal[None] & attention_mask.bool()[:, None, :]).sum(-1)  # (batch, query)
    num_cross = torch.tensor([12, 12])  # 3x4 and 4x3 real patches in a 4x4 padded grid
    for self_probs, cross_probs in zip(out.attentions, out.cross_attentions):
        assert torch.equal((self_probs > 0).sum(-1), expected_kept(num_self[:, None, :].expand(2, 4, 7), 0.7))
        assert torch.equal((cross_probs > 0).sum(-1), expected_kept(num_cross.view(2, 1, 1).expand(2, 4, 7), 0.7))
        assert cross_probs[0][..., 12:].abs().max() == 0  # sample 0 (3x4 patches) pads the last row
        assert cross_probs[1][..., torch.arange(16) % 4 == 3].abs().max() == 0  # sample 1 pads the last column


def test_sparsity_changes_outputs_and_zero_sparsity_matches_dense_sdpa():
    sparse = tiny_model(attention_sparsity=0.7)
    dense = same_weights(sparse, attention_sparsity=0.0)
    latents, input_ids = torch.randn(2, 4, 8, 8), caption_ids()

    sparse_logits = sparse(latents=latents, input_ids=input_ids).logits
    sdpa_logits = dense(latents=latents, input_ids=input_ids).logits
    dense.set_attn_implementation("eager")  # as in transformers, dense attention returns its maps when eager
    eager = dense(latents=latents, input_ids=input_ids, output_attentions=True)

    assert (sparse_logits - sdpa_logits).abs().max() > 1e-2
    torch.testing.assert_close(eager.logits, sdpa_logits, atol=1e-5, rtol=0)
    # Dense attention keeps every valid key.
    assert torch.equal((eager.attentions[0] > 0).sum(-1), torch.arange(1, 8).expand(2, 4, 7))


def test_sparse_at_inference_false_is_dense_in_eval_and_sparse_in_training():
    sparse = tiny_model(attention_sparsity=0.7)
    train_only = same_weights(sparse, attention_sparsity=0.7, sparse_at_inference=False)
    dense = same_weights(sparse, attention_sparsity=0.0)
    latents, input_ids = torch.randn(2, 4, 8, 8), caption_ids()

    torch.testing.assert_close(
        train_only(latents=latents, input_ids=input_ids).logits,
        dense(latents=latents, input_ids=input_ids).logits,
        atol=1e-5,
        rtol=0,
    )
    # All dropouts are 0 in the tiny config, so training mode differs only by the sparsity.
    train_only.train()
    sparse.train()
    torch.testing.assert_close(
        train_only(latents=latents, input_ids=input_ids).logits,
        sparse(latents=latents, input_ids=input_ids).logits,
        atol=1e-5,
        rtol=0,
    )


def test_self_and_cross_sparsity_switches():
    model = tiny_model(attention_sparsity=0.5, sparse_cross_attention=False)
    model.set_attn_implementation("eager")
    out = model(latents=torch.randn(1, 4, 8, 8), input_ids=caption_ids(batch=1), output_attentions=True)

    assert torch.equal((out.cross_attentions[0] > 0).sum(-1), torch.full((1, 4, 7), 16))
    assert torch.equal((out.attentions[0] > 0).sum(-1), expected_kept(torch.arange(1, 8).expand(1, 4, 7), 0.5))


# --- Token gating --------------------------------------------------------------------------------------------------


def test_token_gate_values_are_in_unit_interval_and_gate_gets_gradients():
    model = tiny_model(use_token_gating=True).train()
    input_ids = caption_ids()
    out = model(latents=torch.randn(2, 4, 8, 8), input_ids=input_ids, labels=input_ids, output_gate_values=True)

    assert len(out.gate_values) == 2
    for gate in out.gate_values:
        assert gate.shape == (2, 7)
        assert (gate > 0).all() and (gate < 1).all()
    out.loss.backward()
    for layer in model.model.text_model.layers:
        for parameter in layer.token_gate.parameters():
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0


def test_token_gate_equation():
    gate = TokenGate(hidden_size=8, dropout=0.1).eval()
    hidden = torch.randn(2, 3, 8)
    expected = torch.sigmoid(gate.fc2(F.gelu(gate.fc1(hidden))))
    torch.testing.assert_close(gate(hidden), expected)


def test_token_gate_scales_each_layer_input():
    gated = tiny_model(use_token_gating=True)
    ungated = same_weights(gated, use_token_gating=False)
    latents, input_ids = torch.randn(2, 4, 8, 8), caption_ids()
    reference = ungated(latents=latents, input_ids=input_ids).logits

    with torch.no_grad():
        for layer in gated.model.text_model.layers:
            layer.token_gate.fc2.weight.zero_()
            layer.token_gate.fc2.bias.fill_(100.0)  # g = sigmoid(100) = 1 exactly in float32
    torch.testing.assert_close(gated(latents=latents, input_ids=input_ids).logits, reference, atol=1e-6, rtol=0)

    with torch.no_grad():
        for layer in gated.model.text_model.layers:
            layer.token_gate.fc2.bias.zero_()  # g = 0.5 for every token
    assert (gated(latents=latents, input_ids=input_ids).logits - reference).abs().max() > 1e-2


def test_gating_off_removes_gate_modules():
    model = tiny_model(use_token_gating=False)
    out = model(latents=torch.randn(1, 4, 8, 8), input_ids=caption_ids(batch=1), output_gate_values=True)

    assert not any(isinstance(module, TokenGate) for module in model.modules())
    assert not any("token_gate" in key for key in model.state_dict())
    assert out.gate_values is None


# --- Latent buckets, generation, loss ------------------------------------------------------------------------------


def test_pad_latents_layout():
    singles, latents, latent_mask = mixed_bucket_batch()

    assert latents.shape == (2, 4, 8, 8) and latent_mask.shape == (2, 8, 8)
    assert torch.equal(latents[0, :, :6, :8], singles[0]) and torch.equal(latents[1, :, :8, :6], singles[1])
    assert latents[0, :, 6:].abs().sum() == 0 and latents[1, :, :, 6:].abs().sum() == 0
    assert latent_mask[0, :6].all() and not latent_mask[0, 6:].any()
    assert latent_mask[1, :, :6].all() and not latent_mask[1, :, 6:].any()


def test_mixed_bucket_batch_matches_each_sample_alone():
    model = tiny_model(attention_sparsity=0.7)
    singles, latents, latent_mask = mixed_bucket_batch()
    input_ids = caption_ids()

    batched = model(latents=latents, latent_mask=latent_mask, input_ids=input_ids).logits
    for index, single in enumerate(singles):
        alone = model(latents=single[None], input_ids=input_ids[index : index + 1]).logits
        torch.testing.assert_close(batched[index : index + 1], alone, atol=1e-5, rtol=0)
    # Without the mask the padding leaks into the result.
    unmasked = model(latents=latents, input_ids=input_ids).logits
    assert (unmasked - batched).abs().max() > 1e-3


def test_greedy_generation_with_cache_equals_without_cache_and_starts_from_bos():
    model = tiny_model(attention_sparsity=0.7)
    _, latents, latent_mask = mixed_bucket_batch()
    encoder_calls = []
    model.model.vision_model.register_forward_hook(lambda *args: encoder_calls.append(1))
    settings = dict(max_new_tokens=10, min_new_tokens=10, do_sample=False)

    cached = model.generate(latents=latents, latent_mask=latent_mask, use_cache=True, **settings)
    assert len(encoder_calls) == 1  # later steps read the latent keys from the cross-attention cache
    uncached = model.generate(latents=latents, latent_mask=latent_mask, use_cache=False, **settings)

    assert cached.shape == (2, 11)
    assert torch.equal(cached[:, 0], torch.full((2,), BOS))
    assert torch.equal(cached, uncached)
    assert len(set(cached[:, 1:].flatten().tolist())) > 2


def test_cached_step_matches_full_forward_and_accepts_past_key_values():
    model = tiny_model(attention_sparsity=0.7)
    latents, input_ids = torch.randn(2, 4, 8, 8), caption_ids()
    full = model(latents=latents, input_ids=input_ids, use_cache=False).logits

    prefix = model(latents=latents, input_ids=input_ids[:, :5], use_cache=True)
    with pytest.warns(FutureWarning, match="past_key_values"):
        step = model(input_ids=input_ids[:, 5:6], past_key_values=prefix.cache, use_cache=True)

    torch.testing.assert_close(step.logits[:, -1], full[:, 5], atol=1e-5, rtol=0)


def test_loss_is_shifted_cross_entropy_ignoring_padding():
    model = tiny_model()
    latents, input_ids = torch.randn(2, 4, 8, 8), caption_ids()
    labels = input_ids.clone()
    labels[1, 4:] = -100

    out = model(latents=latents, input_ids=input_ids, labels=labels)

    logits = out.logits[:, :-1]
    targets = labels[:, 1:]
    valid = targets != -100
    manual = -logits.log_softmax(-1).gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)[valid].mean()
    torch.testing.assert_close(out.loss, manual)
    assert out.cache is None


# --- Persistence, validation, VAE, BLIP initialisation -------------------------------------------------------------


def test_save_and_load_round_trip(tmp_path):
    model = tiny_model(attention_sparsity=0.5, sparse_self_attention=False)
    latents, input_ids = torch.randn(2, 4, 8, 6), caption_ids()
    model.save_pretrained(tmp_path)

    loaded = GatedSparseBlipForConditionalGeneration.from_pretrained(tmp_path)

    for name in ("attention_sparsity", "sparse_self_attention", "sparse_cross_attention", "max_latent_size"):
        assert getattr(loaded.config, name) == getattr(model.config, name)
    for name in ("vocab_size", "hidden_size", "encoder_hidden_size", "bos_token_id", "sep_token_id"):
        assert getattr(loaded.config.text_config, name) == getattr(model.config.text_config, name)
    assert loaded.config.num_hidden_layers == 2
    assert loaded.lm_head.decoder.weight is loaded.model.text_model.embeddings.word_embeddings.weight
    assert torch.equal(
        loaded(latents=latents, input_ids=input_ids).logits, model(latents=latents, input_ids=input_ids).logits
    )
    settings = dict(max_new_tokens=5, do_sample=False)
    assert torch.equal(loaded.generate(latents=latents, **settings), model.generate(latents=latents, **settings))
    base = GatedSparseBlipModel.from_pretrained(tmp_path)
    torch.testing.assert_close(
        base(latents=latents, input_ids=input_ids).last_hidden_state,
        model.model(latents=latents, input_ids=input_ids).last_hidden_state,
    )


@pytest.mark.parametrize(
    ("latents", "message"),
    [
        (torch.randn(4, 8, 8), "rank 4"),
        (torch.randn(1, 3, 8, 8), "4 channels"),
        (torch.full((1, 4, 8, 8), float("nan")), "NaN or inf"),
        (torch.full((1, 4, 8, 8), float("inf")), "NaN or inf"),
        (torch.randn(1, 4, 18, 8), "larger than max_latent_size"),
        (torch.randn(1, 4, 7, 8), "multiples of latent_patch_size"),
        (torch.ones(1, 4, 8, 8, dtype=torch.long), "floating point"),
    ],
)
def test_bad_latents_raise_value_error(latents, message):
    model = tiny_model()
    with pytest.raises(ValueError, match=message):
        model(latents=latents, input_ids=caption_ids(batch=1))


def test_bad_masks_and_missing_inputs_raise_value_error():
    model = tiny_model()
    latents, input_ids = torch.randn(1, 4, 8, 8), caption_ids(batch=1)
    misaligned = torch.ones(1, 8, 8, dtype=torch.long)
    misaligned[0, :, 7] = 0

    with pytest.raises(ValueError, match="latent_mask"):
        model(latents=latents, latent_mask=torch.ones(1, 8, 6), input_ids=input_ids)
    with pytest.raises(ValueError, match="constant inside every latent patch"):
        model(latents=latents, latent_mask=misaligned, input_ids=input_ids)
    with pytest.raises(ValueError, match="Pass `latents` or `pixel_values`"):
        model(input_ids=input_ids)
    with pytest.raises(ValueError, match="need a VAE"):
        model(pixel_values=torch.zeros(1, 3, 16, 16), input_ids=input_ids)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (dict(attention_sparsity=1.0), "attention_sparsity"),
        (dict(attention_sparsity=-0.1), "attention_sparsity"),
        (dict(attention_sparsity=True), "attention_sparsity"),
        (dict(max_latent_size=(15, 16)), "max_latent_size"),
        (dict(vision_hidden_size=18), "vision_hidden_size"),
        (dict(token_gate_dropout=1.0), "token_gate_dropout"),
        (dict(vae_config=dict(VAE_CONFIG, latent_channels=8)), "latent_channels"),
    ],
)
def test_config_rejects_bad_fields(overrides, field):
    with pytest.raises(StrictDataclassError, match=field):
        tiny_config(**overrides)


def test_config_keeps_cross_attention_width_equal_to_encoder_width():
    config = tiny_config(vision_hidden_size=24, vision_num_attention_heads=3)
    assert config.text_config.encoder_hidden_size == 24
    assert config.num_hidden_layers == TEXT_CONFIG["num_hidden_layers"]


def test_frozen_vae_turns_pixel_values_into_latents(tmp_path):
    from diffusers import AutoencoderKL

    model = tiny_model(vae_config=VAE_CONFIG)
    pixel_values = torch.rand(2, 3, 16, 12) * 2 - 1
    input_ids = caption_ids()
    reference_vae = AutoencoderKL(**VAE_CONFIG).eval()
    reference_vae.load_state_dict(model.model.vae.state_dict())

    latents = model.model.encode_pixel_values(pixel_values)

    torch.testing.assert_close(latents, reference_vae.encode(pixel_values).latent_dist.mean)
    assert latents.shape == (2, 4, 8, 6)
    from_pixels = model(pixel_values=pixel_values, input_ids=input_ids, labels=input_ids)
    assert torch.equal(from_pixels.logits, model(latents=latents, input_ids=input_ids).logits)

    model.train()
    model(pixel_values=pixel_values, input_ids=input_ids, labels=input_ids).loss.backward()
    assert not model.model.vae.training
    assert all(not p.requires_grad and p.grad is None for p in model.model.vae.parameters())

    generated = model.eval().generate(pixel_values=pixel_values, max_new_tokens=4, do_sample=False)
    assert torch.equal(generated[:, 0], torch.full((2,), BOS))

    model.save_pretrained(tmp_path)
    loaded = GatedSparseBlipForConditionalGeneration.from_pretrained(tmp_path)
    assert all(not p.requires_grad for p in loaded.model.vae.parameters())
    torch.testing.assert_close(
        loaded(pixel_values=pixel_values, input_ids=input_ids).logits, from_pixels.logits, atol=1e-5, rtol=0
    )


def test_from_blip_pretrained_copies_the_text_decoder(tmp_path):
    blip_config = BlipConfig(
        text_config=dict(TEXT_CONFIG),
        vision_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
    )
    torch.manual_seed(0)
    blip = BlipForConditionalGeneration(blip_config).eval()
    blip.save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)

    model = GatedSparseBlipForConditionalGeneration.from_blip_pretrained(
        tmp_path, vision_num_hidden_layers=1, max_latent_size=(16, 16)
    )

    blip_weights = blip.state_dict()
    own_weights = model.state_dict()
    pairs = {
        "model.text_model.embeddings.word_embeddings.weight": "text_decoder.bert.embeddings.word_embeddings.weight",
        "model.text_model.embeddings.position_embeddings.weight": (
            "text_decoder.bert.embeddings.position_embeddings.weight"
        ),
        "lm_head.transform.dense.weight": "text_decoder.cls.predictions.transform.dense.weight",
        "lm_head.decoder.weight": "text_decoder.cls.predictions.decoder.weight",
        "lm_head.decoder.bias": "text_decoder.cls.predictions.bias",
    }
    for layer in range(2):
        for block in ("attention.self.query", "attention.output.dense", "crossattention.self.key", "output.dense"):
            for kind in ("weight", "bias"):
                pairs[f"model.text_model.layers.{layer}.{block}.{kind}"] = (
                    f"text_decoder.bert.encoder.layer.{layer}.{block}.{kind}"
                )
    for own_key, blip_key in pairs.items():
        assert torch.equal(own_weights[own_key], blip_weights[blip_key]), own_key
    assert model.config.vision_hidden_size == blip_config.text_config.encoder_hidden_size == 16

    # Without gates and sparsity the copied decoder is BLIP's decoder.
    plain = GatedSparseBlipForConditionalGeneration.from_blip_pretrained(
        tmp_path, vision_num_hidden_layers=1, max_latent_size=(16, 16), use_token_gating=False, attention_sparsity=0.0
    ).eval()
    input_ids, image_embeds = caption_ids(), torch.randn(2, 5, 16)
    reference = blip.text_decoder(input_ids=input_ids, encoder_hidden_states=image_embeds).logits
    own = plain.lm_head(plain.model.text_model(input_ids, encoder_hidden_states=image_embeds).last_hidden_state)
    torch.testing.assert_close(own, reference, atol=1e-5, rtol=0)

    with pytest.raises(ValueError, match="vision_hidden_size"):
        GatedSparseBlipForConditionalGeneration.from_blip_pretrained(tmp_path, vision_hidden_size=32)
    processor = GatedSparseBlipProcessor.from_blip_pretrained(tmp_path, image_size=16)
    assert processor.tokenizer.bos_token == "[DEC]"


# --- Processor -----------------------------------------------------------------------------------------------------


def test_processor_builds_blip_captions_and_labels():
    processor = tiny_processor()
    image = torch.randint(0, 256, (20, 24, 3), dtype=torch.uint8).numpy()

    batch = processor(images=[image, image], text=["a cat sits on the mat", "a dog"])

    bos = processor.tokenizer.bos_token_id
    assert batch["pixel_values"].shape == (2, 3, 16, 16)
    assert -1.0 <= batch["pixel_values"].min() and batch["pixel_values"].max() <= 1.0
    assert batch["input_ids"].tolist() == [[bos, 5, 6, 11, 8, 9, 10, SEP], [bos, 5, 7, SEP, PAD, PAD, PAD, PAD]]
    assert batch["labels"][1].tolist() == [bos, 5, 7, SEP, -100, -100, -100, -100]
    assert torch.equal(batch["labels"][0], batch["input_ids"][0])
    assert processor.batch_decode(batch["input_ids"], skip_special_tokens=True) == ["a cat sits on the mat", "a dog"]
    assert set(processor(latents=mixed_bucket_batch()[0]).keys()) == {"latents", "latent_mask"}


def test_processor_save_and_load_round_trip(tmp_path, monkeypatch):
    processor = tiny_processor()
    image = torch.randint(0, 256, (20, 24, 3), dtype=torch.uint8).numpy()
    expected = processor(images=[image], text=["a cat on the mat"])
    processor.save_pretrained(tmp_path / "plain")

    loaded = GatedSparseBlipProcessor.from_pretrained(tmp_path / "plain")
    batch = loaded(images=[image], text=["a cat on the mat"])
    assert all(torch.equal(batch[key], expected[key]) for key in expected)

    monkeypatch.setattr(GatedSparseBlipProcessor, "_auto_class", None)
    GatedSparseBlipProcessor.register_for_auto_class()
    processor.save_pretrained(tmp_path / "auto")
    auto_loaded = AutoProcessor.from_pretrained(tmp_path / "auto", trust_remote_code=True)
    assert type(auto_loaded).__name__ == "GatedSparseBlipProcessor"
    batch = auto_loaded(images=[image], text=["a cat on the mat"])
    assert all(torch.equal(batch[key], expected[key]) for key in expected)


def test_processor_requires_a_bos_token():
    image_processor = BlipImageProcessorPil(size={"height": 16, "width": 16})
    tokenizer = BertTokenizer(vocab={word: index for index, word in enumerate(WORDS)})
    with pytest.raises(ValueError, match="bos_token"):
        GatedSparseBlipProcessor(image_processor=image_processor, tokenizer=tokenizer)


def test_coco30k_recipe_accepts_the_largest_dataset_buckets():
    """coco30k stores SDXL latents in aspect-ratio buckets of at most 1024 latent positions, from 512x128 px to
    128x512 px (the dataset's folders): 64x16 and 16x64 latents must fit the recipe's `max_latent_size`."""
    import os

    import yaml

    recipe = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "training", "recipes",
                          "gated_sparse_blip_coco30k.yaml")
    with open(recipe) as f:
        overrides = yaml.safe_load(f)["config_overrides"]
    model = tiny_model(max_latent_size=tuple(overrides["max_latent_size"]),
                       latent_patch_size=overrides["latent_patch_size"])
    singles = [torch.randn(4, 64, 16), torch.randn(4, 16, 64), torch.randn(4, 32, 32)]
    latents, latent_mask = GatedSparseBlipProcessor.pad_latents(singles)
    with torch.no_grad():
        batched = model(latents=latents, latent_mask=latent_mask, input_ids=caption_ids(batch=3)).logits
        for i, single in enumerate(singles):
            alone = model(latents=single[None], input_ids=caption_ids(batch=3)[i : i + 1]).logits
            torch.testing.assert_close(batched[i : i + 1], alone, atol=1e-4, rtol=0)
