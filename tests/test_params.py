"""Parameter tables: every count is checked against `numel()` sums over the modules; the only typed numbers are those of
the original QVision project's parameter table and the exact counts that reproduce it."""

import pytest
import torch
from torch import nn
from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel, GPTNeoConfig, GPTNeoForCausalLM

from leanvision.configuration.configuration_dtp_vit import DTPViTConfig
from leanvision.configuration.configuration_qvision import GPT_NEO_125M, GPT_NEO_350M, QVisionConfig
from leanvision.modeling.modeling_dtp_vit import DTPViTForImageClassification
from leanvision.modeling.modeling_qvision import QVisionForConditionalGeneration
from leanvision.training.callbacks import FreezingSchedule
from leanvision.training.tools.params import (
    ORIGINAL_TABLE,
    format_params_table,
    format_reconciliation,
    original_table_reconciliation,
    parameter_table,
    params_report,
    recipe_schedule,
)

FROZEN_PATTERNS = [r"^vision_model\.", r"^language_model\.transformer\.w[tp]e\."]
# The two phases of the original QVision recipe (and of training/recipes/qvision_coco.yaml).
ORIGINAL_SCHEDULE = [
    {"start_epoch": 0, "freeze": FROZEN_PATTERNS, "freeze_lowest_block_fraction": 0.7, "learning_rate": 2e-5},
    {"start_epoch": 7, "freeze": FROZEN_PATTERNS, "freeze_lowest_block_fraction": 0.5, "learning_rate": 2e-4},
]


def numel(module_or_params) -> int:
    params = module_or_params.parameters() if isinstance(module_or_params, nn.Module) else module_or_params
    return sum(p.numel() for p in params)


def by_component(rows) -> dict[str, dict]:
    return {row["component"]: row for row in rows}


def on_meta(build):
    with torch.device("meta"):
        return build()


@pytest.mark.parametrize(
    "make_config, text_config, frozen_blocks",
    [
        (QVisionConfig.original_size_config, GPT_NEO_350M, [16, 12]),
        (QVisionConfig.gpt_neo_125m_config, GPT_NEO_125M, [8, 6]),
    ],
    ids=["original_size", "gpt_neo_125m"],
)
def test_qvision_table_matches_numel_per_component(make_config, text_config, frozen_blocks):
    config = make_config()
    rows = by_component(parameter_table(config, ORIGINAL_SCHEDULE, model_class=QVisionForConditionalGeneration))
    model = on_meta(lambda: QVisionForConditionalGeneration(config))
    lm = model.language_model.transformer
    expected_total = {
        "vision": numel(model.vision_model),
        "projection": numel(model.visual_projection) + numel(model.language_projection),
        "qformer": numel(model.qformer),
        "cross_attention": numel(model.cross_attention_blocks),
        "lm": numel(model.language_model),  # lm_head is tied to wte: counted once
    }
    assert {name: row["total"] for name, row in rows.items() if name != "total"} == expected_total
    assert rows["total"]["total"] == numel(model) == sum(expected_total.values())

    # The backbones have exactly the CLIP ViT-B/32 vision tower and GPT-Neo sizes, built independently.
    assert expected_total["vision"] == numel(on_meta(lambda: CLIPVisionModel(CLIPVisionConfig())))
    assert expected_total["lm"] == numel(on_meta(lambda: GPTNeoForCausalLM(GPTNeoConfig(**text_config))))
    assert len(lm.h) == text_config["num_layers"]
    assert config.vision_config.image_size // config.vision_config.patch_size == 7

    # As built: CLIP frozen, everything else trainable.
    assert rows["vision"]["trainable"] == 0
    assert rows["total"]["trainable"] == numel(model) - expected_total["vision"]

    # Phase 1 freezes wte, wpe and floor(0.7 * n) of the n blocks; phase 2 floor(0.5 * n).
    embeddings = numel(lm.wte) + numel(lm.wpe)
    for phase, num_blocks in enumerate(frozen_blocks):
        frozen_blocks = sum(numel(block) for block in lm.h[:num_blocks])
        assert rows["lm"]["phases"][phase] == expected_total["lm"] - embeddings - frozen_blocks
        for name in ("projection", "qformer", "cross_attention"):
            assert rows[name]["phases"][phase] == expected_total[name]
        assert rows["vision"]["phases"][phase] == 0
        assert rows["total"]["phases"][phase] == sum(rows[name]["phases"][phase] for name in expected_total)


def test_saved_model_folder_gives_the_same_table(tmp_path):
    torch.manual_seed(0)
    config = QVisionConfig(
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=16, patch_size=8),
        text_config=dict(vocab_size=50, hidden_size=16, num_layers=4, num_heads=2, max_position_embeddings=16,
                         attention_types=[[["global"], 4]], bos_token_id=0, eos_token_id=0),
        num_query_tokens=2, qformer_hidden_size=16, qformer_num_layers=1, qformer_num_heads=2,
        cross_attention_every_n=2,
    )
    model = QVisionForConditionalGeneration(config)
    model.save_pretrained(tmp_path)
    from_folder = parameter_table(str(tmp_path), ORIGINAL_SCHEDULE, model_class=QVisionForConditionalGeneration)
    assert from_folder == parameter_table(model, ORIGINAL_SCHEDULE) == parameter_table(
        config, ORIGINAL_SCHEDULE, model_class=type(model)
    )
    assert by_component(from_folder)["total"]["total"] == numel(model)


def test_any_family_is_counted_by_top_level_module():
    # DTP-ViT has no component_parameters(): one row per top-level submodule; its class comes from the registry.
    config = DTPViTConfig(image_size=32, patch_size=8, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                          num_pre_layers=1, num_shortened_layers=1, num_labels=3)
    schedule = [{"start_step": 0, "freeze": [r"^dtp_vit\.embeddings\."]}]
    rows = by_component(parameter_table(config, schedule))
    model = DTPViTForImageClassification(config)
    children = dict(model.named_children())
    assert set(rows) == {name for name, child in children.items() if numel(child)} | {"total"}
    for name, child in children.items():
        if numel(child):
            assert rows[name]["total"] == rows[name]["trainable"] == numel(child)
    embeddings = numel(model.dtp_vit.embeddings)
    assert rows["total"]["phases"] == [numel(model) - embeddings]


def test_markdown_table():
    schedule = FreezingSchedule.from_recipe(ORIGINAL_SCHEDULE)
    rows = parameter_table(QVisionConfig.gpt_neo_125m_config(), schedule, model_class=QVisionForConditionalGeneration)
    table = format_params_table(rows, schedule).splitlines()
    assert len(table) == 2 + len(rows)
    assert table[0] == (
        "| Component | Total | Trainable (as built) | Trainable phase 1, from epoch 0 "
        "| Trainable phase 2, from epoch 7 |"
    )
    total = rows[-1]
    assert table[-1].startswith(f"| **total** | {total['total']:,} ({total['total'] / 1e6:.2f}M) |")
    share = 100.0 * total["phases"][1] / total["total"]
    assert table[-1].endswith(f"{total['phases'][1]:,} ({total['phases'][1] / 1e6:.2f}M), {share:.1f}% |")


def test_params_report_for_the_original_recipe(repo_root, tmp_path):
    recipe = f"{repo_root}/training/recipes/qvision_coco.yaml"
    schedule = recipe_schedule(recipe)
    assert [(p.start, p.freeze_lowest_block_fraction, p.learning_rate) for p in schedule.phases] == [
        (0, 0.7, 2e-5), (7, 0.5, 2e-4)
    ]
    report = params_report(recipe_path=recipe)
    rows = parameter_table(QVisionConfig.original_size_config(), schedule, model_class=QVisionForConditionalGeneration)
    assert format_params_table(rows, schedule) in report
    assert report.endswith(format_reconciliation(original_table_reconciliation()))
    assert report.splitlines()[0].startswith("Parameters of the original-size QVision")

    # A saved model of a registered family, without a schedule.
    config = DTPViTConfig(image_size=32, patch_size=8, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                          num_pre_layers=1, num_shortened_layers=1, num_labels=3)
    config.save_pretrained(tmp_path)
    assert params_report(str(tmp_path)).endswith(format_params_table(parameter_table(config)))


def test_original_table_is_reproduced_where_it_can_be():
    rows = {row["row"]: row for row in original_table_reconciliation()}
    assert list(rows) == list(ORIGINAL_TABLE)
    assert all(row["original"] == ORIGINAL_TABLE[name] for name, row in rows.items())

    # CLIP Encoder 152.06M: the whole CLIPModel ViT-B/32 (text tower included) + the 768 -> 1024 patch projection.
    clip = numel(on_meta(lambda: CLIPModel(CLIPConfig())))
    projection = numel(on_meta(lambda: nn.Linear(768, 1024)))
    assert (clip, projection) == (151_277_313, 787_456)
    assert rows["CLIP Encoder"]["computed"] == clip + projection == 152_064_769
    # Ours keeps only the vision tower.
    config = QVisionConfig.original_size_config()
    model = on_meta(lambda: QVisionForConditionalGeneration(config))
    assert numel(model.vision_model) == 87_456_000 and numel(model.visual_projection) == projection

    # GPT-Neo Decoder 355.80M: a 24-block, 1024-wide GPT-Neo, our `lm` row.
    decoder = numel(on_meta(lambda: GPTNeoForCausalLM(GPTNeoConfig(**GPT_NEO_350M))))
    assert rows["GPT-Neo Decoder"]["computed"] == decoder == numel(model.language_model) == 355_798_016

    # Its 240.36M trainable: all but the position embeddings and 9 of the 24 blocks (the text says 70% / 50%).
    lm = model.language_model.transformer
    assert numel(lm.wpe) == 2_097_152 and numel(lm.h[0]) == 12_593_152
    assert rows["GPT-Neo Decoder, trainable"]["computed"] == decoder - numel(lm.wpe) - 9 * numel(lm.h[0]) == 240_362_496

    # The Q-Former row is not reproduced; the totals are, with the table's own Q-Former figure.
    assert rows["Custom Q-Former"]["computed"] is None and rows["Custom Q-Former"]["reproduced"] == "no"
    ours = numel(model.qformer) + numel(model.language_projection) + numel(model.cross_attention_blocks)
    assert f"= {ours:,}" in rows["Custom Q-Former"]["how"]
    assert rows["Total"]["computed"] == 152_064_769 + 355_798_016 + 66_200_000
    assert rows["Trainable"]["computed"] == 240_362_496 + 66_200_000
    assert [row["reproduced"] for row in rows.values()] == [
        "yes", "yes", "yes", "no", "with the table's Q-Former", "with the table's Q-Former"
    ]
    assert f"{numel(model):,}" in rows["Total"]["how"]

    table = format_reconciliation(list(rows.values())).splitlines()
    assert len(table) == 2 + len(rows)
    assert table[2].startswith("| CLIP Encoder | 152.06M | 152,064,769 (152.06M) | yes |")
    assert table[5].startswith("| Custom Q-Former | 66.20M | - | no |")
