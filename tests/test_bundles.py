"""Exported bundles as a Hub user meets them, in an interpreter where leanvision cannot be imported: every family's
pipeline runs on the export; a bundle loaded with trust_remote_code and saved again (`save_pretrained` after
fine-tuning) still loads and gives the same answers; captioners decode deterministically by default."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoConfig

from helpers import run_fresh
from leanvision.hub_cards.export import export_model
from leanvision.modeling.modeling_qvision import QVisionForConditionalGeneration
from test_attention import AUTO_CLASS, ROOT
from test_conformance import PIPELINE_TASK, pipeline_kwargs
from test_dtp_llava import TEXTS, _saved_tiny_model

# Loads the bundle's pipeline, answers for one image, saves model + processor again (as after fine-tuning), reloads
# the saved folder's pipeline and answers again; the last line is the JSON of both answers.
RESAVE = """
import json, sys
from PIL import Image
from transformers import pipeline
task, export, resaved, image, kwargs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
pipe = pipeline(task, model=export, trust_remote_code=True)
first = pipe(Image.open(image), **kwargs)
pipe.model.save_pretrained(resaved)
for part in (pipe.processor, pipe.tokenizer, pipe.image_processor):
    if part is not None:
        part.save_pretrained(resaved)
again = pipeline(task, model=resaved, trust_remote_code=True)(Image.open(image), **kwargs)
print(json.dumps({"first": first, "again": again, "class": type(pipe.model).__module__}))
"""

REPEAT = """
import json, sys
from PIL import Image
from transformers import pipeline
pipe = pipeline("image-to-text", model=sys.argv[1], trust_remote_code=True)
print(json.dumps([pipe(Image.open(sys.argv[2]))[0]["generated_text"] for _ in range(3)]))
"""


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("image") / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)
    return str(path)


@pytest.fixture(scope="module")
def dtp_llava_folder(tmp_path_factory):
    """A tiny saved DTP-LLaVA (the saved_v0_1 fixtures predate the family)."""
    from leanvision.processing.processing_dtp_llava import DTPLlavaProcessor, add_chat_tokens
    from leanvision.processing.processing_dtp_vit import build_image_processor
    from leanvision.training.data.tokenizers import word_level_tokenizer

    folder = tmp_path_factory.mktemp("dtp_llava")
    processor = DTPLlavaProcessor(build_image_processor(32), add_chat_tokens(word_level_tokenizer(TEXTS)))
    _saved_tiny_model(folder, processor)
    return str(folder)


@pytest.mark.parametrize("family", sorted([*AUTO_CLASS, "dtp_llava"]))
def test_bundle_pipeline_runs_and_a_resaved_bundle_still_loads(family, tmp_path, image_path, request):
    if family == "dtp_llava":
        source, task = request.getfixturevalue("dtp_llava_folder"), "image-text-to-text"
        kwargs = {"text": "<|user|><image>what color is the circle?<|end|><|assistant|>", "max_new_tokens": 4,
                  "return_full_text": False}
    else:
        source, task, kwargs = os.path.join(ROOT, family), PIPELINE_TASK[family], pipeline_kwargs(family)
    export_model(source, str(tmp_path / "export"))
    result = run_fresh(RESAVE, tmp_path, task, str(tmp_path / "export"), str(tmp_path / "resaved"), image_path,
                       json.dumps(kwargs))
    assert result["class"].startswith("transformers_modules.")  # the bundle's own code, not an installed package
    assert result["again"] == result["first"]
    if family == "dtp_llava":
        assert isinstance(result["first"][0]["generated_text"], str)
        assert (tmp_path / "resaved" / "processing_dtp_llava.py").is_file()
    if family in ("gated_sparse_blip", "qvision_multimodel"):
        assert (tmp_path / "resaved" / "pipeline_image_to_text.py").is_file()
    if family == "dtp_clip":
        assert (tmp_path / "resaved" / "pipeline_zero_shot.py").is_file()


def test_a_new_qvision_export_captions_deterministically(tmp_path, image_path):
    source = os.path.join(ROOT, "qvision_multimodel")
    torch.manual_seed(0)
    model = QVisionForConditionalGeneration(AutoConfig.from_pretrained(source))
    assert model.generation_config.do_sample is False
    model.save_pretrained(tmp_path / "model")
    for name in ("processor_config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(source, name), tmp_path / "model" / name)
    export_model(str(tmp_path / "model"), str(tmp_path / "export"))
    generation = json.loads((tmp_path / "export" / "generation_config.json").read_text())
    assert not generation.get("do_sample", False)
    captions = run_fresh(REPEAT, tmp_path, str(tmp_path / "export"), image_path)
    assert len(set(captions)) == 1, captions


@pytest.mark.parametrize("family", ["dtp_vit", "gated_sparse_blip"])
def test_trust_remote_code_runs_the_bundle_code_even_with_leanvision_imported(family, tmp_path):
    import leanvision  # noqa: F401  (registers the installed classes with the Auto classes)

    export = tmp_path / "export"
    export_model(os.path.join(ROOT, family), str(export))
    modeling = export / f"modeling_{family}.py"
    modeling.write_text(modeling.read_text() + "\nBUNDLE_MARKER = 'this bundle'\n")
    bundled = AUTO_CLASS[family].from_pretrained(export, trust_remote_code=True)
    assert type(bundled).__module__.startswith("transformers_modules.")
    assert __import__("sys").modules[type(bundled).__module__].BUNDLE_MARKER == "this bundle"
    installed = AUTO_CLASS[family].from_pretrained(export)
    assert type(installed).__module__.startswith("leanvision.")
    for name, tensor in installed.state_dict().items():
        assert torch.equal(bundled.state_dict()[name], tensor), name
