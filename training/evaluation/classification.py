"""Accuracy of a saved image classifier (DTP-ViT) on a labelled dataset: `leanvision evaluate` for classifiers.

With `p_i` the model's class probabilities for image `i` and `y_i` its label, top-k accuracy is
`mean_i 1[y_i is among the k largest entries of p_i]` (top-1 = accuracy); `k` is capped at the number of classes.
Dataset labels are matched to the model's classes by name (`config.label2id`), so a dataset whose ClassLabel lists
the classes in another order is scored correctly.
"""

import torch
from torch.utils.data import DataLoader

from ..arguments import recorded_seed
from ..data.digits import digits_dataset
from ..data.loading import evaluation_split, first_rows, label_names, load_any_dataset
from ..inference import load_classifier, progress_bar
from .zero_shot import ImageLabelCollator, evaluation_report


def topk_hits(probabilities: torch.Tensor, labels: torch.Tensor, ks) -> dict[int, torch.Tensor]:
    """Per k, a bool per image: is its label among its k most probable classes."""
    ranked = probabilities.topk(max(ks), dim=-1).indices
    return {k: (ranked[:, :k] == labels[:, None]).any(dim=-1) for k in ks}


def dataset_label_ids(names: list[str], label2id: dict[str, int]) -> list[int]:
    """The model's class id for each dataset class name; a class the model does not know is an error."""
    unknown = [name for name in names if name not in label2id]
    if unknown:
        raise ValueError(
            f"the dataset's classes {unknown[:5]} are not classes of the model (it knows {sorted(label2id)[:10]})"
        )
    return [label2id[name] for name in names]


@torch.no_grad()
def classifier_accuracy(model, processor, dataset, label_ids: list[int], image_column: str = "image",
                        label_column: str = "label", batch_size: int = 64, top_k: int = 5,
                        progress: bool = False) -> dict:
    """`accuracy`, `top{k}_accuracy` and the mean `boundary_ratio` (DTP) of `model` on `dataset`, whose label column
    holds dataset class indices; `label_ids[c]` is the model's id of dataset class `c`."""
    if len(dataset) == 0:
        raise ValueError("classifier evaluation needs at least one image")
    k = min(top_k, model.config.num_labels)
    ks = sorted({1, k})
    to_model = torch.tensor(label_ids)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=ImageLabelCollator(processor, image_column,
                                                                                          label_column))
    hits, ratios = {k_: [] for k_ in ks}, []
    bar = progress_bar(len(dataset), "classifying", progress)
    for pixel_values, labels in loader:
        outputs = model(pixel_values=pixel_values.to(model.device))
        for k_, hit in topk_hits(outputs.logits.float().cpu(), to_model[labels], ks).items():
            hits[k_].append(hit.float())
        if outputs.boundary_ratio is not None:
            ratios.append(outputs.boundary_ratio.float().cpu())
        bar.update(len(labels))
    bar.close()
    scores = {"accuracy": float(torch.cat(hits[1]).mean()), f"top{k}_accuracy": float(torch.cat(hits[k]).mean())}
    if ratios:
        scores["boundary_ratio"] = float(torch.cat(ratios).mean())
    return scores


def evaluate_classifier(model_dir: str, dataset_name: str, split: str | None = None, label_column: str = "label",
                        image_column: str = "image", max_samples: int | None = None, batch_size: int = 64,
                        config_name: str | None = None, top_k: int = 5, progress: bool = False) -> dict:
    """Accuracy of a saved classifier on a dataset split: a JSON-ready report. `dataset_name` "digits" is
    scikit-learn's digits test split that `train.py` held out for this model (it depends on the training seed, read
    from the model's training record and reported as `digits_split_seed`); otherwise a Hub dataset, a `save_to_disk`
    folder or a local image folder (class = sub-folder name)."""
    family, model, processor = load_classifier(model_dir)
    if family.task != "image_classification":
        raise ValueError(f"{model_dir!r} holds a {family.name} model; classifier accuracy needs a classifier")
    seed = recorded_seed(model_dir) if dataset_name == "digits" else None
    data = digits_dataset(seed=seed) if dataset_name == "digits" else load_any_dataset(dataset_name, config_name)
    evaluation, split = evaluation_split(data, split, dataset_name)
    for column in (image_column, label_column):
        if column not in evaluation.column_names:
            raise ValueError(f"dataset has no column {column!r}; columns: {evaluation.column_names}")
    names = label_names(evaluation, label_column)
    label_ids = dataset_label_ids(names, model.config.label2id)
    evaluation = first_rows(evaluation, max_samples)
    if not hasattr(evaluation.features[label_column], "names"):  # plain values: index them as label_names does
        evaluation = evaluation.map(lambda row: {label_column: names.index(str(row[label_column]))})
    scores = classifier_accuracy(model, processor, evaluation, label_ids, image_column, label_column, batch_size,
                                 top_k, progress)
    report = evaluation_report(model_dir, family, dataset_name, split, len(evaluation),
                               num_classes=model.config.num_labels, scores=scores,
                               chance_accuracy=1.0 / model.config.num_labels)
    return report if seed is None else {**report, "digits_split_seed": seed}
