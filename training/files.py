"""Small file helpers shared by the tools: image discovery and loading, atomic JSON writes."""

import json
import os
import shutil
import tempfile
from contextlib import contextmanager

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# Largest image decoded (width x height), checked from the header before decoding: 8192 x 8192.
MAX_IMAGE_PIXELS = 8192 * 8192


def open_image(path: str, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """An image file as an upright 8-bit RGB PIL image.

    The size is checked from the header before any pixel is decoded (this limit replaces PIL's decompression-bomb
    check); EXIF orientation is applied; 16-bit and float grayscale images are scaled to 8 bits (PIL's own conversion
    would clip them to white); palette, grayscale, RGBA and CMYK become RGB. A missing, truncated or non-image file
    raises with the file's name.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such image file: {path!r}")
    pil_limit = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None  # reading the header only; our limit is checked next
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ValueError(f"{path!r} has {width * height:,} pixels, more than the {max_pixels:,} allowed")
            image.load()
            image = ImageOps.exif_transpose(image)
    except UnidentifiedImageError:
        raise ValueError(f"{path!r} is not an image file PIL can read") from None
    except (OSError, SyntaxError) as err:  # truncated or corrupted data
        raise ValueError(f"{path!r} could not be decoded (truncated or corrupted?): {err}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = pil_limit
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or pixels.max() > 255 else 255.0
        image = Image.fromarray(np.clip(pixels / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    return image.convert("RGB")


def image_files(paths: list[str]) -> list[str]:
    """The image files named in `paths` (jpg, jpeg, png, bmp, webp), folders expanded (sorted, not recursive)."""
    kinds = "/".join(extension[1:] for extension in IMAGE_EXTENSIONS)
    files = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(
                os.path.join(path, name)
                for name in os.listdir(path)
                if name.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(path, name))
            )
            if not found:
                raise ValueError(f"folder {path!r} holds no {kinds} images")
            files.extend(found)
        elif os.path.isfile(path):
            if not path.lower().endswith(IMAGE_EXTENSIONS):
                raise ValueError(f"{path!r} is not a {kinds} image file")
            files.append(path)
        else:
            raise FileNotFoundError(f"no such image or folder: {path!r}")
    return files


def replace_dir_atomically(tmp_dir: str, out_dir: str) -> None:
    """Moves the finished `tmp_dir` to `out_dir`; an existing `out_dir` is kept until the new one is in place."""
    backup = None
    if os.path.exists(out_dir):
        backup = tempfile.mkdtemp(prefix=".old-", dir=os.path.dirname(os.path.abspath(out_dir)))
        os.rmdir(backup)
        os.rename(out_dir, backup)
    os.rename(tmp_dir, out_dir)
    if backup:
        shutil.rmtree(backup, ignore_errors=True)


@contextmanager
def staged_folder(out_dir: str):
    """Yields a new temporary folder beside `out_dir` to write into; when the block ends normally it replaces
    `out_dir`, when it raises it is removed: `out_dir` is never half-written and a previous one survives a failure."""
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=".staging-", dir=parent)
    try:
        yield tmp_dir
        replace_dir_atomically(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise


def write_json_atomically(path: str, value) -> str:
    """Writes `value` as JSON to a temporary file beside `path`, then renames it over `path`; returns `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(value, f, indent=2)
            f.write("\n")
        os.replace(tmp_path, path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
    return path
