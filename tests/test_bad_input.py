"""Bad input, table-driven: every case either works the way users expect (grayscale becomes RGB, an EXIF-rotated
photo is turned upright) or raises a ValueError / FileNotFoundError whose message names the problem; never an error
from deep inside torch, and a failed export leaves no partial folder behind."""

import http.server
import io
import json
import logging
import os
import shutil
import socket
import stat
import struct
import threading
import time
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
from leanvision.training.train import main as train_main
from leanvision.training.train import parse_args
from leanvision.configuration.configuration_qvision import QVisionConfig
from leanvision.modeling.modeling_qvision import QVisionForConditionalGeneration
from leanvision.processing import processing_common
from leanvision.processing.pipeline_image_to_text import ImageToTextPipeline
from leanvision.processing.processing_common import load_image

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


def _truncated_jpeg(env, name: str) -> str:
    buffer = io.BytesIO()
    _rgb_image(size=(64, 64)).save(buffer, format="JPEG")
    path = env["root"] / name
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 3])
    return str(path)


def truncated_file(env):
    with pytest.raises(ValueError, match="truncated.jpg' could not be decoded"):
        open_image(_truncated_jpeg(env, "truncated.jpg"))


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
    config = json.loads((env["root"] / "unknown_field-export" / "config.json").read_text())
    assert config["a_field_from_the_future"] == 3
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


# --- one image loader for processors, the pipeline and the CLI -----------------------------------------------------

def _pipeline(env):
    if "pipeline" not in env:
        from transformers import pipeline

        env["pipeline"] = pipeline(
            "image-text-to-text", model=str(env["root"] / "gsb"), pipeline_class=ImageToTextPipeline,
            max_new_tokens=3,
        )
    return env["pipeline"]


def _pixel_values_of(env, image):
    return _pipeline(env).preprocess(image)["pixel_values"]


def _sixteen_bit_path(env):
    pixels = (np.arange(64 * 64, dtype=np.float64).reshape(64, 64) / (64 * 64 - 1) * 65535).astype(np.uint16)
    return _saved(env, Image.fromarray(pixels), "ramp16.png")


def sixteen_bit_png_mean(env):
    # PIL's own convert("RGB") clips 16-bit values to white (mean 254 instead of ~127).
    assert abs(np.asarray(load_image(_sixteen_bit_path(env))).mean() - 127.5) < 1.5


def sixteen_bit_png_through_the_pipeline(env):
    path = _sixteen_bit_path(env)
    expected = env["gsb"][1](images=[open_image(path)])["pixel_values"]
    assert torch.equal(_pixel_values_of(env, path), expected)
    assert torch.equal(_pixel_values_of(env, Image.open(path)), expected)


def float_tiff_in_unit_range(env):
    pixels = np.full((8, 8), 0.5, dtype=np.float32)
    image = open_image(_saved(env, Image.fromarray(pixels, mode="F"), "half.tiff"))
    assert np.asarray(image).mean() == 128


def float_tiff_in_byte_range(env):
    pixels = np.full((8, 8), 200.0, dtype=np.float32)
    assert np.asarray(open_image(_saved(env, Image.fromarray(pixels, mode="F"), "bytes.tiff"))).mean() == 200


def float_tiff_with_nan(env):
    pixels = np.full((8, 8), 0.5, dtype=np.float32)
    pixels[2, 3] = np.nan
    with pytest.raises(ValueError, match="nan.tiff' has NaN or inf pixel values"):
        open_image(_saved(env, Image.fromarray(pixels, mode="F"), "nan.tiff"))


def gif_and_tiff_through_the_cli(env, capsys):
    gif = _saved(env, _rgb_image(), "shape.gif")
    tiff = _saved(env, _rgb_image(1), "shape.tif")
    assert cli_main(["caption", gif, tiff, "--model", str(env["root"] / "gsb"), "--max-new-tokens", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [gif, tiff]


def gif_through_the_pipeline(env):
    path = _saved(env, _rgb_image(), "pipe.gif")
    assert _pixel_values_of(env, path).shape == (1, 3, 32, 32)


def _unit_range_warning_case(make):
    def case(env, caplog):
        with caplog.at_level(logging.WARNING):
            env["qvision"](images=[make()])
        assert "trying to rescale already rescaled images" in caplog.text
    return case


float_array_in_unit_range_warns = _unit_range_warning_case(
    lambda: np.random.default_rng(0).random((32, 32, 3)).astype(np.float32))
float_tensor_in_unit_range_warns = _unit_range_warning_case(lambda: torch.rand(3, 32, 32))


def byte_array_does_not_warn(env, caplog):
    with caplog.at_level(logging.WARNING):
        env["qvision"](images=[np.zeros((32, 32, 3), dtype=np.uint8)])
    assert "rescale" not in caplog.text


def _bad_array_case(make, match, processor="qvision"):
    def case(env):
        with pytest.raises(ValueError, match=match):
            env[processor](images=[make()], **({"text": ["a"]} if processor == "clip" else {}))
    return case


nan_array_refused = _bad_array_case(lambda: np.full((32, 32, 3), np.nan, dtype=np.float32), "image 0 has NaN or inf")
inf_tensor_refused = _bad_array_case(lambda: torch.full((3, 32, 32), float("inf")), "image 0 has NaN or inf",
                                     processor="clip")
zero_size_array_refused = _bad_array_case(lambda: np.zeros((0, 0, 3), dtype=np.uint8),
                                          r"image 0 has shape \(0, 0, 3\): it holds no pixels")
zero_size_pil_refused = _bad_array_case(lambda: Image.new("RGB", (0, 0)), r"image 0 is empty \(0 x 0 pixels\)")


def empty_pixel_values_batch_dtp(env):
    with pytest.raises(ValueError, match=r"`pixel_values` is an empty batch \(shape \(0, 3, 32, 32\)\)"):
        env["dtp"](pixel_values=torch.zeros(0, 3, 32, 32))


def nan_pixel_values_dtp(env):
    pixel_values = torch.randn(2, 3, 32, 32)
    pixel_values[1, 0, 4, 4] = float("nan")
    with pytest.raises(ValueError, match="`pixel_values` contain NaN or inf values"):
        env["dtp"](pixel_values=pixel_values)


def _tiny_qvision():
    torch.manual_seed(0)
    return QVisionForConditionalGeneration(QVisionConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        text_config=dict(vocab_size=50, hidden_size=32, num_layers=2, num_heads=4, max_position_embeddings=64,
                         attention_types=[[["global", "local"], 1]], window_size=8, bos_token_id=0, eos_token_id=0),
        cross_attention_every_n=2, num_query_tokens=4, qformer_hidden_size=32, qformer_num_layers=1,
        qformer_num_heads=4,
    )).eval()


def nan_pixel_values_qvision(env):
    model = _tiny_qvision()
    with pytest.raises(ValueError, match="`pixel_values` contain NaN or inf values"):
        model.generate(pixel_values=torch.full((1, 3, 32, 32), float("nan")), max_new_tokens=2)


def inf_pixel_values_dtp_clip(env):
    from leanvision.configuration.configuration_dtp_clip import DTPCLIPConfig
    from leanvision.modeling.modeling_dtp_clip import DTPCLIPModel

    torch.manual_seed(0)
    vision = dict(image_size=32, patch_size=8, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                  num_pre_layers=1, num_shortened_layers=1, compression_rate=0.5)
    try:
        model = DTPCLIPModel(DTPCLIPConfig(vision_config=vision, text_config=dict(
            vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
            max_position_embeddings=64), projection_dim=16)).eval()
    except TypeError as err:  # pragma: no cover - config shape differs
        pytest.skip(str(err))
    ids = env["clip"](text=["a red circle"])["input_ids"]
    with pytest.raises(ValueError, match="`pixel_values` contain NaN or inf values"):
        model(input_ids=ids, pixel_values=torch.full((1, 3, 32, 32), float("inf")))


def pipeline_missing_path(env):
    with pytest.raises(FileNotFoundError, match="no such image file: .*nowhere.png"):
        _pipeline(env)(str(env["root"] / "nowhere.png"))


def pipeline_truncated_jpeg(env):
    with pytest.raises(ValueError, match="cut.jpg' could not be decoded"):
        _pipeline(env)(_truncated_jpeg(env, "cut.jpg"))


def pipeline_not_an_image(env):
    path = env["root"] / "text.png"
    path.write_bytes(b"plain text, not pixels")
    with pytest.raises(ValueError, match="text.png' is not an image file"):
        _pipeline(env)(str(path))


def pipeline_base64_image(env):
    buffer = io.BytesIO()
    _rgb_image().save(buffer, format="PNG")
    import base64

    encoded = base64.b64encode(buffer.getvalue()).decode()
    assert torch.equal(_pixel_values_of(env, encoded), _pixel_values_of(env, _rgb_image()))


def pipeline_empty_list(env):
    with pytest.raises(ValueError, match="no images given"):
        _pipeline(env)([])


def pipeline_num_beams_zero(env):
    with pytest.raises(ValueError, match=r"`num_beams` must be a whole number of at least 1, got 0"):
        _pipeline(env)(_rgb_image(), num_beams=0)


def pipeline_max_new_tokens_negative(env):
    with pytest.raises(ValueError, match=r"`max_new_tokens` must be a whole number of at least 1, got -2"):
        _pipeline(env)(_rgb_image(), generate_kwargs={"max_new_tokens": -2})


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_error(404, "Not Found")

    def log_message(self, *args):
        pass


def pipeline_http_404(env):
    server = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}/gone.png"
    try:
        with pytest.raises(ValueError, match=f"could not fetch the image '{url}': HTTP 404"):
            _pipeline(env)(url)
    finally:
        server.shutdown()
        server.server_close()


def pipeline_url_that_never_answers(env):
    assert processing_common.DEFAULT_TIMEOUT == 10.0
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts the connection, never answers
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/slow.png"
    start = time.monotonic()
    try:
        with pytest.raises(ValueError, match=f"could not fetch the image '{url}': .*timed out"):
            _pipeline(env)(url, timeout=0.5)
    finally:
        listener.close()
    assert time.monotonic() - start < 5


def open_image_of_a_folder(env):
    with pytest.raises(ValueError, match="is a folder, not an image file"):
        open_image(str(env["root"]))


# --- text ---------------------------------------------------------------------------------------------------------

def dtp_clip_empty_text_list(env):
    with pytest.raises(ValueError, match="`text` is an empty list: pass at least one text .*candidate label"):
        env["clip"](text=[])


# --- the command line -------------------------------------------------------------------------------------------

def _cli(env, capsys, *argv):
    code = cli_main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err: str) -> str:
    """The only line of stderr that is not a progress bar."""
    lines = [line for line in err.replace("\r", "\n").splitlines() if line and "%|" not in line]
    assert len(lines) == 1, lines
    return lines[0]


def cli_caption_beams_zero(env, capsys):
    code, _, err = _cli(env, capsys, "caption", _saved(env, _rgb_image(), "input.png"), "--model",
                        str(env["root"] / "gsb"), "--beams", "0")
    assert code == 2 and err.strip() == "leanvision caption: error: beams must be at least 1, got 0"


def _batch_size_case(value):
    def case(env, capsys):
        image = _saved(env, _rgb_image(), "batch.png")
        code, out, err = _cli(env, capsys, "caption", image, "--model", str(env["root"] / "gsb"),
                              "--batch-size", value)
        assert code == 2 and out == ""
        assert err.strip() == f"leanvision caption: error: --batch-size must be at least 1, got {value}"
    return case


cli_caption_batch_size_zero = _batch_size_case("0")
cli_caption_batch_size_negative = _batch_size_case("-1")


def cli_evaluate_max_samples_zero(env, capsys):
    code, _, err = _cli(env, capsys, "evaluate", str(env["root"] / "gsb"), "--dataset", "shapes",
                        "--max-samples", "0")
    assert code == 2 and err.strip() == "leanvision evaluate: error: --max-samples must be at least 1, got 0"


def cli_caption_folder_with_a_bad_file(env, capsys):
    folder = env["root"] / "mixed"
    folder.mkdir(exist_ok=True)
    _rgb_image(0).save(folder / "a.png")
    (folder / "b.jpg").write_bytes(b"not a jpeg")
    _rgb_image(1).save(folder / "c.png")
    code, out, err = _cli(env, capsys, "caption", str(folder), "--model", str(env["root"] / "gsb"),
                          "--max-new-tokens", "2")
    assert code == 1
    assert [line.split("\t")[0] for line in out.splitlines()] == [str(folder / "a.png"), str(folder / "c.png")]
    assert "b.jpg' is not an image file" in err and "1 of 3 images could not be read" in err


def cli_analyze_max_new_tokens_zero(env, capsys):
    out_dir = env["root"] / "analysis-zero"
    code, _, err = _cli(env, capsys, "analyze", _saved(env, _rgb_image(), "input.png"), "--model",
                        str(env["root"] / "gsb"), "--out-dir", str(out_dir), "--max-new-tokens", "0")
    assert code == 2 and "--max-new-tokens must be at least 1, got 0" in err
    assert not out_dir.exists()


def cli_visualize_missing_image(env, capsys):
    out_dir = env["root"] / "boundaries-missing"
    code, _, err = _cli(env, capsys, "visualize-boundaries", str(env["root"] / "absent.png"), "--model",
                        str(env["root"] / "gsb"), "--out-dir", str(out_dir))
    assert code == 2 and "no such image file" in err and "absent.png" in err
    assert not out_dir.exists()


def cli_visualize_folder_without_images(env, capsys):
    # visualize-boundaries reads folders (issue 16); one without images is refused before anything is written.
    folder, out_dir = env["root"] / "no-images", env["root"] / "boundaries-of-nothing"
    folder.mkdir(exist_ok=True)
    (folder / "notes.txt").write_text("not an image")
    code, _, err = _cli(env, capsys, "visualize-boundaries", str(folder), "--model", str(env["root"] / "gsb"),
                        "--out-dir", str(out_dir))
    assert code == 2 and f"folder '{folder}' holds no image files PIL can open" in _one_error_line(err)
    assert not out_dir.exists()


def cli_visualize_out_dir_is_a_file(env, capsys):
    target = env["root"] / "a-file.txt"
    target.write_text("x")
    code, _, err = _cli(env, capsys, "visualize-boundaries", _saved(env, _rgb_image(), "input.png"), "--model",
                        str(env["root"] / "gsb"), "--out-dir", str(target))
    assert code == 2 and "is an existing file, not a folder" in err


def cli_export_under_an_existing_file(env, capsys):
    blocker = env["root"] / "blocker"
    blocker.write_text("a file")
    code, _, err = _cli(env, capsys, "export", str(env["root"] / "gsb"), str(blocker / "out"))
    assert code == 2 and _one_error_line(err).startswith("leanvision export: error: ") and "blocker" in err


def cli_export_into_a_read_only_folder(env, capsys, monkeypatch):
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", kwargs.get("dir") or str(env["root"] / "readonly"))

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)  # as root, chmod alone would not refuse
    code, _, err = _cli(env, capsys, "export", str(env["root"] / "gsb"), str(env["root"] / "readonly" / "out"))
    assert code == 2 and _one_error_line(err).startswith("leanvision export: error: [Errno 13] Permission denied")


def cli_export_onto_a_full_disk(env, capsys, monkeypatch):
    import transformers.modeling_utils
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                              "message: 'No space left on device' })")

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", full)
    out = env["root"] / "full-disk-export"
    code, _, err = _cli(env, capsys, "export", str(env["root"] / "gsb"), str(out))
    assert code == 2 and "No space left on device" in _one_error_line(err)
    assert not out.exists()


def cli_publish_eval_json_not_json(env, capsys):
    report = env["root"] / "report.json"
    report.write_text("scores: not json")
    code, _, err = _cli(env, capsys, "publish", str(env["root"] / "gsb"), "user/repo", "--dry-run", "--eval-json",
                        str(report))
    assert code == 2 and f"--eval-json '{report}' is not a JSON report" in err


# --- exports ------------------------------------------------------------------------------------------------------

def stale_staging_folder_is_removed(env):
    out = env["root"] / "after-kill"
    stale = env["root"] / f".staging-after-kill-{2 ** 22 + 12345}-x1y2"  # above Linux's pid_max: no such process
    (stale / "partial").mkdir(parents=True)
    export_model(str(env["root"] / "gsb"), str(out))
    assert not stale.exists() and out.is_dir()
    assert not [name for name in os.listdir(env["root"]) if name.startswith(".staging-after-kill")]


def exported_files_have_ordinary_permissions(env):
    old = os.umask(0o022)
    try:
        out = env["root"] / "readable-export"
        export_model(str(env["root"] / "gsb"), str(out))
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    modes = {stat.S_IMODE((out / name).stat().st_mode) for name in os.listdir(out) if (out / name).is_file()}
    assert modes == {0o644}


# --- recipes and train (cases 1, 2, 9, 12) -----------------------------------------------------------------------

RECIPES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "training", "recipes")
DIGITS_RECIPE = os.path.join(RECIPES, "dtp_vit_digits.yaml")


def recipe_config_override_typo(env):
    recipe = env["root"] / "typo.yaml"
    recipe.write_text("family: dtp_vit\nconfig_overrides:\n  hidden_sizee: 64\n")
    with pytest.raises(ValueError, match="'hidden_sizee' is not a field of DTPViTConfig; did you mean 'hidden_size'"):
        parse_args([str(recipe)])


def _train_refused_case(flag, value, message):
    def case(env):
        out = env["root"] / f"train{flag}"
        with pytest.raises(ValueError, match=message):
            train_main([DIGITS_RECIPE, "--output_dir", str(out), flag, value])
        assert not out.exists()  # refused before anything is created
    return case


train_negative_epochs = _train_refused_case("--num_train_epochs", "-3", "num_train_epochs must be > 0")
train_negative_learning_rate = _train_refused_case("--learning_rate", "-0.1", "learning_rate must be >= 0")


def cli_train_broken_yaml(env, capsys):
    recipe = env["root"] / "broken.yaml"
    recipe.write_text("family: dtp_vit\nconfig_overrides: [a\n  b: c\n")
    code, _, err = _cli(env, capsys, "train", str(recipe))
    assert code == 2
    assert _one_error_line(err).startswith(f"leanvision train: error: recipe {recipe}: invalid YAML at line 3")


def cli_train_output_dir_is_a_file(env, capsys):
    target = env["root"] / "train-target.txt"
    target.write_text("x")
    code, _, err = _cli(env, capsys, "train", DIGITS_RECIPE, "--output_dir", str(target))
    assert code == 2 and "is an existing file, not a folder" in _one_error_line(err)


def _saved_tiny_qvision(env):
    folder = env["root"] / "qvision"
    if not folder.exists():
        _tiny_qvision().save_pretrained(folder)
        env["qvision"].save_pretrained(folder)
    return folder


def cli_analyze_out_dir_is_a_file(env, capsys):
    target = env["root"] / "analysis-target.txt"
    target.write_text("x")
    code, _, err = _cli(env, capsys, "analyze", _saved(env, _rgb_image(), "analyze.png"), "--model",
                        str(_saved_tiny_qvision(env)), "--out-dir", str(target), "--max-new-tokens", "2")
    assert code == 2 and _one_error_line(err) == (
        f"leanvision analyze: error: --out-dir '{target}' is an existing file, not a folder")
    assert target.read_text() == "x"


# --- GIF and TIFF through analyze (case 13) ------------------------------------------------------------------------

def cli_analyze_gif_and_tiff(env, capsys):
    gif = _saved(env, _rgb_image(2), "analyze.gif")
    tiff = _saved(env, _rgb_image(3), "analyze.tiff")
    out_dir = env["root"] / "analysis-gif"
    code, _, err = _cli(env, capsys, "analyze", gif, tiff, "--model", str(_saved_tiny_qvision(env)),
                        "--out-dir", str(out_dir), "--max-new-tokens", "2")
    assert code == 0, err
    assert out_dir.is_dir() and len(os.listdir(out_dir)) > 0


# --- symlinks and empty texts (case 10) ----------------------------------------------------------------------------

def _symlink_loop(env):
    first, second = env["root"] / "loop-a.png", env["root"] / "loop-b.png"
    for link, target in ((first, second), (second, first)):
        if not os.path.islink(link):
            os.symlink(target, link)
    return str(first)


def symlink_loop_open_image(env):
    path = _symlink_loop(env)
    with pytest.raises(ValueError, match=f"'{path}' is a symlink loop"):
        open_image(path)


def symlink_loop_through_the_pipeline(env):
    path = _symlink_loop(env)
    with pytest.raises(ValueError, match=f"'{path}' is a symlink loop"):
        _pipeline(env)(path)


def cli_caption_symlink_loop(env, capsys):
    path = _symlink_loop(env)
    code, out, err = _cli(env, capsys, "caption", path, "--model", str(env["root"] / "gsb"))
    assert code == 2 and out == "" and f"'{path}' is a symlink loop" in _one_error_line(err)


def dangling_symlink(env):
    link = env["root"] / "dangling.png"
    if not os.path.islink(link):
        os.symlink(env["root"] / "moved-away.png", link)
    with pytest.raises(FileNotFoundError, match="dangling.png' is a symlink to a missing file .*moved-away.png"):
        load_image(str(link))


def empty_text_list_gsb(env):
    with pytest.raises(ValueError, match="`text` is an empty list: pass at least one text"):
        env["gsb"][1](text=[])


def empty_text_list_qvision(env):
    with pytest.raises(ValueError, match="`text` is an empty list: pass at least one text"):
        env["qvision"](text=[])


# --- zero-shot labels (cases 3, 6, 10): the exported DTP-CLIP where leanvision cannot be imported ------------------

ZERO_SHOT_FRESH = """
import json, sys
import numpy as np
from PIL import Image
from transformers import pipeline

export, deep = sys.argv[1], sys.argv[2]
pipe = pipeline("zero-shot-image-classification", model=export, trust_remote_code=True)
image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
pixels = np.asarray(Image.open(deep), dtype=np.float64)
eight_bit = Image.fromarray((pixels / 65535 * 255 + 0.5).astype(np.uint8)).convert("RGB")
labels = ["red circle", "blue square", "green triangle"]
calls = {
    "string": lambda: pipe(image, candidate_labels="red circle, blue square,  green triangle , "),
    "list": lambda: pipe(image, candidate_labels=labels),
    "empty_list": lambda: pipe(image, candidate_labels=[]),
    "empty_string": lambda: pipe(image, candidate_labels=" , "),
    "no_images": lambda: pipe([], candidate_labels=labels),
    "deep_path": lambda: pipe(deep, candidate_labels=labels),
    "deep_eight_bit": lambda: pipe(eight_bit, candidate_labels=labels),
    "white": lambda: pipe(Image.new("RGB", (64, 64), "white"), candidate_labels=labels),
}
"""


# Runs each named call of a fresh-interpreter script and records its answer or its error (type, message).
FRESH_CALLS = """
answers = {"class": type(pipe).__module__}
for name, call in calls.items():
    try:
        answers[name] = ["ok", call()]
    except Exception as err:
        answers[name] = [type(err).__name__, str(err)]
print(json.dumps(answers))
"""


def _fresh_answers(env, family: str, script: str) -> dict:
    """The answers of `script` + FRESH_CALLS run once per module on `family`'s export, leanvision not importable."""
    key = f"{family}_fresh"
    if key not in env:
        from helpers import run_fresh
        from test_attention import ROOT

        export = env["root"] / f"{family}-export"
        export_model(os.path.join(ROOT, family), str(export))
        env[key] = run_fresh(script + FRESH_CALLS, env["root"], str(export), _sixteen_bit_path(env))
        assert env[key]["class"].startswith("transformers_modules.")
    return env[key]


def _zero_shot_fresh(env):
    return _fresh_answers(env, "dtp_clip", ZERO_SHOT_FRESH)


def zero_shot_labels_as_one_string(env):
    answers = _zero_shot_fresh(env)
    assert answers["string"] == answers["list"] and answers["string"][0] == "ok"
    assert sorted(p["label"] for p in answers["string"][1]) == ["blue square", "green triangle", "red circle"]


def _zero_shot_refused_case(name, error, message):
    def case(env):
        assert _zero_shot_fresh(env)[name] == [error, message]
    return case


EMPTY_LABELS = "`candidate_labels` is empty: pass at least one label, e.g. ['a cat', 'a dog'] or 'a cat, a dog'"
zero_shot_empty_label_list = _zero_shot_refused_case("empty_list", "ValueError", EMPTY_LABELS)
zero_shot_empty_label_string = _zero_shot_refused_case("empty_string", "ValueError", EMPTY_LABELS)
zero_shot_empty_image_list = _zero_shot_refused_case(
    "no_images", "ValueError", "no images given: pass an image or a non-empty list of images")


def zero_shot_sixteen_bit_png(env):
    answers = _zero_shot_fresh(env)
    assert answers["deep_path"] == answers["deep_eight_bit"] and answers["deep_path"][0] == "ok"
    assert answers["deep_path"] != answers["white"]  # the model tells them apart: a white image would show


def zero_shot_registered_with_leanvision(env):
    from transformers import pipeline

    from leanvision import ZeroShotImageClassificationPipeline
    from test_attention import ROOT

    pipe = pipeline("zero-shot-image-classification", model=os.path.join(ROOT, "dtp_clip"))
    assert isinstance(pipe, ZeroShotImageClassificationPipeline)
    image = _rgb_image(size=(40, 40))
    assert pipe(image, candidate_labels="a, b") == pipe(image, candidate_labels=["a", "b"])
    with pytest.raises(ValueError, match=r"`hypothesis_template` must be a string with one \{\} for the label"):
        pipe(image, candidate_labels=["a"], hypothesis_template="a photo")
    with pytest.raises(TypeError, match="`candidate_labels` must be strings, got int 3"):
        pipe(image, candidate_labels=["a", 3])


# --- image classification (cases 3, 10): the exported DTP-ViT where leanvision cannot be imported ----------------

CLASSIFY_FRESH = """
import json, sys
import numpy as np
from PIL import Image
from transformers import pipeline

export, deep = sys.argv[1], sys.argv[2]
pipe = pipeline("image-classification", model=export, trust_remote_code=True)
pixels = np.asarray(Image.open(deep), dtype=np.float64)
eight_bit = Image.fromarray((pixels / 65535 * 255 + 0.5).astype(np.uint8)).convert("RGB")
calls = {
    "deep_path": lambda: pipe(deep, top_k=3),
    "deep_eight_bit": lambda: pipe(eight_bit, top_k=3),
    "white": lambda: pipe(Image.new("RGB", (64, 64), "white"), top_k=3),
    "no_images": lambda: pipe([]),
    "top_k_zero": lambda: pipe(eight_bit, top_k=0),
}
"""


def _classify_fresh(env):
    return _fresh_answers(env, "dtp_vit", CLASSIFY_FRESH)


def classify_sixteen_bit_png(env):
    answers = _classify_fresh(env)
    assert answers["deep_path"] == answers["deep_eight_bit"] and answers["deep_path"][0] == "ok"
    assert answers["deep_path"] != answers["white"]  # the model tells them apart: a white image would show


def classify_empty_image_list(env):
    assert _classify_fresh(env)["no_images"] == [
        "ValueError", "no images given: pass an image or a non-empty list of images"]


def classify_top_k_zero(env):
    assert _classify_fresh(env)["top_k_zero"] == ["ValueError", "`top_k` must be a whole number of at least 1, got 0"]


def classify_registered_with_leanvision(env):
    from transformers import pipeline

    from leanvision import ImageClassificationPipeline
    from test_attention import ROOT

    pipe = pipeline("image-classification", model=os.path.join(ROOT, "dtp_vit"))
    assert isinstance(pipe, ImageClassificationPipeline)
    path = _sixteen_bit_path(env)
    assert pipe(path, top_k=3) == pipe(load_image(path), top_k=3)
    with pytest.raises(ValueError, match="`top_k` must be a whole number of at least 1, got -1"):
        pipe(path, top_k=-1)


# --- an export killed midway (case 12) -----------------------------------------------------------------------------

KILLED_EXPORT = """
import sys, time
import transformers.modeling_utils
from leanvision.hub_cards.export import export_model

def slow_write(tensors, filename, metadata=None):
    with open(filename, "wb") as f:
        f.write(b"half a weights file")
    print("writing", flush=True)
    time.sleep(600)

transformers.modeling_utils.safe_save_file = slow_write
export_model(sys.argv[1], sys.argv[2])
"""


def export_killed_midway_then_rerun(env):
    import signal
    import subprocess
    import sys

    out = env["root"] / "killed-export"
    child = subprocess.Popen([sys.executable, "-c", KILLED_EXPORT, str(env["root"] / "gsb"), str(out)],
                             stdout=subprocess.PIPE, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    try:
        assert child.stdout.readline().strip() == "writing"  # inside save_pretrained: the staging folder is half full
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
        child.stdout.close()
    stale = [name for name in os.listdir(env["root"]) if name.startswith(f".staging-killed-export-{child.pid}-")]
    assert len(stale) == 1 and not out.exists()
    assert (env["root"] / stale[0] / "model.safetensors").read_bytes() == b"half a weights file"
    export_model(str(env["root"] / "gsb"), str(out))
    assert not [name for name in os.listdir(env["root"]) if name.startswith(".staging-killed-export-")]
    assert out.is_dir() and (out / "model.safetensors").stat().st_size > 1000


CASES = [
    grayscale, rgba, palette, sixteen_bit_png, cmyk_jpeg, exif_rotated_jpeg, one_pixel,
    huge_image_is_refused_before_decoding, truncated_file, not_an_image, missing_image, empty_image_list_gsb,
    empty_image_list_qvision, empty_image_list_dtp_clip, latents_wrong_channels, latents_nan, latents_inf,
    latents_too_large, latents_wrong_rank, empty_caption, long_caption_gsb, long_caption_qvision,
    long_caption_dtp_clip, labels_out_of_range, pixel_values_wrong_size, corrupted_safetensors, config_invalid_field,
    config_unknown_field, config_not_json, missing_processor_file, unknown_family_in_recipe, output_folder_exists,
    cli_caption_of_a_non_image,
    sixteen_bit_png_mean, sixteen_bit_png_through_the_pipeline, float_tiff_in_unit_range, float_tiff_in_byte_range,
    float_tiff_with_nan, gif_and_tiff_through_the_cli, gif_through_the_pipeline, float_array_in_unit_range_warns,
    float_tensor_in_unit_range_warns, byte_array_does_not_warn, nan_array_refused, inf_tensor_refused,
    zero_size_array_refused, zero_size_pil_refused, empty_pixel_values_batch_dtp, nan_pixel_values_dtp,
    nan_pixel_values_qvision, inf_pixel_values_dtp_clip, pipeline_missing_path, pipeline_truncated_jpeg,
    pipeline_not_an_image, pipeline_base64_image, pipeline_empty_list, pipeline_num_beams_zero,
    pipeline_max_new_tokens_negative, pipeline_http_404, pipeline_url_that_never_answers, open_image_of_a_folder,
    dtp_clip_empty_text_list, cli_caption_beams_zero, cli_caption_batch_size_zero, cli_caption_batch_size_negative,
    cli_evaluate_max_samples_zero, cli_caption_folder_with_a_bad_file, cli_analyze_max_new_tokens_zero,
    cli_visualize_missing_image, cli_visualize_folder_without_images, cli_visualize_out_dir_is_a_file,
    cli_export_under_an_existing_file, cli_export_into_a_read_only_folder, cli_export_onto_a_full_disk,
    cli_publish_eval_json_not_json, stale_staging_folder_is_removed, exported_files_have_ordinary_permissions,
    recipe_config_override_typo, train_negative_epochs, train_negative_learning_rate, cli_train_broken_yaml,
    cli_train_output_dir_is_a_file, cli_analyze_out_dir_is_a_file, cli_analyze_gif_and_tiff, symlink_loop_open_image,
    symlink_loop_through_the_pipeline, cli_caption_symlink_loop, dangling_symlink, empty_text_list_gsb,
    empty_text_list_qvision, zero_shot_labels_as_one_string, zero_shot_empty_label_list, zero_shot_empty_label_string,
    zero_shot_empty_image_list, zero_shot_sixteen_bit_png, zero_shot_registered_with_leanvision,
    export_killed_midway_then_rerun, classify_sixteen_bit_png, classify_empty_image_list, classify_top_k_zero,
    classify_registered_with_leanvision,
]
CASE_NAMES = {
    "latents_wrong_channels": latents_wrong_channels, "latents_nan": latents_nan, "latents_inf": latents_inf,
    "latents_too_large": latents_too_large, "latents_wrong_rank": latents_wrong_rank,
    "long_caption_gsb": long_caption_gsb, "long_caption_qvision": long_caption_qvision,
    "long_caption_dtp_clip": long_caption_dtp_clip,
    "float_array_in_unit_range_warns": float_array_in_unit_range_warns,
    "float_tensor_in_unit_range_warns": float_tensor_in_unit_range_warns, "nan_array_refused": nan_array_refused,
    "inf_tensor_refused": inf_tensor_refused, "zero_size_array_refused": zero_size_array_refused,
    "zero_size_pil_refused": zero_size_pil_refused, "cli_caption_batch_size_zero": cli_caption_batch_size_zero,
    "cli_caption_batch_size_negative": cli_caption_batch_size_negative,
    "train_negative_epochs": train_negative_epochs, "train_negative_learning_rate": train_negative_learning_rate,
    "zero_shot_empty_label_list": zero_shot_empty_label_list,
    "zero_shot_empty_label_string": zero_shot_empty_label_string,
    "zero_shot_empty_image_list": zero_shot_empty_image_list,
}


def _name(case) -> str:
    return next((name for name, value in CASE_NAMES.items() if value is case), case.__name__)


@pytest.mark.parametrize("case", CASES, ids=[_name(case) for case in CASES])
def test_bad_input(case, env, request):
    extra = {name: request.getfixturevalue(name) for name in ("caplog", "capsys", "monkeypatch")
             if name in case.__code__.co_varnames[: case.__code__.co_argcount]}
    case(env, **extra)


def test_the_table_has_at_least_70_cases():
    assert len(CASES) >= 70 and len({_name(case) for case in CASES}) == len(CASES)
