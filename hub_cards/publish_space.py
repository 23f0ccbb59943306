"""`leanvision publish-space`: the Gradio demo of `hub_cards/space` as a Hugging Face Space showing model repos.

The Space folder holds `app.py` and `requirements.txt` (copied unchanged), `space_config.json` (the model repo ids and
zero-shot candidate labels that app.py reads) and `README.md`, the Space card (`sdk: gradio`, `app_file: app.py`).
The token comes from the usual huggingface_hub login or `HF_TOKEN`; it is never printed or written.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile

SPACE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "space")
SPACE_FILES = ("app.py", "requirements.txt")
# The gradio version app.py is tested with; requirements.txt pins the same one.
GRADIO_SDK_VERSION = "6.31.0"
TITLE = "leanvision demo"
# key (as in app.py's MODELS and space_config.json) -> (command-line flag, display name, pipeline task)
MODELS = {
    "gsb": ("--gsb", "GatedSparseBlip", "image-to-text"),
    "qvision": ("--qvision", "QVision", "image-to-text"),
    "classifier": ("--classifier", "DTP-ViT", "image-classification"),
    "zero_shot": ("--zero-shot", "DTP-CLIP", "zero-shot-image-classification"),
    "assistant": ("--assistant", "DTP-LLaVA", "image-text-to-text"),
}


def render_space_card(models: dict, license: str = "apache-2.0") -> str:
    """README.md of the Space: gradio metadata, the configured models (linked on the Hub) and how to run it locally."""
    from huggingface_hub import SpaceCard, SpaceCardData

    data = SpaceCardData(
        title=TITLE, sdk="gradio", sdk_version=GRADIO_SDK_VERSION, app_file="app.py", license=license,
        models=[models[key] for key in MODELS if models.get(key)],
        tags=["leanvision", "image-to-text", "image-classification", "zero-shot-image-classification"],
        emoji="🔍", colorFrom="indigo", colorTo="blue", pinned=False,
        short_description="Captions, DTP labels and token-pooling overlays",
    )
    rows = [{"name": name, "task": task, "repo": models.get(key)} for key, (_, name, task) in MODELS.items()]
    card = SpaceCard.from_template(data, template_path=os.path.join(SPACE_DIR, "card.jinja"), title=TITLE, rows=rows)
    return str(card).rstrip("\n") + "\n"


def check_models(models: dict) -> dict:
    """The configured models (key -> Hub repo id); a Space cannot read local folders."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        raise ValueError(f"unknown model keys {unknown}; known: {sorted(MODELS)}")
    configured = {key: models[key] for key in MODELS if models.get(key)}
    if not configured:
        raise ValueError("give at least one model: " + ", ".join(flag for flag, _, _ in MODELS.values()))
    for key, repo_id in configured.items():
        try:
            validate_repo_id(repo_id)
        except HFValidationError:
            raise ValueError(f"{MODELS[key][0]} must be a Hub repo id such as user/model, got {repo_id!r}") from None
    return configured


def write_space(repo_id: str, out_dir: str, models: dict, candidate_labels=None, license: str = "apache-2.0") -> str:
    """Writes the Space folder for `repo_id` to `out_dir` (which must not exist) via a temporary folder."""
    from huggingface_hub.utils import validate_repo_id

    from ..training.files import staged_folder

    validate_repo_id(repo_id)
    configured = check_models(models)
    if os.path.exists(out_dir):
        raise ValueError(f"--out-dir {out_dir!r} exists; give a new folder")
    with staged_folder(out_dir) as tmp_dir:
        for name in SPACE_FILES:
            shutil.copyfile(os.path.join(SPACE_DIR, name), os.path.join(tmp_dir, name))
        config = {"models": configured}
        if candidate_labels:
            config["candidate_labels"] = list(candidate_labels)
        with open(os.path.join(tmp_dir, "space_config.json"), "w") as f:
            json.dump(config, f, indent=2)
            f.write("\n")
        with open(os.path.join(tmp_dir, "README.md"), "w", encoding="utf-8") as f:
            f.write(render_space_card(configured, license=license))
    return out_dir


def publish_space(repo_id: str, models: dict, candidate_labels=None, private: bool = False, dry_run: bool = False,
                  out_dir: str | None = None, license: str = "apache-2.0") -> str:
    """Writes the Space folder, creates the gradio Space if needed and uploads the folder in one commit.

    Returns the commit URL; with `dry_run`, the folder that would be uploaded (`out_dir`, or a new temporary folder),
    and nothing is sent to the Hub.
    """
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.utils import validate_repo_id

    validate_repo_id(repo_id)
    check_models(models)
    options = dict(candidate_labels=candidate_labels, license=license)
    if dry_run:
        folder = out_dir or os.path.join(tempfile.mkdtemp(prefix="leanvision-space-"), repo_id.split("/")[-1])
        return write_space(repo_id, folder, models, **options)
    if get_token() is None:
        raise ValueError("no Hugging Face token: log in with `hf auth login` or set HF_TOKEN")
    with tempfile.TemporaryDirectory(prefix="leanvision-space-") as tmp:
        folder = write_space(repo_id, out_dir or os.path.join(tmp, "space"), models, **options)
        api = HfApi()
        repo_url = api.create_repo(
            repo_id, repo_type="space", space_sdk="gradio", exist_ok=True, private=True if private else None
        )
        info = api.upload_folder(
            repo_id=repo_url.repo_id, folder_path=folder, repo_type="space",
            commit_message="Upload the leanvision demo with leanvision publish-space",
        )
    return info.commit_url


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `leanvision publish-space` arguments."""
    parser.add_argument("repo_id", help="the Space to create or update, e.g. your-name/leanvision-demo")
    for key, (flag, name, task) in MODELS.items():
        parser.add_argument(flag, dest=key, metavar="REPO_ID", help=f"{name} model repo ({task})")
    parser.add_argument("--candidate-label", action="append", dest="candidate_labels",
                        help="a default zero-shot candidate label (repeatable)")
    parser.add_argument("--private", action="store_true", help="create the Space as private")
    parser.add_argument("--dry-run", action="store_true", help="write the folder to upload, print its path, stop")
    parser.add_argument("--out-dir", help="where to write the folder (must not exist; default: a temporary folder)")
    parser.add_argument("--license", default="apache-2.0", help="license id for the Space card")


def run(args: argparse.Namespace) -> int:
    result = publish_space(
        args.repo_id, {key: getattr(args, key) for key in MODELS}, candidate_labels=args.candidate_labels,
        private=args.private, dry_run=args.dry_run, out_dir=args.out_dir, license=args.license,
    )
    print(f"wrote {result}" if args.dry_run else f"published: {result}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="leanvision publish-space", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
