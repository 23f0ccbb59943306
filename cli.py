"""The `leanvision` command line: one subcommand per tool."""

import argparse
import os
import sys

from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError

from .hub_cards.publish import add_arguments as add_publish_arguments
from .hub_cards.publish_space import add_arguments as add_publish_space_arguments
from .hub_cards.serve import add_arguments as add_serve_arguments


def _cmd_ablate(args) -> int:
    from .training.tools.ablation import format_table, run_ablation

    rows = run_ablation(args.family, quick=args.quick, out_dir=args.out_dir, seed=args.seed)
    print(format_table(rows))
    return 0


def _decoding(args) -> dict:
    from .training.inference import decoding_kwargs

    return decoding_kwargs(args.greedy, args.beams, args.temperature, args.max_new_tokens)


def _check_at_least_one(flag: str, value) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{flag} must be at least 1, got {value}")


def _open_good_images(command: str, files: list[str]) -> tuple[list[str], list]:
    """(paths, images) of the files that open; each one that does not is reported on stderr. Raises when none open
    (a single bad file keeps its own error)."""
    from .training.files import open_image

    good, images, errors = [], [], []
    for path in files:
        try:
            images.append(open_image(path))
            good.append(path)
        except (ValueError, OSError) as err:
            errors.append(err)
    if not good:
        if len(errors) == 1:
            raise errors[0]
        raise ValueError(f"none of the {len(files)} images could be read; first error: {errors[0]}")
    for err in errors:
        print(f"leanvision {command}: skipped: {err}", file=sys.stderr)
    return good, images


def _cmd_caption(args) -> int:
    import torch

    from .training.files import image_files
    from .training.inference import caption_images, load_captioner

    _check_at_least_one("--batch-size", args.batch_size)
    generation_kwargs = _decoding(args)
    files = image_files(args.paths)
    good, images = _open_good_images("caption", files)
    _, model, processor = load_captioner(args.model)
    torch.manual_seed(args.seed)
    for path, caption in zip(good, caption_images(model, processor, images, generation_kwargs, args.batch_size)):
        print(f"{path}\t{caption}")
    if len(good) < len(files):
        print(f"leanvision caption: error: {len(files) - len(good)} of {len(files)} images could not be read",
              file=sys.stderr)
        return 1
    return 0


def _show_progress(args) -> bool:
    """Progress bars on stderr: on a terminal, unless --quiet."""
    return not args.quiet and sys.stderr.isatty()


def _evaluate_classifier(args) -> dict:
    from .training.evaluation.classification import evaluate_classifier

    return evaluate_classifier(
        args.model_dir, args.dataset, split=args.split, label_column=args.label_column, image_column=args.image_column,
        max_samples=args.max_samples, batch_size=args.batch_size, config_name=args.dataset_config, top_k=args.top_k,
        progress=_show_progress(args),
    )


def _evaluate_zero_shot(args) -> dict:
    from .training.evaluation.zero_shot import evaluate_zero_shot

    return evaluate_zero_shot(
        args.model_dir, args.dataset, split=args.split, template=args.template, label_column=args.label_column,
        image_column=args.image_column, max_samples=args.max_samples, batch_size=args.batch_size,
        config_name=args.dataset_config,
    )


def _evaluate_captioner(args) -> dict:
    from .training.evaluation.captions import evaluate_captioner

    return evaluate_captioner(
        args.model_dir, args.dataset, split=args.split, max_samples=args.max_samples, metrics=args.metrics,
        generation_kwargs=_decoding(args), caption_column=args.caption_column,
        references_column=args.references_column, image_column=args.image_column, batch_size=args.batch_size,
        config_name=args.dataset_config, progress=_show_progress(args),
    )


def _evaluate_visual_instruction(args) -> dict:
    import os

    from .training.tasks.visual_instruction import evaluate_visual_instruction

    answers = os.path.splitext(args.out)[0] + ".answers.jsonl" if args.out else None
    return evaluate_visual_instruction(
        args.model_dir, args.dataset, split=args.split, max_samples=args.max_samples, batch_size=args.batch_size,
        generation_kwargs=_decoding(args), answers_path=answers,
    )


# `leanvision evaluate`: one evaluator per training task of `families.py` (a new task adds its entry here).
EVALUATORS = {
    "image_classification": _evaluate_classifier,
    "contrastive": _evaluate_zero_shot,
    "captioning": _evaluate_captioner,
    "visual_instruction": _evaluate_visual_instruction,
}


def _cmd_evaluate(args) -> int:
    from .training.families import family_of_model_dir
    from .training.files import write_json_atomically

    _check_at_least_one("--batch-size", args.batch_size)
    _check_at_least_one("--max-samples", args.max_samples)
    _check_at_least_one("--top-k", args.top_k)
    family = family_of_model_dir(args.model_dir)
    if family.task not in EVALUATORS:
        raise ValueError(f"`leanvision evaluate` has no evaluation for {family.name} models yet")
    report = EVALUATORS[family.task](args)
    for name, value in report["scores"].items():
        if value is not None:  # a skipped metric is reported with its reason below
            print(f"{name}: {round(value, 4)}")
    for name, reason in report.get("skipped", {}).items():
        print(f"{name} skipped: {reason}")
    if args.out:
        write_json_atomically(args.out, report)
        print(f"wrote {args.out}")
    return 0


def _cmd_classify(args) -> int:
    import csv
    import io
    import json

    from .training.files import image_files, write_text_atomically
    from .training.inference import class_probabilities, load_classifier, top_labels

    _check_at_least_one("--top-k", args.top_k)
    _check_at_least_one("--batch-size", args.batch_size)
    if args.output and os.path.isdir(args.output):
        raise ValueError(f"--output {args.output!r} is a folder, not a file")
    labels = args.labels.split(",") if args.labels is not None else None
    files = image_files(args.paths)
    good, images = _open_good_images("classify", files)
    family, model, processor = load_classifier(args.model)
    probabilities, names = class_probabilities(family, model, processor, images, labels, args.template,
                                               args.batch_size)
    results = [{"path": path, "labels": ranked}
               for path, ranked in zip(good, top_labels(probabilities, names, args.top_k))]
    if args.format == "json":
        text = json.dumps(results, indent=2) + "\n"
    else:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["path", "rank", "label", "score"])
        for result in results:
            for rank, entry in enumerate(result["labels"], 1):
                writer.writerow([result["path"], rank, entry["label"], f"{entry['score']:.6f}"])
        text = buffer.getvalue()
    if args.output:
        write_text_atomically(args.output, text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        print(text, end="")
    if len(good) < len(files):
        print(f"leanvision classify: error: {len(files) - len(good)} of {len(files)} images could not be read",
              file=sys.stderr)
        return 1
    return 0


def _cmd_publish(args) -> int:
    from .hub_cards.publish import run

    return run(args)


def _cmd_merge_lora(args) -> int:
    from .training.lora import merge_adapter

    out = merge_adapter(args.adapter_dir, args.base, args.out_dir, overwrite=args.overwrite)
    print(f"merged {args.adapter_dir} into {args.base} -> {out}")
    return 0


def _cmd_publish_space(args) -> int:
    from .hub_cards.publish_space import run

    return run(args)


def _cmd_serve(args) -> int:
    from .hub_cards.serve import run

    return run(args)


def _cmd_params(args) -> int:
    from .training.tools.params import params_report

    print(params_report(args.model, args.recipe))
    return 0


def _cmd_analyze(args) -> int:
    from .training.files import image_files
    from .training.tools.analyze import analyze_saved_model

    _check_at_least_one("--max-new-tokens", args.max_new_tokens)
    if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        raise ValueError(f"--out-dir {args.out_dir!r} is an existing file, not a folder")
    files = image_files(args.images)
    good, _ = _open_good_images("analyze", files)
    if len(good) < len(files) and args.captions:
        raise ValueError(f"{len(files) - len(good)} of the images could not be read; --captions needs every image")
    result = analyze_saved_model(
        args.model, good, args.out_dir, captions=args.captions, max_new_tokens=args.max_new_tokens
    )
    for path in result["paths"].values():
        for one in path if isinstance(path, list) else [path]:
            print(one)
    for name, reason in ((result["token_similarity"] or {}).get("skipped") or {}).items():
        print(f"token similarity: {name} skipped: {reason}")
    if len(good) < len(files):
        print(f"leanvision analyze: error: {len(files) - len(good)} of {len(files)} images could not be read",
              file=sys.stderr)
        return 1
    return 0


def _add_decoding_flags(parser: argparse.ArgumentParser) -> None:
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--greedy", action="store_true", help="greedy decoding (the default)")
    mode.add_argument("--beams", type=int, help="beam search with N beams")
    mode.add_argument("--temperature", type=float, help="sample with this temperature (no top-k cut)")
    parser.add_argument("--max-new-tokens", type=int, default=40, help="longest caption in tokens")
    parser.add_argument("--batch-size", type=int, default=16, help="images per generate() call")


def _cmd_export(args) -> int:
    from .hub_cards.export import export_model

    out = export_model(args.model_dir, args.out_dir, overwrite=args.overwrite)
    print(f"exported {args.model_dir} -> {out}")
    return 0


def _cmd_flops(args) -> int:
    from .training.tools.flops import flops_table, format_table

    rows = flops_table(rates=tuple(args.rates), image_size=args.image_size, patch_size=args.patch_size)
    print(format_table(rows))
    return 0


TRAIN_USAGE = """usage: leanvision train RECIPE.yaml [--flag value ...]

Trains any family from a recipe (the same as python training/train.py RECIPE ...); flags override the recipe.
--config_overrides '{...}' merges into the recipe's config_overrides key by key. A non-empty --output_dir is
refused unless --overwrite_output_dir true or --resume_from_checkpoint is given.

examples:
  leanvision train training/recipes/dtp_vit_digits.yaml --output_dir outputs/my_digits
  leanvision train training/recipes/dtp_vit_digits.yaml --config_overrides '{"compression_rate": 0.1}' \\
      --output_dir outputs/digits_r01
  leanvision train training/recipes/qvision_shapes.yaml --output_dir outputs/qvision_run --max_steps 50

Recipes: training/recipes/*.yaml. Every TrainingArguments flag: python training/train.py --help
"""


def _cmd_train(args) -> int:
    if not args.train_args:
        print(TRAIN_USAGE, end="", file=sys.stderr)
        print("leanvision train: error: a recipe is required", file=sys.stderr)
        return 2
    if args.train_args[0] in ("-h", "--help"):
        print(TRAIN_USAGE, end="")
        return 0
    from .training.train import main as train_main

    train_main(args.train_args)
    return 0


def boundaries_dir(model_dir: str) -> str:
    """visualize-boundaries' default out-dir: a folder beside the model, `<model>-boundaries`."""
    return os.path.normpath(model_dir) + "-boundaries"


def _cmd_visualize(args) -> int:
    from .training.families import load_saved
    from .training.files import image_files
    from .training.inference import CLASSIFYING_TASKS, class_probabilities, top_labels
    from .training.tools.visualize import visualize_boundaries

    # Folders expand to their images; every image is opened before the model loads or anything is written.
    files = [f for path in args.images for f in (image_files([path]) if os.path.isdir(path) else [path])]
    good, images = _open_good_images("visualize-boundaries", files)
    out_dir = args.out_dir or boundaries_dir(args.model)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"--out-dir {out_dir!r} is an existing file, not a folder")
    family, model, processor = load_saved(args.model)
    vision = getattr(model, "dtp_vit", None) or getattr(model, "vision_model", None)
    if vision is None or not hasattr(vision, "boundary_predictor"):
        raise ValueError(f"{args.model!r} is a {family.name} model, which has no DTP boundaries to draw")
    titles = [os.path.basename(path) for path in good]
    if family.task in CLASSIFYING_TASKS and (family.task != "contrastive" or args.labels):
        labels = args.labels.split(",") if args.labels else None
        probabilities, names = class_probabilities(family, model, processor, images, labels)
        titles = [f"{title}: predicted {best[0]['label']!r} ({best[0]['score']:.2f})"
                  for title, best in zip(titles, top_labels(probabilities, names, 1))]
    image_processor = getattr(processor, "image_processor", processor)
    for path, source in zip(visualize_boundaries(vision, image_processor, images, out_dir, titles=titles), good):
        print(f"{source} -> {path}")
    if len(good) < len(files):
        print(f"leanvision visualize-boundaries: error: {len(files) - len(good)} of {len(files)} images could not be "
              "read", file=sys.stderr)
        return 1
    return 0


class _ExamplesFormatter(argparse.HelpFormatter):
    """Wraps descriptions as usual; keeps an "examples:" epilog line by line."""

    def _fill_text(self, text, width, indent):
        if text.startswith("examples:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


EXAMPLES = {
    "ablate": ["leanvision ablate gated_sparse_blip --quick --out-dir outputs/ablation_quick"],
    "analyze": ["leanvision analyze photo.jpg --model outputs/qvision_shapes --out-dir outputs/analysis"],
    "classify": ["leanvision classify digits/ --model outputs/dtp_vit_digits --top-k 3",
                 "leanvision classify photo.jpg --model outputs/dtp_clip_shapes --labels \"red circle,blue square\" "
                 "--format csv --output labels.csv"],
    "caption": ["leanvision caption photo.jpg images/ --model outputs/gated_sparse_blip_shapes",
                "leanvision caption photo.jpg --model outputs/qvision_shapes --beams 3"],
    "evaluate": ["leanvision evaluate outputs/qvision_shapes --dataset shapes --output outputs/qvision_eval.json",
                 "leanvision evaluate outputs/dtp_vit_digits --dataset digits --top-k 3",
                 "leanvision evaluate outputs/dtp_clip_shapes --dataset shapes --max-samples 100"],
    "export": ["leanvision export outputs/dtp_vit_digits outputs/dtp_vit_digits-export"],
    "flops": ["leanvision flops --rates 1.0 0.5 0.25"],
    "merge-lora": ["leanvision merge-lora outputs/dtp_vit_lora --base outputs/dtp_vit_digits outputs/dtp_vit_merged"],
    "params": ["leanvision params", "leanvision params --recipe training/recipes/qvision_shapes.yaml"],
    "publish": ["leanvision publish outputs/dtp_vit_digits your-name/dtp-vit-digits"],
    "publish-space": ["leanvision publish-space your-name/leanvision-demo --classifier your-name/dtp-vit-digits"],
    "serve": ["leanvision serve outputs/dtp_vit_digits-export --port 8080"],
    "train": ["leanvision train training/recipes/dtp_vit_digits.yaml --output_dir outputs/my_digits"],
    "visualize-boundaries": ["leanvision visualize-boundaries digit.png --model outputs/dtp_vit_digits "
                             "--out-dir outputs/boundaries"],
}


def _version() -> str:
    from . import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leanvision", description="Token-efficient vision-language models.")
    parser.add_argument("--version", action="version", version=f"leanvision {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser = sub.add_parser

    def add_with_examples(name, **kwargs):
        lines = "".join(f"\n  {line}" for line in EXAMPLES[name])
        return add_parser(name, epilog=f"examples:{lines}", formatter_class=_ExamplesFormatter, **kwargs)

    sub.add_parser = add_with_examples

    p = sub.add_parser(
        "ablate",
        help="train a family on shapes across its ablation grid and print a table of caption scores",
        description="gated_sparse_blip: trains the shapes recipe with one seed for attention sparsity 0 / 0.5 / 0.7 "
        "x token gating on / off, then prints BLEU-4, METEOR, ROUGE-L, CIDEr on held-out shapes and the fraction of "
        "attention connections kept, measured from the attention probabilities.",
    )
    p.add_argument("family", choices=["gated_sparse_blip"], help="model family to ablate")
    p.add_argument("--quick", action="store_true", help="CI-size runs: fewer images and epochs")
    p.add_argument("--out-dir", default="outputs/ablation", help="where each run's model is saved")
    p.add_argument("--seed", type=int, default=0, help="training seed of every run")
    p.set_defaults(func=_cmd_ablate)

    p = sub.add_parser(
        "analyze",
        help="QVision: query-to-patch and word-to-query attention overlays and the token-similarity report",
        description="For each image: the Q-Former's query-to-patch attention over the patch grid and the decoder's "
        "word-to-query attention (for the generated caption, or --captions) as PNG overlays; with a global token, "
        "the global-vs-query cosine similarity matrix and the global token's discriminative power across the "
        "images as PNG + JSON.",
    )
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--model", required=True, help="a saved or exported QVision model folder")
    p.add_argument("--out-dir", default="analysis", help="where to write the PNG and JSON files")
    p.add_argument("--captions", nargs="+", help="teacher-forced captions, one per image (default: generate)")
    p.add_argument("--max-new-tokens", type=int, default=20, help="longest generated caption")
    p.set_defaults(func=_cmd_analyze)

    p = sub.add_parser(
        "caption",
        help="caption images or folders of images with a captioning model",
        description="Prints PATH<TAB>caption for each image (folders: their jpg, jpeg, png, bmp and webp files).",
    )
    p.add_argument("paths", nargs="+", help="image files or folders")
    p.add_argument("--model", required=True, help="a saved or exported captioning model folder")
    p.add_argument("--seed", type=int, default=0, help="seed for temperature sampling")
    _add_decoding_flags(p)
    p.set_defaults(func=_cmd_caption)

    p = sub.add_parser(
        "classify",
        help="top-k labels of images or folders of images with a classifier (DTP-ViT) or zero-shot model (DTP-CLIP)",
        description="Classifies each image (folders: every image file PIL opens) and prints its K most probable "
        "labels as JSON (a list of {path, labels: [{label, score}]}) or CSV (path, rank, label, score). DTP-ViT "
        "ranks its own classes; DTP-CLIP ranks --labels, each prompted with --template. Unreadable files are reported "
        "and skipped; the exit status is then 1.",
    )
    p.add_argument("paths", nargs="+", help="image files or folders")
    p.add_argument("--model", required=True, help="a saved or exported DTP-ViT or DTP-CLIP model folder")
    p.add_argument("--top-k", type=int, default=5, help="labels per image (at most the number of classes)")
    p.add_argument("--labels", help="zero-shot models: comma-separated candidate labels")
    p.add_argument("--template", default="a photo of a {}", help="zero-shot: prompt, {} marks the label")
    p.add_argument("--format", choices=["json", "csv"], default="json", help="output format")
    p.add_argument("--output", help="write to this file (atomically) instead of stdout")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    p.set_defaults(func=_cmd_classify)

    p = sub.add_parser(
        "evaluate",
        help="accuracy / top-k of a classifier, zero-shot accuracy, or caption scores of a model on a dataset",
        description="Classifiers (dtp_vit): accuracy and top-k accuracy on a labelled image dataset (--dataset "
        "digits: the digits test split train.py holds out). Contrastive models (dtp_clip): zero-shot top-1 / top-5 "
        "accuracy on an image classification dataset, each class prompted with --template (--dataset shapes or "
        "digits). Captioners: captions every example of a dataset split and scores them against their references "
        "with COCO caption metrics (pycocoevalcap, PTB tokenisation; SPICE only when named in --metrics). "
        "DTP-LLaVA: VQA exact match on --dataset shapes (held-out questions), a LLaVA-format conversation dataset, or "
        "a LLaVA-Bench folder (answers written beside --out as .answers.jsonl for an external judge). "
        "Otherwise --dataset is a Hub dataset, a save_to_disk folder or a local data folder.",
    )
    p.add_argument("model_dir", help="a saved or exported model folder")
    p.add_argument("--dataset", required=True, help="'digits', 'shapes', a Hub dataset name or a local folder")
    p.add_argument("--dataset-config", help="dataset configuration name")
    p.add_argument("--split", help="split to evaluate (default: test, else validation, else train)")
    p.add_argument("--max-samples", type=int, help="evaluate the first N examples (shapes: draw N images)")
    p.add_argument("--metrics", default="bleu,meteor,rouge_l,cider",
                   help="captioners: comma-separated metric names (add spice for SPICE, which needs CoreNLP)")
    p.add_argument("--caption-column", default="caption", help="column of the caption(s)")
    p.add_argument("--references-column", default="captions", help="column of reference captions, if present")
    p.add_argument("--image-column", default="image", help="column of the images")
    p.add_argument("--label-column", default="label", help="classifiers and zero-shot: column of the classes")
    p.add_argument("--top-k", type=int, default=5, help="classifiers: top-k accuracy (capped at the class count)")
    p.add_argument("--template", default="a photo of a {}", help="zero-shot: prompt, {} marks the class name")
    p.add_argument("--output", "--out", dest="out", help="write the report to this JSON file (atomically)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_decoding_flags(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser(
        "export",
        help="write a flat Hub-ready folder (safetensors, processor, remote code, README) from a trained model",
        description="Export MODEL_DIR (a folder saved by training/train.py) as a flat bundle loadable with "
        "trust_remote_code=True. Writes into a temporary folder and renames it at the end.",
    )
    p.add_argument("model_dir", help="folder with config.json, model.safetensors and the processor files")
    p.add_argument("out_dir", help="folder to create")
    p.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser(
        "flops",
        help="print GMACs of DTP-ViT at several compression rates next to the DTP-ViT plan's figures",
        description="Counts GMACs with fvcore (eager attention; boundaries simulated evenly at each rate) for a "
        "DTP-ViT with ViT-B/32 widths, beside transformers' CLIPVisionModel and the numbers the DTP-ViT plan "
        "published.",
    )
    p.add_argument("--rates", type=float, nargs="+", default=[1.0, 0.5, 0.25, 0.1], help="compression rates")
    p.add_argument("--image-size", type=int, default=224, help="input resolution")
    p.add_argument("--patch-size", type=int, default=32, help="patch size")
    p.set_defaults(func=_cmd_flops)

    p = sub.add_parser(
        "merge-lora",
        help="fold a LoRA adapter into its base model and save a plain model folder (exportable)",
        description="Loads BASE (a saved or exported leanvision model folder, or a Hub repo), applies the adapter "
        "trained with `train.py --lora` in ADAPTER_DIR, merges it into the weights and saves the model and its "
        "processor to OUT_DIR, ready for `leanvision export`.",
    )
    p.add_argument("adapter_dir", help="folder with adapter_config.json and adapter_model.safetensors")
    p.add_argument("--base", required=True, help="the base model the adapter was trained on (folder or Hub id)")
    p.add_argument("out_dir", help="folder to create")
    p.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    p.set_defaults(func=_cmd_merge_lora)

    p = sub.add_parser(
        "params",
        help="table of total and trainable parameters per component, per freezing phase of a recipe",
        description="Counts parameters per top-level component (for QVision: vision, projection, Q-Former, "
        "cross-attention, LM) without downloading or allocating weights. Without --model: the original-size QVision "
        "(QVisionConfig.original_size_config(): CLIP ViT-B/32 vision tower, Q-Former 1024 wide, a 24-block, "
        "1024-wide GPT-Neo), followed by the original QVision project's parameter table, reproduced where it can be.",
    )
    p.add_argument("--model", help="a saved model folder (default: the original-size QVision configuration)")
    p.add_argument("--recipe", help="a recipe with a `freezing` schedule: one trainable column per phase")
    p.set_defaults(func=_cmd_params)

    p = sub.add_parser(
        "publish",
        help="export a trained model, write its model card and upload both to the Hub in one commit",
        description="Exports MODEL_DIR as a flat bundle, renders its model card for REPO_ID, creates the repo if "
        "needed and uploads the folder in one commit; prints the commit URL. The token comes from `hf auth login` "
        "or HF_TOKEN and is never printed or written; HF_ENDPOINT selects another Hub-compatible server.",
    )
    add_publish_arguments(p)
    p.set_defaults(func=_cmd_publish)

    p = sub.add_parser(
        "publish-space",
        help="upload the Gradio demo (hub_cards/space) as a Hugging Face Space showing given model repos",
        description="Writes the Space folder for REPO_ID (app.py, requirements.txt, space_config.json with the "
        "model repo ids, README.md with `sdk: gradio`), creates the Space if needed and uploads the folder in one "
        "commit; prints the commit URL. The token comes from `hf auth login` or HF_TOKEN and is never printed or "
        "written.",
    )
    add_publish_space_arguments(p)
    p.set_defaults(func=_cmd_publish_space)

    p = sub.add_parser(
        "serve",
        help="serve an export's handler.py over HTTP on 127.0.0.1, as Inference Endpoints runs it",
        description="Imports EXPORT_DIR/handler.py as the Inference Endpoints container does and answers POST / with "
        "a JSON body {\"inputs\": IMAGE, \"parameters\": {...}} (IMAGE: base64 or an http(s) URL) or a raw image body "
        "(Content-Type: image/png or image/jpeg): 200 with the answer, 400 {\"error\": ...} for a bad request. "
        "Example: leanvision serve outputs/dtp_vit_digits-export --port 8080, then "
        "curl -H 'Content-Type: image/png' --data-binary @digit.png http://127.0.0.1:8080/",
    )
    add_serve_arguments(p)
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser(
        "train",
        help="train any family from a recipe (same as python training/train.py RECIPE ...)",
        description="Runs training/train.py: RECIPE.yaml followed by --flag value overrides (leanvision train --help "
        "for examples).",
        add_help=False,
    )
    p.add_argument("train_args", nargs=argparse.REMAINDER, help="RECIPE [--flag value ...]")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "visualize-boundaries",
        help="draw a DTP model's predicted segment boundaries over images (one PNG each)",
        description="For each image (folders: every image file PIL opens): the processed image (grey pictures in "
        "grayscale) with its patch grid and the borders between pooled segments drawn as lines, titled with the file "
        "name and, for a classifier (or DTP-CLIP with --labels), the prediction. Prints IMAGE -> PNG per image.",
    )
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--model", required=True, help="a saved or exported DTP model folder")
    p.add_argument("--out-dir", help="where to write boundaries_<i>.png (default: MODEL-boundaries, beside the model)")
    p.add_argument("--labels", help="DTP-CLIP: comma-separated candidate labels, to title each figure with the best")
    p.set_defaults(func=_cmd_visualize)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:  # everything after `train` is train.py's, --help included
        args = argparse.Namespace(command="train", func=_cmd_train, train_args=argv[1:])
    else:
        args = build_parser().parse_args(argv)
    import yaml

    from .training.errors import HUB_ERRORS, describe_hub_error

    try:
        return args.func(args)
    except HUB_ERRORS as err:
        print(f"leanvision {args.command}: error: {describe_hub_error(err)}", file=sys.stderr)
        return 2
    except yaml.YAMLError as err:
        print(f"leanvision {args.command}: error: invalid YAML: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, OSError, StrictDataclassError, SafetensorError) as err:
        print(f"leanvision {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
