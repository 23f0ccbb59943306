"""Zero-shot image classification with a contrastive model: top-1 / top-5 against prompted class names."""

import torch
from torch.utils.data import DataLoader

DEFAULT_TEMPLATE = "a photo of a {}"


@torch.no_grad()
def class_text_embeddings(model, processor, class_names, template=DEFAULT_TEMPLATE, batch_size=64):
    """Normalised text embeddings of `template.format(name)` for every class, (num_classes, dim)."""
    prompts = [template.format(name) for name in class_names]
    chunks = []
    for start in range(0, len(prompts), batch_size):
        tokens = processor(text=prompts[start : start + batch_size], return_tensors="pt")
        tokens = {k: v.to(model.device) for k, v in tokens.items()}
        chunks.append(model.get_text_features(tokens["input_ids"], tokens.get("attention_mask"), normalize=True))
    return torch.cat(chunks)


@torch.no_grad()
def zero_shot_scores(model, pixel_values, text_embeds):
    """Cosine similarities (num_images, num_classes) of the images to the class prompts."""
    return model.get_image_features(pixel_values.to(model.device), normalize=True) @ text_embeds.t()


@torch.no_grad()
def zero_shot_accuracy(
    model, processor, dataset, class_names, template=DEFAULT_TEMPLATE, batch_size=64, accelerator=None, topk=(1, 5)
) -> dict:
    """Top-k zero-shot accuracy of `model` on `dataset` (rows with `pixel_values` and an integer `labels`).

    With an `accelerator`, each rank scores its shard and the hits are gathered, so the result covers the whole set.
    """
    was_training = model.training
    model.eval()
    text_embeds = class_text_embeddings(model, processor, class_names, template)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=_collate_images)
    if accelerator is not None:
        loader = accelerator.prepare_data_loader(loader, device_placement=True)
    hits = {k: [] for k in topk}
    for pixel_values, labels in loader:
        scores = zero_shot_scores(model, pixel_values, text_embeds)
        ranked = scores.topk(min(max(topk), scores.shape[1]), dim=-1).indices
        for k in topk:
            hit = (ranked[:, :k] == labels.to(ranked.device)[:, None]).any(dim=-1).float()
            hits[k].append(accelerator.gather_for_metrics(hit) if accelerator is not None else hit)
    model.train(was_training)
    return {f"zero_shot_top{k}": float(torch.cat(v).mean()) for k, v in hits.items()}


def _collate_images(rows):
    return torch.stack([r["pixel_values"] for r in rows]), torch.tensor([int(r["labels"]) for r in rows])
