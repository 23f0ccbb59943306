"""Evaluation: COCO caption metrics (the `evaluate` module in `caption_metrics/`, loaded by path) and the
`leanvision evaluate` entries, generation-based caption scores (`captions`) and zero-shot accuracy (`zero_shot`)."""
