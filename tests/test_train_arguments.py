"""train.py's argument checks: merged config overrides, unknown keys, ranges, broken recipes, the output folder guard,
one-line errors for expected failures (issues 13 and 16)."""

import json
import logging
import os
import subprocess
import sys

import pytest
import yaml

from leanvision.training.arguments import check_output_dir, config_differences, merge_overrides
from leanvision.training.train import main as train_main
from leanvision.training.train import parse_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = os.path.join(ROOT, "training", "recipes")
DIGITS = os.path.join(RECIPES, "dtp_vit_digits.yaml")
CLIP_SHAPES = os.path.join(RECIPES, "dtp_clip_shapes.yaml")
FAST = ["--save_strategy", "no", "--eval_strategy", "no", "--disable_tqdm", "true", "--report_to", "none"]


def test_command_line_config_overrides_merge_into_the_recipe_key_by_key():
    model_args, _, _ = parse_args([DIGITS, "--config_overrides", '{"compression_rate": 0.1}'])
    assert model_args.config_overrides["compression_rate"] == 0.1
    assert model_args.config_overrides["patch_size"] == 4 and model_args.config_overrides["hidden_size"] == 64
    model_args, _, _ = parse_args([CLIP_SHAPES, "--config_overrides={\"vision_config\": {\"compression_rate\": 0.1}}"])
    vision = model_args.config_overrides["vision_config"]
    assert vision["compression_rate"] == 0.1 and vision["image_size"] == 64 and vision["num_pre_layers"] == 1


def test_merge_overrides_is_recursive_and_leaves_its_inputs_alone():
    base = {"a": 1, "text_config": {"x": 1, "y": 2}, "vae_config": {"k": [1]}}
    merged = merge_overrides(base, {"text_config": {"y": 3}, "b": 2, "vae_config": {"k": [2]}})
    assert merged == {"a": 1, "b": 2, "text_config": {"x": 1, "y": 3}, "vae_config": {"k": [2]}}
    assert base["text_config"] == {"x": 1, "y": 2}


def recipe(tmp_path, text: str) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return str(path)


def test_unknown_config_override_names_the_closest_field(tmp_path):
    with pytest.raises(ValueError, match=r"'hidden_sizee' is not a field of DTPViTConfig; did you mean 'hidden_size'"):
        parse_args([recipe(tmp_path, "family: dtp_vit\nconfig_overrides:\n  hidden_sizee: 64\n")])
    with pytest.raises(ValueError, match=r"vision_config.'patch_sizee'.*did you mean 'patch_size'"):
        parse_args([CLIP_SHAPES, "--config_overrides", '{"vision_config": {"patch_sizee": 4}}'])
    with pytest.raises(ValueError, match=r"learning_rte.*did you mean 'learning_rate'"):
        parse_args([recipe(tmp_path, "family: dtp_vit\nlearning_rte: 0.1\n")])


@pytest.mark.parametrize("flags, message", [
    (["--num_train_epochs", "-3"], "num_train_epochs must be > 0"),
    (["--num_train_epochs", "0"], "num_train_epochs must be > 0"),
    (["--learning_rate", "-0.1"], "learning_rate must be >= 0"),
    (["--per_device_train_batch_size", "0"], "per_device_train_batch_size must be at least 1"),
    (["--per_device_eval_batch_size", "0"], "per_device_eval_batch_size must be at least 1"),
    (["--max_train_samples", "0"], "max_train_samples must be at least 1"),
    (["--max_eval_samples", "-1"], "max_eval_samples must be at least 1"),
])
def test_out_of_range_values_are_refused_before_anything_is_written(tmp_path, flags, message):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=message):
        train_main([DIGITS, "--output_dir", str(out), *flags])
    assert not out.exists()


def test_max_steps_stands_in_for_epochs():
    _, _, training_args = parse_args([DIGITS, "--num_train_epochs", "0", "--max_steps", "3"])
    assert training_args.max_steps == 3


def test_broken_yaml_is_one_line_naming_file_and_line(tmp_path):
    path = recipe(tmp_path, "family: dtp_vit\nconfig_overrides: [a\n  b: c\n")
    with pytest.raises(ValueError, match=r"recipe .*recipe.yaml: invalid YAML at line 3") as info:
        parse_args([path])
    assert "\n" not in str(info.value)


def test_existing_output_folder_is_refused_unless_overwrite_or_resume(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    _, _, args = parse_args([DIGITS, "--output_dir", str(out)])
    check_output_dir(args)  # an empty folder is fine
    (out / "model.safetensors").write_text("x")
    with pytest.raises(ValueError, match="exists and is not empty.*--overwrite_output_dir.*--resume_from_checkpoint"):
        train_main([DIGITS, "--output_dir", str(out)])
    check_output_dir(parse_args([DIGITS, "--output_dir", str(out), "--overwrite_output_dir", "true"])[2])
    check_output_dir(parse_args([DIGITS, "--output_dir", str(out), "--resume_from_checkpoint", str(out)])[2])
    with pytest.raises(ValueError, match="is an existing file, not a folder"):
        train_main([DIGITS, "--output_dir", str(out / "model.safetensors")])


def test_run_logs_the_config_differences_from_the_family_defaults(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="leanvision.train"):
        train_main([DIGITS, "--output_dir", str(tmp_path / "run"), "--max_steps", "1", "--max_train_samples", "16",
                    "--max_eval_samples", "8", *FAST])
    lines = [r.getMessage() for r in caplog.records if "config differences" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "hidden_size=64" in lines[0] and "patch_size=4" in lines[0] and "num_channels" not in lines[0]


def test_config_differences_names_sub_config_fields():
    from leanvision import DTPCLIPConfig

    line = config_differences(DTPCLIPConfig(vision_config={"compression_rate": 0.1}), DTPCLIPConfig())
    assert line == "vision_config.compression_rate=0.1"
    assert config_differences(DTPCLIPConfig(), DTPCLIPConfig()) == "none"


def run_train_script(*args):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return subprocess.run([sys.executable, os.path.join(ROOT, "training", "train.py"), *args],
                          capture_output=True, text=True, env=env, timeout=300)


def test_train_script_reports_expected_failures_in_one_line_with_exit_2(tmp_path):
    bad = recipe(tmp_path, "family: dtp_vit\nconfig_overrides:\n  hidden_sizee: 64\n")
    result = run_train_script(bad, "--output_dir", str(tmp_path / "run"))
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        "train.py: error: config_overrides: 'hidden_sizee' is not a field of DTPViTConfig; did you mean 'hidden_size'?"
    ]
    assert not (tmp_path / "run").exists()


def test_train_script_offline_hub_dataset_is_one_line_with_exit_2(tmp_path):
    result = run_train_script(os.path.join(RECIPES, "gated_sparse_blip_coco30k.yaml"), "--output_dir",
                              str(tmp_path / "run"))
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "offline mode is on" in lines[0] and "HF_HUB_OFFLINE" in lines[0], lines[-5:]
    assert not (tmp_path / "run").exists()


def test_command_line_pretrained_start_replaces_the_recipes_overrides():
    model_args, _, _ = parse_args([CLIP_SHAPES, "--init_from_clip", "some/clip", "--config_overrides",
                                   '{"vision_config": {"compression_rate": 0.5}}'])
    assert model_args.config_overrides == {"vision_config": {"compression_rate": 0.5}}
    # Without --config_overrides, the recipe's fresh-model overrides are dropped too: a 64-wide recipe model's
    # widths never reach a pretrained base of another width (they would re-initialise its mismatched weights).
    model_args, _, _ = parse_args([DIGITS, "--model_name_or_path", "outputs/some_digits_model"])
    assert model_args.config_overrides == {}
    model_args, _, _ = parse_args([DIGITS])
    assert model_args.config_overrides["hidden_size"] == 64


def test_a_pretrained_part_of_dtp_llava_replaces_only_that_parts_overrides():
    """`--vision_backbone` alone keeps the recipe's fresh language model (`text_config`) and its other settings and
    drops only `vision_config` (the old rule dropped everything, and the language model came out at transformers'
    default Llama size, 7B parameters); both parts, or a whole saved model, drop everything."""
    stage1 = os.path.join(RECIPES, "dtp_llava_shapes_stage1.yaml")
    recipe = yaml.safe_load(open(stage1))["config_overrides"]
    model_args, _, _ = parse_args([stage1, "--vision_backbone", "some/dtp_clip"])
    assert model_args.config_overrides == {key: value for key, value in recipe.items() if key != "vision_config"}
    assert model_args.config_overrides["text_config"]["hidden_size"] == 128
    model_args, _, _ = parse_args([stage1, "--vision_backbone", "some/clip", "--text_backbone", "some/instruct-lm"])
    assert model_args.config_overrides == {}
    model_args, _, _ = parse_args([stage1, "--model_name_or_path", "outputs/stage1"])
    assert model_args.config_overrides == {} and model_args.vision_backbone is None


def test_a_pretrained_start_that_cannot_be_found_is_named_before_anything_is_built(tmp_path, monkeypatch):
    """A missing folder, or (offline) a Hub id that is no folder and not cached: one ValueError naming the argument,
    before any model is built (it used to end in transformers' OSError traceback)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    stage1 = os.path.join(RECIPES, "dtp_llava_shapes_stage1.yaml")
    stage2 = os.path.join(RECIPES, "dtp_llava_shapes_stage2.yaml")
    out = ["--output_dir", str(tmp_path / "run")]
    with pytest.raises(ValueError, match=r"model_name_or_path '.*missing_stage1': no such folder"):
        train_main([stage2, "--model_name_or_path", str(tmp_path / "missing_stage1"), *out])
    with pytest.raises(ValueError, match="vision_backbone 'outputs/no_tower' is neither a local folder nor in the "
                                         "Hub cache, and offline mode is on"):
        train_main([stage1, "--vision_backbone", "outputs/no_tower", *out])
    with pytest.raises(ValueError, match="tokenizer_name_or_path './no_tokenizer': no such folder"):
        train_main([stage1, "--tokenizer_name_or_path", "./no_tokenizer", *out])
    assert not (tmp_path / "run").exists()
