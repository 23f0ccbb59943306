"""An "image-to-text" pipeline for captioning models shipped as remote code.

transformers 5 removed the stock "image-to-text" task (it now redirects to "image-text-to-text", which needs a text
prompt). An exported leanvision captioner lists this class under `custom_pipelines` in its config.json, which
restores

    pipeline("image-to-text", model=EXPORT_DIR, trust_remote_code=True)(image)  # [{"generated_text": "..."}]

It works for any model whose processor takes `images=` and whose model has `generate()`.
"""

from PIL import Image
from transformers import GenerationConfig, Pipeline
from transformers.image_utils import is_valid_image

from .processing_common import DEFAULT_TIMEOUT, load_image


class ImageToTextPipeline(Pipeline):
    r"""
    Captions images: `processor(images=image)` -> `model.generate(**inputs, **generate_kwargs)` ->
    `processor.batch_decode(..., skip_special_tokens=True)`.

    Call it on an image (PIL image, numpy array or torch tensor, path, URL or base64 string) or a list of them; URLs are
    fetched with `timeout` seconds (10 by default). Generation parameters (`max_new_tokens`,
    `num_beams`, `do_sample`, `temperature`, any other `GenerationConfig` field, or a `generate_kwargs` dict) pass
    through to `generate()`; parameters neither given nor set in the model's generation config fall back to
    `max_new_tokens=40`.

    Returns, per image, `[{"generated_text": caption}]`.
    """

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False
    _pipeline_calls_generate = True
    _default_generation_config = GenerationConfig(max_new_tokens=40)

    def _sanitize_parameters(self, generate_kwargs=None, timeout=None, **generation_params):
        preprocess_params = {} if timeout is None else {"timeout": timeout}
        generate_kwargs = {**(generate_kwargs or {}), **generation_params}
        for name in ("num_beams", "max_new_tokens", "num_return_sequences"):
            value = generate_kwargs.get(name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"`{name}` must be a whole number of at least 1, got {value!r}")
        return preprocess_params, {"generate_kwargs": generate_kwargs}, {}

    def __call__(self, inputs, *args, **kwargs):
        if isinstance(inputs, (list, tuple)) and len(inputs) == 0:
            raise ValueError("no images given: pass an image or a non-empty list of images")
        return super().__call__(inputs, *args, **kwargs)

    def preprocess(self, image, timeout=DEFAULT_TIMEOUT):
        # Arrays and tensors go to the processor as they are, as in transformers' own image pipelines.
        if not is_valid_image(image) or isinstance(image, Image.Image):
            image = load_image(image, timeout=timeout)
        inputs = self.processor(images=image)
        if self.dtype is not None:
            inputs = inputs.to(self.dtype)  # casts floating-point tensors only
        return inputs

    def _forward(self, model_inputs, generate_kwargs=None):
        generate_kwargs = self._prepare_generate_kwargs(generate_kwargs or {}, return_dict_in_generate=False)
        return {"generated_ids": self.model.generate(**model_inputs, **generate_kwargs)}

    def postprocess(self, model_outputs):
        texts = self.processor.batch_decode(model_outputs["generated_ids"], skip_special_tokens=True)
        return [{"generated_text": text.strip()} for text in texts]


__all__ = ["ImageToTextPipeline"]
