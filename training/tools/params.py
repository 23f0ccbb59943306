"""Parameter counts per component, total and trainable, as built and in each phase of a freezing schedule.

Models are built on the meta device (shapes only, no memory, no weights), so the seed-size QVision (CLIP ViT-B/32 +
GPT-Neo-125M widths) is counted in well under a second without any download.
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


def params_report(model_path: str | None = None, recipe_path: str | None = None) -> str:
    """
    Markdown for `leanvision params`: the saved model at `model_path` (its family from config.json), else the
    seed-size QVision (CLIP ViT-B/32 + GPT-Neo-125M widths), with a column per freezing phase of `recipe_path`.
    """
    from ...configuration.configuration_qvision import QVisionConfig
    from ...modeling.modeling_qvision import QVisionForConditionalGeneration

    schedule = recipe_schedule(recipe_path) if recipe_path else None
    if model_path:
        rows, title = parameter_table(model_path, schedule), f"Parameters of {model_path}"
    else:
        rows = parameter_table(QVisionConfig.seed_size_config(), schedule, model_class=QVisionForConditionalGeneration)
        title = "Parameters of the seed-size QVision (CLIP ViT-B/32 + GPT-Neo-125M widths)"
    if recipe_path:
        title += f", freezing phases of {recipe_path}"
    return f"{title}\n\n{format_params_table(rows, schedule)}"


__all__ = [
    "build_on_meta",
    "component_parameters",
    "format_params_table",
    "load_for_counting",
    "parameter_table",
    "params_report",
    "recipe_schedule",
]
