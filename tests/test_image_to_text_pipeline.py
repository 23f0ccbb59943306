"""The "image-to-text" pipeline and the GatedSparseBlip export: a flat bundle that captions real photos in an
interpreter where leanvision cannot be imported, with outputs equal to the in-process model's."""

import json
import os

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import pipeline

from captioning_helpers import save_tiny_captioner
from helpers import run_fresh
from leanvision.processing.pipeline_image_to_text import ImageToTextPipeline
from leanvision.hub_cards.export import export_model
from leanvision.training.inference import decode_captions


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from skimage import data as skdata

    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for name in ("astronaut", "coffee", "chelsea"):
        path = folder / f"{name}.png"
        Image.fromarray(getattr(skdata, name)()).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A saved tiny captioner, its in-process model and processor, and its export."""
    root = tmp_path_factory.mktemp("gsb")
    model, processor = save_tiny_captioner(root / "model")
    export_model(str(root / "model"), str(root / "export"))
    return root, model, processor


def test_export_writes_flat_bundle_with_auto_maps_and_custom_pipeline(trained):
    root, _, _ = trained
    out = root / "export"
    assert sorted(os.listdir(out)) == sorted([
        "README.md", "config.json", "generation_config.json", "model.safetensors", "processor_config.json",
        "tokenizer.json", "tokenizer_config.json", "configuration_gated_sparse_blip.py", "modeling_common.py",
        "modeling_gated_sparse_blip.py", "processing_common.py", "processing_gated_sparse_blip.py",
        "pipeline_image_to_text.py", "handler.py", "requirements.txt",
    ])
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_gated_sparse_blip.GatedSparseBlipConfig",
        "AutoModel": "modeling_gated_sparse_blip.GatedSparseBlipModel",
        "AutoModelForImageTextToText": "modeling_gated_sparse_blip.GatedSparseBlipForConditionalGeneration",
    }
    assert config["custom_pipelines"] == {
        "image-to-text": {
            "impl": "pipeline_image_to_text.ImageToTextPipeline",
            "pt": ["AutoModelForImageTextToText"],
            "type": "multimodal",
        }
    }
    processor_config = json.loads((out / "processor_config.json").read_text())
    assert processor_config["auto_map"] == {"AutoProcessor": "processing_gated_sparse_blip.GatedSparseBlipProcessor"}
    assert "from .configuration_gated_sparse_blip import" in (out / "modeling_gated_sparse_blip.py").read_text()
    assert "pipeline_tag: image-to-text" in (out / "README.md").read_text()
    for name in ("config.json", "processor_config.json", "tokenizer_config.json", "README.md"):
        assert str(root) not in (out / name).read_text(), name


FRESH = """
import json, sys
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline
export_dir, inputs_path, *photos = sys.argv[1:]
model = AutoModelForImageTextToText.from_pretrained(export_dir, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(export_dir, trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
inputs = load_file(inputs_path)
with torch.no_grad():
    logits = model(pixel_values=inputs["pixel_values"], input_ids=inputs["input_ids"]).logits
    generated = model.generate(pixel_values=inputs["pixel_values"], do_sample=False)
caption = pipeline("image-to-text", model=export_dir, trust_remote_code=True)
print(json.dumps({
    "logits": logits.tolist(),
    "generated": generated.tolist(),
    "processed": processor(images=[__import__("PIL.Image").Image.open(p) for p in photos])["pixel_values"].tolist(),
    "default": [caption(p) for p in photos],
    "short": caption(photos[0], max_new_tokens=3),
    "beams": caption(photos[0], num_beams=3, max_new_tokens=6),
    "pipeline_class": type(caption).__module__,
}))
"""


def test_export_loads_in_fresh_interpreter_with_equal_outputs_and_captions_photos(trained, photos, tmp_path):
    root, model, processor = trained
    pixel_values = processor(images=[Image.open(p) for p in photos])["pixel_values"]
    input_ids = processor(text=["a red circle at the top", "a blue square", "a green triangle at the left"])
    save_file(
        {"pixel_values": pixel_values.contiguous(), "input_ids": input_ids["input_ids"].contiguous()},
        str(tmp_path / "inputs.safetensors"),
    )
    with torch.no_grad():
        expected_logits = model(pixel_values=pixel_values, input_ids=input_ids["input_ids"]).logits
        expected_ids = model.generate(pixel_values=pixel_values, do_sample=False)
        beams = model.generate(pixel_values=pixel_values[:1], num_beams=3, max_new_tokens=6, do_sample=False)

    result = run_fresh(FRESH, tmp_path, str(root / "export"), str(tmp_path / "inputs.safetensors"), *photos)

    assert result["pipeline_class"].startswith("transformers_modules")
    assert torch.equal(torch.tensor(result["processed"]), pixel_values)
    assert torch.equal(torch.tensor(result["logits"]), expected_logits)
    assert torch.equal(torch.tensor(result["generated"]), expected_ids)
    captions = decode_captions(processor, expected_ids)
    assert [out[0]["generated_text"] for out in result["default"]] == captions
    assert all(len(c.split()) >= 1 for c in captions)
    assert result["beams"] == [{"generated_text": decode_captions(processor, beams)[0]}]
    short = result["short"][0]["generated_text"]
    assert short == captions[0][: len(short)] and len(processor.tokenizer(short)["input_ids"]) - 2 <= 3


def test_pipeline_class_captions_a_saved_folder_and_passes_sampling_arguments(trained, photos):
    root, model, processor = trained
    # transformers renames the bare "image-to-text" task (with a warning that breaks logging under pytest); the
    # model class for "image-text-to-text" is the same Auto class.
    caption = pipeline("image-text-to-text", model=str(root / "model"), pipeline_class=ImageToTextPipeline)
    assert isinstance(caption, ImageToTextPipeline)
    image = Image.open(photos[1])
    pixel_values = processor(images=[image])["pixel_values"]

    torch.manual_seed(3)
    sampled = caption(image, do_sample=True, temperature=1.5, max_new_tokens=8)
    torch.manual_seed(3)
    with torch.no_grad():
        expected = model.generate(pixel_values=pixel_values, do_sample=True, temperature=1.5, max_new_tokens=8)

    assert sampled == [{"generated_text": decode_captions(processor, expected)[0]}]
    with torch.no_grad():
        greedy = model.generate(pixel_values=pixel_values, do_sample=False)
    assert caption(photos[1]) == [{"generated_text": decode_captions(processor, greedy)[0]}]


def test_pipeline_serves_another_captioning_family():
    """QVision (CLIP + Q-Former + GPT-Neo): any processor taking images and any model with generate() works."""
    from test_qvision import make_image_sensitive, tiny_model

    from leanvision.processing.processing_qvision import QVisionProcessor
    from transformers import CLIPImageProcessor, GPT2Tokenizer

    vocab = {"<|endoftext|>": 0, **{chr(ord("a") + i): i + 1 for i in range(26)}}
    tokenizer = GPT2Tokenizer(vocab=vocab, merges=[])
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = QVisionProcessor(image_processor, tokenizer)
    model = make_image_sensitive(tiny_model(text_config=dict(
        vocab_size=27, hidden_size=32, num_layers=4, num_heads=4, max_position_embeddings=64,
        attention_types=[[["global", "local"], 2]], window_size=8, bos_token_id=0, eos_token_id=0,
    )))
    caption = ImageToTextPipeline(model=model, processor=processor)
    image = Image.new("RGB", (40, 40), (200, 30, 30))

    out = caption(image, do_sample=False, max_new_tokens=5)

    with torch.no_grad():
        ids = model.generate(pixel_values=processor(images=[image])["pixel_values"], do_sample=False, max_new_tokens=5)
    assert out == [{"generated_text": tokenizer.batch_decode(ids, skip_special_tokens=True)[0].strip()}]
