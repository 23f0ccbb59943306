"""Evaluation: COCO caption metrics (the `evaluate` module in `caption_metrics/`, loaded by path) and the
`leanvision evaluate` entries, generation-based caption scores (`captions`), zero-shot accuracy (`zero_shot`), and VQA
accuracy, its question-type prior baseline and LLaVA-Bench answer files (`vqa`)."""
