"""Input checks and the one image loader shared by the processors, the captioning pipeline and the CLI (exported
bundles carry this file next to the processor files; it imports only numpy and PIL)."""

import base64
import binascii
import errno
import io
import logging
import os
import urllib.error
import urllib.request

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

# Largest image decoded (width x height), checked from the header before decoding: 8192 x 8192.
MAX_IMAGE_PIXELS = 8192 * 8192
# Seconds to wait for an image URL's server before giving up.
DEFAULT_TIMEOUT = 10.0
# transformers' image processors log this when `do_rescale` meets images already in [0, 1].
RESCALED_WARNING = (
    "It looks like you are trying to rescale already rescaled images. If the input images have pixel values between "
    "0 and 1, set `do_rescale=False` to avoid rescaling them again."
)


def to_rgb(image: Image.Image, name: str = "image") -> Image.Image:
    """An 8-bit RGB copy of a PIL image: 16-bit images are scaled from 0-65535, float images from [0, 1] (or 0-255
    when their values exceed 1) -- PIL's own conversion would clip them to white or black; NaN / inf and empty images
    are refused."""
    if image.width == 0 or image.height == 0:
        raise ValueError(f"{name} is empty ({image.width} x {image.height} pixels)")
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        if not np.isfinite(pixels).all():
            raise ValueError(f"{name} has NaN or inf pixel values")
        if image.mode.startswith("I;16") or pixels.max() > 255:
            top = 65535.0
        elif image.mode == "F" and pixels.min() >= 0 and pixels.max() <= 1:
            top = 1.0
        else:
            top = 255.0
        image = Image.fromarray(np.clip(pixels / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    return image.convert("RGB")


def _decode(data, name: str, max_pixels: int) -> Image.Image:
    pil_limit = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None  # reading the header only; our limit is checked next
        with Image.open(data) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ValueError(f"{name} has {width * height:,} pixels, more than the {max_pixels:,} allowed")
            image.load()
            image = ImageOps.exif_transpose(image)
    except UnidentifiedImageError:
        raise ValueError(f"{name} is not an image file PIL can read") from None
    except (OSError, SyntaxError) as err:  # truncated or corrupted data
        raise ValueError(f"{name} could not be decoded (truncated or corrupted?): {err}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = pil_limit
    return to_rgb(image, name)


def check_file(path: str) -> None:
    """Refuses a `path` that is no readable file, saying what it is: a folder, a symlink loop, a symlink to a missing
    file, or nothing."""
    if os.path.isfile(path):
        return
    if os.path.isdir(path):
        raise ValueError(f"{path!r} is a folder, not an image file")
    if os.path.islink(path):
        try:
            os.stat(path)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise ValueError(f"{path!r} is a symlink loop (a link that leads back to itself)") from None
            raise FileNotFoundError(f"{path!r} is a symlink to a missing file ({os.readlink(path)!r})") from None
    raise FileNotFoundError(f"no such image file: {path!r}")


def load_image(source, timeout: float | None = DEFAULT_TIMEOUT, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """An upright 8-bit RGB PIL image from a PIL image, a file path, an http(s) URL (fetched with `timeout` seconds,
    10 by default) or a base64 string. Every format PIL opens is read; the size is checked from the header before
    decoding; EXIF orientation is applied; 16-bit and float images are scaled to 8 bits. Errors name the path or URL.
    """
    if isinstance(source, Image.Image):
        return to_rgb(ImageOps.exif_transpose(source))
    if not isinstance(source, str):
        raise TypeError(f"an image must be a PIL image, a path, a URL or a base64 string, not {type(source).__name__}")
    if source.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(source, timeout=timeout) as response:
                data = response.read()
        except urllib.error.HTTPError as err:
            raise ValueError(f"could not fetch the image {source!r}: HTTP {err.code} {err.reason}") from None
        except (urllib.error.URLError, OSError) as err:  # refused, unknown host, timed out
            reason = getattr(err, "reason", err)
            raise ValueError(f"could not fetch the image {source!r}: {reason}") from None
        return _decode(io.BytesIO(data), repr(source), max_pixels)
    if os.path.lexists(source):  # a dangling or looping symlink exists too
        check_file(source)
        return _decode(source, repr(source), max_pixels)
    payload = source.split("base64,", 1)[1] if source.startswith("data:") and "base64," in source else source
    try:
        data = base64.b64decode(payload, validate=True) if len(payload) >= 16 else b""
    except (binascii.Error, ValueError):
        data = b""
    if not data:
        raise FileNotFoundError(f"no such image file: {source!r}")
    return _decode(io.BytesIO(data), "the base64 image", max_pixels)


def check_images(images, do_rescale: bool = True) -> None:
    """Rejects an empty list of images (the image processor would silently return an empty batch), images without
    pixels and NaN / inf pixels; logs transformers' warning for float images already in [0, 1] when `do_rescale`."""
    if isinstance(images, (list, tuple)) and len(images) == 0:
        raise ValueError("`images` is an empty list: pass at least one image.")
    for index, image in enumerate(images if isinstance(images, (list, tuple)) else [images]):
        if isinstance(image, Image.Image):
            if image.width == 0 or image.height == 0:
                raise ValueError(f"image {index} is empty ({image.width} x {image.height} pixels)")
            continue
        if not hasattr(image, "shape") or not hasattr(image, "dtype"):
            continue
        array = image.detach().cpu().float().numpy() if hasattr(image, "detach") else np.asarray(image)
        if array.size == 0:
            raise ValueError(f"image {index} has shape {tuple(array.shape)}: it holds no pixels")
        if array.dtype.kind == "f":
            if not np.isfinite(array).all():
                raise ValueError(f"image {index} has NaN or inf pixel values")
            if do_rescale and array.min() >= 0 and array.max() <= 1:
                logger.warning(RESCALED_WARNING)


def checked_pixel_values(image_processor, images, return_tensors: str = "pt"):
    """`image_processor(images)` (its `BatchFeature` with `pixel_values`) after `check_images`, whose float-image
    warning follows the image processor's own `do_rescale`."""
    check_images(images, do_rescale=getattr(image_processor, "do_rescale", True))
    return image_processor(images, return_tensors=return_tensors)


def check_texts(text) -> None:
    """Rejects an empty list of texts (the tokenizer would return an empty batch, or fail deep inside)."""
    if not isinstance(text, str) and len(text) == 0:
        raise ValueError("`text` is an empty list: pass at least one text.")


def warn_if_truncated(tokenizer, texts: list[str], limit: int | None) -> None:
    """Logs a warning when a text is longer than `limit` tokens, so that truncation is never silent."""
    if not limit or max(len(text.encode()) for text in texts) + 2 <= limit:  # every token covers a byte or more
        return
    longest = max(len(ids) for ids in tokenizer(texts)["input_ids"])
    if longest > limit:
        logger.warning("a text of %d tokens is truncated to the %d-token limit", longest, limit)


__all__ = [
    "DEFAULT_TIMEOUT", "MAX_IMAGE_PIXELS", "check_file", "check_images", "check_texts", "checked_pixel_values",
    "load_image", "to_rgb", "warn_if_truncated",
]
