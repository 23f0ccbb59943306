"""`make demo`: train, evaluate, export and reload a small DTP-ViT on scikit-learn's digits, then summarise."""

import json
import os
import subprocess
import sys
import time

from .data import digits_dataset
from .export import export_model
from .families import get_family
from .train import main as train_main
from .visualize import visualize_boundaries

RECIPES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "recipes")

# Runs in a fresh interpreter in which leanvision cannot be imported: only the exported remote code is used.
_FRESH_CLASSIFY = """
import json, sys
sys.modules["leanvision"] = None
from transformers import pipeline
export_dir, images = sys.argv[1], sys.argv[2:]
classify = pipeline("image-classification", model=export_dir, trust_remote_code=True)
print(json.dumps([classify(path, top_k=1)[0] for path in images]))
"""


def classify_in_fresh_process(export_dir: str, image_paths: list[str]) -> list[dict]:
    result = subprocess.run(
        [sys.executable, "-c", _FRESH_CLASSIFY, export_dir, *image_paths],
        capture_output=True, text=True, check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"reloading the export in a fresh interpreter failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_dtp_vit(out_root: str) -> dict:
    model_dir = os.path.join(out_root, "dtp_vit_digits")
    export_dir = os.path.join(out_root, "dtp_vit_digits-export")
    start = time.time()
    metrics = train_main([os.path.join(RECIPES, "dtp_vit_digits.yaml"), "--output_dir", model_dir])
    export_model(model_dir, export_dir, overwrite=True)

    test = digits_dataset()["test"]
    samples_dir = os.path.join(out_root, "digit_samples")
    os.makedirs(samples_dir, exist_ok=True)
    paths, truths = [], []
    for i in range(5):
        path = os.path.join(samples_dir, f"digit_{i}.png")
        test[i]["image"].save(path)
        paths.append(path)
        truths.append(test.features["label"].int2str(test[i]["label"]))
    predictions = classify_in_fresh_process(export_dir, paths)

    family = get_family("dtp_vit")
    model = family.model_class.from_pretrained(model_dir)
    figures = visualize_boundaries(
        model.dtp_vit, family.load_processor(model_dir), [test[i]["image"] for i in range(3)],
        out_root, prefix="dtp_vit_digits_boundaries",
    )
    return {
        "accuracy": metrics["eval_accuracy"],
        "boundary_ratio": metrics["eval_boundary_ratio"],
        "compression_rate": model.config.compression_rate,
        "seconds": time.time() - start,
        "export": export_dir,
        "predictions": [(p["label"], t) for p, t in zip(predictions, truths)],
        "figures": figures,
    }


def main() -> None:
    out_root = os.environ.get("LEANVISION_DEMO_DIR", "outputs/demo")
    dtp = run_dtp_vit(out_root)
    print("\n=== leanvision demo summary ===")
    print(
        f"DTP-ViT on digits: test accuracy {dtp['accuracy']:.3f}, boundary ratio {dtp['boundary_ratio']:.3f} "
        f"(prior {dtp['compression_rate']}), {dtp['seconds']:.0f} s"
    )
    print(f"  export: {dtp['export']} (reloaded with trust_remote_code=True in a fresh interpreter)")
    print("  fresh-process predictions (predicted, true): " + ", ".join(f"{p}/{t}" for p, t in dtp["predictions"]))
    print("  boundary figures: " + ", ".join(dtp["figures"]))


if __name__ == "__main__":
    main()
