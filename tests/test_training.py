"""Training through train.py: recipes, learning on digits, the 2-rank launch."""

import json
import os

import pytest

from helpers import launch_two_ranks
from leanvision import DTPViTForImageClassification
from leanvision.training.train import main as train_main
from leanvision.training.train import parse_args

RECIPE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "training", "recipes",
                      "dtp_vit_digits.yaml")
FAST = ["--save_strategy", "no", "--eval_strategy", "no", "--disable_tqdm", "true", "--logging_steps", "10"]


def test_recipe_flags_override_recipe(tmp_path):
    model_args, data_args, training_args = parse_args([RECIPE, "--learning_rate", "0.5", "--output_dir", str(tmp_path)])
    assert training_args.learning_rate == 0.5
    assert training_args.num_train_epochs == 30  # from the recipe
    assert model_args.config_overrides["patch_size"] == 4


def test_recipe_errors_name_the_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("family: dtp_vit\nlearning_rte: 0.1\n")
    with pytest.raises(ValueError, match="learning_rte"):
        parse_args([str(bad)])
    bad.write_text("family: no_such_family\n")
    with pytest.raises(ValueError, match="no_such_family"):
        parse_args([str(bad)])
    with pytest.raises(ValueError, match="does not exist"):
        parse_args([str(tmp_path / "missing.yaml")])


def logged(output_dir, key):
    with open(os.path.join(output_dir, "trainer_state.json")) as f:
        return [entry[key] for entry in json.load(f)["log_history"] if key in entry]


@pytest.mark.slow
@pytest.mark.parametrize("rate", [0.5, 0.25, 0.1])
def test_tiny_dtp_vit_learns_digits_at_the_prior_rate(tmp_path, rate):
    overrides = json.dumps({
        "image_size": 32, "patch_size": 4, "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128,
        "num_pre_layers": 1, "num_shortened_layers": 2, "compression_rate": rate,
    })
    metrics = train_main([RECIPE, "--output_dir", str(tmp_path), "--config_overrides", overrides, *FAST])
    assert metrics["eval_accuracy"] >= 0.90, metrics
    assert abs(metrics["eval_boundary_ratio"] - rate) <= 0.03, metrics
    train_ratios = logged(tmp_path, "boundary_ratio")
    late = train_ratios[-5:]
    assert abs(sum(late) / len(late) - rate) <= 0.03, train_ratios
    model = DTPViTForImageClassification.from_pretrained(tmp_path)
    assert model.config.compression_rate == rate


@pytest.mark.slow
def test_two_rank_cpu_launch_trains_and_saves_a_loadable_model(tmp_path):
    launch_two_ranks(
        [RECIPE, "--output_dir", str(tmp_path / "run"), "--max_steps", "4", "--per_device_train_batch_size", "8",
         *FAST],
        tmp_path,
    )
    with open(tmp_path / "run" / "trainer_state.json") as f:
        state = json.load(f)
    assert state["global_step"] == 4
    assert state["train_batch_size"] == 8
    model = DTPViTForImageClassification.from_pretrained(tmp_path / "run")
    assert model.config.num_labels == 10


@pytest.mark.parametrize("recipe", sorted(os.listdir(os.path.join(os.path.dirname(RECIPE)))))
def test_every_shipped_recipe_parses_with_a_known_family_and_valid_freezing(recipe):
    from leanvision.training.callbacks import build_freezing_callback
    from leanvision.training.families import FAMILIES

    model_args, _, training_args = parse_args([os.path.join(os.path.dirname(RECIPE), recipe)])
    family = FAMILIES[model_args.family]
    assert recipe.startswith(family.name.split("_multimodel")[0])
    assert isinstance(model_args.config_overrides, dict)
    assert training_args.output_dir.startswith("outputs/")
    build_freezing_callback(model_args.freezing)  # raises on an invalid schedule


def test_training_record_feeds_the_card_without_local_paths(tmp_path):
    from leanvision.training.data.digits import digits_dataset
    from leanvision.hub_cards.export import export_model

    train_main([RECIPE, "--output_dir", str(tmp_path / "run"), "--max_steps", "2", *FAST])
    record = json.loads((tmp_path / "run" / "leanvision_training.json").read_text())
    assert record["training data"] == "scikit-learn's digits (built in)" and record["recipe"] == "dtp_vit_digits.yaml"
    export_model(str(tmp_path / "run"), str(tmp_path / "export"))
    card = (tmp_path / "export" / "README.md").read_text()
    assert "| training data | scikit-learn's digits (built in) |" in card and "| recipe | dtp_vit_digits.yaml |" in card

    digits_dataset().save_to_disk(str(tmp_path / "my_digits"))
    train_main([RECIPE, "--output_dir", str(tmp_path / "local"), "--dataset_name", str(tmp_path / "my_digits"),
                "--max_steps", "2", *FAST])
    record = json.loads((tmp_path / "local" / "leanvision_training.json").read_text())
    assert record["training data"] == "my_digits (a local folder)"
    assert str(tmp_path) not in (tmp_path / "local" / "leanvision_training.json").read_text()
