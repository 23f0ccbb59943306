"""Bad input, table-driven: every case either works the way users expect (grayscale becomes RGB, an EXIF-rotated
photo is turned upright) or raises a ValueError / FileNotFoundError whose message names the problem; never an error
from deep inside torch, and a failed export leaves no partial folder behind."""

import io
import json
import logging
import os
import shutil
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from captioning_helpers import save_tiny_captioner
from leanvision.cli import main as cli_main
from leanvision.configuration.configuration_dtp_vit import DTPViTConfig
from leanvision.modeling.modeling_dtp_vit import DTPViTForImageClassification
from leanvision.processing.processing_dtp_clip import DTPCLIPProcessor
from leanvision.processing.processing_dtp_vit import build_image_processor
from leanvision.processing.processing_qvision import QVisionProcessor
from leanvision.training.data.tokenizers import word_level_tokenizer
from leanvision.hub_cards.export import export_model
from leanvision.training.files import open_image
from leanvision.training.data.tokenizers import char_tokenizer
from leanvision.training.train import parse_args

LONG_CAPTION = "a red circle " * 770  # 10,010 characters


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Saved tiny models and the processors of every family."""
    root = tmp_path_factory.mktemp("bad_input")
    gsb_model, gsb_processor = save_tiny_captioner(root / "gsb")
    qvision_tokenizer = word_level_tokenizer(["a red circle at the top"])
    qvision_tokenizer.add_special_tokens({"eos_token": "[SEP]"})
    qvision_tokenizer.model_max_length = 32
    torch.manual_seed(0)
    dtp = DTPViTForImageClassification(DTPViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_attention_heads=4, intermediate_size=64, num_pre_layers=1,
        num_shortened_layers=1, compression_rate=0.5, num_labels=3,
    )).eval()
    return {
        "root": root,
        "gsb": (gsb_model, gsb_processor),
        "qvision": QVisionProcessor(build_image_processor(32), qvision_tokenizer),
        "clip": DTPCLIPProcessor(build_image_processor(32), char_tokenizer()),
        "dtp": dtp,
    }


def _copy_model(env, name):
    target = env["root"] / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(env["root"] / "gsb", target)
    return target


def _export_fails_cleanly(env, model_dir, match):
    out = env["root"] / f"{model_dir.name}-export"
    with pytest.raises(ValueError, match=match):
        export_model(str(model_dir), str(out))
    assert not out.exists()
    assert not [name for name in os.listdir(env["root"]) if name.startswith(".staging-")]


def _rgb_image(seed=0, size=(20, 30)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8))


def _saved(env, image: Image.Image, name: str, **save_kwargs) -> str:
    path = str(env["root"] / name)
    image.save(path, **save_kwargs)
    return path


# --- images -----------------------------------------------------------------------------------------------------

def grayscale(env):
    image = open_image(_saved(env, _rgb_image().convert("L"), "gray.png"))
    assert image.mode == "RGB"
    pixels = np.asarray(image)
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    assert env["gsb"][1](images=[image])["pixel_values"].shape[1] == 3


def rgba(env):
    source = _rgb_image()
    image = open_image(_saved(env, source.convert("RGBA"), "rgba.png"))
    assert image.mode == "RGB" and np.array_equal(np.asarray(image), np.asarray(source))


def palette(env):
    source = _rgb_image().convert("P")
    image = open_image(_saved(env, source, "palette.png"))
    assert np.array_equal(np.asarray(image), np.asarray(source.convert("RGB")))


def sixteen_bit_png(env):
    pixels = np.array([[0, 32768], [65535, 65535]], dtype=np.uint16)
    image = open_image(_saved(env, Image.fromarray(pixels), "deep.png"))
    # Scaled to 8 bits (PIL's own conversion would clip everything above 255 to white).
    assert np.asarray(image)[..., 0].tolist() == [[0, 128], [255, 255]]


def cmyk_jpeg(env):
    image = open_image(_saved(env, Image.new("CMYK", (8, 6), (0, 255, 255, 0)), "cmyk.jpg", quality=100))
    red, green, blue = np.asarray(image).reshape(-1, 3).mean(axis=0)
    assert image.mode == "RGB" and red > 200 and green < 60 and blue < 60


def exif_rotated_jpeg(env):
    source = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    image = open_image(_saved(env, source, "rotated.jpg", exif=exif))
    assert image.size == (20, 40)


def one_pixel(env):
    image = open_image(_saved(env, Image.new("RGB", (1, 1), (10, 200, 30)), "tiny.png"))
    assert env["qvision"](images=[image])["pixel_values"].shape == (1, 3, 32, 32)


def huge_image_is_refused_before_decoding(env):
    # A PNG whose header claims 50,000 x 50,000 pixels and holds no pixel data: decoding would fail, so only a check
    # of the header can produce this error.
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 50000, 50000, 8, 2, 0, 0, 0))
    path = env["root"] / "huge.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + header + chunk(b"IEND", b""))
    with pytest.raises(ValueError, match="huge.png' has 2,500,000,000 pixels, more than"):
        open_image(str(path))


def truncated_file(env):
    buffer = io.BytesIO()
    _rgb_image(size=(64, 64)).save(buffer, format="JPEG")
    path = env["root"] / "truncated.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 3])
    with pytest.raises(ValueError, match="truncated.jpg' could not be decoded"):
        open_image(str(path))


def not_an_image(env):
    path = env["root"] / "notes.png"
    path.write_bytes(b"these bytes are not an image")
    with pytest.raises(ValueError, match="notes.png' is not an image file"):
        open_image(str(path))


def missing_image(env):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        open_image(str(env["root"] / "missing.png"))


def empty_image_list_gsb(env):
    with pytest.raises(ValueError, match="empty list"):
        env["gsb"][1](images=[])


def empty_image_list_qvision(env):
    with pytest.raises(ValueError, match="empty list"):
        env["qvision"](images=[])


def empty_image_list_dtp_clip(env):
    with pytest.raises(ValueError, match="empty list"):
        env["clip"](images=[], text=["a red circle"])


# --- latents ----------------------------------------------------------------------------------------------------

def _latent_case(shape, fill=None, match=""):
    def case(env):
        model, processor = env["gsb"]
        latents = torch.randn(*shape) if fill is None else torch.full(shape, fill)
        ids = processor(text=["a red circle"])["input_ids"]
        with pytest.raises(ValueError, match=match):
            model(latents=latents, input_ids=ids)
        with pytest.raises(ValueError, match=match):
            model.generate(latents=latents, max_new_tokens=2)
    return case


latents_wrong_channels = _latent_case((1, 3, 8, 8), match="must have 4 channels, got 3")
latents_nan = _latent_case((1, 4, 8, 8), fill=float("nan"), match="NaN or inf")
latents_inf = _latent_case((1, 4, 8, 8), fill=float("inf"), match="NaN or inf")
latents_too_large = _latent_case((1, 4, 40, 8), match=r"larger than max_latent_size \(16, 16\)")
latents_wrong_rank = _latent_case((4, 8, 8), match="must have rank 4")


# --- text and labels --------------------------------------------------------------------------------------------

def empty_caption(env):
    model, processor = env["gsb"]
    batch = processor(text=[""], latents=torch.randn(1, 4, 8, 8))
    assert batch["input_ids"].tolist() == [[processor.tokenizer.bos_token_id, processor.tokenizer.sep_token_id]]
    assert torch.isfinite(model(**batch).loss)


def _long_caption_case(get_processor, limit):
    def case(env, caplog):
        processor = get_processor(env)
        with caplog.at_level(logging.WARNING):
            ids = processor(text=[LONG_CAPTION])["input_ids"]
        assert ids.shape[1] == limit
        assert f"truncated to the {limit}-token limit" in caplog.text
    return case


long_caption_gsb = _long_caption_case(lambda env: env["gsb"][1], 64)
long_caption_qvision = _long_caption_case(lambda env: env["qvision"], 32)
long_caption_dtp_clip = _long_caption_case(lambda env: env["clip"], 64)


def labels_out_of_range(env):
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\), got \[0, 7\]"):
        env["dtp"](pixel_values=torch.randn(2, 3, 32, 32), labels=torch.tensor([0, 7]))


def pixel_values_wrong_size(env):
    with pytest.raises(ValueError, match=r"pixel_values must have shape \(batch, 3, 32, 32\), got \(2, 3, 40, 40\)"):
        env["dtp"](pixel_values=torch.randn(2, 3, 40, 40))


# --- files --------------------------------------------------------------------------------------------------------

def corrupted_safetensors(env):
    model_dir = _copy_model(env, "corrupt")
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    _export_fails_cleanly(env, model_dir, "model.safetensors\\) are corrupted or incomplete")


def config_invalid_field(env):
    model_dir = _copy_model(env, "invalid_field")
    config = json.loads((model_dir / "config.json").read_text())
    config["attention_sparsity"] = 1.5
    (model_dir / "config.json").write_text(json.dumps(config))
    _export_fails_cleanly(env, model_dir, r"`attention_sparsity` must be a number in \[0, 1\), got 1.5")


def config_unknown_field(env):
    # Kept as an attribute, as transformers does (configs written by newer versions stay loadable).
    model_dir = _copy_model(env, "unknown_field")
    config = json.loads((model_dir / "config.json").read_text())
    config["a_field_from_the_future"] = 3
    (model_dir / "config.json").write_text(json.dumps(config))
    out = export_model(str(model_dir), str(env["root"] / "unknown_field-export"))
    assert json.loads((env["root"] / "unknown_field-export" / "config.json").read_text())["a_field_from_the_future"] == 3
    assert os.path.isdir(out)


def config_not_json(env):
    model_dir = _copy_model(env, "broken_config")
    (model_dir / "config.json").write_text("{not json")
    _export_fails_cleanly(env, model_dir, "config.json in .* is not valid JSON")


def missing_processor_file(env):
    model_dir = _copy_model(env, "no_processor")
    (model_dir / "processor_config.json").unlink()
    _export_fails_cleanly(env, model_dir, "has no usable processor files")


def unknown_family_in_recipe(env):
    recipe = env["root"] / "recipe.yaml"
    recipe.write_text("family: resnet\n")
    with pytest.raises(ValueError, match="unknown model family 'resnet'; known families: "):
        parse_args([str(recipe)])


def output_folder_exists(env):
    (env["root"] / "taken").mkdir(exist_ok=True)
    with pytest.raises(ValueError, match="output folder .*taken' exists; pass overwrite=True"):
        export_model(str(env["root"] / "gsb"), str(env["root"] / "taken"))


def cli_caption_of_a_non_image(env, capsys):
    path = env["root"] / "fake.jpg"
    path.write_bytes(b"\x00" * 64)
    assert cli_main(["caption", str(path), "--model", str(env["root"] / "gsb")]) == 2
    assert "fake.jpg' is not an image file" in capsys.readouterr().err


CASES = [
    grayscale, rgba, palette, sixteen_bit_png, cmyk_jpeg, exif_rotated_jpeg, one_pixel,
    huge_image_is_refused_before_decoding, truncated_file, not_an_image, missing_image, empty_image_list_gsb,
    empty_image_list_qvision, empty_image_list_dtp_clip, latents_wrong_channels, latents_nan, latents_inf,
    latents_too_large, latents_wrong_rank, empty_caption, long_caption_gsb, long_caption_qvision,
    long_caption_dtp_clip, labels_out_of_range, pixel_values_wrong_size, corrupted_safetensors, config_invalid_field,
    config_unknown_field, config_not_json, missing_processor_file, unknown_family_in_recipe, output_folder_exists,
    cli_caption_of_a_non_image,
]
CASE_NAMES = {
    "latents_wrong_channels": latents_wrong_channels, "latents_nan": latents_nan, "latents_inf": latents_inf,
    "latents_too_large": latents_too_large, "latents_wrong_rank": latents_wrong_rank,
    "long_caption_gsb": long_caption_gsb, "long_caption_qvision": long_caption_qvision,
    "long_caption_dtp_clip": long_caption_dtp_clip,
}


def _name(case) -> str:
    return next((name for name, value in CASE_NAMES.items() if value is case), case.__name__)


@pytest.mark.parametrize("case", CASES, ids=[_name(case) for case in CASES])
def test_bad_input(case, env, request):
    extra = {name: request.getfixturevalue(name) for name in ("caplog", "capsys")
             if name in case.__code__.co_varnames[: case.__code__.co_argcount]}
    case(env, **extra)


def test_the_table_has_at_least_25_cases():
    assert len(CASES) >= 25 and len({_name(case) for case in CASES}) == len(CASES)
