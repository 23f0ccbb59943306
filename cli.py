"""The `leanvision` command line: one subcommand per tool."""

import argparse
import sys


def _cmd_export(args) -> int:
    from .training.export import export_model

    out = export_model(args.model_dir, args.out_dir, overwrite=args.overwrite)
    print(f"exported {args.model_dir} -> {out}")
    return 0


def _cmd_flops(args) -> int:
    from .training.flops import flops_table, format_table

    rows = flops_table(rates=tuple(args.rates), image_size=args.image_size, patch_size=args.patch_size)
    print(format_table(rows))
    return 0


def _cmd_train(args) -> int:
    from .training.train import main as train_main

    train_main(args.train_args)
    return 0


def _cmd_visualize(args) -> int:
    from PIL import Image

    from .training.families import family_of_model_dir
    from .training.visualize import visualize_boundaries

    family = family_of_model_dir(args.model)
    model = family.model_class.from_pretrained(args.model)
    processor = family.load_processor(args.model)
    vision = getattr(model, "dtp_vit", None) or getattr(model, "vision_model", None)
    if vision is None or not hasattr(vision, "boundary_predictor"):
        raise ValueError(f"{args.model!r} is a {family.name} model, which has no DTP boundaries to draw")
    images = [Image.open(path) for path in args.images]
    image_processor = getattr(processor, "image_processor", processor)
    for path in visualize_boundaries(vision, image_processor, images, args.out_dir):
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leanvision", description="Token-efficient vision-language models.")
    sub = parser.add_subparsers(dest="command", required=True)

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
        help="print GMACs of DTP-ViT at several compression rates next to the seed's figures",
        description="Counts GMACs with fvcore (eager attention; boundaries simulated evenly at each rate) for a "
        "DTP-ViT with ViT-B/32 widths, beside transformers' CLIPVisionModel and the seed's published numbers.",
    )
    p.add_argument("--rates", type=float, nargs="+", default=[1.0, 0.5, 0.25, 0.1], help="compression rates")
    p.add_argument("--image-size", type=int, default=224, help="input resolution")
    p.add_argument("--patch-size", type=int, default=32, help="patch size")
    p.set_defaults(func=_cmd_flops)

    p = sub.add_parser(
        "train",
        help="train any family from a recipe (same as python training/train.py RECIPE ...)",
        description="Runs training/train.py: RECIPE.yaml followed by --flag value overrides.",
        add_help=False,
    )
    p.add_argument("train_args", nargs=argparse.REMAINDER, help="RECIPE [--flag value ...]")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "visualize-boundaries",
        help="draw a DTP model's predicted segment boundaries over images (one PNG each)",
        description="For each IMAGE: the processed image with its patch grid, each pooled segment in its own colour "
        "and a red bar after each boundary patch.",
    )
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--model", required=True, help="a saved or exported DTP model folder")
    p.add_argument("--out-dir", default=".", help="where to write boundaries_<i>.png")
    p.set_defaults(func=_cmd_visualize)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"leanvision {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
