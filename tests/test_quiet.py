"""Quiet by default (issue 16, item 8): `evaluate` prints SPICE lines only when SPICE is asked for and nothing from the
Java tokenizer; a LoRA run raises no FutureWarning and no peft "Could not find a config file" warning."""

import os
import warnings

import torch

from captioning_helpers import save_tiny_captioner
from leanvision.cli import build_parser
from leanvision.cli import main as cli_main
from leanvision.configuration.configuration_dtp_vit import DTPViTConfig
from leanvision.modeling.modeling_dtp_vit import DTPViTForImageClassification
from leanvision.processing.processing_dtp_vit import build_image_processor
from leanvision.training.train import main as train_main

RECIPES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "training", "recipes")


def test_evaluate_prints_spice_only_when_requested_and_no_tokenizer_line(tmp_path, capfd):
    save_tiny_captioner(tmp_path / "gsb")
    assert "spice" not in build_parser().parse_args(["evaluate", "m", "--dataset", "shapes"]).metrics

    assert cli_main(["evaluate", str(tmp_path / "gsb"), "--dataset", "shapes", "--max-samples", "3", "--metrics",
                     "bleu,cider", "--max-new-tokens", "4"]) == 0
    out, err = capfd.readouterr()
    assert "bleu_4: " in out and "cider: " in out
    assert "spice" not in out + err and "None" not in out
    assert "PTBTokenizer" not in err  # the Java tokenizer's line to fd 2
    assert "Loading weights" not in err  # transformers' load bar, noise for a local folder

    assert cli_main(["evaluate", str(tmp_path / "gsb"), "--dataset", "shapes", "--max-samples", "3", "--metrics",
                     "bleu,spice", "--max-new-tokens", "4"]) == 0
    out, _ = capfd.readouterr()
    if "spice: " not in out:  # no CoreNLP jars here: one line that says so, never "spice: None"
        assert [line for line in out.splitlines() if "spice" in line] == [
            line for line in out.splitlines() if line.startswith("spice skipped: ")
        ] != []


def test_lora_run_raises_no_future_warning_and_no_peft_config_warning(tmp_path):
    torch.manual_seed(0)
    labels = [str(i) for i in range(10)]
    base = DTPViTForImageClassification(DTPViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_attention_heads=4, intermediate_size=64, num_pre_layers=1,
        num_shortened_layers=1, compression_rate=0.5, id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    ))
    base.save_pretrained(tmp_path / "base")
    build_image_processor(32).save_pretrained(tmp_path / "base")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_main([os.path.join(RECIPES, "dtp_vit_digits.yaml"), "--model_name_or_path", str(tmp_path / "base"),
                    "--config_overrides", "{}", "--lora", "--output_dir", str(tmp_path / "adapter"),
                    "--max_steps", "2", "--save_steps", "1",
                    "--save_strategy", "steps", "--eval_strategy", "no", "--max_train_samples", "16",
                    "--max_eval_samples", "8", "--disable_tqdm", "true"])
    messages = [f"{w.category.__name__}: {w.message}" for w in caught]
    assert not [m for m in messages if m.startswith("FutureWarning")], messages
    assert not [m for m in messages if "Could not find a config file" in m], messages
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    assert (tmp_path / "adapter" / "checkpoint-2" / "adapter_model.safetensors").exists()
