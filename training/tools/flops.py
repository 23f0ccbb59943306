"""GMACs of DTP-ViT at several compression rates (fvcore, eager attention, evenly simulated boundaries)."""

import torch

from ...configuration.configuration_dtp_vit import DTPViTConfig
from ...modeling.modeling_dtp_vit import DTPViTModel

# fvcore GMACs the DTP-ViT plan reports for ViT-B/32 widths (2x, 4x, 10x compression).
DTP_VIT_PLAN_GMACS = {0.5: 2.69, 0.25: 1.83, 0.1: 1.26}
# A dense ViT-B/32 counted by fvcore with eager attention (see the README's FLOPs section: the DTP-ViT plan printed
# 2.96 for it, which no count of ViT-B/32 reproduces).
DENSE_VIT_B32_GMACS = 4.41


def even_boundaries(num_patches: int, rate: float, batch: int = 1) -> torch.Tensor:
    """floor(rate * T) boundaries spread evenly: b_t = 1 where floor((t + 1) * rate) > floor(t * rate)."""
    t = torch.arange(num_patches, dtype=torch.float64)
    b = (torch.floor((t + 1) * rate) > torch.floor(t * rate)).float()
    return b.expand(batch, num_patches).clone()


def count_gmacs(model: torch.nn.Module, inputs: tuple) -> float:
    try:
        from fvcore.nn import FlopCountAnalysis
    except ImportError as err:
        raise ImportError("FLOP counting needs fvcore: pip install 'leanvision[dev]'") from err
    analysis = FlopCountAnalysis(model, inputs)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    return analysis.total() / 1e9


@torch.no_grad()
def dtp_vit_gmacs(rate: float, **config_kwargs) -> float:
    """GMACs of one image through DTPViTModel at `rate` with evenly simulated boundaries."""
    config = DTPViTConfig(compression_rate=rate, **config_kwargs)
    config._attn_implementation = "eager"  # SDPA hides the attention matmuls from the counters
    model = DTPViTModel(config).eval()
    pixels = torch.randn(1, config.num_channels, config.image_size, config.image_size)
    return count_gmacs(model, (pixels, even_boundaries(config.num_patches, rate)))


@torch.no_grad()
def clip_vit_gmacs(image_size: int = 224, patch_size: int = 32) -> float:
    """GMACs of transformers' CLIPVisionModel (ViT-B/32 widths by default), eager attention: the dense peer."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(image_size=image_size, patch_size=patch_size)
    config._attn_implementation = "eager"
    model = CLIPVisionModel(config).eval()
    pixels = torch.randn(1, 3, image_size, image_size)
    return count_gmacs(model, (pixels,))


def flops_table(rates=(1.0, 0.5, 0.25, 0.1), **config_kwargs) -> list[dict]:
    """Rows of (model, rate, GMACs, published GMACs: the DTP-ViT plan's figure, or the dense count for rate 1.0)."""
    rows = []
    peer = clip_vit_gmacs(config_kwargs.get("image_size", 224), config_kwargs.get("patch_size", 32))
    rows.append({"model": "CLIPVisionModel (transformers)", "rate": 1.0, "gmacs": peer, "published": DENSE_VIT_B32_GMACS})
    for rate in rates:
        gmacs = dtp_vit_gmacs(rate, **config_kwargs)
        published = DENSE_VIT_B32_GMACS if rate == 1.0 else DTP_VIT_PLAN_GMACS.get(rate)
        rows.append({"model": "DTPViTModel", "rate": rate, "gmacs": gmacs, "published": published})
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| model | compression | GMACs (ours) | published | ours / published |", "|---|---|---|---|---|"]
    for row in rows:
        published = row["published"]
        ratio = f"{row['gmacs'] / published:.3f}" if published else "-"
        lines.append(
            f"| {row['model']} | {row['rate']} | {row['gmacs']:.2f} | {published if published else '-'} | {ratio} |"
        )
    return "\n".join(lines)
