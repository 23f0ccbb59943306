"""The README's "In your own script, with transformers.Trainer" example, run as written except for its length (a few
steps instead of 10 epochs) and its output folder: it trains, and what it saves is the model it trained."""

import os
import re

import pytest
import torch
import transformers

from leanvision.modeling.modeling_dtp_vit import DTPViTForImageClassification
from leanvision.processing.processing_dtp_vit import build_image_processor
from leanvision.training.data.digits import digits_dataset

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def readme_example() -> str:
    with open(README) as f:
        text = f.read()
    match = re.search(r"<!-- trainer-example -->\n```python\n(.*?)```", text, flags=re.S)
    assert match, "the README lost its trainer example block"
    return match.group(1)


@pytest.mark.slow  # trains 6 steps and evaluates the 360 test digits: about 20 s
def test_readme_trainer_example_trains_and_saves_the_trained_model(tmp_path, monkeypatch, capsys):
    code = readme_example()
    assert code.count("num_train_epochs=10") == 1
    monkeypatch.chdir(tmp_path)  # "outputs/trainer_example" lands under tmp_path
    before = {}
    train = transformers.Trainer.train

    def train_and_remember_the_start(self, *args, **kwargs):
        before.update({name: value.clone() for name, value in self.model.state_dict().items()})
        return train(self, *args, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "train", train_and_remember_the_start)
    namespace = {}
    exec(compile(code.replace("num_train_epochs=10", "max_steps=6"), "README trainer example", "exec"), namespace)
    trainer = namespace["trainer"]

    train_loss = next(entry["train_loss"] for entry in trainer.state.log_history if "train_loss" in entry)
    assert trainer.state.global_step == 6 and 0 < train_loss < 10
    assert "eval_loss" in capsys.readouterr().out

    out = tmp_path / "outputs" / "trainer_example"
    saved = DTPViTForImageClassification.from_pretrained(out).eval()
    trained = trainer.model.eval()
    changed = [name for name, value in trained.state_dict().items() if not torch.equal(value, before[name])]
    assert any("classifier" in name for name in changed) and any("boundary_predictor" in name for name in changed)
    images = [image.convert("RGB") for image in digits_dataset()["test"][:4]["image"]]
    pixel_values = build_image_processor(32)(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        assert torch.equal(saved(pixel_values=pixel_values).logits, trained(pixel_values=pixel_values).logits)
    assert saved.config.id2label[3] == "3" and (out / "preprocessor_config.json").exists()
