"""Tiny GatedSparseBlip captioners and coco30k-schema datasets for the captioning, pipeline and CLI tests."""

import json
import types

import numpy as np
import torch
from datasets import Dataset, DatasetDict

from leanvision.training.families import get_family
from leanvision.training.data.shapes import make_shapes_dataset

# 32x32 images -> a 3-level random VAE -> 4x8x8 latents -> 2x2 patches: 16 latent tokens.
TINY_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 3,
    up_block_types=["UpDecoderBlock2D"] * 3,
    block_out_channels=[8, 16, 16],
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=4,
    sample_size=32,
)
TINY_OVERRIDES = dict(
    vae_scaling_factor=4.0,
    max_latent_size=[16, 16],
    vision_hidden_size=32,
    vision_num_hidden_layers=1,
    vision_num_attention_heads=2,
    vision_intermediate_size=64,
    text_config=dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64
    ),
    attention_sparsity=0.5,
    token_gate_dropout=0.0,
    initializer_range=0.2,
)
# Latent buckets mixed in one coco30k-style dataset (channels, height, width).
BUCKETS = ([4, 6, 8], [4, 8, 6], [4, 8, 8])


def model_args(**values):
    fields = dict(model_name_or_path=None, init_from_blip=None, tokenizer_name_or_path=None, vae_name_or_path=None,
                  image_size=None)
    fields.update(values)
    return types.SimpleNamespace(**fields)


def tiny_captioner(with_vae: bool = True, seed: int = 0, **overrides):
    """(model, processor) of a random tiny GatedSparseBlip with a word-level tokenizer of the shapes captions."""
    config = json.loads(json.dumps(TINY_OVERRIDES))
    config.update(overrides)
    if with_vae:
        config["vae_config"] = dict(TINY_VAE)
    captions = make_shapes_dataset(200, seed=0, split="train")["caption"]
    torch.manual_seed(seed)
    model, processor = get_family("gated_sparse_blip").build(model_args(image_size=32), config, captions)
    model.generation_config.max_new_tokens = 12
    return model.eval(), processor


def save_tiny_captioner(path, **kwargs):
    model, processor = tiny_captioner(**kwargs)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return model, processor


def coco30k_style_dataset(num_rows: int = 24, num_test: int = 6, seed: int = 0) -> DatasetDict:
    """A local dataset of the coco30k schema: `vae_latent` (flattened float32), `vae_latent_shape`, `caption`,
    rows cycling through latent buckets of different aspect ratios; captions from the shapes grammar. The last
    `num_test` rows are the test split."""
    rng = np.random.default_rng(seed)
    captions = make_shapes_dataset(num_rows, seed=seed, split="train")["caption"]
    shapes = [BUCKETS[i % len(BUCKETS)] for i in range(num_rows)]
    rows = {
        "vae_latent": [rng.standard_normal(int(np.prod(s))).astype(np.float32) for s in shapes],
        "vae_latent_shape": shapes,
        "caption": captions,
    }
    data = Dataset.from_dict(rows)
    split = num_rows - num_test
    return DatasetDict(train=data.select(range(split)), test=data.select(range(split, num_rows)))
