"""Small file helpers shared by the tools: image discovery and loading, atomic JSON writes."""

import json
import os
import shutil
import tempfile
from contextlib import contextmanager

from PIL import Image

from ..processing import processing_common

# Every extension of a format PIL can open (gif, tif, tiff and more besides jpg, png, bmp, webp).
IMAGE_EXTENSIONS = tuple(sorted(ext for ext, kind in Image.registered_extensions().items() if kind in Image.OPEN))
MAX_IMAGE_PIXELS = processing_common.MAX_IMAGE_PIXELS


def open_image(path: str, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """An image file as an upright 8-bit RGB PIL image, through the loader the processors' pipeline uses
    (`processing_common.load_image`).

    The size is checked from the header before any pixel is decoded (this limit replaces PIL's decompression-bomb
    check); EXIF orientation is applied; 16-bit images are scaled from 0-65535 and float images from [0, 1] to 8 bits
    (PIL's own conversion would clip them to white or black); NaN pixels are refused; palette, grayscale, RGBA and
    CMYK become RGB. A missing, truncated or non-image file raises with the file's name.
    """
    processing_common.check_file(path)
    return processing_common.load_image(path, max_pixels=max_pixels)


def image_files(paths: list[str]) -> list[str]:
    """The image files named in `paths` (any format PIL opens: jpg, png, gif, tiff, bmp, webp, ...), folders expanded
    (sorted, not recursive)."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(
                os.path.join(path, name)
                for name in os.listdir(path)
                if name.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(path, name))
            )
            if not found:
                raise ValueError(f"folder {path!r} holds no image files PIL can open")
            files.extend(found)
        elif os.path.isfile(path):
            if not path.lower().endswith(IMAGE_EXTENSIONS):
                raise ValueError(f"{path!r} is not an image file PIL can open (unknown extension)")
            files.append(path)
        else:
            if os.path.islink(path):
                processing_common.check_file(path)  # names a symlink loop or a dangling link
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


STAGING_PREFIX = ".staging-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except (OverflowError, ValueError):  # not a possible process id
        return False
    return True


def remove_stale_staging(out_dir: str) -> list[str]:
    """Removes the staging folders beside `out_dir` left by a run of ours that was killed (SIGKILL, power loss): those
    named for `out_dir` whose process no longer runs. Returns the folders removed."""
    parent = os.path.dirname(os.path.abspath(out_dir))
    prefix = f"{STAGING_PREFIX}{os.path.basename(os.path.abspath(out_dir))}-"
    removed = []
    for name in os.listdir(parent) if os.path.isdir(parent) else []:
        pid = name[len(prefix):].split("-", 1)[0]
        if name.startswith(prefix) and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
            removed.append(os.path.join(parent, name))
    return removed


def _ordinary_permissions(folder: str) -> None:
    """Folders 0755 and files 0644 (under umask 022) instead of tempfile's private 0700 / 0600."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~umask)
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, 0o666 & ~umask)


@contextmanager
def staged_folder(out_dir: str):
    """Yields a new temporary folder beside `out_dir` to write into; when the block ends normally it gets ordinary
    permissions and replaces `out_dir`, when it raises it is removed: `out_dir` is never half-written and a previous
    one survives a failure. The folder's name carries this process's id, so staging folders left by a killed run are
    recognised and removed by the next one."""
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    remove_stale_staging(out_dir)
    prefix = f"{STAGING_PREFIX}{os.path.basename(os.path.abspath(out_dir))}-{os.getpid()}-"
    tmp_dir = tempfile.mkdtemp(prefix=prefix, dir=parent)
    try:
        yield tmp_dir
        _ordinary_permissions(tmp_dir)
        replace_dir_atomically(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise


def ordinary_file_mode() -> int:
    """0666 under the process umask (0644 under umask 022): the mode `open()` would give a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_text_atomically(path: str, text: str) -> str:
    """Writes `text` to a temporary file beside `path`, then renames it over `path`; returns `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp_path, ordinary_file_mode())  # mkstemp's 0600 would make the result private
        os.replace(tmp_path, path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
    return path


def write_json_atomically(path: str, value) -> str:
    """Writes `value` as JSON (indented, final newline) atomically (`write_text_atomically`); returns `path`."""
    return write_text_atomically(path, json.dumps(value, indent=2) + "\n")
