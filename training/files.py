"""Small file helpers shared by the tools: image discovery and atomic JSON writes."""

import json
import os
import tempfile

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


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
