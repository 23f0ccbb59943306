"""DTP-ViT mechanisms: pooling, straight-through gradients, boundary loss, determinism, batching, config checks."""

import numpy as np
import pytest
from huggingface_hub.errors import StrictDataclassError
import torch
from scipy.stats import binom

from leanvision import DTPViTConfig, DTPViTForImageClassification, DTPViTModel
from leanvision.modeling.modeling_dtp_vit import BinomialBoundaryLoss, BoundaryPredictor, SegmentMeanPooling


def tiny_config(**overrides):
    values = dict(
        image_size=16, patch_size=4, hidden_size=32, num_attention_heads=4, intermediate_size=64,
        num_pre_layers=1, num_shortened_layers=2, compression_rate=0.25, num_labels=3,
    )
    values.update(overrides)
    return DTPViTConfig(**values)


def test_segment_pooling_equals_hand_computed_means_and_masks_padding():
    torch.manual_seed(0)
    hidden = torch.randn(2, 6, 3)
    boundaries = torch.tensor([[0, 1, 0, 0, 1, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.float)
    pooled, mask = SegmentMeanPooling()(hidden, boundaries)
    h0 = hidden[0]
    # Row 0: segments {0,1}, {2,3,4}, {5} (the tail after the last boundary is a segment too).
    expected0 = torch.stack([h0[0:2].mean(0), h0[2:5].mean(0), h0[5:6].mean(0)])
    assert pooled.shape == (2, 6, 3)
    torch.testing.assert_close(pooled[0, :3], expected0, rtol=0, atol=1e-6)
    assert torch.all(pooled[0, 3:] == 0)
    assert mask[0].tolist() == [True, True, True, False, False, False]
    # Row 1: every token closes its own segment: pooling is the identity.
    torch.testing.assert_close(pooled[1], hidden[1], rtol=0, atol=0)
    assert mask[1].all()


def test_straight_through_sends_gradient_to_boundary_predictor():
    torch.manual_seed(0)
    config = tiny_config()
    predictor = BoundaryPredictor(config).train()
    hidden = torch.randn(4, 16, config.hidden_size)
    boundaries, _ = predictor(hidden)
    assert set(boundaries.detach().unique().tolist()) <= {0.0, 1.0}
    pooled, mask = SegmentMeanPooling()(hidden, boundaries)
    (pooled * torch.randn_like(pooled)).sum().backward()
    grads = [p.grad for p in predictor.parameters()]
    assert all(g is not None for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


def test_boundary_predictor_gradient_flows_through_whole_model():
    torch.manual_seed(0)
    model = DTPViTForImageClassification(tiny_config()).train()
    out = model(torch.randn(4, 3, 16, 16), labels=torch.tensor([0, 1, 2, 0]))
    out.loss.backward()
    grad = model.dtp_vit.boundary_predictor.dense.weight.grad
    assert grad is not None and grad.abs().sum() > 0


@pytest.mark.parametrize("prior", [0.5, 0.25, 0.1])
def test_boundary_loss_matches_scipy(prior):
    boundaries = (torch.rand(5, 49, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    loss = BinomialBoundaryLoss(prior)(boundaries)
    counts = boundaries.sum(-1).numpy()
    expected = -np.mean(binom.logpmf(counts, 49, prior)) / 49
    assert abs(loss.item() - expected) < 1e-6


def test_eval_is_deterministic_and_rate_mode_keeps_the_rate():
    torch.manual_seed(0)
    model = DTPViTModel(tiny_config(compression_rate=0.25)).eval()
    x = torch.randn(3, 3, 16, 16)
    a, b = model(x), model(x)
    assert torch.equal(a.last_hidden_state, b.last_hidden_state)
    assert torch.equal(a.boundaries, b.boundaries)
    assert a.boundaries.sum(-1).tolist() == [4.0, 4.0, 4.0]  # round(0.25 * 16)


@pytest.mark.parametrize("inference", ["rate", "threshold"])
def test_batched_logits_equal_single_logits(inference):
    torch.manual_seed(0)
    model = DTPViTForImageClassification(tiny_config(boundary_inference=inference, compression_rate=0.5)).eval()
    # Spread the boundary probabilities so images pool to different numbers of segments.
    torch.nn.init.normal_(model.dtp_vit.boundary_predictor.out.weight, std=2.0)
    x = torch.randn(6, 3, 16, 16)
    with torch.no_grad():
        batched = model(x)
        lengths = batched.segment_mask.sum(-1)
        assert len(set(lengths.tolist())) > 1, "test needs images that pool to different lengths"
        for i in range(len(x)):
            single = model(x[i : i + 1])
            torch.testing.assert_close(single.logits[0], batched.logits[i], rtol=0, atol=1e-5)


def test_compression_one_is_a_dense_vit():
    torch.manual_seed(0)
    model = DTPViTModel(tiny_config(compression_rate=1.0)).eval()
    assert model.boundary_predictor is None
    x = torch.randn(2, 3, 16, 16)
    out = model(x, return_boundary_loss=True)
    assert out.segment_mask.all() and out.boundary_loss.item() == 0.0
    # Explicit all-ones boundaries on a pooling model give the same computation as no pooling.
    pooled_model = DTPViTModel(tiny_config(compression_rate=0.5)).eval()
    pooled_model.load_state_dict(model.state_dict(), strict=False)
    forced = pooled_model(x, boundaries=torch.ones(2, 16))
    torch.testing.assert_close(forced.last_hidden_state, out.last_hidden_state, rtol=0, atol=1e-6)


def test_eager_and_sdpa_agree():
    torch.manual_seed(0)
    config = tiny_config()
    sdpa = DTPViTModel(config).eval()
    config_eager = tiny_config()
    config_eager._attn_implementation = "eager"
    eager = DTPViTModel(config_eager).eval()
    eager.load_state_dict(sdpa.state_dict())
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(eager(x).pooler_output, sdpa(x).pooler_output, rtol=0, atol=1e-5)


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = DTPViTForImageClassification(tiny_config()).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = DTPViTForImageClassification.from_pretrained(tmp_path).eval()
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(loaded(x).logits, model(x).logits)


@pytest.mark.parametrize(
    "field, value",
    [
        ("compression_rate", 0.0),
        ("compression_rate", 1.5),
        ("patch_size", 5),
        ("num_attention_heads", 5),
        ("boundary_temperature", 0.0),
        ("pooler_type", "max"),
        ("boundary_inference", "sample"),
        ("hidden_size", -1),
    ],
)
def test_invalid_config_names_the_field(field, value):
    with pytest.raises(StrictDataclassError, match=field):
        tiny_config(**{field: value})


def test_bad_inputs_raise_clear_errors():
    model = DTPViTForImageClassification(tiny_config()).eval()
    with pytest.raises(ValueError, match="pixel_values must have shape"):
        model(torch.randn(2, 1, 16, 16))
    with pytest.raises(ValueError, match="labels must lie in"):
        model(torch.randn(2, 3, 16, 16), labels=torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="boundaries must have shape"):
        model(torch.randn(2, 3, 16, 16), boundaries=torch.ones(2, 5))


def spread_threshold_model(**overrides):
    """A tiny pooling classifier whose predictor gives images clearly different boundary probabilities."""
    torch.manual_seed(0)
    model = DTPViTForImageClassification(tiny_config(compression_rate=0.25, **overrides)).eval()
    torch.nn.init.normal_(model.dtp_vit.boundary_predictor.out.weight, std=2.0)
    return model


def test_calibrated_threshold_hits_the_target_rate_on_held_out_images():
    from leanvision.modeling.modeling_dtp_vit import calibrate_boundary_threshold

    model = spread_threshold_model()
    generator = torch.Generator().manual_seed(1)
    calibration, held_out = torch.randn(2, 200, 3, 16, 16, generator=generator)
    theta = calibrate_boundary_threshold(model.dtp_vit, calibration)
    assert model.config.boundary_inference == "threshold" and model.config.boundary_threshold == theta
    with torch.no_grad():
        fitted = model(calibration).boundary_ratio
        out = model(held_out)
    assert abs(fitted.mean().item() - 0.25) < 1 / (200 * 16)  # exact on the fitting set, up to one patch
    assert abs(out.boundary_ratio.mean().item() - 0.25) < 0.02
    counts = out.boundaries.sum(-1)
    assert counts.std() > 1.0 and len(set(counts.tolist())) >= 5  # each image its own count
    with pytest.raises(ValueError, match="target_rate"):
        calibrate_boundary_threshold(model.dtp_vit, calibration, target_rate=1.0)


def test_threshold_mode_packs_images_by_count_and_batched_equals_alone():
    from leanvision.modeling.modeling_dtp_vit import padding_waste

    model = spread_threshold_model(boundary_inference="threshold", boundary_threshold=0.3, inference_chunk_size=4)
    x = torch.randn(10, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        batched = model(x)
        counts = batched.segment_mask.sum(-1)
        assert len(set(counts.tolist())) >= 3
        for i in range(len(x)):
            torch.testing.assert_close(model(x[i : i + 1]).logits[0], batched.logits[i], rtol=0, atol=1e-5)
        model.config.inference_chunk_size = None  # one padded batch: same logits
        torch.testing.assert_close(model(x).logits, batched.logits, rtol=0, atol=1e-5)
    # Waste by hand: sorted chunks of 4 pad each row to its chunk's longest; one batch pads to the overall longest.
    ordered = counts.sort().values
    slots = sum(len(chunk) * int(chunk.max()) for chunk in ordered.split(4))
    assert padding_waste(counts, 4) == pytest.approx(1 - counts.sum().item() / slots)
    assert padding_waste(counts) == pytest.approx(1 - counts.float().mean().item() / counts.max().item())
    assert padding_waste(counts, 4) < padding_waste(counts)


def test_chunked_pre_stage_equals_one_batch():
    model = DTPViTForImageClassification(tiny_config(compression_rate=0.5, inference_chunk_size=3)).eval()
    x = torch.randn(7, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        chunked = model(x)
        model.config.inference_chunk_size = None
        whole = model(x)
    torch.testing.assert_close(chunked.logits, whole.logits, rtol=0, atol=1e-5)
    assert torch.equal(chunked.boundaries, whole.boundaries) and torch.equal(chunked.segment_mask, whole.segment_mask)
