"""Zero-shot image classification with a contrastive model: top-1 / top-5 of prompted class names, during training
and in `leanvision evaluate`.

A class `c` is scored by `cos(f_image, f_text(prompt_c))`; the prediction is the best-scoring prompt.
"""

import os

import torch
from datasets import ClassLabel
from torch.utils.data import DataLoader

from ..data import shapes
from ..data.digits import digits_dataset
from ..data.loading import evaluation_split, first_rows, load_any_dataset
from ..families import family_of_model_dir, load_saved

DEFAULT_TEMPLATE = "a photo of a {}"


def prompts_for(class_names: list[str], template: str = DEFAULT_TEMPLATE) -> list[str]:
    """`template` filled with each class name (`{}` marks where the name goes)."""
    if "{}" not in template:
        raise ValueError(f"the prompt template must contain '{{}}' where the class name goes, got {template!r}")
    return [template.format(name) for name in class_names]


@torch.no_grad()
def prompt_embeddings(model, processor, prompts: list[str], batch_size: int = 64) -> torch.Tensor:
    """L2-normalised text embeddings of the prompts, (num_classes, projection_dim)."""
    chunks = []
    for start in range(0, len(prompts), batch_size):
        tokens = processor(text=prompts[start : start + batch_size])
        chunks.append(
            model.get_text_features(
                tokens["input_ids"].to(model.device), tokens["attention_mask"].to(model.device), normalize=True
            )
        )
    return torch.cat(chunks)


class ImageLabelCollator:
    """Rows of an image classification dataset -> (`pixel_values`, integer labels)."""

    def __init__(self, processor, image_column: str = "image", label_column: str = "label"):
        self.processor, self.image_column, self.label_column = processor, image_column, label_column

    def __call__(self, rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        images = [row[self.image_column].convert("RGB") for row in rows]
        pixel_values = self.processor(images=images, return_tensors="pt")["pixel_values"]
        return pixel_values, torch.tensor([int(row[self.label_column]) for row in rows])


@torch.no_grad()
def zero_shot_accuracy(model, processor, dataset, prompts: list[str], image_column: str = "image",
                       label_column: str = "label", batch_size: int = 64, accelerator=None, topk=(1, 5)) -> dict:
    """Top-k zero-shot accuracy on `dataset` (an image column and an integer label column indexing `prompts`), and
    the mean boundary ratio of the images when the image tower reports one (DTP).

    With an `accelerator`, each rank scores its shard and the hits are gathered (`gather_for_metrics` drops the
    samples padded onto the last batch), so the result covers the whole set exactly once.
    """
    if len(dataset) == 0:
        raise ValueError("zero-shot evaluation needs at least one image")
    was_training = model.training
    model.eval()
    text_embeds = prompt_embeddings(model, processor, prompts)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=ImageLabelCollator(processor, image_column,
                                                                                          label_column))
    if accelerator is not None:
        loader = accelerator.prepare_data_loader(loader, device_placement=True)
    gather = accelerator.gather_for_metrics if accelerator is not None else (lambda tensor: tensor)
    ratios = []
    hook = model.vision_model.register_forward_hook(
        lambda module, args, output: ratios.append(getattr(output, "boundary_ratio", None))
    )
    hits = {k: [] for k in topk}
    try:
        for pixel_values, labels in loader:
            scores = model.get_image_features(pixel_values.to(model.device), normalize=True) @ text_embeds.t()
            ranked = scores.topk(min(max(topk), scores.shape[1]), dim=-1).indices
            for k in topk:
                hits[k].append(gather((ranked[:, :k] == labels.to(ranked.device)[:, None]).any(dim=-1).float()))
            if ratios[-1] is not None:
                ratios[-1] = gather(ratios[-1])
    finally:
        hook.remove()
        model.train(was_training)
    result = {f"zero_shot_top{k}": float(torch.cat(v).mean()) for k, v in hits.items()}
    if ratios and ratios[0] is not None:
        result["boundary_ratio"] = float(torch.cat(ratios).mean())
    return result


def shapes_prompts(template: str = DEFAULT_TEMPLATE) -> list[str]:
    """The prompts of the built-in shapes classes: the default template with the right article ("a photo of an orange
    circle"), any other template filled as given."""
    names = shapes.class_names()
    return [shapes.prompt(name) for name in names] if template == DEFAULT_TEMPLATE else prompts_for(names, template)


def evaluate_zero_shot(model_dir: str, dataset_name: str, split: str | None = None, template: str = DEFAULT_TEMPLATE,
                       label_column: str = "label", image_column: str = "image", max_samples: int | None = None,
                       batch_size: int = 64, config_name: str | None = None) -> dict:
    """Zero-shot accuracy of a saved contrastive model on an image classification dataset: a JSON-ready report.

    `dataset_name` "shapes" is the built-in single-object shapes test split (by default prompted "a photo of a red
    circle", with `template` otherwise);
    "digits" is scikit-learn's digits test split; otherwise a Hub / local dataset with a ClassLabel column.
    """
    family = family_of_model_dir(model_dir)
    if family.task != "contrastive":
        raise ValueError(f"{model_dir!r} holds a {family.name} model, which has no text tower for zero-shot use")
    if dataset_name == "shapes":
        evaluation = shapes.shapes_splits(train=0, test=max_samples or 300, seed=0, max_objects=1)["test"]
        split, label_column = "test", "label_id"
        prompts = shapes_prompts(template)
    else:
        data = digits_dataset() if dataset_name == "digits" else load_any_dataset(dataset_name, config_name)
        evaluation, split = evaluation_split(data, split, dataset_name)
        labels = evaluation.features.get(label_column)
        if not isinstance(labels, ClassLabel):
            raise ValueError(
                f"zero-shot evaluation needs a ClassLabel column {label_column!r}; columns: {evaluation.features}"
            )
        prompts = prompts_for(labels.names, template)
        evaluation = first_rows(evaluation, max_samples)
    _, model, processor = load_saved(model_dir)
    scores = zero_shot_accuracy(model, processor, evaluation, prompts, image_column=image_column,
                                label_column=label_column, batch_size=batch_size)
    return evaluation_report(model_dir, family, dataset_name, split, len(evaluation), prompts=prompts, scores=scores,
                             chance_top1=1.0 / len(prompts))


def evaluation_report(model_dir: str, family, dataset_name: str, split: str, num_samples: int, **results) -> dict:
    """The JSON `leanvision evaluate` writes: which model (folder name only, never a local path), family, dataset,
    split and sample count, then `results`."""
    return {
        "model": os.path.basename(os.path.normpath(model_dir)),
        "family": family.name,
        "dataset": dataset_name,
        "split": split,
        "num_samples": num_samples,
        **results,
    }
