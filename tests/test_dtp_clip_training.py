"""DTP-CLIP through the one training entry point: contrastive training on shapes lifts zero-shot accuracy well above
chance at the prior compression, the export runs the zero-shot pipeline in a fresh interpreter, webdataset shards
and a local CLIP checkpoint train, and `leanvision evaluate` scores zero-shot accuracy with a prompt template."""

import io
import json
import math
import os
import tarfile
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image as ImageFeature
from PIL import Image
from transformers import CLIPConfig, CLIPModel

from helpers import launch_two_ranks, run_fresh
from leanvision.cli import main as cli_main
from leanvision.modeling.modeling_dtp_clip import DTPCLIPModel
from leanvision.processing.processing_dtp_clip import DTPCLIPProcessor
from leanvision.processing.processing_dtp_vit import build_image_processor
from leanvision.training.builders import build_dtp_clip
from leanvision.training.data import shapes
from leanvision.training.data.image_text import load_image_text_splits
from leanvision.hub_cards.export import export_model
from leanvision.training.data.tokenizers import char_tokenizer
from leanvision.training.train import main as train_main
from leanvision.training.evaluation.zero_shot import prompts_for, zero_shot_accuracy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(REPO, "training", "recipes", "dtp_clip_shapes.yaml")
QUIET = ["--disable_tqdm", "true", "--report_to", "none"]
TINY = {
    "vision_config": {"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
                      "num_attention_heads": 4, "num_pre_layers": 1, "num_shortened_layers": 1,
                      "compression_rate": 0.5},
    "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4},
    "projection_dim": 16,
}
FAST = ["--config_overrides", json.dumps(TINY), "--max_steps", "2", "--per_device_train_batch_size", "4",
        "--per_device_eval_batch_size", "4", *QUIET]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("dtp_clip") / "model"
    metrics = train_main([RECIPE, "--output_dir", str(out), *QUIET])
    return metrics, out


@pytest.mark.slow
def test_contrastive_training_lifts_zero_shot_accuracy_at_the_prior_rate(trained):
    metrics, out = trained
    chance = 1 / len(shapes.class_names())
    # Measured: top-1 0.32 (5.7x chance), top-5 0.88; an untrained model scores about chance.
    assert metrics["eval_zero_shot_top1"] >= 3 * chance, metrics
    assert metrics["eval_zero_shot_top5"] >= metrics["eval_zero_shot_top1"]
    assert abs(metrics["eval_boundary_ratio"] - 0.25) <= 0.03, metrics
    log = json.loads((out / "trainer_state.json").read_text())["log_history"]
    train_ratios = [entry["boundary_ratio"] for entry in log if "boundary_ratio" in entry and "loss" in entry]
    assert all(abs(r - 0.25) <= 0.03 for r in train_ratios), train_ratios


FRESH = """
import json, sys
from transformers import pipeline
export_dir, labels, *images = sys.argv[1:]
classify = pipeline("zero-shot-image-classification", model=export_dir, trust_remote_code=True)
labels = json.loads(labels)
print(json.dumps([classify(path, candidate_labels=labels, hypothesis_template="a photo of a {}") for path in images]))
"""


@pytest.mark.slow
def test_export_runs_the_zero_shot_pipeline_in_a_fresh_interpreter(trained, tmp_path):
    _, out = trained
    export_model(str(out), str(tmp_path / "export"))
    test = shapes.shapes_splits(train=0, test=30, seed=0, max_objects=1)["test"]
    paths = []
    for i, image in enumerate(test["image"]):
        paths.append(str(tmp_path / f"{i}.png"))
        image.save(paths[-1])
    labels = shapes.class_names()

    results = run_fresh(FRESH, tmp_path, str(tmp_path / "export"), json.dumps(labels), *paths)

    model = DTPCLIPModel.from_pretrained(out).eval()
    processor = DTPCLIPProcessor.from_pretrained(out)
    inputs = processor(images=[Image.open(p) for p in paths], text=[f"a photo of a {label}" for label in labels])
    with torch.no_grad():
        probs = model(**inputs).logits_per_image.softmax(-1)
    for result, row in zip(results, probs):
        assert len(result) == len(labels)
        for entry in result:
            assert entry["score"] == pytest.approx(float(row[labels.index(entry["label"])]), abs=1e-5)
    hits = sum(result[0]["label"] == label for result, label in zip(results, test["label"]))
    assert hits >= 3 * len(paths) / len(labels), [(r[0]["label"], label) for r, label in zip(results, test["label"])]


def _webdataset_shards(folder, rows_per_shard=6, num_shards=2):
    data = shapes.make_shapes_dataset(rows_per_shard * num_shards, seed=3, max_objects=1)
    for shard in range(num_shards):
        with tarfile.open(folder / f"shard-{shard:05d}.tar", "w") as tar:
            for i in range(shard * rows_per_shard, (shard + 1) * rows_per_shard):
                for suffix, payload in (("jpg", _jpeg(data[i]["image"])), ("txt", data[i]["caption"].encode())):
                    info = tarfile.TarInfo(f"{i:06d}.{suffix}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return data


def _jpeg(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def test_trains_on_webdataset_shards(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    _webdataset_shards(shards)
    out = tmp_path / "model"
    metrics = train_main([RECIPE, "--output_dir", str(out), "--dataset_name", str(shards), "--eval_fraction", "0.25",
                          *FAST])
    # 12 pairs from two shards: 9 train, 3 eval; no class labels, so no zero-shot score.
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and math.isfinite(metrics["eval_loss"])
    assert "eval_zero_shot_top1" not in metrics
    assert DTPCLIPModel.from_pretrained(out).config.vision_config.compression_rate == 0.5


def test_trains_from_a_local_clip_checkpoint(tmp_path):
    torch.manual_seed(0)
    tokenizer = char_tokenizer()
    clip = CLIPModel(CLIPConfig(
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 3, "num_attention_heads": 4},
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 1, "num_attention_heads": 4, "max_position_embeddings": 64,
                     "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                     "pad_token_id": tokenizer.pad_token_id},
        projection_dim=16,
    ))
    clip.save_pretrained(tmp_path / "clip")
    tokenizer.save_pretrained(tmp_path / "clip")
    build_image_processor(32).save_pretrained(tmp_path / "clip")
    vision = {"vision_config": {"num_pre_layers": 1, "compression_rate": 0.5}}
    out = tmp_path / "model"
    train_main([RECIPE, "--output_dir", str(out), "--init_from_clip", str(tmp_path / "clip"),
                "--config_overrides", json.dumps(vision), "--max_train_samples", "8", "--max_eval_samples", "4",
                "--max_steps", "1", "--learning_rate", "0", "--warmup_steps", "0", *QUIET])
    model = DTPCLIPModel.from_pretrained(out)
    assert model.config.vision_config.num_shortened_layers == 2 and model.config.vision_config.compression_rate == 0.5
    # lr 0: the towers still hold CLIP's weights.
    for name, tensor in clip.text_model.state_dict().items():
        assert torch.equal(model.text_model.state_dict()[name], tensor), name
    assert torch.equal(model.visual_projection.weight, clip.visual_projection.weight)
    assert DTPCLIPProcessor.from_pretrained(out).tokenizer.get_vocab() == tokenizer.get_vocab()
    with pytest.raises(ValueError, match="only `vision_config` overrides"):
        train_main([RECIPE, "--output_dir", str(tmp_path / "x"), "--init_from_clip", str(tmp_path / "clip"),
                    "--config_overrides", json.dumps({"projection_dim": 8}), *QUIET])


def test_evaluate_command_scores_zero_shot_with_a_template(tmp_path):
    """On a local classification dataset: the JSON holds the filled prompts and the accuracy computed directly."""
    torch.manual_seed(0)
    out = tmp_path / "model"
    train_main([RECIPE, "--output_dir", str(out), "--max_train_samples", "8", "--max_eval_samples", "4", *FAST])
    rng = np.random.default_rng(0)
    names = ["cat", "dog", "bird"]
    data = Dataset.from_dict(
        {"picture": [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(9)],
         "kind": [i % 3 for i in range(9)]},
        features=Features({"picture": ImageFeature(), "kind": ClassLabel(names=names)}),
    )
    data.save_to_disk(tmp_path / "pets")

    assert cli_main([
        "evaluate", str(out), "--dataset", str(tmp_path / "pets"), "--template", "a drawing of a {}.",
        "--label-column", "kind", "--image-column", "picture", "--out", str(tmp_path / "zs.json"),
    ]) == 0
    report = json.loads((tmp_path / "zs.json").read_text())
    assert report["prompts"] == ["a drawing of a cat.", "a drawing of a dog.", "a drawing of a bird."]
    assert report["num_samples"] == 9 and report["chance_top1"] == pytest.approx(1 / 3)

    model = DTPCLIPModel.from_pretrained(out).eval()
    processor = DTPCLIPProcessor.from_pretrained(out)
    inputs = processor(images=list(data["picture"]), text=report["prompts"])
    with torch.no_grad():
        predicted = model(**inputs).logits_per_image.argmax(-1)
    assert report["scores"]["zero_shot_top1"] == pytest.approx(float((predicted == torch.tensor(data["kind"])).float().mean()))
    assert report["scores"]["zero_shot_top5"] == 1.0  # 3 classes: always within the top 5
    assert report["scores"] == zero_shot_accuracy(model, processor, data, report["prompts"], "picture", "kind")

    # The built-in shapes set takes the template too (it used to be ignored there: every template scored the same).
    assert cli_main(["evaluate", str(out), "--dataset", "shapes", "--max-samples", "6", "--template", "{}",
                     "--out", str(tmp_path / "shapes.json")]) == 0
    report = json.loads((tmp_path / "shapes.json").read_text())
    assert report["prompts"] == shapes.class_names() and report["num_samples"] == 6
    assert cli_main(["evaluate", str(out), "--dataset", "shapes", "--max-samples", "6", "--out",
                     str(tmp_path / "default.json")]) == 0
    assert json.loads((tmp_path / "default.json").read_text())["prompts"] == [
        shapes.prompt(name) for name in shapes.class_names()]

    with pytest.raises(ValueError, match="must contain"):
        prompts_for(names, "no slot")
    assert cli_main(["evaluate", str(out), "--dataset", str(tmp_path / "pets"), "--label-column", "picture",
                     "--image-column", "picture"]) == 2


@pytest.mark.slow
def test_two_rank_run_gathers_zero_shot_scores_over_every_eval_image(tmp_path):
    """7 eval images over 2 ranks x batch 2: the padded last batch is dropped by the gather, so the 2-rank scores equal
    one process scoring the saved model on the same 7 images."""
    argv = [RECIPE, "--output_dir", str(tmp_path / "run"), "--max_train_samples", "16", "--max_eval_samples", "7",
            *FAST]
    argv[argv.index("--per_device_eval_batch_size") + 1] = "2"
    launch_two_ranks(argv, tmp_path)
    two_ranks = json.loads((tmp_path / "run" / "eval_results.json").read_text())

    assert cli_main(["evaluate", str(tmp_path / "run"), "--dataset", "shapes", "--max-samples", "7",
                     "--out", str(tmp_path / "one.json")]) == 0
    one_rank = json.loads((tmp_path / "one.json").read_text())["scores"]
    for name in ("zero_shot_top1", "zero_shot_top5", "boundary_ratio"):
        assert two_ranks[f"eval_{name}"] == pytest.approx(one_rank[name], abs=1e-6), name


def test_a_fresh_text_tower_reads_as_many_characters_as_its_positions():
    """The character tokenizer of a fresh DTP-CLIP follows `text_config.max_position_embeddings`: a longer caption
    (three objects) is read whole instead of being cut at the tokenizer's default 64."""
    args = SimpleNamespace(model_name_or_path=None, init_from_clip=None, tokenizer_name_or_path=None, image_size=None)
    tiny = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)
    caption = "a red circle at the top left and a blue square at the center and a green triangle at the bottom"
    model, processor = build_dtp_clip(args, {"text_config": dict(tiny, max_position_embeddings=160)})
    assert processor.tokenizer.model_max_length == model.config.text_config.max_position_embeddings == 160
    ids = processor(text=[caption])["input_ids"][0]
    assert processor.tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "") == caption.replace(" ", "")
    _, default = build_dtp_clip(args, {"text_config": tiny})
    assert default.tokenizer.model_max_length == 64
    assert len(default(text=[caption])["input_ids"][0]) == 64  # cut: the default still holds 64


def test_built_in_shapes_scenes_have_captions_naming_every_object_and_no_zero_shot_classes():
    """"shapes_scenes": one to three shapes per image (the images DTP-LLaVA's questions are about), each caption naming
    every object's colour, shape and position; held-out test images; no zero-shot classes (the first object's class
    would not name a scene)."""
    data_args = SimpleNamespace(dataset_name="shapes_scenes", max_train_samples=90, max_eval_samples=30,
                                zero_shot_template="a photo of a {}")
    train, evaluation, caption_col, image_col, zero_shot = load_image_text_splits(data_args, seed=0)
    assert (len(train), len(evaluation), caption_col, image_col, zero_shot) == (90, 30, "captions", "image", None)
    counts = [len(colors) for colors in train["colors"]]
    assert set(counts) == {1, 2, 3}
    for row in train.select(range(20)):
        for caption in row["captions"]:
            for color, shape in zip(row["colors"], row["shapes"]):
                assert color in caption and shape in caption, (caption, row["colors"], row["shapes"])
    pixels = {np.asarray(image).tobytes() for image in train["image"]}
    assert not pixels & {np.asarray(image).tobytes() for image in evaluation["image"]}
    # The default stays the single-object set with its 18 zero-shot classes, prompted with `zero_shot_template` (it
    # used to be ignored for this set).
    data_args.dataset_name = None
    *_, zero_shot = load_image_text_splits(data_args, seed=0)
    assert zero_shot == ("label_id", [shapes.prompt(name) for name in shapes.class_names()])
    assert zero_shot[1][:2] == ["a photo of a red circle", "a photo of a red square"]
    data_args.zero_shot_template = "{} shape"
    *_, zero_shot = load_image_text_splits(data_args, seed=0)
    assert zero_shot[1] == [f"{name} shape" for name in shapes.class_names()]
