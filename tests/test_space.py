"""The Space demo (hub_cards/space): `publish-space` writes an uploadable Space folder; the Gradio app, started on
127.0.0.1 in an interpreter where leanvision cannot be imported and driven through headless Chromium with Selenium,
shows the captions, labels and boundaries that the same exported models give in-process."""

import importlib.util
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import types

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import BLOCK_LEANVISION
from leanvision.hub_cards import publish_space as space_module
from leanvision.hub_cards.publish_space import SPACE_FILES, publish_space, write_space

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CLASSES = ["cat", "dog", "astronaut", "rocket", "coffee", "flower", "car", "tree", "house", "bird"]
ZERO_SHOT_LABELS = ["a person", "a cup of coffee", "a red circle", "a blue square"]
TEMPLATE = "an image of {}"
MODEL_IDS = {"gsb": "me/gsb", "qvision": "me/qvision", "classifier": "me/dtp-vit", "zero_shot": "me/dtp-clip"}


def load_app_module():
    """hub_cards/space/app.py imported as a standalone module (as the Space runs it)."""
    pytest.importorskip("gradio", reason="gradio is not installed (pip install -e '.[dev]')")
    spec = importlib.util.spec_from_file_location("space_app", os.path.join(space_module.SPACE_DIR, "app.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- publish-space ---------------------------------------------------------------------------------------------


def test_dry_run_writes_app_requirements_card_and_model_config(tmp_path, capsys):
    from huggingface_hub import SpaceCard

    out = tmp_path / "space"
    code = space_module.main(["me/leanvision-demo", "--gsb", "me/gsb", "--zero-shot", "me/dtp-clip",
                              "--candidate-label", "a red circle", "--candidate-label", "a blue square",
                              "--dry-run", "--out-dir", str(out)])
    assert code == 0 and f"wrote {out}" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == sorted(["README.md", "app.py", "requirements.txt", "space_config.json"])
    for name in ("app.py", "requirements.txt"):
        assert (out / name).read_bytes() == open(os.path.join(space_module.SPACE_DIR, name), "rb").read()
    assert json.loads((out / "space_config.json").read_text()) == {
        "models": {"gsb": "me/gsb", "zero_shot": "me/dtp-clip"},
        "candidate_labels": ["a red circle", "a blue square"],
    }
    requirements = (out / "requirements.txt").read_text().split()
    for package in ("transformers>=5.24,<6", "torch", "pillow", "matplotlib", "diffusers", "numpy"):
        assert any(line.startswith(package) for line in requirements), package
    assert (out / "README.md").read_text().endswith("models given nowhere are shown as \"not configured\".\n")
    card = SpaceCard.load(out / "README.md")
    assert card.data.sdk == "gradio" and card.data.app_file == "app.py"
    assert card.data.sdk_version == space_module.GRADIO_SDK_VERSION
    assert any(line == f"gradio=={space_module.GRADIO_SDK_VERSION}" for line in requirements)
    assert card.data.models == ["me/gsb", "me/dtp-clip"] and "leanvision" in card.data.tags
    assert card.data.title and len(card.data.short_description) <= 60
    assert "https://huggingface.co/me/dtp-clip" in card.text and "not configured" in card.text
    for text in ((out / name).read_text() for name in os.listdir(out)):
        assert str(tmp_path) not in text and "hf_" not in text


def test_space_needs_a_model_and_repo_ids(tmp_path):
    with pytest.raises(ValueError, match="at least one model"):
        write_space("me/demo", str(tmp_path / "a"), {})
    with pytest.raises(ValueError, match="Hub repo id"):
        write_space("me/demo", str(tmp_path / "b"), {"gsb": str(tmp_path)})
    with pytest.raises(ValueError, match="unknown model"):
        write_space("me/demo", str(tmp_path / "c"), {"vit": "me/vit"})
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")


def test_upload_creates_a_gradio_space_and_uploads_the_folder_in_one_commit(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    class RecordingApi:
        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))
            return types.SimpleNamespace(repo_id=repo_id)

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", sorted(os.listdir(kwargs["folder_path"])), kwargs))
            return types.SimpleNamespace(commit_url="https://hub.example/spaces/me/demo/commit/1")

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "token-from-login")
    url = publish_space("me/demo", MODEL_IDS, private=True)
    assert url == "https://hub.example/spaces/me/demo/commit/1"
    (_, repo_id, create), (_, files, upload) = calls
    assert repo_id == "me/demo"
    assert create == {"repo_type": "space", "space_sdk": "gradio", "exist_ok": True, "private": True}
    assert files == sorted(SPACE_FILES + ("README.md", "space_config.json"))
    assert upload["repo_type"] == "space" and upload["repo_id"] == "me/demo"
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(ValueError, match="token"):
        publish_space("me/demo", MODEL_IDS)
    with pytest.raises(ValueError, match="Hub repo id"):  # checked before the token
        publish_space("me/demo", {"gsb": "./gsb-export/"})
    assert len(calls) == 2


# -- the app's own pieces, in-process --------------------------------------------------------------------------


def test_app_overlay_marks_every_boundary_and_unset_models_are_not_configured():
    app = load_app_module()
    assert list(app.MODELS) == list(space_module.MODELS)
    boundaries = np.zeros(16)
    boundaries[[1, 6, 15]] = 1  # grid 4x4: patch (0, 1), (1, 2), (3, 3)
    overlay = np.asarray(app.draw_boundaries(Image.new("RGB", (8, 8), (0, 0, 0)), boundaries, size=80))
    red = (overlay[..., 0] == 255) & (overlay[..., 1] == 0) & (overlay[..., 2] == 0)
    # A bar on the right edge of each boundary patch (the last column's inside the image), nowhere else.
    assert red[5:16, 40].all() and red[25:36, 60].all() and red[65:76, 78].all()
    assert not red[45].any() and not red[:, 20].any() and not red[5:16, 60].any() and red.sum() < 3 * 3 * 25
    assert app.boundary_summary(boundaries) == "3 boundaries, 3 segments / 16 patches"
    with pytest.raises(ValueError, match="square"):
        app.draw_boundaries(Image.new("RGB", (8, 8)), np.zeros(12))

    sources = app.resolve_sources({"gsb": "flag/gsb"}, environ={"LEANVISION_CAPTIONER_GSB": "env/gsb",
                                                                "LEANVISION_CLASSIFIER": "env/vit"},
                                  config={"models": {"classifier": "file/vit", "zero_shot": "file/clip"}})
    assert sources == {"gsb": "flag/gsb", "qvision": None, "classifier": "env/vit", "zero_shot": "file/clip",
                       "assistant": None}
    captions_gsb, captions_qv, classes, zero_shot, overlay_a, overlay_b, summary = app.predict(
        {}, Image.new("RGB", (8, 8)), "a, b", "a photo of {}"
    )
    assert captions_gsb == captions_qv == classes == zero_shot == app.NOT_CONFIGURED
    assert overlay_a is None and overlay_b is None
    assert summary == "DTP-ViT: not configured\nDTP-CLIP: not configured"


def test_app_asks_dtp_llava_what_its_pipeline_answers(tmp_path):
    import gradio as gr
    from transformers import pipeline

    from test_dtp_llava import TEXTS, _saved_tiny_model
    from leanvision.processing.processing_dtp_llava import DTPLlavaProcessor, add_chat_tokens
    from leanvision.processing.processing_dtp_vit import build_image_processor
    from leanvision.training.data.tokenizers import word_level_tokenizer

    app = load_app_module()
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 48, 3), dtype=np.uint8))
    assert app.ask({}, image, "what color is the circle?") == app.NOT_CONFIGURED
    processor = DTPLlavaProcessor(build_image_processor(32), add_chat_tokens(word_level_tokenizer(TEXTS)))
    _saved_tiny_model(tmp_path / "llava", processor)
    pipes = app.load_pipelines({"assistant": str(tmp_path / "llava")})
    messages = [{"role": "user", "content": [{"type": "image", "image": image},
                                             {"type": "text", "text": "what color is the circle?"}]}]
    expected = pipeline("image-text-to-text", model=str(tmp_path / "llava"), trust_remote_code=True)(
        text=messages, max_new_tokens=app.ANSWER_TOKENS, return_full_text=False, do_sample=False
    )[0]["generated_text"]
    assert app.ask(pipes, image, "  what color is the circle? ") == expected
    for bad_image, question, message in ((None, "what?", "Upload an image"), (image, "  ", "Type a question")):
        with pytest.raises(gr.Error, match=message):
            app.ask(pipes, bad_image, question)


def test_app_refuses_unreadable_and_oversized_uploads_before_decoding(tmp_path, monkeypatch):
    import gradio as gr
    from gradio.data_classes import ImageData

    app = load_app_module()
    component = app.check_uploads(gr.Image(type="pil"))
    good = tmp_path / "good.png"
    Image.new("RGB", (12, 8), (200, 30, 30)).save(good)
    assert component.preprocess(ImageData(path=str(good), orig_name="good.png")).size == (12, 8)
    (tmp_path / "notes.png").write_bytes(b"not an image")
    with pytest.raises(gr.Error, match="'notes.png' is not an image file this demo can read"):
        component.preprocess(ImageData(path=str(tmp_path / "notes.png"), orig_name="notes.png"))
    monkeypatch.setattr(app, "MAX_IMAGE_PIXELS", 12 * 8 - 1)
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda *args: decoded.append(1))
    with pytest.raises(gr.Error, match="'good.png' has 12 x 8 pixels, more than the 95 this demo accepts"):
        component.preprocess(ImageData(path=str(good), orig_name="good.png"))
    assert decoded == []  # refused from the header
    with pytest.raises(gr.Error, match="Give at least one candidate label"):
        app.predict({"zero_shot": None}, Image.new("RGB", (8, 8)), " , ", "{}")


def test_app_scales_a_16_bit_upload_instead_of_showing_white(tmp_path):
    import gradio as gr
    from gradio.data_classes import ImageData

    app = load_app_module()
    ramp = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)  # 0 .. 65520, mean about 32760
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    demo = app.build_demo({}, {key: None for key in app.MODELS})
    (upload,) = [block for block in demo.blocks.values() if isinstance(block, gr.Image) and block.elem_id == "image"]
    assert upload.image_mode is None  # Gradio keeps the 16-bit mode; app.to_rgb scales it
    component = app.check_uploads(gr.Image(type="pil", image_mode=None))
    rgb = np.asarray(app.to_rgb(component.preprocess(ImageData(path=str(path), orig_name="deep.png"))))
    expected = np.clip(ramp / 65535.0 * 255.0 + 0.5, 0, 255).astype(np.uint8)
    assert rgb.shape == (64, 64, 3) and np.array_equal(rgb[..., 0], expected) and 120 < rgb.mean() < 136
    with pytest.raises(gr.Error, match="NaN or inf"):
        app.to_rgb(Image.fromarray(np.full((4, 4), np.nan, dtype=np.float32)))
    float_image = Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32))
    assert np.asarray(app.to_rgb(float_image)).max() == 128  # a [0, 1] float image, not black


# -- the app in a real browser ---------------------------------------------------------------------------------


def save_tiny_exports(root) -> dict:
    """One tiny random model per family, saved and exported (flat bundles): key -> export folder."""
    from captioning_helpers import save_tiny_captioner
    from test_dtp_clip import tiny_dtp_clip, tiny_processor
    from test_qvision import make_image_sensitive

    from leanvision import DTPViTConfig, DTPViTForImageClassification
    from leanvision.processing.processing_dtp_vit import build_image_processor
    from leanvision.hub_cards.export import export_model
    from leanvision.training.families import get_family
    from leanvision.training.data.shapes import make_shapes_dataset

    saved = {}
    torch.manual_seed(0)
    classifier = DTPViTForImageClassification(DTPViTConfig(
        image_size=32, patch_size=4, hidden_size=32, num_attention_heads=4, intermediate_size=64, num_pre_layers=1,
        num_shortened_layers=1, compression_rate=0.25, id2label=dict(enumerate(CLASSES)),
        label2id={name: i for i, name in enumerate(CLASSES)},
    ))
    saved["classifier"] = (classifier, build_image_processor(32))

    torch.manual_seed(0)
    clip = tiny_dtp_clip(compression_rate=0.5)
    torch.nn.init.normal_(clip.vision_model.boundary_predictor.out.weight, std=2.0)
    with torch.no_grad():
        clip.logit_scale.fill_(math.log(30.0))
    saved["zero_shot"] = (clip, tiny_processor())

    torch.manual_seed(0)
    qvision_args = types.SimpleNamespace(model_name_or_path=None, vision_backbone=None, text_backbone=None,
                                         tokenizer_name_or_path=None, image_size=32)
    qvision, qvision_processor = get_family("qvision_multimodel").build(qvision_args, dict(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        text_config=dict(hidden_size=32, num_layers=2, num_heads=4, max_position_embeddings=64,
                         attention_types=[[["global"], 2]]),
        num_query_tokens=4, qformer_hidden_size=32, qformer_num_layers=1, qformer_num_heads=4,
        cross_attention_every_n=1, initializer_range=0.2,
    ), make_shapes_dataset(100, seed=0, split="train")["caption"])
    qvision.generation_config.max_new_tokens = 12
    saved["qvision"] = (make_image_sensitive(qvision), qvision_processor)

    exports = {}
    for key, (model, processor) in saved.items():
        model.save_pretrained(root / key)
        processor.save_pretrained(root / key)
    save_tiny_captioner(root / "gsb")
    for key in ("gsb", "qvision", "classifier", "zero_shot"):
        exports[key] = export_model(str(root / key), str(root / f"{key}-export"))
    return exports


def expected_outputs(exports: dict, photo: str) -> dict:
    """What the exported models give in-process: pipelines for captions and labels, the DTP towers' boundaries."""
    from transformers import AutoImageProcessor, pipeline

    from leanvision import DTPViTForImageClassification
    from leanvision.modeling.modeling_dtp_clip import DTPCLIPModel

    image = Image.open(photo).convert("RGB")
    expected = {}
    for key in ("gsb", "qvision"):
        caption = pipeline("image-to-text", model=exports[key], trust_remote_code=True)
        expected[key] = caption(image, do_sample=False)[0]["generated_text"]
    classify = pipeline("image-classification", model=exports["classifier"], trust_remote_code=True)
    expected["classifier"] = {p["label"]: p["score"] for p in classify(image, top_k=5)}
    zero_shot = pipeline("zero-shot-image-classification", model=exports["zero_shot"], trust_remote_code=True)
    expected["zero_shot"] = {
        p["label"]: p["score"]
        for p in zero_shot(image, candidate_labels=ZERO_SHOT_LABELS, hypothesis_template=TEMPLATE)
    }
    summaries = []
    for key, name, tower in (
        ("classifier", "DTP-ViT", DTPViTForImageClassification.from_pretrained(exports["classifier"])),
        ("zero_shot", "DTP-CLIP", DTPCLIPModel.from_pretrained(exports["zero_shot"]).vision_model),
    ):
        pixel_values = AutoImageProcessor.from_pretrained(exports[key])(images=[image], return_tensors="pt")
        with torch.no_grad():
            b = tower.eval()(pixel_values=pixel_values["pixel_values"]).boundaries[0].round().long()
        segments = int((b.cumsum(0) - b).max()) + 1
        summaries.append(f"{name}: {int(b.sum())} boundaries, {segments} segments / {len(b)} patches")
    expected["summary"] = "\n".join(summaries)
    return expected


def browser_or_skip(user_data_dir):
    """Headless Debian Chromium through Selenium, or a skip that says what is missing."""
    pytest.importorskip("gradio", reason="gradio is not installed (pip install -e '.[dev]')")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.path.isfile(path):
            pytest.skip(f"{path} is missing: `make system-deps` installs Debian's chromium and chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,1800", f"--user-data-dir={user_data_dir}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(app_dir, exports: dict, port: int, log_path):
    """app.py in a fresh interpreter where leanvision is not importable; models given as flags and env vars."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", OMP_NUM_THREADS="1",
               HF_MODULES_CACHE=str(app_dir / "hf_modules"), LEANVISION_CLASSIFIER=exports["classifier"],
               LEANVISION_ZERO_SHOT=exports["zero_shot"])
    env.pop("PYTHONPATH", None)
    script = BLOCK_LEANVISION + "import runpy\nrunpy.run_path('app.py', run_name='__main__')\n"
    log = open(log_path, "w")
    process = subprocess.Popen(
        [sys.executable, "-c", script, "--gsb", exports["gsb"], "--qvision", exports["qvision"],
         "--host", "127.0.0.1", "--port", str(port)],
        cwd=app_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    log.close()
    return process


def wait_for_server(process, port: int, log_path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, open(log_path).read()[-4000:]
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the app did not listen on port {port}:\n{open(log_path).read()[-4000:]}")


def read_label(driver, elem_id: str) -> dict:
    """label -> confidence shown by a gr.Label (each bar is a <meter> whose value is the score)."""
    meters = driver.find_elements("css selector", f"#{elem_id} meter")
    return {m.get_attribute("aria-label"): float(m.get_attribute("value")) for m in meters}


def textbox(driver, elem_id: str) -> str:
    return driver.find_element("css selector", f"#{elem_id} textarea").get_property("value")


def test_app_in_headless_chromium_shows_the_exported_models_outputs(tmp_path):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait
    from skimage import data as skdata

    driver = browser_or_skip(tmp_path / "chromium-profile")
    process = None
    try:
        app_dir = tmp_path / "space"
        app_dir.mkdir()
        shutil.copy(os.path.join(space_module.SPACE_DIR, "app.py"), app_dir / "app.py")
        exports = save_tiny_exports(tmp_path / "models")
        port, log_path = free_port(), tmp_path / "app.log"
        process = start_app(app_dir, exports, port, log_path)
        photo = str(tmp_path / "astronaut.png")
        Image.fromarray(skdata.astronaut()).save(photo)
        expected = expected_outputs(exports, photo)
        wait_for_server(process, port, log_path)

        driver.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(driver, 60, ignored_exceptions=(StaleElementReferenceException,))
        upload = wait.until(lambda d: d.find_element("css selector", "#image input[type=file]"))
        upload.send_keys(photo)
        wait.until(lambda d: d.find_elements("css selector", "#image img"))
        labels = driver.find_element("css selector", "#candidate-labels textarea")
        labels.clear()
        labels.send_keys(", ".join(ZERO_SHOT_LABELS))
        template = driver.find_element("css selector", "#template textarea")
        template.clear()
        template.send_keys(TEMPLATE)
        driver.find_element("css selector", "#submit").click()
        wait.until(lambda d: textbox(d, "boundary-summary") and len(read_label(d, "labels-zero-shot")) == 4)

        assert textbox(driver, "caption-gsb") == expected["gsb"] and expected["gsb"]
        assert textbox(driver, "caption-qvision") == expected["qvision"] and expected["qvision"]
        classes = read_label(driver, "labels-classifier")
        assert classes.keys() == expected["classifier"].keys() and len(classes) == 5
        assert classes == pytest.approx(expected["classifier"], abs=1e-6)
        assert read_label(driver, "labels-zero-shot") == pytest.approx(expected["zero_shot"], abs=1e-6)
        assert textbox(driver, "boundary-summary") == expected["summary"]
        for elem_id in ("overlay-classifier", "overlay-zero-shot"):
            overlay = driver.find_element("css selector", f"#{elem_id} img")
            assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", overlay) > 0
        # Offline: the page fetched nothing from anywhere but the app itself.
        resources = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert resources and all(url.startswith(f"http://127.0.0.1:{port}/") for url in resources), resources
        screenshot = str(tmp_path / "space.png")
        assert driver.save_screenshot(screenshot)
        with Image.open(screenshot) as shot:
            assert shot.size[0] >= 800
    finally:
        driver.quit()
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
