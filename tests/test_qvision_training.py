"""QVisionMultiModel through the one training entry point: the shapes recipe with progressive freezing learns to
caption held-out images, pretrained backbones load from local folders, and the export captions in a fresh
interpreter exactly as the trained model does."""

import json
import os

import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import CLIPConfig, CLIPModel, GPT2TokenizerFast, GPTNeoConfig, GPTNeoForCausalLM

from helpers import launch_two_ranks, run_fresh
from leanvision.cli import main as cli_main
from leanvision.modeling.modeling_qvision import QVisionForConditionalGeneration
from leanvision.processing.processing_dtp_vit import build_image_processor
from leanvision.processing.processing_qvision import QVisionProcessor
from leanvision.hub_cards.export import export_model
from leanvision.training.data.shapes import shapes_splits
from leanvision.training.inference import caption_images, decoding_kwargs
from leanvision.training.train import main as train_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(REPO, "training", "recipes", "qvision_shapes.yaml")
QUIET = ["--disable_tqdm", "true", "--report_to", "none"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The qvision_shapes recipe as shipped (12 epochs, freezing phase 2 from epoch 6): metrics and output folder."""
    out = tmp_path_factory.mktemp("qvision") / "model"
    metrics = train_main([RECIPE, "--output_dir", str(out), *QUIET])
    return metrics, out


@pytest.mark.slow
def test_shapes_recipe_learns_held_out_captions(trained):
    metrics, _ = trained
    # Untrained, the model repeats frequent words (BLEU-4 ~0, CIDEr ~0); measured after training: 0.59-0.62 / 3.3-3.5.
    assert metrics["eval_bleu_4"] >= 0.5 and metrics["eval_cider"] >= 1.0, metrics


@pytest.mark.slow
def test_freezing_phases_switch_during_training_and_are_logged(trained):
    _, out = trained
    state = json.loads((out / "trainer_state.json").read_text())
    phases = [entry for entry in state["log_history"] if "freezing_phase" in entry]
    assert [entry["freezing_phase"] for entry in phases] == [1, 2]
    steps_per_epoch = state["max_steps"] // state["num_train_epochs"]
    assert phases[0]["step"] == 0 and phases[1]["step"] == 6 * steps_per_epoch
    # Phase 1 freezes half of the 4 decoder blocks; phase 2 trains them too. The CLIP tower is frozen throughout.
    model = QVisionForConditionalGeneration.from_pretrained(out)
    block = sum(p.numel() for p in model.decoder_blocks()[0].parameters())
    assert phases[1]["trainable_parameters"] - phases[0]["trainable_parameters"] == 2 * block
    vision = sum(p.numel() for p in model.vision_model.parameters())
    assert phases[1]["trainable_parameters"] == phases[1]["total_parameters"] - vision
    assert phases[0]["phase_learning_rate"] == 3e-3 and phases[1]["phase_learning_rate"] == 2e-3


FRESH = """
import json, sys
from PIL import Image
from transformers import AutoModelForImageTextToText, pipeline
export_dir, *photos = sys.argv[1:]
model = AutoModelForImageTextToText.from_pretrained(export_dir, trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
caption = pipeline("image-to-text", model=export_dir, trust_remote_code=True)
print(json.dumps([caption(Image.open(p), do_sample=False, max_new_tokens=16)[0]["generated_text"] for p in photos]))
"""


@pytest.mark.slow
def test_export_captions_in_fresh_interpreter_like_the_trained_model(trained, tmp_path):
    _, out = trained
    export_model(str(out), str(tmp_path / "export"))
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["auto_map"]["AutoModelForImageTextToText"] == "modeling_qvision.QVisionForConditionalGeneration"
    assert json.loads((tmp_path / "export" / "processor_config.json").read_text())["auto_map"] == {
        "AutoProcessor": "processing_qvision.QVisionProcessor"
    }
    test = shapes_splits(train=0, test=4, seed=0)["test"]
    photos = []
    for i, image in enumerate(test["image"]):
        photos.append(str(tmp_path / f"{i}.png"))
        image.save(photos[-1])

    from skimage import data as skimage_data

    photos.append(str(tmp_path / "astronaut.png"))
    Image.fromarray(skimage_data.astronaut()).save(photos[-1])

    captions = run_fresh(FRESH, tmp_path, str(tmp_path / "export"), *photos)

    model = QVisionForConditionalGeneration.from_pretrained(out).eval()
    processor = QVisionProcessor.from_pretrained(out)
    images = [*test["image"], Image.open(photos[-1])]
    expected = caption_images(model, processor, images, decoding_kwargs(max_new_tokens=16))
    assert captions == expected
    # The trained model names the colour of the first shape of most test images.
    assert captions[-1].split()  # a real photo gets a (shapes-vocabulary) caption too
    colours = [(c.split() + ["", ""])[1] for c in captions[:-1]]
    assert sum(c == r.split()[1] for c, r in zip(colours, test["caption"])) >= 3, captions


@pytest.mark.slow
def test_params_and_analyze_commands_on_the_trained_model(trained, tmp_path, capsys):
    _, out = trained
    assert cli_main(["params", "--model", str(out), "--recipe", RECIPE]) == 0
    table = capsys.readouterr().out
    assert "| qformer |" in table and "Trainable phase 2, from epoch 6" in table
    image = shapes_splits(train=0, test=1, seed=0)["test"]["image"][0]
    image.save(tmp_path / "shape.png")
    assert cli_main(["analyze", str(tmp_path / "shape.png"), "--model", str(out), "--out-dir", str(tmp_path / "a")]) == 0
    written = capsys.readouterr().out.split()
    assert str(tmp_path / "a" / "query_to_patch_0.png") in written
    report = json.loads((tmp_path / "a" / "token_similarity.json").read_text())
    assert report["num_images"] == 1 and report["num_query_tokens"] == 16
    assert len(report["global_query_cosine"][0]) == 16


def test_trains_from_local_pretrained_backbones(tmp_path):
    """`vision_backbone` / `text_backbone` build the model around a CLIP and a GPT-Neo saved locally (the shape of
    openai/clip-vit-base-patch32 and EleutherAI/gpt-neo-125m), with their image processor and tokenizer."""
    torch.manual_seed(0)
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "image_size": 32, "patch_size": 8}
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4}
    clip = CLIPModel(CLIPConfig(vision_config=vision, text_config=text))
    clip.save_pretrained(tmp_path / "clip")
    build_image_processor(32).save_pretrained(tmp_path / "clip")
    words = ["<|endoftext|>", "a", "red", "green", "blue", "circle", "square", "triangle", "at", "the", "top"]
    tokenizer = GPT2TokenizerFast(
        vocab_file=None, merges_file=None,
        tokenizer_object=Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<|endoftext|>")),
        bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>",
    )
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    gpt_neo = GPTNeoForCausalLM(GPTNeoConfig(
        vocab_size=len(words), hidden_size=32, num_layers=2, num_heads=4, max_position_embeddings=64,
        attention_types=[[["global"], 2]], bos_token_id=0, eos_token_id=0,
    ))
    gpt_neo.save_pretrained(tmp_path / "gpt_neo")
    tokenizer.save_pretrained(tmp_path / "gpt_neo")

    out = tmp_path / "model"
    overrides = {"num_query_tokens": 4, "qformer_hidden_size": 32, "qformer_num_layers": 1, "qformer_num_heads": 4,
                 "vision_feature_layer": -1, "cross_attention_every_n": 1}
    train_main([
        RECIPE, "--output_dir", str(out), "--vision_backbone", str(tmp_path / "clip"),
        "--text_backbone", str(tmp_path / "gpt_neo"), "--config_overrides", json.dumps(overrides),
        "--freezing", json.dumps([{"start_step": 0, "freeze": ["^language_model\\.transformer\\.wte\\."]}]),
        "--max_train_samples", "16", "--max_eval_samples", "4", "--max_steps", "2", "--generation_max_new_tokens",
        "4", *QUIET,
    ])
    model = QVisionForConditionalGeneration.from_pretrained(out)
    assert model.config.vision_config.hidden_size == 32 and model.config.num_query_tokens == 4
    for name, tensor in clip.vision_model.state_dict().items():
        assert torch.equal(model.vision_model.state_dict()[name], tensor), name  # frozen: still CLIP's weights
    # The frozen embeddings kept GPT-Neo's weights; the blocks trained.
    assert torch.equal(model.language_model.transformer.wte.weight, gpt_neo.transformer.wte.weight)
    assert not torch.equal(model.language_model.transformer.h[0].mlp.c_fc.weight, gpt_neo.transformer.h[0].mlp.c_fc.weight)
    processor = QVisionProcessor.from_pretrained(out)
    assert processor.tokenizer.get_vocab() == tokenizer.get_vocab()
    assert processor.image_processor.crop_size == {"height": 32, "width": 32}


def test_backbones_must_come_in_pairs(tmp_path):
    with pytest.raises(ValueError, match="both `vision_backbone`"):
        train_main([RECIPE, "--output_dir", str(tmp_path), "--vision_backbone", str(tmp_path), *QUIET])


@pytest.mark.slow
def test_two_rank_run_scores_every_eval_caption_once(tmp_path):
    """7 eval images over 2 ranks x batch 2: the caption scores equal one process captioning the same 7 images."""
    argv = [RECIPE, "--output_dir", str(tmp_path / "run"), "--max_train_samples", "16", "--max_eval_samples", "7",
            "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "2", "--max_steps", "2",
            "--generation_max_new_tokens", "8", *QUIET]
    launch_two_ranks(argv, tmp_path)
    two_ranks = json.loads((tmp_path / "run" / "eval_results.json").read_text())

    assert cli_main(["evaluate", str(tmp_path / "run"), "--dataset", "shapes", "--max-samples", "7", "--metrics",
                     "bleu,rouge_l,cider", "--max-new-tokens", "8", "--out", str(tmp_path / "one.json")]) == 0
    one_rank = json.loads((tmp_path / "one.json").read_text())
    assert one_rank["num_samples"] == 7
    for name in ("bleu_1", "bleu_4", "rouge_l", "cider"):
        assert two_ranks[f"eval_{name}"] == pytest.approx(one_rank["scores"][name], abs=1e-9), name

