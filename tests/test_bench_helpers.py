"""The benchmarks' shared helpers (benchmarks/bench_dtp_vit.py): MAC counting, the GEMM rate, the op profile."""

import os
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPVisionConfig, CLIPVisionModel

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from bench_dtp_vit import counted_gmacs, gemm_call, gemm_gflops, op_profile  # noqa: E402


def test_counted_gmacs_sees_the_attention_inside_sdpa_and_restores_it():
    torch.manual_seed(0)
    d, inner, layers, image, patch = 32, 64, 2, 32, 8
    config = CLIPVisionConfig(hidden_size=d, intermediate_size=inner, num_hidden_layers=layers,
                              num_attention_heads=4, image_size=image, patch_size=patch)
    config._attn_implementation = "sdpa"
    model = CLIPVisionModel(config).eval()
    pixels = torch.randn(2, 3, image, image)
    patches = (image // patch) ** 2
    n = patches + 1  # CLS
    # Patch convolution, then per layer q/k/v/o projections, QK^T and AV, and the two MLP matrices.
    expected = 2 * (patches * 3 * patch**2 * d + layers * (4 * n * d * d + 2 * n * n * d + 2 * n * d * inner))
    assert counted_gmacs(model, lambda: model(pixel_values=pixels)) * 1e9 == pytest.approx(expected, rel=1e-9)
    assert model.config._attn_implementation == "sdpa"
    with torch.no_grad(), FlopCounterMode(display=False) as plain:
        model(pixel_values=pixels)
    assert plain.get_total_flops() / 2 == expected - 2 * layers * 2 * n * n * d  # SDPA hides the attention matmuls


def test_gemm_rate_is_two_size_cubed_over_the_median_time():
    with FlopCounterMode(display=False) as counter:
        gemm_call(64)()
    assert counter.get_total_flops() == 2 * 64**3
    assert gemm_gflops([4.0, 1.0, 2.0], size=1000) == pytest.approx(1.0)


def test_op_profile_counts_the_ops_of_the_call():
    a, b = torch.randn(32, 32), torch.randn(32, 32)
    report = op_profile(lambda: [torch.mm(a, b) for _ in range(3)])
    assert ": mm 3x " in report  # the most expensive kind comes first
