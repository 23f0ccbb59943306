"""Model cards of every family: Hub metadata (widget, model-index), evaluation tables equal to the evaluation JSON,
usage snippets with the repo id, and no local path or token."""

import json
import os
import re

import pytest
from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.repocard import metadata_load
from huggingface_hub.repocard_data import eval_results_to_model_index, model_index_to_eval_results

from leanvision.configuration.configuration_dtp_clip import DTPCLIPConfig
from leanvision.configuration.configuration_dtp_vit import DTPViTConfig
from leanvision.configuration.configuration_gated_sparse_blip import GatedSparseBlipConfig
from leanvision.configuration.configuration_qvision import QVisionConfig
from leanvision.hub_cards.cards import EXAMPLE_IMAGE, check_public, render_card
from leanvision.training.families import get_family

SMALL_VIT = dict(image_size=32, patch_size=4, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                 num_pre_layers=1, num_shortened_layers=1, compression_rate=0.25)
SPICE_REASON = "Stanford CoreNLP 3.6.0 jars not found in pycocoevalcap's spice/lib folder"


def caption_report(dataset: str) -> dict:
    """A report as `leanvision evaluate --out` writes it (its `model` is a local path, which no card may show)."""
    return {
        "model": "/home/someone/outputs/captioner", "family": "x", "dataset": dataset, "split": "test",
        "num_samples": 100, "generation": {"do_sample": False, "max_new_tokens": 40},
        "scores": {"bleu_1": 0.61234, "bleu_4": 0.123456, "meteor": 0.2, "rouge_l": 0.45, "cider": 1.23456,
                   "spice": None},
        "skipped": {"spice": SPICE_REASON},
        "examples": [{"prediction": "a red circle", "references": ["a red circle"]}],
    }


def cases(tmp_path):
    """family -> (config, train.py metrics, evaluate report, base models, datasets, expected citation keys)."""
    return {
        "dtp_vit": (
            DTPViTConfig(**SMALL_VIT, id2label={i: str(i) for i in range(10)}),
            {"epoch": 30.0, "eval_accuracy": 0.938888, "eval_loss": 0.2512, "eval_runtime": 0.5,
             "eval_samples_per_second": 700.0, "eval_steps_per_second": 6.0},
            None, None, ["alice/digits"], ["nawrot2023dtp", "dosovitskiy2021vit"],
        ),
        "dtp_clip": (
            DTPCLIPConfig(vision_config=SMALL_VIT, text_config=dict(hidden_size=32, intermediate_size=64,
                                                                    num_hidden_layers=1, num_attention_heads=4),
                          projection_dim=16),
            {"eval_zero_shot_top1": 0.41237, "eval_zero_shot_top5": 0.8, "eval_loss": 2.5},
            None, "openai/clip-vit-base-patch32", ["alice/captioned-photos"],
            ["nawrot2023dtp", "radford2021clip"],
        ),
        "gated_sparse_blip": (
            GatedSparseBlipConfig(text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                   num_attention_heads=4), attention_sparsity=0.7),
            {}, caption_report("SwayStar123/preprocessed_recap-coco30k-moondream"),
            "Salesforce/blip-image-captioning-base", ["SwayStar123/preprocessed_recap-coco30k-moondream"],
            ["li2022blip", "gupta2021topk", "podell2024sdxl"],
        ),
        "qvision_multimodel": (
            QVisionConfig(vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                             num_attention_heads=4, image_size=32, patch_size=8),
                          text_config=dict(hidden_size=32, num_layers=2, num_heads=4, max_position_embeddings=64,
                                           attention_types=[[["global"], 2]]),
                          num_query_tokens=4, qformer_hidden_size=32, qformer_num_layers=1, qformer_num_heads=4,
                          cross_attention_every_n=1),
            {"eval_bleu_4": 0.5912, "eval_cider": 3.3041},
            caption_report(str(tmp_path / "my_local_captions")),  # a local folder: named, but not by its path
            ["openai/clip-vit-base-patch32", "EleutherAI/gpt-neo-125m"], None,
            ["li2023blip2", "alayrac2022flamingo", "radford2021clip", "black2021gptneo"],
        ),
    }


def table_rows(card: str) -> list[tuple[str, float, str]]:
    """(name, value, data) of each row of the evaluation table."""
    pattern = r"^\| [^|]+ \(`(\w+)`\) \| ([^|]+) \| ([^|]+) \|$"
    return [(m[1], float(m[2]), m[3]) for m in re.finditer(pattern, card, re.MULTILINE)]


@pytest.mark.parametrize("name", ["dtp_vit", "dtp_clip", "gated_sparse_blip", "qvision_multimodel"])
def test_card_metadata_table_and_model_index_match_the_evaluation_json(name, tmp_path):
    family = get_family(name)
    config, metrics, report, base_model, datasets, citations = cases(tmp_path)[name]
    repo = f"alice/{name.replace('_', '-')}-tiny"
    card = render_card(family, config, metrics, repo_id=repo, base_model=base_model, datasets=datasets,
                       recipe=[("epochs", 30)], evaluation=report, num_parameters=123_456)
    path = tmp_path / "README.md"
    path.write_text(card)
    meta = metadata_load(path)

    assert meta["pipeline_tag"] == family.pipeline_tag
    assert meta["library_name"] == "transformers" and meta["license"] == "apache-2.0"
    assert {"custom_code", "leanvision", name} <= set(meta["tags"])
    assert meta.get("datasets") == datasets
    assert meta.get("base_model") == base_model
    (widget,) = meta["widget"]
    assert widget["src"] == EXAMPLE_IMAGE
    if family.pipeline_tag == "zero-shot-image-classification":
        assert len(widget["candidate_labels"].split(", ")) >= 2
    else:
        assert "candidate_labels" not in widget

    # The table holds every measurement of both JSONs, rounded to 4 places, and no Trainer bookkeeping.
    expected = [(key.removeprefix("eval_"), round(value, 4)) for key, value in metrics.items()
                if key not in ("epoch", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second")]
    expected += [(key, round(value, 4)) for key, value in (report or {"scores": {}})["scores"].items()
                 if value is not None]
    rows = table_rows(card)
    assert [(key, value) for key, value, _ in rows] == expected
    if report:
        assert f"`spice` was not computed: {SPICE_REASON}." in card
        assert '`{"do_sample": false, "max_new_tokens": 40}`' in card

    # model-index: the results measured on a named dataset, and a lossless round trip through huggingface_hub.
    named = set(datasets or []) | ({report["dataset"]} if report else set())
    on_named_data = {key: value for key, value, data in rows if data.split(", ")[0] in named}
    if not on_named_data:
        assert "model-index" not in meta
    else:
        model_name, results = model_index_to_eval_results(meta["model-index"])
        assert model_name == repo.split("/")[1]
        assert {r.metric_type: r.metric_value for r in results} == on_named_data
        assert {r.task_type for r in results} == {family.pipeline_tag}
        assert eval_results_to_model_index(model_name, results) == meta["model-index"]
    assert ModelCardData(**meta).to_dict() == meta
    assert ModelCard(card).data.to_dict() == meta

    assert f'model="{repo}", trust_remote_code=True' in card
    assert f'.from_pretrained("{repo}", trust_remote_code=True)' in card
    assert "| epochs | 30 |" in card and "small demonstration model (123,456 parameters)" in card
    for key in citations:
        assert f"{{{key}," in card
    assert str(tmp_path) not in card and "/home/" not in card
    assert not re.search(r"hf_[A-Za-z0-9]{10,}", card)
    if name == "qvision_multimodel":
        assert "a local dataset, test, 100 examples" in card


def test_export_card_without_repo_or_dataset_has_a_table_but_no_model_index(tmp_path):
    family = get_family("dtp_vit")
    card = render_card(family, DTPViTConfig(**SMALL_VIT), {"eval_accuracy": 0.5, "epoch": 2.0})
    path = tmp_path / "README.md"
    path.write_text(card)
    meta = metadata_load(path)
    assert "model-index" not in meta and "model_name" not in meta and "datasets" not in meta
    assert table_rows(card) == [("accuracy", 0.5, "evaluation split of the training run")]
    assert 'model="path/to/this/folder"' in card
    assert "small demonstration model" not in card  # the parameter count is unknown here


def test_cards_refuse_local_paths_and_tokens(tmp_path, monkeypatch):
    family = get_family("dtp_vit")
    config = DTPViTConfig(**SMALL_VIT)
    with pytest.raises(ValueError, match="not a Hub repo id"):
        render_card(family, config, {}, base_model=str(tmp_path / "blip"))
    with pytest.raises(ValueError, match="not a Hub repo id"):
        render_card(family, config, {}, datasets=["/data/coco"])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="local folder"):
        check_public(f"trained in {os.getcwd()}/outputs")
    with pytest.raises(ValueError, match="token"):
        check_public("token: hf_" + "a1B2" * 8)
    check_public("see https://huggingface.co/alice/model")


def _with_training_record(tmp_path, family, training_data):
    import shutil

    from leanvision.training.arguments import TRAINING_RECORD

    model_dir = tmp_path / family
    shutil.copytree(os.path.join(os.path.dirname(__file__), "fixtures", "saved_v0_1", family), model_dir)
    (model_dir / TRAINING_RECORD).write_text(json.dumps({"family": family, "training data": training_data}))
    return model_dir


def test_cards_show_an_image_of_the_training_data_and_the_repo_id_and_name_their_requirements(tmp_path):
    import numpy as np
    import yaml
    from PIL import Image

    from leanvision.hub_cards.export import export_model
    from leanvision.hub_cards.publish import publish
    from leanvision.training.data.digits import digits_dataset

    digits = _with_training_record(tmp_path, "dtp_vit", "scikit-learn's digits (built in)")
    export = tmp_path / "digits-export"
    export_model(str(digits), str(export))
    example = np.asarray(Image.open(export / "example.png"))
    assert np.array_equal(example, np.asarray(digits_dataset()["test"][0]["image"].convert("RGB")))
    card = (export / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["widget"][0]["src"] == "example.png" and EXAMPLE_IMAGE not in card
    assert 'classify("path/to/this/folder/example.png")' in card
    assert "diffusers" not in card

    published = tmp_path / "digits-publish"
    publish(str(digits), "someone/dtp-vit-digits", dry_run=True, out_dir=str(published))
    card = (published / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["widget"][0]["src"] == "https://huggingface.co/someone/dtp-vit-digits/resolve/main/example.png"
    assert "path/to/this/folder" not in card and 'model="someone/dtp-vit-digits"' in card

    shapes = _with_training_record(tmp_path, "gated_sparse_blip", "the shapes captions (built in)")
    export = tmp_path / "shapes-export"
    export_model(str(shapes), str(export))
    card = (export / "README.md").read_text()
    lines = (export / "requirements.txt").read_text().splitlines()
    requirements = [line for line in lines if line and not line.startswith(("#", "transformers"))]
    assert "diffusers" in requirements
    assert f'pip install "transformers>=5" torch {" ".join(requirements)}' in card
    assert Image.open(export / "example.png").size == (64, 64)

    photo = _with_training_record(tmp_path, "qvision_multimodel", "AKCIT/coco2017-captioning")
    export = tmp_path / "photo-export"
    export_model(str(photo), str(export))
    assert not (export / "example.png").exists() and EXAMPLE_IMAGE in (export / "README.md").read_text()
