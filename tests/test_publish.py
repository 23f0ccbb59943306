"""`leanvision publish` end to end against a local Hub-compatible server (tests/hub_server.py): every file arrives
byte-identical, the model downloaded back loads with trust_remote_code in an interpreter without leanvision and
gives the local model's logits; --dry-run sends nothing; the token is never printed or written."""

import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch
from huggingface_hub import constants
from safetensors.torch import save_file

from helpers import BLOCK_LEANVISION
from hub_server import FakeHub
from leanvision import DTPViTConfig, DTPViTForImageClassification
from leanvision.processing.processing_dtp_vit import build_image_processor
from leanvision.hub_cards.publish import publish

TOKEN = "hf_" + "leanvisionTestToken" * 2
REPO = "alice/dtp-vit-tiny"
LABELS = [str(i) for i in range(10)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny DTP-ViT saved as train.py leaves it: weights, image processor, eval metrics and trainer state."""
    torch.manual_seed(0)
    config = DTPViTConfig(
        image_size=32, patch_size=4, hidden_size=32, num_attention_heads=4, intermediate_size=64,
        num_pre_layers=1, num_shortened_layers=1, compression_rate=0.25,
        id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)},
    )
    path = tmp_path_factory.mktemp("publish") / "dtp_vit_digits"
    DTPViTForImageClassification(config).save_pretrained(path)
    build_image_processor(32).save_pretrained(path)
    (path / "eval_results.json").write_text(json.dumps({"epoch": 3.0, "eval_accuracy": 0.8125, "eval_loss": 0.61}))
    (path / "trainer_state.json").write_text(json.dumps({"num_train_epochs": 3, "global_step": 135,
                                                        "train_batch_size": 32}))
    return path


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """The fake Hub, and huggingface_hub in this process pointed at it (HF_ENDPOINT is read at import time)."""
    with FakeHub(token=TOKEN) as server:
        monkeypatch.setattr(constants, "ENDPOINT", server.url)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no_stored_token"))
        monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no_stored_tokens"))
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        yield server


def folder_files(folder) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def hub_env(server, tmp_path) -> dict:
    env = dict(os.environ, HF_ENDPOINT=server.url, HF_TOKEN=TOKEN, HF_HUB_OFFLINE="0",
               HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_PROGRESS_BARS="1")
    env.pop("PYTHONPATH", None)
    return env


def assert_no_secret(text: str, *where):
    assert TOKEN not in text and TOKEN[3:] not in text, where


def test_dry_run_writes_the_folder_and_sends_nothing(model_dir, hub, tmp_path):
    out = tmp_path / "bundle"
    assert publish(str(model_dir), REPO, dry_run=True, out_dir=str(out)) == str(out)
    assert hub.requests == []
    assert sorted(os.listdir(out)) == sorted([
        "README.md", "config.json", "configuration_dtp_vit.py", "eval_results.json", "handler.py", "model.safetensors",
        "modeling_common.py", "modeling_dtp_vit.py", "pipeline_image_classification.py", "preprocessor_config.json",
        "processing_common.py", "requirements.txt",
    ])
    card = (out / "README.md").read_text()
    assert f'model="{REPO}"' in card and "| Accuracy (`accuracy`) | 0.8125 |" in card
    assert "| epochs | 3 |" in card and "| optimiser steps | 135 |" in card
    for name, data in folder_files(out).items():
        text = data.decode("latin-1")
        assert_no_secret(text, name)
        assert str(tmp_path) not in text and str(model_dir) not in text, name


def test_dry_run_failing_mid_write_leaves_no_folder_and_an_existing_one_untouched(model_dir, tmp_path, monkeypatch):
    import leanvision.hub_cards.cards as cards

    def broken_card(*args, **kwargs):
        raise RuntimeError("injected failure while rendering the card")

    monkeypatch.setattr(cards, "render_card", broken_card)
    out = tmp_path / "bundle"
    with pytest.raises(RuntimeError, match="injected"):
        publish(str(model_dir), REPO, dry_run=True, out_dir=str(out))
    assert sorted(os.listdir(tmp_path)) == []  # neither the folder nor a temporary one is left
    monkeypatch.undo()

    out.mkdir()
    (out / "keep.txt").write_text("previous result")
    with pytest.raises(ValueError, match="exists"):
        publish(str(model_dir), REPO, dry_run=True, out_dir=str(out))
    assert os.listdir(out) == ["keep.txt"]


def test_publish_refuses_a_pull_request_on_a_branch_and_a_missing_token(model_dir, hub, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="pull request"):
        publish(str(model_dir), REPO, revision="dev", create_pr=True)
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(ValueError, match="no Hugging Face token"):
        publish(str(model_dir), REPO)
    assert hub.requests == []


def test_publish_to_a_branch_and_as_a_pull_request(model_dir, hub, tmp_path):
    url = publish(str(model_dir), REPO, private=True, revision="dev", out_dir=str(tmp_path / "a"))
    assert hub.repos[REPO]["private"]
    assert hub.files(REPO, "main") == {}  # the branch got the commit, main kept only the creation commit
    assert hub.files(REPO, "dev") == folder_files(tmp_path / "a")
    assert url == f"{hub.url}/{REPO}/commit/{hub.repos[REPO]['refs']['dev']}"

    pr_url = publish(str(model_dir), REPO, create_pr=True, out_dir=str(tmp_path / "b"))
    assert pr_url == f"{hub.url}/{REPO}/discussions/1"
    assert hub.files(REPO, "refs/pr/1") == folder_files(tmp_path / "b")
    assert hub.files(REPO, "main") == {}
    assert set(hub.auth_headers) == {f"Bearer {TOKEN}"}


FRESH_DOWNLOAD_AND_LOGITS = """
import hashlib, json, os, sys
import torch
from huggingface_hub import snapshot_download
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification
repo, inputs_path = sys.argv[1:3]
folder = snapshot_download(repo)
files = {name: hashlib.sha256(open(os.path.join(folder, name), "rb").read()).hexdigest()
         for name in sorted(os.listdir(folder))}
model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
with torch.no_grad():
    logits = model(pixel_values=load_file(inputs_path)["pixel_values"]).logits
print(json.dumps({"files": files, "logits": logits.tolist()}))
"""


def test_publish_cli_uploads_one_commit_that_downloads_and_loads_without_leanvision(model_dir, tmp_path):
    with FakeHub(token=TOKEN) as server:
        env = hub_env(server, tmp_path)
        dry = tmp_path / "dry"
        command = [sys.executable, "-m", "leanvision.hub_cards.publish", str(model_dir), REPO,
                   "--dataset", "alice/digits"]
        result = subprocess.run(command + ["--dry-run", "--out-dir", str(dry)], env=env, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.strip() == f"wrote {dry}" and server.requests == []

        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        assert_no_secret(result.stdout + result.stderr, "publish output")
        head = server.repos[REPO]["refs"]["main"]
        assert result.stdout.strip().splitlines()[-1] == f"published: {server.url}/{REPO}/commit/{head}"
        assert len(server.commits(REPO)) == 2  # the creation commit and one upload
        expected = folder_files(dry)
        assert server.files(REPO) == expected
        for name, data in expected.items():
            assert_no_secret(data.decode("latin-1"), name)

        pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        inputs = tmp_path / "inputs.safetensors"
        save_file({"pixel_values": pixel_values}, str(inputs))
        fresh = subprocess.run(
            [sys.executable, "-c", BLOCK_LEANVISION + FRESH_DOWNLOAD_AND_LOGITS, REPO, str(inputs)], cwd=tmp_path,
            env=dict(env, HF_MODULES_CACHE=str(tmp_path / "hf_modules")), capture_output=True, text=True, timeout=300,
        )
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    loaded = json.loads(fresh.stdout.strip().splitlines()[-1])
    assert loaded["files"] == {name: hashlib.sha256(data).hexdigest() for name, data in expected.items()}
    model = DTPViTForImageClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        assert torch.equal(torch.tensor(loaded["logits"]), model(pixel_values=pixel_values).logits)
