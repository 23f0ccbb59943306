"""Folders saved by an earlier release (tests/fixtures/saved_v0_1, leanvision 0.1.0) still load, with their
processors, and give the outputs that release computed."""

import json
import os

import pytest
import torch
from transformers import (
    AutoModelForImageClassification,
    AutoModelForImageTextToText,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
)

import leanvision  # noqa: F401  (registers the Auto classes)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "saved_v0_1")
with open(os.path.join(ROOT, "expected_outputs.json")) as f:
    EXPECTED = json.load(f)


def randn(*shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


def outputs(family):
    path = os.path.join(ROOT, family)
    if family == "dtp_vit":
        model = AutoModelForImageClassification.from_pretrained(path).eval()
        return model(pixel_values=randn(2, 3, 32, 32)).logits
    if family == "dtp_clip":
        model = AutoModelForZeroShotImageClassification.from_pretrained(path).eval()
        ids = torch.tensor([[1, 5, 7, 2], [1, 9, 4, 2]])
        return model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=randn(2, 3, 32, 32)).logits_per_image
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    ids = torch.tensor([[1, 5, 7, 8], [1, 9, 4, 6]])
    if family == "gated_sparse_blip":
        return model(latents=randn(2, 8, 16, 16), input_ids=ids).logits[:, :, :8]
    return model(pixel_values=randn(2, 3, 64, 64), input_ids=ids).logits[:, :, :8]


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_folder_saved_by_0_1_loads_and_gives_its_outputs(family):
    with torch.no_grad():
        got = outputs(family)
    torch.testing.assert_close(got, torch.tensor(EXPECTED[family]), rtol=0, atol=1e-5)
    if family != "dtp_vit":
        AutoProcessor.from_pretrained(os.path.join(ROOT, family))
