"""A "zero-shot-image-classification" pipeline that checks its labels and reads images with the bundle's loader.

transformers' own pipeline iterates over `candidate_labels`, so the string "red circle, blue square" becomes one label
per character, and an empty list or an empty image list ends in an IndexError. An exported DTP-CLIP lists this class
under `custom_pipelines` in its config.json (and the installed package registers it for the task), so

    pipeline("zero-shot-image-classification", model=EXPORT_DIR, trust_remote_code=True)(
        image, candidate_labels="red circle, blue square")

ranks two labels. It works for any model transformers' zero-shot pipeline serves (CLIP-like, SigLIP).
"""

from transformers import ZeroShotImageClassificationPipeline as TransformersZeroShotPipeline

from .processing_common import DEFAULT_TIMEOUT, load_image


def parse_candidate_labels(labels) -> list[str]:
    """The labels of `labels`: a list of strings as it is, one string split at its commas (as transformers' zero-shot
    *text* classification does). None, an empty list and a string without a label are refused."""
    if isinstance(labels, str):
        labels = [label.strip() for label in labels.split(",") if label.strip()]
    elif isinstance(labels, (list, tuple)):
        wrong = [label for label in labels if not isinstance(label, str)]
        if wrong:
            raise TypeError(f"`candidate_labels` must be strings, got {type(wrong[0]).__name__} {wrong[0]!r}")
        labels = list(labels)
    elif labels is not None:
        raise TypeError(f"`candidate_labels` must be a list of strings or one comma-separated string, "
                        f"not {type(labels).__name__}")
    if not labels:
        raise ValueError(f"`candidate_labels` is {'missing' if labels is None else 'empty'}: pass at least one label, "
                         "e.g. ['a cat', 'a dog'] or 'a cat, a dog'")
    return labels


def check_template(template) -> None:
    """Refuses a `hypothesis_template` without one `{}` for the label (every prompt would be the same)."""
    try:
        usable = isinstance(template, str) and template.format("x") != template
    except (IndexError, KeyError, ValueError):
        usable = False
    if not usable:
        raise ValueError(f"`hypothesis_template` must be a string with one {{}} for the label, got {template!r}")


class ZeroShotImageClassificationPipeline(TransformersZeroShotPipeline):
    r"""
    transformers' zero-shot image classification (`softmax(logits_per_image)` over the prompts
    `hypothesis_template.format(label)`), with checked input:

    - `candidate_labels` is a list of strings or one comma-separated string; an empty one is a ValueError;
    - `hypothesis_template` must contain `{}`; an empty list of images is a ValueError;
    - images (PIL image, path, URL, base64 string) go through `processing_common.load_image`: 16-bit and float images
      scaled to 8 bits, NaN / inf refused, URLs fetched with `timeout` seconds (10 by default), errors naming the
      path or URL.

    Returns, per image, `[{"score": float, "label": str}]` sorted by score.
    """

    def __call__(self, image=None, candidate_labels=None, **kwargs):
        if "images" in kwargs:
            image = kwargs.pop("images")
        if isinstance(image, (list, tuple)) and len(image) == 0:
            raise ValueError("no images given: pass an image or a non-empty list of images")
        return super().__call__(image, candidate_labels=candidate_labels, **kwargs)

    def _sanitize_parameters(self, **kwargs):
        if "candidate_labels" in kwargs:
            kwargs["candidate_labels"] = parse_candidate_labels(kwargs["candidate_labels"])
        if kwargs.get("hypothesis_template") is not None:
            check_template(kwargs["hypothesis_template"])
        return super()._sanitize_parameters(**kwargs)

    def preprocess(self, image, timeout=DEFAULT_TIMEOUT, **kwargs):
        return super().preprocess(load_image(image, timeout=timeout), **kwargs)


__all__ = ["ZeroShotImageClassificationPipeline", "check_template", "parse_candidate_labels"]
