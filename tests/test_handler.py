"""The Inference Endpoints handler every bundle ships (hub_cards/handler.py): in an interpreter where leanvision
cannot be imported, each family's handler answers a base64 image as its task pipeline answers the same image, with
the widget's parameters from the card; a published folder holds handler.py and a requirements.txt naming exactly the
third-party packages the bundle's code imports."""

import ast
import importlib.metadata
import json
import os
import re
import sys

import numpy as np
import pytest
import transformers
from huggingface_hub.repocard import metadata_load
from packaging.requirements import Requirement
from packaging.version import Version
from PIL import Image

from helpers import run_fresh
from leanvision.hub_cards.export import export_model
from leanvision.hub_cards.publish import publish
from test_attention import ROOT
from test_conformance import PIPELINE_TASK

FAMILIES = sorted(PIPELINE_TASK)
HANDLER_SOURCE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "hub_cards", "handler.py")

# For each (family, export folder): the handler's answers (base64, data URI, raw bytes, a PIL image) and the task
# pipeline's answer for the same PNG, with the parameters the card's widget gives (zero-shot labels as the widget's
# comma-separated string for the handler, as a list for the pipeline). The last line is the JSON of all of them.
HANDLER_VS_PIPELINE = """
import base64, importlib.util, json, sys
from huggingface_hub.repocard import metadata_load
from PIL import Image
from transformers import pipeline
image_path, cases = sys.argv[1], json.loads(sys.argv[2])
raw = open(image_path, "rb").read()
b64 = base64.b64encode(raw).decode()
results = {}
for family, (task, folder) in cases.items():
    spec = importlib.util.spec_from_file_location("handler", folder + "/handler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    handler = module.EndpointHandler(folder)
    assert type(handler.pipeline.model).__module__.startswith("transformers_modules"), type(handler.pipeline.model)
    (widget,) = metadata_load(folder + "/README.md")["widget"]
    if task == "zero-shot-image-classification":
        parameters = {"candidate_labels": widget["candidate_labels"], "hypothesis_template": "a photo of {}"}
        kwargs = {"candidate_labels": [l.strip() for l in widget["candidate_labels"].split(",")],
                  "hypothesis_template": "a photo of {}"}
    elif task == "image-classification":
        parameters = kwargs = {"top_k": 3}
    else:
        parameters = kwargs = {"max_new_tokens": 5, "do_sample": False}
    results[family] = {
        "task": handler.task,
        "base64": handler({"inputs": b64, "parameters": parameters}),
        "data_uri": handler({"inputs": "data:image/png;base64," + b64, "parameters": parameters}),
        "bytes": handler({"inputs": raw, "parameters": parameters}),
        "pil": handler({"inputs": Image.open(image_path), "parameters": parameters}),
        "pipeline": pipeline(task, model=folder, trust_remote_code=True)(Image.open(image_path), **kwargs),
    }
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("image") / "image.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (36, 52, 3), dtype=np.uint8)).save(path)
    return str(path)


def assert_same_answer(task, got, expected, where):
    if task == "image-to-text":
        assert got == expected, where
        return
    assert [item["label"] for item in got] == [item["label"] for item in expected], where
    assert np.allclose([item["score"] for item in got], [item["score"] for item in expected], rtol=0, atol=1e-5), where


def test_each_familys_handler_answers_as_its_pipeline_without_leanvision(tmp_path, image_path):
    cases = {}
    for family in FAMILIES:
        folder = tmp_path / family
        export_model(os.path.join(ROOT, family), str(folder))
        assert (folder / "handler.py").read_text() == open(HANDLER_SOURCE).read()
        cases[family] = (PIPELINE_TASK[family], str(folder))

    results = run_fresh(HANDLER_VS_PIPELINE, tmp_path, image_path, json.dumps(cases))

    for family, (task, _) in cases.items():
        result = results[family]
        assert result["task"] == task
        expected = result["pipeline"]
        assert expected, family
        if task == "image-to-text":
            assert set(expected[0]) == {"generated_text"} and len(expected) == 1, expected
        else:
            assert all(set(item) == {"label", "score"} for item in expected), expected
        for form in ("base64", "data_uri", "bytes", "pil"):
            assert_same_answer(task, result[form], expected, (family, form))
    assert len(results["dtp_vit"]["base64"]) == 3
    assert {item["label"] for item in results["dtp_clip"]["base64"]} == {"two cats", "a dog", "a car"}


def third_party_packages(folder) -> set[str]:
    """Normalised distribution names of the top-level modules the folder's .py files import, leaving out the standard
    library, the folder's own modules, torch and transformers."""
    own = {name[:-3] for name in os.listdir(folder) if name.endswith(".py")}
    modules = set()
    for name in own:
        for node in ast.walk(ast.parse((folder / f"{name}.py").read_text())):
            if isinstance(node, ast.Import):
                modules.update(alias.name.partition(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules.add(node.module.partition(".")[0])
    modules -= own | set(sys.stdlib_module_names) | {"torch", "transformers"}
    distributions = importlib.metadata.packages_distributions()
    return {normalise(distributions[module][0]) for module in modules}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.mark.parametrize("family", FAMILIES)
def test_a_published_folder_has_the_handler_and_exactly_its_requirements(family, tmp_path):
    out = tmp_path / "bundle"
    publish(os.path.join(ROOT, family), f"alice/{family.replace('_', '-')}", dry_run=True, out_dir=str(out))

    assert (out / "handler.py").read_text() == open(HANDLER_SOURCE).read()
    handler_tree = ast.parse((out / "handler.py").read_text())
    assert not any(isinstance(node, ast.ImportFrom) and node.level for node in ast.walk(handler_tree))
    lines = (out / "requirements.txt").read_text().splitlines()
    pinned, *rest = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    # The transformers 5 range the package itself declares, so an endpoint container with transformers 4 upgrades.
    assert Requirement(pinned).name == "transformers" and Version("4.57.0") not in Requirement(pinned).specifier
    assert Version(transformers.__version__) in Requirement(pinned).specifier
    requirements = [normalise(name) for name in rest]
    assert len(requirements) == len(set(requirements))
    assert set(requirements) == third_party_packages(out)
    assert "pillow" in requirements and "torch" not in requirements and "transformers" not in requirements
    assert ("diffusers" in requirements) == (family == "gated_sparse_blip")
    card = metadata_load(out / "README.md")
    assert card["pipeline_tag"] == PIPELINE_TASK[family]
    assert "## Deploy" in (out / "README.md").read_text()
