"""`leanvision evaluate` for classifiers and `leanvision classify` (DTP-ViT and zero-shot DTP-CLIP), checked against a
direct forward pass of the saved models."""

import csv
import io
import json
import shutil

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image as ImageFeature
from PIL import Image

from leanvision.cli import main as cli_main
from leanvision.configuration.configuration_dtp_clip import DTPCLIPConfig
from leanvision.configuration.configuration_dtp_vit import DTPViTConfig
from leanvision.modeling.modeling_dtp_clip import DTPCLIPModel
from leanvision.modeling.modeling_dtp_vit import DTPViTForImageClassification
from leanvision.processing.processing_dtp_clip import DTPCLIPProcessor
from leanvision.processing.processing_dtp_vit import build_image_processor
from leanvision.training.evaluation.classification import evaluate_classifier
from leanvision.training.data.digits import digits_dataset
from leanvision.training.data.tokenizers import char_tokenizer

DIGITS = [str(i) for i in range(10)]


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    """A tiny random DTP-ViT digit classifier (classes "0".."9") saved with its image processor."""
    torch.manual_seed(0)
    config = DTPViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_attention_heads=4, intermediate_size=64, num_pre_layers=1,
        num_shortened_layers=1, compression_rate=0.5, id2label=dict(enumerate(DIGITS)),
        label2id={name: i for i, name in enumerate(DIGITS)},
    )
    path = tmp_path_factory.mktemp("vit")
    DTPViTForImageClassification(config).save_pretrained(path)
    build_image_processor(32).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    torch.manual_seed(0)
    tokenizer = char_tokenizer()
    config = DTPCLIPConfig(
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                           num_pre_layers=1, num_shortened_layers=1, compression_rate=0.5),
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                         vocab_size=len(tokenizer), max_position_embeddings=64, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        projection_dim=16,
    )
    path = tmp_path_factory.mktemp("clip")
    DTPCLIPModel(config).save_pretrained(path)
    DTPCLIPProcessor(build_image_processor(32), tokenizer).save_pretrained(path)
    return path


def vit_probabilities(vit_dir, images) -> torch.Tensor:
    model = DTPViTForImageClassification.from_pretrained(vit_dir).eval()
    pixels = build_image_processor(32)(images=[im.convert("RGB") for im in images], return_tensors="pt")
    with torch.no_grad():
        return model(**pixels).logits.softmax(-1)


def test_evaluate_classifier_on_digits_equals_a_direct_forward_pass(vit_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert cli_main(["evaluate", str(vit_dir), "--dataset", "digits", "--max-samples", "40", "--top-k", "3",
                     "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())

    test = digits_dataset()["test"].select(range(40))
    probabilities = vit_probabilities(vit_dir, list(test["image"]))
    labels = torch.tensor(test["label"])
    ranked = probabilities.argsort(-1, descending=True)
    assert report["family"] == "dtp_vit" and report["split"] == "test" and report["num_samples"] == 40
    assert report["scores"]["accuracy"] == pytest.approx(float((ranked[:, 0] == labels).float().mean()))
    assert report["scores"]["top3_accuracy"] == pytest.approx(
        float((ranked[:, :3] == labels[:, None]).any(-1).float().mean()))
    assert report["scores"]["boundary_ratio"] == pytest.approx(0.5, abs=0.05)  # rate 0.5 at inference
    assert report["chance_accuracy"] == pytest.approx(0.1)
    assert f"accuracy: {round(report['scores']['accuracy'], 4)}" in printed and "wrote" in printed


def test_evaluate_classifier_on_digits_uses_the_models_own_split(vit_dir, tmp_path):
    """The digits split depends on the training seed: a model trained with seed 1 is scored on seed 1's test split
    (seed 0's would hold some of its training images)."""
    model_dir = tmp_path / "seed1"
    shutil.copytree(vit_dir, model_dir)
    (model_dir / "leanvision_training.json").write_text(json.dumps({"family": "dtp_vit", "seed": 1}))
    report = evaluate_classifier(str(model_dir), "digits", max_samples=40)

    test = digits_dataset(seed=1)["test"].select(range(40))
    assert set(test["image"][i].tobytes() for i in range(40)) != set(
        digits_dataset()["test"][i]["image"].tobytes() for i in range(40))
    predicted = vit_probabilities(vit_dir, list(test["image"])).argmax(-1)
    assert report["digits_split_seed"] == 1
    accuracy = float((predicted == torch.tensor(test["label"])).float().mean())
    assert report["scores"]["accuracy"] == pytest.approx(accuracy)
    assert evaluate_classifier(str(vit_dir), "digits", max_samples=5)["digits_split_seed"] == 0  # no record


def test_evaluate_classifier_caps_top_k_and_matches_classes_by_name(vit_dir, tmp_path):
    """A dataset listing the classes in reverse order, as an image folder (class = sub-folder): same hits."""
    test = digits_dataset()["test"].select(range(20))
    for i, (image, label) in enumerate(zip(test["image"], test["label"])):
        (tmp_path / "folder" / "test" / str(label)).mkdir(parents=True, exist_ok=True)
        image.save(tmp_path / "folder" / "test" / str(label) / f"{i}.png")
    reversed_names = DIGITS[::-1]
    shuffled = Dataset.from_dict(
        {"image": list(test["image"]), "label": [reversed_names.index(str(y)) for y in test["label"]]},
        features=Features({"image": ImageFeature(), "label": ClassLabel(names=reversed_names)}),
    )
    shuffled.save_to_disk(tmp_path / "reversed")

    reports = {}
    for name in ("folder", "reversed"):
        out = tmp_path / f"{name}.json"
        assert cli_main(["evaluate", str(vit_dir), "--dataset", str(tmp_path / name), "--top-k", "50",
                         "--output", str(out), "--quiet"]) == 0
        reports[name] = json.loads(out.read_text())
    predicted = vit_probabilities(vit_dir, list(test["image"])).argmax(-1)
    accuracy = float((predicted == torch.tensor(test["label"])).float().mean())
    for report in reports.values():
        assert report["scores"]["accuracy"] == pytest.approx(accuracy)
        assert report["scores"]["top10_accuracy"] == 1.0  # k capped at the 10 classes: every label is within it

    strangers = Dataset.from_dict({"image": list(test["image"])[:2], "label": [0, 1]},
                                  features=Features({"image": ImageFeature(), "label": ClassLabel(names=["x", "1"])}))
    strangers.save_to_disk(tmp_path / "strangers")
    assert cli_main(["evaluate", str(vit_dir), "--dataset", str(tmp_path / "strangers")]) == 2
    assert cli_main(["evaluate", str(vit_dir), "--dataset", "digits", "--top-k", "0"]) == 2


def _digit_folder(tmp_path, count=4):
    folder = tmp_path / "digits"
    folder.mkdir()
    test = digits_dataset()["test"]
    for i in range(count):
        test[i]["image"].save(folder / f"{i}.png")
    return folder, [test[i]["image"] for i in range(count)]


def test_classify_folder_with_a_classifier_json_and_csv(vit_dir, tmp_path, capsys):
    folder, images = _digit_folder(tmp_path)
    probabilities = vit_probabilities(vit_dir, images)

    assert cli_main(["classify", str(folder), "--model", str(vit_dir), "--top-k", "3"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in results] == [str(folder / f"{i}.png") for i in range(4)]
    for result, row in zip(results, probabilities):
        scores, indices = row.topk(3)
        assert [e["label"] for e in result["labels"]] == [DIGITS[i] for i in indices.tolist()]
        assert [e["score"] for e in result["labels"]] == pytest.approx(scores.tolist(), abs=1e-6)

    out = tmp_path / "out" / "labels.csv"
    assert cli_main(["classify", str(folder / "0.png"), "--model", str(vit_dir), "--top-k", "99", "--format", "csv",
                     "--output", str(out)]) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(rows) == 10 and [int(r["rank"]) for r in rows] == list(range(1, 11))  # k capped at 10 classes
    assert sorted(r["label"] for r in rows) == DIGITS
    assert sum(float(r["score"]) for r in rows) == pytest.approx(1.0, abs=1e-4)


def test_classify_reports_bad_files_and_exits_1_after_the_good_ones(vit_dir, tmp_path, capsys):
    folder, _ = _digit_folder(tmp_path, count=2)
    (folder / "broken.png").write_bytes(b"not a png")
    assert cli_main(["classify", str(folder), "--model", str(vit_dir)]) == 1
    captured = capsys.readouterr()
    assert [r["path"] for r in json.loads(captured.out)] == [str(folder / "0.png"), str(folder / "1.png")]
    assert "broken.png" in captured.err and "1 of 3 images could not be read" in captured.err
    # Zero-shot labels given to a classifier, and a classifier-less model folder, are one-line errors.
    assert cli_main(["classify", str(folder / "0.png"), "--model", str(vit_dir), "--labels", "a,b"]) == 2
    assert "zero-shot" in capsys.readouterr().err


def test_classify_zero_shot_ranks_the_given_labels(clip_dir, tmp_path, capsys):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    image.save(tmp_path / "photo.png")
    labels = ["red circle", "blue square", "green star"]

    assert cli_main(["classify", str(tmp_path / "photo.png"), "--model", str(clip_dir), "--labels",
                     " red circle, blue square,green star", "--template", "a drawing of a {}"]) == 0
    result = json.loads(capsys.readouterr().out)[0]

    model = DTPCLIPModel.from_pretrained(clip_dir).eval()
    processor = DTPCLIPProcessor.from_pretrained(clip_dir)
    with torch.no_grad():
        expected = model(**processor(images=[image], text=[f"a drawing of a {x}" for x in labels])).logits_per_image
    expected = expected.softmax(-1)[0]
    order = expected.argsort(descending=True).tolist()
    assert [e["label"] for e in result["labels"]] == [labels[i] for i in order]
    assert [e["score"] for e in result["labels"]] == pytest.approx(expected[order].tolist(), abs=1e-6)

    assert cli_main(["classify", str(tmp_path / "photo.png"), "--model", str(clip_dir)]) == 2
    assert "--labels" in capsys.readouterr().err
