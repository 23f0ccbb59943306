"""The custom handler of this model repository, for Hugging Face Inference Endpoints and the Hub widget.

`EndpointHandler(path)` loads the model saved in `path` through transformers (`trust_remote_code=True`: the model code
ships in this folder) as the pipeline of the task that README.md names in its `pipeline_tag`. `handler(data)` answers
one request `{"inputs": IMAGE, "parameters": {...}}` in the JSON shape of that task:

- image-classification: `[{"label": str, "score": float}, ...]`; parameters `top_k`, `function_to_apply`.
- zero-shot-image-classification: `[{"label": str, "score": float}, ...]`; parameters `candidate_labels` (required:
  a list of strings or one comma-separated string) and `hypothesis_template` (with `{}` where the label goes).
- image-to-text: `[{"generated_text": str}]`; generation parameters (`max_new_tokens`, `num_beams`, `do_sample`,
  `temperature`, `top_k`, `top_p`, ...), flat or in a `generation_parameters` dict.
- image-text-to-text (an assistant): `{"inputs": {"image": IMAGE, "text": QUESTION}, ...}` answers
  `[{"generated_text": str}]`, the assistant's reply to one user turn holding the image and the question (through
  the model's chat template); the generation parameters as for image-to-text.

IMAGE is a base64 string (a `data:` URI too), the raw image bytes, an http(s) URL (fetched with a timeout), or a PIL
image (what the endpoint container makes of a raw `image/png` / `image/jpeg` request body). A bad request raises
`ValueError` with a message naming the problem: no or empty input, bad base64, data that is not an image, an image
above `max_image_pixels` (read from the image header, before the pixels are decoded), an unknown parameter or a bad
parameter value.

This file is one self-contained module: it imports only the standard library, PIL, torch and transformers.
"""

import base64
import binascii
import io
import os
import re
import threading
import time
import urllib.error
import urllib.request
import warnings

import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from transformers import pipeline

TASKS = ("image-classification", "zero-shot-image-classification", "image-to-text", "image-text-to-text")
GENERATING_TASKS = ("image-to-text", "image-text-to-text")
MAX_QUESTION_CHARS = 4000
# Largest image accepted, in pixels (width x height), and largest encoded image, in bytes.
MAX_IMAGE_PIXELS = 40_000_000
MAX_IMAGE_BYTES = 20 * 1024 * 1024
URL_TIMEOUT_SECONDS = 10.0
MAX_CANDIDATE_LABELS = 100
# Keys of a request besides "inputs" and "parameters" that are accepted and ignored (the serverless API's options).
IGNORED_KEYS = ("options",)
_URL = re.compile(r"^https?://", re.IGNORECASE)
_OTHER_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)
_DATA_URI = re.compile(r"^data:[^,]*;base64,", re.IGNORECASE)


def _integer(low: int, high: int):
    def check(name, value):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"parameter {name!r} must be an integer from {low} to {high}, got {value!r}")
        return value

    return check


def _number(low: float, high: float, low_open: bool = False):
    def check(name, value):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not (low < value if low_open else low <= value) or not value <= high:
            bound = f"above {low}" if low_open else f"from {low}"
            raise ValueError(f"parameter {name!r} must be a number {bound} to {high}, got {value!r}")
        return float(value)

    return check


def _boolean(name, value):
    if not isinstance(value, bool):
        raise ValueError(f"parameter {name!r} must be true or false, got {value!r}")
    return value


def _choice(*options: str):
    def check(name, value):
        if value not in options:
            raise ValueError(f"parameter {name!r} must be one of {list(options)}, got {value!r}")
        return value

    return check


def _candidate_labels(name, value):
    if isinstance(value, str):
        value = [label.strip() for label in value.split(",")]
        value = [label for label in value if label]
    if not isinstance(value, list) or not all(isinstance(label, str) and label.strip() for label in value):
        raise ValueError(f"parameter {name!r} must be a list of non-empty strings or one comma-separated string")
    if not 1 <= len(value) <= MAX_CANDIDATE_LABELS:
        raise ValueError(f"parameter {name!r} must hold 1 to {MAX_CANDIDATE_LABELS} labels, got {len(value)}")
    return value


def _template(name, value):
    if not isinstance(value, str) or "{}" not in value:
        raise ValueError(f"parameter {name!r} must be a string with {{}} where the label goes, got {value!r}")
    return value


GENERATION_PARAMETERS = {
    "max_new_tokens": _integer(1, 512),
    "min_new_tokens": _integer(0, 512),
    "num_beams": _integer(1, 16),
    "do_sample": _boolean,
    "temperature": _number(0.0, 100.0, low_open=True),
    "top_k": _integer(1, 10_000),
    "top_p": _number(0.0, 1.0, low_open=True),
    "repetition_penalty": _number(0.0, 100.0, low_open=True),
    "length_penalty": _number(-100.0, 100.0),
    "no_repeat_ngram_size": _integer(0, 64),
    "early_stopping": _boolean,
}
PARAMETERS = {
    "image-classification": {"top_k": _integer(1, 10_000), "function_to_apply": _choice("sigmoid", "softmax", "none")},
    "zero-shot-image-classification": {"candidate_labels": _candidate_labels, "hypothesis_template": _template},
    "image-to-text": GENERATION_PARAMETERS,
    "image-text-to-text": GENERATION_PARAMETERS,
}


def read_task(path: str) -> str:
    """The `pipeline_tag` in the metadata block of README.md in `path`."""
    try:
        with open(os.path.join(path, "README.md"), encoding="utf-8") as f:
            text = f.read()
    except OSError:
        raise ValueError("the model folder has no README.md, whose pipeline_tag names the task to serve") from None
    metadata = re.match(r"---\s*\n(.*?)\n---\s*(\n|$)", text, re.DOTALL)
    tag = re.search(r"^pipeline_tag:\s*['\"]?([\w-]+)", metadata.group(1) if metadata else "", re.MULTILINE)
    if not tag:
        raise ValueError("README.md names no pipeline_tag in its metadata block")
    if tag.group(1) not in TASKS:
        raise ValueError(f"this handler serves {list(TASKS)}, not {tag.group(1)!r}")
    return tag.group(1)


class EndpointHandler:
    """Answers `{"inputs": IMAGE, "parameters": {...}}` requests with the pipeline of the model in `path`."""

    def __init__(self, path: str = "", max_image_pixels: int = MAX_IMAGE_PIXELS,
                 max_image_bytes: int = MAX_IMAGE_BYTES, url_timeout: float = URL_TIMEOUT_SECONDS):
        path = path or "."
        self.task = read_task(path)
        self.max_image_pixels = max_image_pixels
        self.max_image_bytes = max_image_bytes
        self.url_timeout = url_timeout
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.pipeline = pipeline(self.task, model=path, trust_remote_code=True, device=device)
        # A pipeline is not safe to call from several threads at once; a server may do so.
        self._lock = threading.Lock()

    def __call__(self, data: dict) -> list:
        if not isinstance(data, dict):
            raise ValueError(f"the request must be a JSON object with 'inputs', got {type(data).__name__}")
        unknown = sorted(set(data) - {"inputs", "parameters", *IGNORED_KEYS})
        if unknown:
            raise ValueError(f"unknown request key(s) {unknown}; a request holds 'inputs' and 'parameters'")
        if "inputs" not in data:
            raise ValueError("the request has no 'inputs' (the image)")
        parameters = self.check_parameters(data.get("parameters"))
        if self.task == "image-text-to-text":
            image, question = self.image_and_question(data["inputs"])
            messages = [{"role": "user", "content": [{"type": "image", "image": image},
                                                     {"type": "text", "text": question}]}]
            with self._lock:
                answer = self.pipeline(text=messages, return_full_text=False, **parameters)
            return self.to_json(answer)
        image = self.load_image(data["inputs"])
        with self._lock:
            answer = self.pipeline(image, **parameters)
        return self.to_json(answer)

    def image_and_question(self, inputs) -> tuple[Image.Image, str]:
        """`{"image": IMAGE, "text": QUESTION}` of an image-text-to-text request, both checked."""
        if not isinstance(inputs, dict) or set(inputs) != {"image", "text"}:
            got = sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__
            raise ValueError(f"'inputs' must be an object with 'image' and 'text' (the question), got {got}")
        question = inputs["text"]
        if not isinstance(question, str) or not question.strip():
            raise ValueError("'inputs.text' must be a non-empty question")
        if len(question) > MAX_QUESTION_CHARS:
            raise ValueError(f"'inputs.text' is {len(question)} characters, over the limit of {MAX_QUESTION_CHARS}")
        return self.load_image(inputs["image"]), question

    def check_parameters(self, parameters) -> dict:
        """The request's parameters, checked against the task's names, types and ranges."""
        if parameters is None:
            parameters = {}
        if not isinstance(parameters, dict):
            raise ValueError(f"'parameters' must be a JSON object, got {type(parameters).__name__}")
        parameters = dict(parameters)
        if self.task in GENERATING_TASKS:
            nested = parameters.pop("generation_parameters", None) or {}
            if not isinstance(nested, dict):
                raise ValueError("parameter 'generation_parameters' must be a JSON object")
            clash = sorted(set(nested) & set(parameters))
            if clash:
                raise ValueError(f"parameter(s) {clash} given both flat and in 'generation_parameters'")
            parameters.update(nested)
        known = PARAMETERS[self.task]
        unknown = sorted(set(parameters) - set(known))
        if unknown:
            raise ValueError(f"unknown parameter(s) {unknown} for {self.task}; known: {sorted(known)}")
        checked = {name: known[name](name, value) for name, value in parameters.items()}
        if self.task == "zero-shot-image-classification" and "candidate_labels" not in checked:
            raise ValueError("zero-shot-image-classification needs the parameter 'candidate_labels'")
        return checked

    def load_image(self, inputs) -> Image.Image:
        """The request's image as an RGB PIL image (EXIF orientation applied), refused above the size limits."""
        if isinstance(inputs, dict) and set(inputs) == {"image"}:  # {"inputs": {"image": ...}}, an older client shape
            inputs = inputs["image"]
        if isinstance(inputs, Image.Image):
            image = inputs
        elif isinstance(inputs, (bytes, bytearray, memoryview)):
            image = self.open_image(bytes(inputs))
        elif isinstance(inputs, str):
            text = inputs.strip()
            if not text:
                raise ValueError("empty input: 'inputs' must be an image (base64 string, raw bytes or http(s) URL)")
            if _URL.match(text):
                image = self.open_image(self.fetch(text))
            elif _OTHER_SCHEME.match(text):
                raise ValueError("only http:// and https:// image URLs are fetched")
            else:
                image = self.open_image(self.decode_base64(text))
        elif inputs is None:
            raise ValueError("empty input: 'inputs' is null")
        else:
            kind = type(inputs).__name__
            raise ValueError(f"'inputs' must be one image as a base64 string, raw bytes or an http(s) URL, got {kind}")
        self.check_size(image)
        try:
            return ImageOps.exif_transpose(image).convert("RGB")
        except (OSError, SyntaxError, ValueError) as err:
            raise ValueError(f"the image data is truncated or corrupt ({type(err).__name__})") from None

    def decode_base64(self, text: str) -> bytes:
        text = "".join(_DATA_URI.sub("", text).split())
        if len(text) * 3 // 4 > self.max_image_bytes:
            raise ValueError(f"the base64 image is over the limit of {self.max_image_bytes} bytes")
        altchars = b"-_" if ("-" in text or "_" in text) else None
        try:
            data = base64.b64decode(text + "=" * (-len(text) % 4), altchars=altchars, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("'inputs' is neither an http(s) URL nor valid base64 image data") from None
        if not data:
            raise ValueError("empty input: the base64 string decodes to no bytes")
        return data

    def fetch(self, url: str) -> bytes:
        """The body at `url`, read within `url_timeout` seconds and at most `max_image_bytes` long."""
        deadline = time.monotonic() + self.url_timeout
        request = urllib.request.Request(url, headers={"User-Agent": "EndpointHandler/1.0", "Accept": "image/*"})
        chunks, size = [], 0
        try:
            with urllib.request.urlopen(request, timeout=self.url_timeout) as response:
                while True:
                    chunk = response.read(64 * 1024)
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > self.max_image_bytes:
                        raise ValueError(f"the image at the URL is over the limit of {self.max_image_bytes} bytes")
                    if time.monotonic() > deadline:
                        raise TimeoutError
                    chunks.append(chunk)
        except urllib.error.HTTPError as err:
            raise ValueError(f"could not fetch the image URL: HTTP {err.code}") from None
        except urllib.error.URLError as err:
            raise ValueError(f"could not fetch the image URL: {err.reason}") from None
        except TimeoutError:
            raise ValueError(f"could not fetch the image URL within {self.url_timeout:g} seconds") from None
        except OSError as err:
            raise ValueError(f"could not fetch the image URL: {type(err).__name__}") from None
        if not chunks:
            raise ValueError("empty input: the image URL returned no data")
        return b"".join(chunks)

    def open_image(self, data: bytes) -> Image.Image:
        """`data` opened lazily as an image: only its header is read here."""
        if not data:
            raise ValueError("empty input: the image has no bytes")
        if len(data) > self.max_image_bytes:
            raise ValueError(f"the image is {len(data)} bytes, over the limit of {self.max_image_bytes} bytes")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # check_size decides
                return Image.open(io.BytesIO(data))
        except Image.DecompressionBombError:
            raise ValueError(f"the image is over the limit of {self.max_image_pixels} pixels") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            raise ValueError("'inputs' is not an image: no image format was recognised in the data") from None

    def check_size(self, image: Image.Image) -> None:
        width, height = image.size
        if width < 1 or height < 1:
            raise ValueError(f"the image is {width}x{height} pixels: empty")
        if width * height > self.max_image_pixels:
            raise ValueError(
                f"the image is {width}x{height} pixels, over the limit of {self.max_image_pixels} pixels"
            )

    def to_json(self, answer) -> list:
        """The pipeline's answer with plain Python values only."""
        if isinstance(answer, dict):
            answer = [answer]
        if self.task in GENERATING_TASKS:
            return [{"generated_text": str(item["generated_text"])} for item in answer]
        return [{"label": str(item["label"]), "score": float(item["score"])} for item in answer]
