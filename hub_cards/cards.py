"""Model cards for exported bundles."""

from huggingface_hub import ModelCard, ModelCardData

_MINIMAL = """---
{{ card_data }}
---

# {{ title }}

A leanvision **{{ family }}** model ({{ summary }}). It runs as remote code: no leanvision install is needed.

```python
from transformers import pipeline

pipe = pipeline("{{ pipeline_tag }}", model="REPO_OR_FOLDER", trust_remote_code=True)
```

{% if metrics %}## Evaluation

| metric | value |
|---|---|
{% for name, value in metrics.items() %}| {{ name }} | {{ value }} |
{% endfor %}{% endif %}"""

_SUMMARIES = {
    "dtp_vit": "a Vision Transformer with Dynamic Token Pooling: patches are pooled into learned segments after "
    "the first layers, so later layers see about compression_rate x the tokens",
}


def render_minimal_card(family, config, metrics: dict) -> str:
    """A short card: metadata for the Hub widget, a usage snippet and the evaluation metrics."""
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag=family.pipeline_tag,
        tags=["custom_code", "leanvision", family.name],
    )
    shown = {k.removeprefix("eval_"): round(v, 4) for k, v in metrics.items() if isinstance(v, (int, float))}
    card = ModelCard.from_template(
        data,
        template_str=_MINIMAL,
        title=f"leanvision {family.name}",
        family=family.name,
        summary=_SUMMARIES.get(family.name, family.name),
        pipeline_tag=family.pipeline_tag,
        metrics={k: v for k, v in shown.items() if k not in ("runtime", "samples_per_second", "steps_per_second")},
    )
    return str(card)
