"""LoRA adapters (training/lora.py): `train.py --lora` trains only adapter weights on a saved base (DTP-ViT, and
QVision with its CLIP tower left alone), the adapter changes the outputs, merges into a plain model with the same
outputs, loads on an exported trust_remote_code base in an interpreter without leanvision, names no local path, and
publishes as an adapter repo whose card names the base model. DTP-CLIP and GatedSparseBlip take one LoRA step
by hand."""

import json
import os
import tempfile

import pytest
import torch
from huggingface_hub.repocard import metadata_load
from safetensors.torch import load_file, save_file

import leanvision.training.train as train_module
from helpers import run_fresh
from leanvision.cli import main as cli_main
from leanvision.configuration.configuration_dtp_clip import DTPCLIPConfig
from leanvision.configuration.configuration_dtp_vit import DTPViTConfig
from leanvision.configuration.configuration_gated_sparse_blip import GatedSparseBlipConfig
from leanvision.modeling.modeling_dtp_clip import DTPCLIPModel
from leanvision.modeling.modeling_dtp_vit import DTPViTForImageClassification
from leanvision.modeling.modeling_gated_sparse_blip import GatedSparseBlipForConditionalGeneration
from leanvision.modeling.modeling_qvision import QVisionForConditionalGeneration
from leanvision.processing.processing_dtp_vit import build_image_processor
from leanvision.hub_cards.export import export_model
from leanvision.training.families import get_family
from leanvision.training.arguments import LoraArguments
from leanvision.training.lora import (
    DEFAULT_TARGET_MODULES,
    apply_lora,
    load_adapter_model,
    merge_adapter,
    target_modules,
)
from leanvision.hub_cards.publish import publish
from leanvision.training.train import main as train_main
from leanvision.training.train import parse_args

RECIPES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "training", "recipes")
QUIET = ["--disable_tqdm", "true", "--report_to", "none", "--eval_strategy", "no", "--save_strategy", "no"]
LABELS = [str(i) for i in range(10)]


def train_adapter(args: list[str]):
    """Runs train.py with `args` and returns the PeftModel it trained (caught where train.py calls apply_lora)."""
    trained = []

    def keep(model, family, lora_args):
        trained.append(apply_lora(model, family, lora_args))
        return trained[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_module, "apply_lora", keep)
        train_main(args)
    return trained[0]


def base_weights(peft_model) -> dict[str, torch.Tensor]:
    """The base model's weights inside a PeftModel, under the base's own names."""
    return {
        name.replace(".base_layer.", "."): tensor
        for name, tensor in peft_model.get_base_model().state_dict().items()
        if "lora_" not in name
    }


def assert_only_lora_trained(peft_model, base_dir):
    trainable = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable), trainable
    saved = load_file(str(base_dir / "model.safetensors"))
    weights = base_weights(peft_model)
    assert set(saved) <= set(weights)
    changed = [name for name in saved if not torch.equal(saved[name], weights[name])]
    assert not changed, changed[:5]


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    """A saved DTP-ViT base and a rank-4 adapter trained on it by `train.py --lora` on digits: (base, adapter,
    the trained PeftModel)."""
    root = tmp_path_factory.mktemp("lora_vit")
    torch.manual_seed(0)
    config = DTPViTConfig(
        image_size=32, patch_size=4, hidden_size=32, num_attention_heads=4, intermediate_size=64,
        num_pre_layers=1, num_shortened_layers=1, compression_rate=0.25,
        id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)},
    )
    base = root / "dtp_vit_base"
    DTPViTForImageClassification(config).save_pretrained(base)
    build_image_processor(32).save_pretrained(base)
    adapter = root / "adapter"
    peft_model = train_adapter([
        os.path.join(RECIPES, "dtp_vit_digits.yaml"), "--model_name_or_path", str(base), "--config_overrides", "{}",
        "--lora", "--lora_r", "4", "--output_dir", str(adapter), "--max_steps", "4",
        "--per_device_train_batch_size", "16", "--max_eval_samples", "16", "--learning_rate", "1e-2", *QUIET,
    ])
    return base, adapter, peft_model


@pytest.fixture(scope="module")
def pixel_values():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def logits_of(model, pixel_values):
    with torch.no_grad():
        return model.eval()(pixel_values=pixel_values).logits


def test_dtp_vit_lora_trains_only_the_adapter_weights(vit):
    base, adapter, peft_model = vit
    assert_only_lora_trained(peft_model, base)
    saved = load_file(str(adapter / "adapter_model.safetensors"))
    assert saved and all("lora_" in name for name in saved)
    adapted = {name.split(".")[-3] for name in saved}  # ...<module>.lora_A.weight
    assert adapted == set(DEFAULT_TARGET_MODULES["dtp_vit"])
    assert any(not torch.all(tensor == 0) for name, tensor in saved.items() if "lora_B" in name)  # B starts at 0
    assert not (adapter / "model.safetensors").exists() and (adapter / "preprocessor_config.json").is_file()


def test_adapter_changes_outputs_and_merges_into_an_exportable_model(vit, pixel_values, tmp_path, capsys):
    base, adapter, _ = vit
    plain = logits_of(DTPViTForImageClassification.from_pretrained(base), pixel_values)
    adapted = logits_of(load_adapter_model(str(base), str(adapter)), pixel_values)
    assert (adapted - plain).abs().max() > 1e-3

    merged_dir = tmp_path / "merged"
    assert cli_main(["merge-lora", str(adapter), "--base", str(base), str(merged_dir)]) == 0
    assert capsys.readouterr().out.strip().endswith(f"-> {merged_dir}")
    merged = DTPViTForImageClassification.from_pretrained(merged_dir)
    assert not any("lora" in name for name in merged.state_dict())
    torch.testing.assert_close(logits_of(merged, pixel_values), adapted, atol=1e-5, rtol=0)
    assert cli_main(["merge-lora", str(adapter), "--base", str(base), str(merged_dir)]) == 2  # exists
    export_model(str(merged_dir), str(tmp_path / "export"))
    assert (tmp_path / "export" / "modeling_dtp_vit.py").is_file()


def test_adapter_folder_names_no_local_path(vit):
    base, adapter, _ = vit
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "dtp_vit_base"
    assert json.loads((adapter / "leanvision_adapter.json").read_text()) == {
        "family": "dtp_vit", "base_model": "dtp_vit_base", "base_model_source": "local folder",
    }
    for name in ("adapter_config.json", "leanvision_adapter.json", "README.md"):
        text = (adapter / name).read_text()
        assert str(base.parent) not in text and tempfile.gettempdir() not in text, name


FRESH_PEFT = """
import json, sys
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification
export_dir, adapter_dir, inputs = sys.argv[1:]
base = AutoModelForImageClassification.from_pretrained(export_dir, trust_remote_code=True)
assert type(base).__module__.startswith("transformers_modules"), type(base).__module__
model = PeftModel.from_pretrained(base, adapter_dir).eval()
with torch.no_grad():
    print(json.dumps(model(pixel_values=load_file(inputs)["pixel_values"]).logits.tolist()))
"""


def test_adapter_loads_on_exported_remote_code_base_without_leanvision(vit, pixel_values, tmp_path):
    base, adapter, _ = vit
    export_model(str(base), str(tmp_path / "export"))
    inputs = str(tmp_path / "inputs.safetensors")
    save_file({"pixel_values": pixel_values}, inputs)
    logits = run_fresh(FRESH_PEFT, tmp_path, str(tmp_path / "export"), str(adapter), inputs)
    expected = logits_of(load_adapter_model(str(base), str(adapter)), pixel_values)
    torch.testing.assert_close(torch.tensor(logits), expected, atol=1e-6, rtol=0)


def test_adapter_publishes_as_an_adapter_repo_naming_its_base(vit, tmp_path):
    base, adapter, _ = vit
    with pytest.raises(ValueError, match="local folder 'dtp_vit_base'.*--base-model"):
        publish(str(adapter), "alice/dtp-vit-lora", dry_run=True, out_dir=str(tmp_path / "refused"))
    out = tmp_path / "bundle"
    publish(str(adapter), "alice/dtp-vit-lora", dry_run=True, out_dir=str(out), base_model=["alice/dtp-vit-base"])
    assert sorted(os.listdir(out)) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "eval_results.json", "leanvision_adapter.json",
    ]
    assert (out / "adapter_model.safetensors").read_bytes() == (adapter / "adapter_model.safetensors").read_bytes()
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "alice/dtp-vit-base"
    meta = metadata_load(str(out / "README.md"))
    assert meta["base_model"] == "alice/dtp-vit-base" and meta["library_name"] == "peft"
    assert {"lora", "peft", "dtp_vit"} <= set(meta["tags"]) and meta["pipeline_tag"] == "image-classification"
    card = (out / "README.md").read_text()
    assert 'PeftModel.from_pretrained(base, "alice/dtp-vit-lora")' in card and "| Accuracy |" in card
    for name in os.listdir(out):
        assert str(tmp_path) not in (out / name).read_text(errors="replace"), name
    # The published folder is itself an adapter folder: it loads on the base like the training output.
    torch.testing.assert_close(
        logits_of(load_adapter_model(str(base), str(out)), torch.ones(1, 3, 32, 32)),
        logits_of(load_adapter_model(str(base), str(adapter)), torch.ones(1, 3, 32, 32)), atol=0, rtol=0,
    )


@pytest.fixture(scope="module")
def qvision(tmp_path_factory):
    """A QVision base trained 1 step on shapes, then a LoRA adapter trained on it: (base, adapter, PeftModel)."""
    root = tmp_path_factory.mktemp("lora_qvision")
    recipe = os.path.join(RECIPES, "qvision_shapes.yaml")
    small = ["--max_train_samples", "16", "--max_eval_samples", "2", "--generation_max_new_tokens", "2",
             "--per_device_train_batch_size", "8", *QUIET]
    base = root / "qvision_base"
    train_main([recipe, "--output_dir", str(base), "--max_steps", "1", *small])
    adapter = root / "adapter"
    peft_model = train_adapter([
        recipe, "--model_name_or_path", str(base), "--config_overrides", "{}", "--lora",
        "--lora_target_modules", "q_proj,v_proj", "--output_dir", str(adapter), "--max_steps", "3",
        "--learning_rate", "1e-2", *small,
    ])
    return base, adapter, peft_model


def test_qvision_lora_adapts_q_former_and_decoder_and_leaves_clip_alone(qvision):
    base, adapter, peft_model = qvision
    assert_only_lora_trained(peft_model, base)  # the CLIP tower included
    lora_modules = {name.rsplit(".lora_", 1)[0] for name, _ in peft_model.named_parameters() if "lora_" in name}
    assert not any(".vision_model." in name for name in lora_modules)
    assert any(".qformer." in name for name in lora_modules)
    assert any(".language_model." in name for name in lora_modules)
    assert {name.rsplit(".", 1)[-1] for name in lora_modules} == {"q_proj", "v_proj"}

    inputs = {"pixel_values": torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)),
              "input_ids": torch.tensor([[1, 2, 3, 4], [4, 3, 2, 1]])}
    with torch.no_grad():
        plain = QVisionForConditionalGeneration.from_pretrained(base).eval()(**inputs).logits
        adapted = load_adapter_model(str(base), str(adapter))(**inputs).logits
    assert (adapted - plain).abs().max() > 1e-3


def test_qvision_merged_model_matches_the_adapter_model(qvision, tmp_path):
    base, adapter, _ = qvision
    merge_adapter(str(adapter), str(base), str(tmp_path / "merged"))
    inputs = {"pixel_values": torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)),
              "input_ids": torch.tensor([[1, 2, 3, 4], [4, 3, 2, 1]])}
    with torch.no_grad():
        merged = QVisionForConditionalGeneration.from_pretrained(tmp_path / "merged").eval()(**inputs).logits
        adapted = load_adapter_model(str(base), str(adapter))(**inputs).logits
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=0)
    assert (tmp_path / "merged" / "processor_config.json").is_file()


def tiny_dtp_clip():
    model = DTPCLIPModel(DTPCLIPConfig(
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
                       "num_attention_heads": 4, "num_pre_layers": 1, "num_shortened_layers": 1,
                       "compression_rate": 0.5},
        text_config={"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 4},
        projection_dim=16,
    ))
    g = torch.Generator().manual_seed(0)
    inputs = {"input_ids": torch.randint(0, 64, (4, 6), generator=g),
              "pixel_values": torch.randn(4, 3, 32, 32, generator=g)}
    return model, dict(inputs, return_loss=True), lambda out: out.logits_per_image


def tiny_gated_sparse_blip():
    model = GatedSparseBlipForConditionalGeneration(GatedSparseBlipConfig(
        latent_channels=4, latent_patch_size=2, max_latent_size=[8, 8], vision_hidden_size=32,
        vision_num_hidden_layers=1, vision_num_attention_heads=4, vision_intermediate_size=64,
        text_config={"vocab_size": 40, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 4, "max_position_embeddings": 16},
    ))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 40, (4, 6), generator=g)
    inputs = {"latents": torch.randn(4, 4, 8, 8, generator=g), "input_ids": ids, "labels": ids}
    return model, inputs, lambda out: out.logits


@pytest.mark.parametrize("family,build", [("dtp_clip", tiny_dtp_clip), ("gated_sparse_blip", tiny_gated_sparse_blip)])
def test_lora_step_by_hand_trains_only_adapters_and_merges(family, build, tmp_path):
    torch.manual_seed(0)
    model, inputs, output = build()
    model.save_pretrained(tmp_path / "base")
    model = get_family(family).model_class.from_pretrained(tmp_path / "base")
    peft_model = apply_lora(model, get_family(family), LoraArguments(lora=True, lora_r=2))
    with torch.no_grad():
        before = output(peft_model.eval()(**inputs))
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    peft_model.train()
    for _ in range(2):
        peft_model(**inputs).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert_only_lora_trained(peft_model, tmp_path / "base")
    with torch.no_grad():
        after = output(peft_model.eval()(**inputs))
        assert (after - before).abs().max() > 1e-4
        merged = output(peft_model.merge_and_unload().eval()(**inputs))
    torch.testing.assert_close(merged, after, atol=1e-5, rtol=0)


def test_bad_lora_arguments_are_refused_by_name(vit, qvision):
    base, _, _ = vit
    family = get_family("dtp_vit")
    for args, message in [
        (LoraArguments(lora_r=0), "lora_r .*positive integer, got 0"),
        (LoraArguments(lora_alpha=0), "lora_alpha must be positive"),
        (LoraArguments(lora_dropout=1.0), "lora_dropout"),
        (LoraArguments(lora_target_modules="q_proj,nope"), "'nope' matches no module of the dtp_vit model"),
        (LoraArguments(lora_target_modules="q_proj,"), "lora_target_modules must name"),
    ]:
        with pytest.raises(ValueError, match=message):
            apply_lora(DTPViTForImageClassification.from_pretrained(base), family, args)
    with pytest.raises(ValueError, match="pass --model_name_or_path"):
        apply_lora(DTPViTForImageClassification(DTPViTConfig(num_labels=2)), family, LoraArguments())
    # QVision's CLIP tower is never adapted: a target only it has is unknown.
    qvision_base, _, _ = qvision
    with pytest.raises(ValueError, match="'patch_embedding' matches no module .* outside its frozen tower"):
        apply_lora(QVisionForConditionalGeneration.from_pretrained(qvision_base),
                   get_family("qvision_multimodel"), LoraArguments(lora_target_modules="patch_embedding"))


def test_lora_flags_and_recipe_keys(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("family: dtp_vit\nlora: true\nlora_r: 16\nlora_target_modules: [q_proj, v_proj]\n")
    model_args, _, _ = parse_args([str(recipe), "--output_dir", str(tmp_path)])
    assert model_args.lora and model_args.lora_r == 16
    assert target_modules("dtp_vit", model_args.lora_target_modules) == ["q_proj", "v_proj"]
    model_args, _, _ = parse_args([str(recipe), "--lora_target_modules", "out_proj, fc1", "--lora_alpha", "8",
                                   "--output_dir", str(tmp_path)])
    assert target_modules("dtp_vit", model_args.lora_target_modules) == ["out_proj", "fc1"]
    assert model_args.lora_alpha == 8
    assert target_modules("gated_sparse_blip", None) == list(DEFAULT_TARGET_MODULES["gated_sparse_blip"])
