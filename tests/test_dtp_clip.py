"""DTP-CLIP: exact port from CLIP, contrastive logits and loss, config, processor, flat bundle with the pipeline."""

import json
import math
import os
import string

import numpy as np
import pytest
from huggingface_hub.errors import StrictDataclassError
import torch
from PIL import Image
from safetensors.torch import save_file
from scipy.stats import binom
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTokenizer

from helpers import run_fresh
from leanvision.configuration.configuration_dtp_clip import DTPCLIPConfig
from leanvision.modeling.modeling_dtp_clip import DTPCLIPModel
from leanvision.modeling.modeling_dtp_vit import DTPViTModel
from leanvision.processing.processing_dtp_clip import DTPCLIPProcessor
from leanvision.processing.processing_dtp_vit import build_image_processor
from leanvision.hub_cards.export import export_model
from leanvision.training.families import FAMILIES

IMAGE_SIZE, PATCH = 16, 4
NUM_PATCHES = (IMAGE_SIZE // PATCH) ** 2
TEXT_LENGTH = 32
SPECIALS = ["<|startoftext|>", "<|endoftext|>"]
CHARS = string.ascii_lowercase + string.digits + ".,'!?-"
def tiny_tokenizer() -> CLIPTokenizer:
    """A character-level CLIP tokenizer: no merges, each character with and without the end-of-word suffix."""
    tokens = SPECIALS + list(CHARS) + [c + "</w>" for c in CHARS]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[], model_max_length=TEXT_LENGTH)


def tiny_text_config(tokenizer) -> dict:
    return dict(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=TEXT_LENGTH, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def tiny_processor() -> DTPCLIPProcessor:
    return DTPCLIPProcessor(build_image_processor(IMAGE_SIZE), tiny_tokenizer())


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A tiny random transformers CLIPModel (3 vision layers) with every weight perturbed, saved to a folder."""
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=tiny_text_config(tiny_tokenizer()),
        vision_config=dict(
            image_size=IMAGE_SIZE, patch_size=PATCH, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
            num_attention_heads=4,
        ),
        projection_dim=16,
    )
    model = CLIPModel(config).eval()
    with torch.no_grad():
        for param in model.parameters():  # LayerNorms start at 1/0: perturb so a mis-mapped weight shows
            param.add_(0.1 * torch.randn_like(param))
    path = tmp_path_factory.mktemp("clip")
    model.save_pretrained(path)
    return path


def text_batch(texts):
    return tiny_tokenizer()(texts, padding=True, return_tensors="pt")


TEXTS = ["a photo of a red circle.", "a blue square", "green"]


def tiny_dtp_clip(**vision_overrides) -> DTPCLIPModel:
    vision = dict(
        image_size=IMAGE_SIZE, patch_size=PATCH, hidden_size=32, num_attention_heads=4, intermediate_size=64,
        num_pre_layers=1, num_shortened_layers=2, compression_rate=0.5,
    )
    vision.update(vision_overrides)
    config = DTPCLIPConfig(vision_config=vision, text_config=tiny_text_config(tiny_tokenizer()), projection_dim=16)
    return DTPCLIPModel(config)


@pytest.mark.parametrize("num_pre_layers", [1, 2])
def test_port_from_clip_reproduces_clip_embeddings(clip_dir, num_pre_layers):
    clip = CLIPModel.from_pretrained(clip_dir).eval()
    model = DTPCLIPModel.from_clip_pretrained(clip_dir, compression_rate=1.0, num_pre_layers=num_pre_layers)
    assert model.vision_model.boundary_predictor is None
    assert (model.config.vision_config.num_pre_layers, model.config.vision_config.num_shortened_layers) == (
        num_pre_layers, 3 - num_pre_layers,
    )
    torch.manual_seed(1)
    pixels = torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE)
    text = text_batch(TEXTS)
    with torch.no_grad():
        expected = clip(**text, pixel_values=pixels)
        out = model(**text, pixel_values=pixels)
        torch.testing.assert_close(
            model.get_image_features(pixels), clip.get_image_features(pixel_values=pixels).pooler_output,
            rtol=0, atol=1e-5,
        )
        torch.testing.assert_close(
            model.get_text_features(**text), clip.get_text_features(**text).pooler_output, rtol=0, atol=1e-5
        )
    torch.testing.assert_close(out.image_embeds, expected.image_embeds, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.text_embeds, expected.text_embeds, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.logits_per_image, expected.logits_per_image, rtol=0, atol=1e-4)
    assert out.boundary_ratio.tolist() == [1.0, 1.0, 1.0]


def test_clip_vision_port_of_dtp_vit_is_exact_from_both_checkpoint_kinds(clip_dir, tmp_path):
    clip = CLIPModel.from_pretrained(clip_dir).eval()
    clip.vision_model.save_pretrained(tmp_path / "vision")
    pixels = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = clip.vision_model(pixel_values=pixels).pooler_output
        for path in (clip_dir, tmp_path / "vision"):
            model = DTPViTModel.from_clip_vision_pretrained(path, compression_rate=1.0)
            assert model.config.pooler_type == "cls" and model.config.pre_layernorm
            assert torch.equal(model.embeddings.patch_embedding.bias, torch.zeros(32))
            torch.testing.assert_close(model(pixels).pooler_output, expected, rtol=0, atol=1e-5)


def test_port_with_compression_keeps_clip_weights_and_starts_a_fresh_predictor(clip_dir):
    clip = CLIPModel.from_pretrained(clip_dir).eval()
    model = DTPCLIPModel.from_clip_pretrained(clip_dir, compression_rate=0.25)
    predictor = model.vision_model.boundary_predictor
    assert predictor is not None and abs(predictor.bias.item() - math.log(0.25 / 0.75)) < 1e-6
    pixels = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        # Every patch its own segment (forced): the pooling model is the dense CLIP tower.
        forced = model.get_image_features(pixels, boundaries=torch.ones(2, NUM_PATCHES))
        expected = clip.get_image_features(pixel_values=pixels).pooler_output
        torch.testing.assert_close(forced, expected, rtol=0, atol=1e-5)
        assert model(**text_batch(TEXTS[:2]), pixel_values=pixels).boundaries.sum(-1).tolist() == [4.0, 4.0]


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(num_pre_layers=2, num_shortened_layers=2), "num_hidden_layers"),
        (dict(hidden_size=64), "hidden_size"),
        (dict(patch_size=8), "patch_size"),
    ],
)
def test_port_rejects_a_layer_split_or_widths_that_do_not_fit_clip(clip_dir, overrides, field):
    with pytest.raises(ValueError, match=field):
        DTPCLIPModel.from_clip_pretrained(clip_dir, **overrides)
    with pytest.raises(ValueError, match=field):
        DTPViTModel.from_clip_vision_pretrained(clip_dir, **overrides)


def test_logits_are_symmetric_and_batched_embeddings_equal_single_ones():
    torch.manual_seed(0)
    model = tiny_dtp_clip(compression_rate=0.5, boundary_inference="threshold").eval()
    torch.nn.init.normal_(model.vision_model.boundary_predictor.out.weight, std=2.0)
    pixels = torch.randn(6, 3, IMAGE_SIZE, IMAGE_SIZE)
    text = text_batch(TEXTS)
    with torch.no_grad():
        out = model(**text, pixel_values=pixels)
        assert out.logits_per_image.shape == (6, 3)
        assert torch.equal(out.logits_per_text, out.logits_per_image.t())
        cosine = out.text_embeds @ out.image_embeds.t()
        torch.testing.assert_close(out.logits_per_text, cosine * math.exp(2.6592), rtol=1e-6, atol=0)
        lengths = model.vision_model(pixels).segment_mask.sum(-1)
        assert len(set(lengths.tolist())) > 1, "test needs images that pool to different lengths"
        batched = model.get_image_features(pixels, normalize=True)
        torch.testing.assert_close(batched, out.image_embeds, rtol=0, atol=0)
        for i in range(len(pixels)):
            single = model.get_image_features(pixels[i : i + 1], normalize=True)
            torch.testing.assert_close(single[0], batched[i], rtol=0, atol=1e-5)
        batched_text = model.get_text_features(**text)
        for i, caption in enumerate(TEXTS):  # alone, without padding
            alone = model.get_text_features(**text_batch([caption]))[0]
            torch.testing.assert_close(alone, batched_text[i], rtol=0, atol=1e-5)


def test_loss_is_symmetric_infonce_plus_weighted_boundary_loss():
    torch.manual_seed(0)
    weight = 0.3
    model = tiny_dtp_clip(compression_rate=0.25, boundary_loss_weight=weight).train()
    pixels = torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE)
    out = model(**text_batch(TEXTS), pixel_values=pixels, return_loss=True)
    s = out.logits_per_text.detach().double()
    infonce = -(s.log_softmax(dim=1).diagonal().mean() + s.log_softmax(dim=0).diagonal().mean()) / 2
    counts = out.boundaries.detach().sum(-1).numpy()
    boundary = -np.mean(binom.logpmf(counts, NUM_PATCHES, 0.25)) / NUM_PATCHES
    assert abs(out.contrastive_loss.item() - infonce.item()) < 1e-5
    assert abs(out.boundary_loss.item() - boundary) < 1e-5
    assert abs(out.loss.item() - (infonce.item() + weight * boundary)) < 1e-5
    out.loss.backward()
    for param in (model.vision_model.boundary_predictor.dense.weight, model.text_projection.weight, model.logit_scale):
        assert param.grad is not None and param.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="as many texts as images"):
        model(**text_batch(TEXTS[:2]), pixel_values=pixels, return_loss=True)


def test_save_and_load_round_trip_writes_both_sub_configs_in_full(tmp_path):
    torch.manual_seed(0)
    model = tiny_dtp_clip().eval()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "dtp_clip"
    # Defaults are written too, so the bundle does not depend on the defaults of the loading code.
    assert {"compression_rate", "boundary_temperature", "pooler_type", "hidden_act"} <= set(saved["vision_config"])
    assert {"vocab_size", "eos_token_id", "hidden_act", "max_position_embeddings"} <= set(saved["text_config"])
    assert "_name_or_path" not in saved["vision_config"] and "_name_or_path" not in saved["text_config"]
    loaded = DTPCLIPModel.from_pretrained(tmp_path).eval()
    pixels, text = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE), text_batch(TEXTS[:2])
    eager = DTPCLIPModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert eager.vision_model.config._attn_implementation == "eager"
    assert eager.text_model.config._attn_implementation == "eager"
    with torch.no_grad():
        expected = model(**text, pixel_values=pixels).logits_per_image
        assert torch.equal(loaded(**text, pixel_values=pixels).logits_per_image, expected)
        torch.testing.assert_close(eager(**text, pixel_values=pixels).logits_per_image, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(projection_dim=0), "projection_dim"),
        (dict(logit_scale_init_value=float("nan")), "logit_scale_init_value"),
        (dict(initializer_factor=0.0), "initializer_factor"),
        (dict(vision_config=CLIPTextConfig()), "vision_config"),
        (dict(vision_config=dict(compression_rate=1.5)), "compression_rate"),
    ],
)
def test_invalid_config_names_the_field(kwargs, field):
    with pytest.raises(StrictDataclassError, match=field):
        DTPCLIPConfig(**kwargs)


def test_processor_round_trip_pads_and_truncates_keeping_eos(tmp_path):
    processor = tiny_processor()
    processor.save_pretrained(tmp_path)
    loaded = DTPCLIPProcessor.from_pretrained(tmp_path)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 30, 3), dtype=np.uint8))
    texts = ["a red circle", "x", "z" * 100]
    a, b = processor(images=[image], text=texts), loaded(images=[image], text=texts)
    assert set(a) == {"input_ids", "attention_mask", "pixel_values"}
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert a["pixel_values"].shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert a["input_ids"].shape == (3, TEXT_LENGTH)
    eos = processor.tokenizer.eos_token_id
    lengths = a["attention_mask"].sum(-1)
    assert lengths.tolist() == [1 + 10 + 1, 1 + 1 + 1, TEXT_LENGTH]  # bos + one token per character + eos
    assert [int(a["input_ids"][i, n - 1]) for i, n in enumerate(lengths.tolist())] == [eos, eos, eos]
    with pytest.raises(ValueError, match="images"):
        processor()


FRESH_ZERO_SHOT = """
import json, sys
import torch
from safetensors.torch import load_file
from transformers import AutoModelForZeroShotImageClassification, AutoProcessor, pipeline
export_dir, inputs_path, image_path = sys.argv[1:4]
labels = json.loads(sys.argv[4])
model = AutoModelForZeroShotImageClassification.from_pretrained(export_dir, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(export_dir, trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
inputs = load_file(inputs_path)
with torch.no_grad():
    logits = model(**inputs).logits_per_image
classify = pipeline("zero-shot-image-classification", model=export_dir, trust_remote_code=True)
result = classify(image_path, candidate_labels=labels)
print(json.dumps({"logits": logits.tolist(), "pipeline": result, "processor": type(processor).__name__}))
"""


def test_flat_bundle_runs_the_zero_shot_pipeline_in_a_fresh_interpreter(tmp_path):
    torch.manual_seed(0)
    model = tiny_dtp_clip(compression_rate=0.5).eval()
    torch.nn.init.normal_(model.vision_model.boundary_predictor.out.weight, std=2.0)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(30.0))  # spread the scores so equal-within-tolerance means something
    processor = tiny_processor()
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    out = tmp_path / "export"
    export_model(str(tmp_path / "model"), str(out))
    assert json.loads((out / "config.json").read_text())["auto_map"] == FAMILIES["dtp_clip"].auto_map
    assert not any(name.endswith(".py") and "leanvision" in (out / name).read_text() for name in os.listdir(out))

    labels = ["red circle", "blue square", "green triangle", "yellow star"]
    image_path = tmp_path / "image.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (20, 28, 3), dtype=np.uint8)).save(image_path)
    inputs = processor(images=[Image.open(image_path)], text=[f"This is a photo of {label}." for label in labels])
    save_file({k: v.contiguous() for k, v in inputs.items()}, str(tmp_path / "inputs.safetensors"))
    with torch.no_grad():
        expected_logits = model(**inputs).logits_per_image
    expected = dict(zip(labels, expected_logits[0].softmax(-1).tolist()))

    result = run_fresh(FRESH_ZERO_SHOT, tmp_path, str(out), str(tmp_path / "inputs.safetensors"), str(image_path),
                       json.dumps(labels))
    assert result["processor"] == "DTPCLIPProcessor"
    torch.testing.assert_close(torch.tensor(result["logits"]), expected_logits, rtol=0, atol=1e-5)
    predictions = result["pipeline"]
    assert sorted(p["label"] for p in predictions) == sorted(labels)
    assert abs(sum(p["score"] for p in predictions) - 1.0) < 1e-5
    scores = [p["score"] for p in predictions]
    assert scores == sorted(scores, reverse=True)
    for p in predictions:
        assert abs(p["score"] - expected[p["label"]]) < 1e-5, (p, expected)
    assert max(scores) - min(scores) > 1e-3
