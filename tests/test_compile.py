"""torch.compile of DTP-ViT and DTP-CLIP's image tower at inference: no graph breaks, outputs equal eager."""

import pytest
import torch

from leanvision import DTPViTConfig, DTPViTForImageClassification, DTPViTModel
from leanvision.configuration.configuration_dtp_clip import DTPCLIPConfig
from leanvision.modeling.modeling_dtp_clip import DTPCLIPModel

VISION = dict(
    image_size=16, patch_size=4, hidden_size=32, num_attention_heads=4, intermediate_size=64,
    num_pre_layers=1, num_shortened_layers=2,
)


def tiny_vit(rate, **overrides):
    torch.manual_seed(0)
    model = DTPViTForImageClassification(DTPViTConfig(**VISION, compression_rate=rate, num_labels=3, **overrides))
    # Spread the predictor's probabilities so that rows differ in where their boundaries fall.
    if model.dtp_vit.boundary_predictor is not None:
        torch.nn.init.normal_(model.dtp_vit.boundary_predictor.out.weight, std=2.0)
    return model.eval()


def tiny_clip_image_tower():
    torch.manual_seed(0)
    text = dict(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                max_position_embeddings=8)
    config = DTPCLIPConfig(vision_config=dict(VISION, compression_rate=0.25), text_config=text, projection_dim=16)
    model = DTPCLIPModel(config).eval()
    return lambda pixel_values: model.get_image_features(pixel_values, normalize=True)


def graph_breaks(fn, *args) -> list[str]:
    torch._dynamo.reset()
    with torch.no_grad():
        explanation = torch._dynamo.explain(fn)(*args)
    return [reason.reason for reason in explanation.break_reasons]


@pytest.mark.parametrize("rate, chunk", [(0.25, 64), (0.5, 2), (1.0, 64)])
def test_dtp_vit_compiles_without_graph_breaks(rate, chunk):
    model = tiny_vit(rate, inference_chunk_size=chunk)
    assert graph_breaks(model, torch.randn(5, 3, 16, 16)) == []


def test_dtp_clip_image_tower_compiles_without_graph_breaks():
    assert graph_breaks(tiny_clip_image_tower(), torch.randn(5, 3, 16, 16)) == []


def assert_compiled_equals_eager(model, pixels, backend):
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    with torch.no_grad():
        eager, got = model(pixels), compiled(pixels)
    # Under compile the segment count is fixed from shapes (k + 1 in the rate mode): it may carry one more padded
    # segment than eager, which trims to the batch's longest row; the real segments and every pooled output agree.
    torch.testing.assert_close(got.logits, eager.logits, rtol=0, atol=1e-4)
    torch.testing.assert_close(got.boundaries, eager.boundaries, rtol=0, atol=0)
    width = eager.segment_mask.shape[1]
    assert torch.equal(got.segment_mask[:, :width], eager.segment_mask) and not got.segment_mask[:, width:].any()


@pytest.mark.parametrize("rate", [0.25, 1.0])
def test_compiled_dtp_vit_equals_eager(rate):
    """aot_eager traces the same full graph inductor gets, without the C++ build (the slow test below runs it)."""
    model = tiny_vit(rate, inference_chunk_size=2)
    assert_compiled_equals_eager(model, torch.randn(5, 3, 16, 16), "aot_eager")


@pytest.mark.slow
def test_inductor_compiled_dtp_vit_and_clip_tower_equal_eager():
    assert_compiled_equals_eager(tiny_vit(0.25), torch.randn(5, 3, 16, 16), "inductor")
    tower = tiny_clip_image_tower()
    pixels = torch.randn(5, 3, 16, 16)
    torch._dynamo.reset()
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(tower, fullgraph=True)(pixels), tower(pixels), rtol=0, atol=1e-4)


def test_threshold_mode_still_runs_under_compile():
    """The threshold mode's count is data-dependent: under compile it allocates every patch (no graph break)."""
    model = tiny_vit(0.5, boundary_inference="threshold", inference_chunk_size=None)
    assert graph_breaks(model, torch.randn(3, 3, 16, 16)) == []
    torch._dynamo.reset()
    pixels = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        eager = model(pixels)
        got = torch.compile(model, backend="aot_eager", fullgraph=True)(pixels)
    torch.testing.assert_close(got.logits, eager.logits, rtol=0, atol=1e-4)
    assert got.segment_mask.shape[1] == 16 and torch.equal(got.segment_mask.sum(-1), eager.segment_mask.sum(-1))
