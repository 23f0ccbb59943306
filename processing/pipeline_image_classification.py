"""An "image-classification" pipeline that reads images with the bundle's loader and checks its input.

transformers' own pipeline converts a 16-bit PNG to RGB by clipping (a white image, answered confidently), waits for a
URL without a timeout, and gives an empty list for `top_k=0`. An exported DTP-ViT lists this class under
`custom_pipelines` in its config.json (and the installed package registers it for the task), so

    pipeline("image-classification", model=EXPORT_DIR, trust_remote_code=True)("scan-16bit.png")

sees the image as it is. It works for any model transformers' image-classification pipeline serves.
"""

from PIL import Image
from transformers import ImageClassificationPipeline as TransformersImageClassificationPipeline
from transformers.image_utils import is_valid_image

from .processing_common import DEFAULT_TIMEOUT, load_image


class ImageClassificationPipeline(TransformersImageClassificationPipeline):
    r"""
    transformers' image classification (`softmax` / `sigmoid` of `logits`, labels from `config.id2label`), with
    checked input:

    - images (PIL image, path, URL, base64 string) go through `processing_common.load_image`: 16-bit and float images
      scaled to 8 bits, NaN / inf refused, URLs fetched with `timeout` seconds (10 by default), errors naming the
      path or URL; numpy arrays and tensors go to the image processor as they are;
    - an empty list of images and a `top_k` below 1 are ValueErrors.

    Returns, per image, the `top_k` (5 by default) `[{"label": str, "score": float}]` by score.
    """

    def __call__(self, inputs=None, **kwargs):
        if "images" in kwargs:
            inputs = kwargs.pop("images")
        if isinstance(inputs, (list, tuple)) and len(inputs) == 0:
            raise ValueError("no images given: pass an image or a non-empty list of images")
        return super().__call__(inputs, **kwargs)

    def _sanitize_parameters(self, top_k=None, **kwargs):
        if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
            raise ValueError(f"`top_k` must be a whole number of at least 1, got {top_k!r}")
        return super()._sanitize_parameters(top_k=top_k, **kwargs)

    def preprocess(self, image, timeout=DEFAULT_TIMEOUT):
        if not is_valid_image(image) or isinstance(image, Image.Image):
            image = load_image(image, timeout=timeout)
        return super().preprocess(image, timeout=timeout)


__all__ = ["ImageClassificationPipeline"]
