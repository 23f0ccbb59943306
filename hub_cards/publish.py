"""`leanvision publish`: export a trained model, write its card for the target repo and upload both in one commit.

The Hub token comes from the usual huggingface_hub login (`hf auth login`) or `HF_TOKEN`; it is never printed or
written. `HF_ENDPOINT` selects another Hub-compatible server. Heavy imports are deferred so that the CLI's parser
stays cheap to build.
"""

import argparse
import json
import os
import sys
import tempfile


def write_bundle(model_dir: str, repo_id: str, out_dir: str, base_model=None, datasets=None,
                 evaluation: dict | None = None, license: str = "apache-2.0") -> str:
    """The flat export of `model_dir` in `out_dir`, its README.md rendered for `repo_id`: the card is rendered once
    and the folder staged once (built beside `out_dir` and renamed at the end, so a failure leaves no partial
    folder)."""
    from ..training.families import load_saved
    from .cards import EXAMPLE_FILE, example_image, recipe_from_model_dir, render_card
    from .export import family_requirements, read_eval_results, write_flat_bundle

    if os.path.exists(out_dir):
        raise ValueError(f"output folder {out_dir!r} exists; choose a new --out-dir")
    family, model, processor = load_saved(model_dir)
    metrics = read_eval_results(model_dir)
    example = example_image(model_dir)
    card = render_card(
        family, model.config, metrics, repo_id=repo_id, base_model=base_model, datasets=datasets,
        recipe=recipe_from_model_dir(model_dir), evaluation=evaluation, num_parameters=model.num_parameters(),
        license=license, example=EXAMPLE_FILE if example else None, requirements=family_requirements(family),
    )
    write_flat_bundle(out_dir, family, model, processor, metrics, card, example)
    return out_dir


def write_adapter_bundle(adapter_dir: str, repo_id: str, out_dir: str, base_model=None, datasets=None,
                         evaluation: dict | None = None, license: str = "apache-2.0") -> str:
    """The Hub folder of a LoRA adapter in `out_dir`: its weights, its adapter_config.json and leanvision_adapter.json
    pointing at the base's Hub id, eval_results.json if any, and a README.md whose metadata names the base model
    (`library_name: peft`). Built in a temporary folder beside `out_dir` and renamed at the end.

    `base_model`: the base's Hub id (one, or a list of one); default: the recorded base if it came from the Hub.
    """
    import shutil

    from huggingface_hub.utils import validate_repo_id

    from ..training.families import get_family
    from ..training.files import staged_folder, write_json_atomically
    from ..training.lora import ADAPTER_CONFIG, ADAPTER_RECORD, ADAPTER_WEIGHTS, read_adapter_record
    from .cards import hub_ids, render_adapter_card
    from .export import read_eval_results

    validate_repo_id(repo_id)
    if os.path.exists(out_dir):
        raise ValueError(f"output folder {out_dir!r} exists; choose a new --out-dir")
    record = read_adapter_record(adapter_dir)
    bases = hub_ids(base_model, "base model")
    if len(bases) > 1:
        raise ValueError(f"an adapter has one base model, got {bases}")
    if not bases:
        if record["base_model_source"] != "hub":
            raise ValueError(
                f"the adapter's base is the local folder {record['base_model']!r}: publish the base model and name "
                "its repo with --base-model"
            )
        bases = hub_ids(record["base_model"], "base model")
    base = bases[0]
    with open(os.path.join(adapter_dir, ADAPTER_CONFIG)) as f:
        adapter_config = json.load(f)
    adapter_config["base_model_name_or_path"] = base
    metrics = read_eval_results(adapter_dir)
    card = render_adapter_card(get_family(record["family"]), adapter_config, repo_id, base, metrics, evaluation,
                               datasets, license)
    with staged_folder(out_dir) as tmp_dir:
        shutil.copy(os.path.join(adapter_dir, ADAPTER_WEIGHTS), tmp_dir)
        write_json_atomically(os.path.join(tmp_dir, ADAPTER_CONFIG), adapter_config)
        hub_record = dict(record, base_model=base, base_model_source="hub")
        write_json_atomically(os.path.join(tmp_dir, ADAPTER_RECORD), hub_record)
        if metrics:
            write_json_atomically(os.path.join(tmp_dir, "eval_results.json"), metrics)
        with open(os.path.join(tmp_dir, "README.md"), "w") as f:
            f.write(card)
    return out_dir


def publish(model_dir: str, repo_id: str, private: bool = False, revision: str | None = None,
            create_pr: bool = False, dry_run: bool = False, out_dir: str | None = None, base_model=None,
            datasets=None, evaluation: dict | None = None, license: str = "apache-2.0") -> str:
    """Exports `model_dir`, renders its card for `repo_id`, creates the repo if needed and uploads the folder in one
    commit (to `revision`, a branch created if missing, or as a pull request with `create_pr`). A LoRA adapter folder
    (adapter_config.json) goes up as an adapter repo instead (`write_adapter_bundle`).

    Returns the commit URL (the pull request URL with `create_pr`); with `dry_run`, the folder that would be uploaded
    (`out_dir`, or a new temporary folder), and nothing is sent to the Hub.
    """
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.utils import validate_repo_id

    validate_repo_id(repo_id)
    if create_pr and revision not in (None, "main"):
        raise ValueError("--create-pr opens a pull request against the default branch; drop --revision")
    if out_dir and os.path.exists(out_dir):
        raise ValueError(f"--out-dir {out_dir!r} exists; give a new folder")
    if not dry_run and get_token() is None:
        raise ValueError("no Hugging Face token: log in with `hf auth login` or set HF_TOKEN")
    from ..training.lora import is_adapter_dir

    write = write_adapter_bundle if is_adapter_dir(model_dir) else write_bundle
    options = dict(base_model=base_model, datasets=datasets, evaluation=evaluation, license=license)
    if dry_run:
        folder = out_dir or os.path.join(tempfile.mkdtemp(prefix="leanvision-publish-"), repo_id.split("/")[-1])
        return write(model_dir, repo_id, folder, **options)

    with tempfile.TemporaryDirectory(prefix="leanvision-publish-") as tmp:
        folder = write(model_dir, repo_id, out_dir or os.path.join(tmp, "bundle"), **options)
        api = HfApi()
        repo_url = api.create_repo(repo_id, private=True if private else None, exist_ok=True)
        if revision not in (None, "main"):
            api.create_branch(repo_url.repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_url.repo_id, folder_path=folder, revision=revision, create_pr=create_pr,
            commit_message=f"Upload {os.path.basename(os.path.abspath(model_dir))} with leanvision publish",
        )
    return info.pr_url or info.commit_url


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `leanvision publish` arguments."""
    parser.add_argument("model_dir", help="a model folder saved by training/train.py (with --lora: an adapter repo)")
    parser.add_argument("repo_id", help="the Hub model repo to create or update, e.g. your-name/dtp-vit-digits")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--revision", help="upload to this branch (created from main if missing)")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing to main")
    parser.add_argument("--dry-run", action="store_true", help="write the folder to upload, print its path, stop")
    parser.add_argument("--out-dir", help="where to write the folder (must not exist; default: a temporary folder)")
    parser.add_argument("--base-model", action="append", help="Hub id of a checkpoint the model started from "
                        "(repeatable), e.g. Salesforce/blip-image-captioning-base; for an adapter, its base model")
    parser.add_argument("--dataset", action="append", help="Hub id of a training dataset (repeatable)")
    parser.add_argument("--eval-json", help="a report written by `leanvision evaluate --out`, added to the card")
    parser.add_argument("--license", default="apache-2.0", help="license id for the card (default: apache-2.0)")


def run(args: argparse.Namespace) -> int:
    evaluation = None
    if args.eval_json:
        with open(args.eval_json) as f:
            try:
                evaluation = json.load(f)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise ValueError(f"--eval-json {args.eval_json!r} is not a JSON report: {err}") from None
    result = publish(
        args.model_dir, args.repo_id, private=args.private, revision=args.revision, create_pr=args.create_pr,
        dry_run=args.dry_run, out_dir=args.out_dir, base_model=args.base_model, datasets=args.dataset,
        evaluation=evaluation, license=args.license,
    )
    print(f"wrote {result}" if args.dry_run else f"published: {result}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="leanvision publish", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
