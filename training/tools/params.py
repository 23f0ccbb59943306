"""Parameter counts per component, total and trainable, as built and in each phase of a freezing schedule.

Models are built on the meta device (shapes only, no memory, no weights), so the original-size QVision (CLIP ViT-B/32
vision tower + a 24-block, 1024-wide GPT-Neo) is counted in seconds without any download, and set beside the
parameter table of the original QVision project (`original_table_reconciliation`).
"""

import os

import torch
from torch import nn

from ..arguments import load_recipe
from ..callbacks import FreezingSchedule, base_trainable_names
from ..families import family_of_model_dir, get_family


def build_on_meta(config, model_class) -> nn.Module:
    """The model of `config`, with parameters on the meta device (requires_grad as the model's __init__ sets it)."""
    with torch.device("meta"):
        return model_class(config)


def load_for_counting(source, model_class=None) -> nn.Module:
    """
    A model to count: `source` is a model (used as is), a config, or a saved model folder (only its config.json is
    read: counts do not depend on the weights). `model_class` defaults to the registered family's model class
    (`leanvision.training.families`).
    """
    if isinstance(source, nn.Module):
        return source
    if isinstance(source, (str, os.PathLike)):
        model_class = model_class or family_of_model_dir(str(source)).model_class
        source = model_class.config_class.from_pretrained(source)
    return build_on_meta(source, model_class or get_family(source.model_type).model_class)


def component_parameters(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """
    The model's `component_parameters()` if it has one, else its top-level submodules (plus `"other"` for
    parameters directly on the model). Each parameter is counted once (tied weights appear once).
    """
    if hasattr(model, "component_parameters"):
        return model.component_parameters()
    components, seen = {}, set()
    for name, child in model.named_children():
        params = [p for p in child.parameters() if id(p) not in seen]
        seen |= {id(p) for p in params}
        if params:
            components[name] = params
    rest = [p for p in model.parameters() if id(p) not in seen]
    if rest:
        components["other"] = rest
    return components


def parameter_table(model_or_config, schedule: FreezingSchedule | list | None = None, model_class=None) -> list[dict]:
    """
    One row per component and a final `"total"` row, each a dict:
    `{"component", "total", "trainable", "phases": [trainable in phase 1, phase 2, ...]}` (`phases` is empty without
    a schedule). `trainable` is the count as the model is built (e.g. QVision's CLIP tower frozen); a phase's count
    is what [`ProgressiveFreezingCallback`] leaves trainable in it.
    """
    model = load_for_counting(model_or_config, model_class)
    if schedule is not None and not isinstance(schedule, FreezingSchedule):
        schedule = FreezingSchedule.from_recipe(schedule)
    names = {id(p): name for name, p in model.named_parameters()}
    base = base_trainable_names(model)
    phase_sets = [schedule.trainable_names(model, i, base) for i in range(len(schedule))] if schedule else []

    rows = []
    for component, params in component_parameters(model).items():
        rows.append(
            {
                "component": component,
                "total": sum(p.numel() for p in params),
                "trainable": sum(p.numel() for p in params if names[id(p)] in base),
                "phases": [sum(p.numel() for p in params if names[id(p)] in s) for s in phase_sets],
            }
        )
    rows.append(
        {
            "component": "total",
            "total": sum(row["total"] for row in rows),
            "trainable": sum(row["trainable"] for row in rows),
            "phases": [sum(row["phases"][i] for row in rows) for i in range(len(phase_sets))],
        }
    )
    return rows


def _count(n: int) -> str:
    return f"{n:,} ({n / 1e6:.2f}M)"


def format_params_table(rows: list[dict], schedule: FreezingSchedule | None = None) -> str:
    """Markdown table of `parameter_table` rows; trainable counts also as a percentage of the component total."""
    num_phases = len(rows[0]["phases"]) if rows else 0
    header = ["Component", "Total", "Trainable (as built)"]
    for i in range(num_phases):
        start = f", from {schedule.unit} {schedule.phases[i].start}" if schedule is not None else ""
        header.append(f"Trainable phase {i + 1}{start}")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row in rows:

        def share(n, total=row["total"]):
            return f"{_count(n)}, {100.0 * n / total:.1f}%" if total else _count(n)

        name = "**total**" if row["component"] == "total" else row["component"]
        cells = [name, _count(row["total"]), share(row["trainable"]), *(share(n) for n in row["phases"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def recipe_schedule(recipe_path: str) -> FreezingSchedule | None:
    """The `freezing` schedule of a recipe file (YAML or JSON), or None when it has none."""
    recipe = load_recipe(recipe_path)
    return FreezingSchedule.from_recipe(recipe["freezing"]) if recipe.get("freezing") else None


# The parameter table of the original QVision project, in millions as it prints them.
ORIGINAL_TABLE = {
    "CLIP Encoder": 152.06,
    "GPT-Neo Decoder": 355.80,
    "GPT-Neo Decoder, trainable": 240.36,
    "Custom Q-Former": 66.20,
    "Total": 574.06,
    "Trainable": 306.56,
}
# Its decoder's trainable count is what remains with the position embeddings and the lowest 9 of the 24 blocks frozen;
# its text says 70% (phase 1) then 50% (phase 2) of the decoder was frozen. The recipe follows the text.
ORIGINAL_TABLE_FROZEN_BLOCKS = 9


def _millions(n: float) -> float:
    return round(n / 1e6, 2)


def original_table_reconciliation() -> list[dict]:
    """
    The original QVision project's parameter table, row by row, beside the counts that reproduce it, built on the meta
    device: `{"row", "original" (millions, as printed), "computed" (parameters, or None), "reproduced", "how"}`.
    Its CLIP row is the whole CLIP ViT-B/32 (the text tower included: the original loaded CLIP whole) plus the
    768 -> 1024 patch projection; its decoder row is a 24-block, 1024-wide GPT-Neo. Its Q-Former row belongs to a
    design this project does not copy: that row is not reproduced, and the totals that add it are checked with the
    table's own figure for it. `reproduced` is "yes", "no" or "with the table's Q-Former".
    """
    from transformers import CLIPConfig, CLIPModel

    from ...configuration.configuration_qvision import QVisionConfig
    from ...modeling.modeling_qvision import QVisionForConditionalGeneration

    config = QVisionConfig.original_size_config()
    model = build_on_meta(config, QVisionForConditionalGeneration)
    clip = build_on_meta(CLIPConfig(vision_config=config.vision_config.to_dict()), CLIPModel)

    def count(*modules) -> int:
        return sum(p.numel() for module in modules for p in module.parameters())

    clip_total, projection, vision = count(clip), count(model.visual_projection), count(model.vision_model)
    lm = model.language_model.transformer
    decoder, positions, block = count(model.language_model), count(lm.wpe), count(lm.h[0])
    if any(count(b) != block for b in lm.h):
        raise ValueError("the decoder's blocks differ in size: the per-block count below would be wrong")
    decoder_trainable = decoder - positions - ORIGINAL_TABLE_FROZEN_BLOCKS * block
    qformer, language_projection = count(model.qformer), count(model.language_projection)
    cross_attention = count(model.cross_attention_blocks)
    table_qformer = ORIGINAL_TABLE["Custom Q-Former"] * 1e6
    vc = config.vision_config
    # (row, computed count or None, whether the count adds the table's Q-Former figure, how)
    rows = [
        ("CLIP Encoder", clip_total + projection, False,
         f"the whole CLIPModel ViT-B/32 {clip_total:,} (text tower included: the original loaded CLIP whole) + the "
         f"patch projection {vc.hidden_size} -> {config.qformer_hidden_size} {projection:,} (in our `projection` row); "
         f"our `vision` row keeps only the vision tower, {vision:,}"),
        ("GPT-Neo Decoder", decoder, False,
         f"our `lm` row: GPT-Neo, {len(lm.h)} blocks, {config.text_config.hidden_size} wide (lm_head tied to the "
         "token embeddings)"),
        ("GPT-Neo Decoder, trainable", decoder_trainable, False,
         f"{decoder:,} - position embeddings {positions:,} - {ORIGINAL_TABLE_FROZEN_BLOCKS} of {len(lm.h)} blocks x "
         f"{block:,}: the table implies {ORIGINAL_TABLE_FROZEN_BLOCKS} blocks (and the position embeddings) frozen, "
         "its text says 70% then 50% of the decoder; the recipe follows the text (phase columns above)"),
        ("Custom Q-Former", None, False,
         f"not reproduced: the original's Q-Former is a design we do not copy. Ours: Q-Former "
         f"({config.qformer_num_layers} blocks, {int(config.use_global_token)} + {config.num_query_tokens} tokens, "
         f"{config.qformer_hidden_size} wide) {qformer:,} + projection {config.qformer_hidden_size} -> "
         f"{config.text_config.hidden_size} {language_projection:,} + {len(model.cross_attention_blocks)} gated "
         f"cross-attention blocks {cross_attention:,} = {qformer + language_projection + cross_attention:,}"),
        ("Total", clip_total + projection + decoder + table_qformer, True,
         f"{clip_total + projection:,} + {decoder:,} + the table's {table_qformer / 1e6:.2f}M Q-Former; "
         f"ours: {count(model):,}"),
        ("Trainable", decoder_trainable + table_qformer, True,
         f"{decoder_trainable:,} + the table's {table_qformer / 1e6:.2f}M Q-Former; ours per phase: the table above"),
    ]
    return [
        {"row": name, "original": ORIGINAL_TABLE[name], "computed": None if computed is None else round(computed),
         "reproduced": _reproduced(computed, ORIGINAL_TABLE[name], with_table_qformer), "how": how}
        for name, computed, with_table_qformer, how in rows
    ]


def _reproduced(computed: float | None, original: float, with_table_qformer: bool) -> str:
    if computed is None or _millions(computed) != original:
        return "no"
    return "with the table's Q-Former" if with_table_qformer else "yes"


def format_reconciliation(rows: list[dict]) -> str:
    """Markdown table of `original_table_reconciliation` rows."""
    lines = ["| Original table row | Original | Computed here | Reproduced | How |", "|---|---:|---:|:---:|---|"]
    for row in rows:
        computed = "-" if row["computed"] is None else _count(row["computed"])
        lines.append(f"| {row['row']} | {row['original']:.2f}M | {computed} | "
                     f"{row['reproduced']} | {row['how']} |")
    return "\n".join(lines)


def params_report(model_path: str | None = None, recipe_path: str | None = None) -> str:
    """
    Markdown for `leanvision params`: the saved model at `model_path` (its family from config.json), else the
    original-size QVision (`QVisionConfig.original_size_config()`) followed by its reconciliation with the original
    QVision project's parameter table; with a column per freezing phase of `recipe_path`.
    """
    from ...configuration.configuration_qvision import QVisionConfig
    from ...modeling.modeling_qvision import QVisionForConditionalGeneration

    schedule = recipe_schedule(recipe_path) if recipe_path else None
    if model_path:
        rows, title = parameter_table(model_path, schedule), f"Parameters of {model_path}"
    else:
        config = QVisionConfig.original_size_config()
        rows = parameter_table(config, schedule, model_class=QVisionForConditionalGeneration)
        title = (
            "Parameters of the original-size QVision (CLIP ViT-B/32 vision tower, Q-Former "
            f"{config.qformer_hidden_size} wide, GPT-Neo {config.text_config.num_layers} blocks x "
            f"{config.text_config.hidden_size})"
        )
    if recipe_path:
        title += f", freezing phases of {recipe_path}"
    report = f"{title}\n\n{format_params_table(rows, schedule)}"
    if not model_path:
        report += (
            "\n\nThe original QVision project's parameter table, reproduced where it can be:\n\n"
            + format_reconciliation(original_table_reconciliation())
        )
    return report


__all__ = [
    "build_on_meta",
    "component_parameters",
    "format_params_table",
    "format_reconciliation",
    "load_for_counting",
    "original_table_reconciliation",
    "parameter_table",
    "params_report",
    "recipe_schedule",
]
