"""Export: a flat bundle that loads with trust_remote_code in an interpreter where leanvision is not importable."""

import json
import os

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from helpers import run_fresh
from leanvision import DTPViTConfig, DTPViTForImageClassification
from leanvision.processing.processing_dtp_vit import build_image_processor
from leanvision.hub_cards import export as export_module
from leanvision.training.data.digits import digits_dataset
from leanvision.hub_cards.export import export_model, flatten_source

LABELS = [str(i) for i in range(10)]


@pytest.fixture
def model_dir(tmp_path):
    torch.manual_seed(0)
    config = DTPViTConfig(
        image_size=32, patch_size=4, hidden_size=32, num_attention_heads=4, intermediate_size=64,
        num_pre_layers=1, num_shortened_layers=1, compression_rate=0.25,
        id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)},
    )
    model = DTPViTForImageClassification(config)
    path = tmp_path / "model"
    model.save_pretrained(path)
    build_image_processor(32).save_pretrained(path)
    return path


def test_flatten_source_rewrites_sibling_imports_and_rejects_others():
    text = "from ..configuration.configuration_x import XConfig\nimport torch\n"
    assert flatten_source(text) == "from .configuration_x import XConfig\nimport torch\n"
    with pytest.raises(ValueError, match="flat remote-code bundle"):
        flatten_source("from ..training.data import x\n")
    with pytest.raises(ValueError, match="flat remote-code bundle"):
        flatten_source("from leanvision.modeling import y\n")


def test_bundle_sources_follow_relative_imports_from_the_entry_modules(tmp_path, monkeypatch):
    from leanvision.training.families import Family

    files = {
        "configuration/configuration_toy.py": "import torch\n",
        "modeling/modeling_toy.py": "from ..configuration.configuration_toy import C\nfrom .shared_layers import L\n",
        "modeling/shared_layers.py": "from . import shared_math\n",
        "modeling/shared_math.py": "import math\n",
        "modeling/unused.py": "import os\n",
        "processing/pipeline_toy.py": "from transformers import Pipeline\n",
    }
    for relative, text in files.items():
        (tmp_path / relative).parent.mkdir(exist_ok=True)
        (tmp_path / relative).write_text(text)
    monkeypatch.setattr(export_module, "PACKAGE_ROOT", str(tmp_path))
    family = Family(
        name="toy", config_class=object, model_class=object, pipeline_tag="image-to-text",
        auto_map={"AutoConfig": "configuration_toy.C", "AutoModel": "modeling_toy.M"},
        custom_pipelines={"image-to-text": {"impl": "pipeline_toy.P", "pt": ["AutoModel"], "type": "multimodal"}},
    )
    assert export_module.bundle_sources(family) == [
        "configuration/configuration_toy.py", "modeling/modeling_toy.py", "modeling/shared_layers.py",
        "modeling/shared_math.py", "processing/pipeline_toy.py",
    ]


def test_export_writes_expected_files_without_local_paths(model_dir, tmp_path):
    out = tmp_path / "export"
    export_model(str(model_dir), str(out))
    assert sorted(os.listdir(out)) == sorted(
        ["README.md", "config.json", "configuration_dtp_vit.py", "handler.py", "model.safetensors",
         "modeling_common.py", "modeling_dtp_vit.py", "pipeline_image_classification.py", "preprocessor_config.json",
         "processing_common.py", "requirements.txt"]
    )
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_dtp_vit.DTPViTConfig",
        "AutoModel": "modeling_dtp_vit.DTPViTModel",
        "AutoModelForImageClassification": "modeling_dtp_vit.DTPViTForImageClassification",
    }
    for name in ("config.json", "README.md", "preprocessor_config.json"):
        text = (out / name).read_text()
        assert str(tmp_path) not in text and "/tmp/" not in text, name
    assert "from .configuration_dtp_vit import DTPViTConfig" in (out / "modeling_dtp_vit.py").read_text()
    assert not any(name.startswith(".staging-") for name in os.listdir(tmp_path))


def test_export_refuses_existing_folder_and_keeps_it_on_failure(model_dir, tmp_path, monkeypatch):
    out = tmp_path / "export"
    export_model(str(model_dir), str(out))
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match="exists"):
        export_model(str(model_dir), str(out))

    def broken_card(*args, **kwargs):
        raise RuntimeError("injected failure while writing the card")

    monkeypatch.setattr(export_module, "render_card", broken_card)
    with pytest.raises(RuntimeError, match="injected"):
        export_model(str(model_dir), str(out), overwrite=True)
    assert (out / "model.safetensors").read_bytes() == before
    assert sorted(p for p in os.listdir(tmp_path) if p.startswith(".")) == []


FRESH_LOGITS = """
import json, sys
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification, pipeline
export_dir, inputs_path, photo, digit = sys.argv[1:5]
model = AutoModelForImageClassification.from_pretrained(export_dir, trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
with torch.no_grad():
    logits = model(pixel_values=load_file(inputs_path)["pixel_values"]).logits
classify = pipeline("image-classification", model=export_dir, trust_remote_code=True)
print(json.dumps({"logits": logits.tolist(), "photo": classify(photo), "digit": classify(digit)}))
"""


def test_export_loads_in_fresh_interpreter_with_equal_logits_and_pipeline(model_dir, tmp_path):
    from skimage import data as skdata

    out = tmp_path / "export"
    export_model(str(model_dir), str(out))
    model = DTPViTForImageClassification.from_pretrained(model_dir).eval()
    photo = tmp_path / "astronaut.png"
    Image.fromarray(skdata.astronaut()).save(photo)
    digit = tmp_path / "digit.png"
    digits_dataset()["test"][0]["image"].save(digit)
    pixel_values = build_image_processor(32)(images=[Image.open(photo), Image.open(digit)], return_tensors="pt")[
        "pixel_values"
    ]
    save_file({"pixel_values": pixel_values.contiguous()}, str(tmp_path / "inputs.safetensors"))
    with torch.no_grad():
        expected = model(pixel_values=pixel_values).logits

    result = run_fresh(FRESH_LOGITS, tmp_path, str(out), str(tmp_path / "inputs.safetensors"), str(photo), str(digit))
    assert torch.equal(torch.tensor(result["logits"]), expected)
    for predictions in (result["photo"], result["digit"]):
        assert predictions and {p["label"] for p in predictions} <= set(LABELS)
        scores = [p["score"] for p in predictions]
        assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)
    assert result["photo"][0]["label"] == LABELS[int(expected[0].argmax())]
    assert result["digit"][0]["label"] == LABELS[int(expected[1].argmax())]
