"""`make demo`: train, evaluate, export and reload one small model of each family on built-in data (DTP-ViT on
scikit-learn's digits; DTP-CLIP, GatedSparseBlip, QVisionMultiModel and DTP-LLaVA on the shapes set), then
summarise."""

import json
import os
import subprocess
import sys
import time

from PIL import Image

from .hub_cards.export import export_model
from .training.data.digits import digits_dataset
from .training.data.shapes import class_names, shapes_splits
from .training.families import get_family
from .training.tools.visualize import visualize_boundaries
from .training.train import main as train_main

RECIPES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "training", "recipes")

# Runs in a fresh interpreter in which leanvision cannot be imported: only the exported remote code is used.
_FRESH_CLASSIFY = """
import json, sys
sys.modules["leanvision"] = None
from transformers import pipeline
export_dir, images = sys.argv[1], sys.argv[2:]
classify = pipeline("image-classification", model=export_dir, trust_remote_code=True)
print(json.dumps([classify(path, top_k=1)[0] for path in images]))
"""


# Captions images with the exported bundle through the "image-to-text" pipeline, leanvision not importable.
_FRESH_CAPTION = """
import json, sys
sys.modules["leanvision"] = None
from transformers import pipeline
export_dir, images = sys.argv[1], sys.argv[2:]
caption = pipeline("image-to-text", model=export_dir, trust_remote_code=True)
print(json.dumps([caption(path, do_sample=False)[0]["generated_text"] for path in images]))
"""


# Zero-shot classifies images with the exported DTP-CLIP bundle, leanvision not importable.
_FRESH_ZERO_SHOT = """
import json, sys
sys.modules["leanvision"] = None
from transformers import pipeline
export_dir, labels, images = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3:]
classify = pipeline("zero-shot-image-classification", model=export_dir, trust_remote_code=True)
print(json.dumps([classify(path, candidate_labels=labels, hypothesis_template="a photo of a {}")[0] for path in images]))
"""


# Asks the exported DTP-LLaVA one question per image through "image-text-to-text", leanvision not importable.
_FRESH_ASK = """
import json, sys
sys.modules["leanvision"] = None
from PIL import Image
from transformers import pipeline
export_dir, questions, images = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3:]
ask = pipeline("image-text-to-text", model=export_dir, trust_remote_code=True)
answers = []
for question, path in zip(questions, images):
    messages = [{"role": "user", "content": [{"type": "image", "image": Image.open(path)},
                                             {"type": "text", "text": question}]}]
    answers.append(ask(text=messages, max_new_tokens=4, return_full_text=False)[0]["generated_text"].strip())
print(json.dumps(answers))
"""


def run_fresh_script(script: str, *args: str) -> list:
    """Runs `script` in a new interpreter and returns the JSON of its last output line."""
    result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"reloading the export in a fresh interpreter failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def classify_in_fresh_process(export_dir: str, image_paths: list[str]) -> list[dict]:
    return run_fresh_script(_FRESH_CLASSIFY, export_dir, *image_paths)


def train_and_export(out_root: str, recipe: str, *flags: str) -> tuple[dict, str, str]:
    """Trains `recipes/<recipe>.yaml` into `out_root/<recipe>` and exports it to `out_root/<recipe>-export`; returns
    (eval metrics, model folder, export folder)."""
    model_dir = os.path.join(out_root, recipe)
    export_dir = os.path.join(out_root, f"{recipe}-export")
    metrics = train_main([os.path.join(RECIPES, f"{recipe}.yaml"), "--output_dir", model_dir, "--overwrite_output_dir",
                          "true", *flags])
    export_model(model_dir, export_dir, overwrite=True)
    return metrics, model_dir, export_dir


def save_samples(images, folder: str, name: str) -> list[str]:
    """Saves `images` as `folder/<name>_<i>.png` for the fresh-interpreter checks; returns their paths."""
    os.makedirs(folder, exist_ok=True)
    paths = [os.path.join(folder, f"{name}_{i}.png") for i in range(len(images))]
    for image, path in zip(images, paths):
        image.save(path)
    return paths


def run_dtp_vit(out_root: str) -> dict:
    start = time.time()
    metrics, model_dir, export_dir = train_and_export(out_root, "dtp_vit_digits")

    test = digits_dataset()["test"]
    paths = save_samples([test[i]["image"] for i in range(5)], os.path.join(out_root, "digit_samples"), "digit")
    truths = [test.features["label"].int2str(test[i]["label"]) for i in range(5)]
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


def run_dtp_clip(out_root: str) -> dict:
    """Trains DTP-CLIP contrastively on single-object shapes (zero-shot evaluation on held-out images), exports it,
    zero-shot classifies shapes with the export in a fresh interpreter and draws the boundaries it predicts on three
    scikit-image photos."""
    from skimage import data as skimage_data

    start = time.time()
    metrics, model_dir, export_dir = train_and_export(out_root, "dtp_clip_shapes", "--disable_tqdm", "true")

    test = shapes_splits(train=0, test=3, seed=1, max_objects=1)["test"]
    paths = save_samples(test["image"], os.path.join(out_root, "shapes_single_samples"), "shape")
    predictions = run_fresh_script(_FRESH_ZERO_SHOT, export_dir, json.dumps(class_names()), *paths)

    family = get_family("dtp_clip")
    model = family.model_class.from_pretrained(model_dir).eval()
    photos = [Image.fromarray(getattr(skimage_data, name)()) for name in ("astronaut", "coffee", "chelsea")]
    figures = visualize_boundaries(
        model.vision_model, family.load_processor(model_dir).image_processor, photos, out_root,
        prefix="dtp_clip_photo_boundaries",
    )
    return {
        "top1": metrics["eval_zero_shot_top1"],
        "top5": metrics["eval_zero_shot_top5"],
        "boundary_ratio": metrics["eval_boundary_ratio"],
        "compression_rate": model.config.vision_config.compression_rate,
        "seconds": time.time() - start,
        "export": export_dir,
        "predictions": [(p["label"], truth) for p, truth in zip(predictions, test["label"])],
        "figures": figures,
    }


def run_captioner(out_root: str, recipe: str) -> dict:
    """Trains a captioning shapes recipe (generation-based evaluation on held-out shapes), exports it and captions
    held-out images with the export in a fresh interpreter."""
    start = time.time()
    metrics, _, export_dir = train_and_export(out_root, recipe, "--disable_tqdm", "true")

    test = shapes_splits(train=0, test=3, seed=1)["test"]
    paths = save_samples(test["image"], os.path.join(out_root, "shapes_samples"), "shapes")
    captions = run_fresh_script(_FRESH_CAPTION, export_dir, *paths)
    return {
        "metrics": {k.removeprefix("eval_"): metrics[k] for k in ("eval_bleu_4", "eval_rouge_l", "eval_cider")},
        "seconds": time.time() - start,
        "export": export_dir,
        "captions": list(zip(paths, captions, test["caption"])),
    }


def run_dtp_llava(out_root: str) -> dict:
    """DTP-LLaVA's tower and two stages: a DTP-CLIP on the shapes scenes (the tower), then shapes captions ->
    projector and shapes questions -> projector + language model; held-out VQA exact match beside the question-type
    prior, then the export answers held-out questions through the image-text-to-text pipeline in a fresh interpreter."""
    from .training.data.shapes_vqa import shapes_vqa_splits

    start = time.time()
    tower = os.path.join(out_root, "dtp_clip_shapes_scenes")
    stage1 = os.path.join(out_root, "dtp_llava_shapes_stage1")
    train_main([os.path.join(RECIPES, "dtp_clip_shapes_scenes.yaml"), "--output_dir", tower,
                "--overwrite_output_dir", "true", "--disable_tqdm", "true"])
    train_main([os.path.join(RECIPES, "dtp_llava_shapes_stage1.yaml"), "--vision_backbone", tower,
                "--output_dir", stage1, "--overwrite_output_dir", "true", "--disable_tqdm", "true"])
    metrics, _, export_dir = train_and_export(out_root, "dtp_llava_shapes_stage2", "--model_name_or_path", stage1,
                                              "--disable_tqdm", "true")

    test = shapes_vqa_splits(train=0, test=3, seed=1)["test"]
    paths = save_samples(test["image"], os.path.join(out_root, "shapes_vqa_samples"), "question")
    questions = [row[0]["value"].split("\n", 1)[1] for row in test["conversations"]]
    answers = run_fresh_script(_FRESH_ASK, export_dir, json.dumps(questions), *paths)
    return {
        "vqa_accuracy": metrics["eval_vqa_accuracy"],
        "prior_accuracy": metrics["eval_prior_accuracy"],
        "seconds": time.time() - start,
        "export": export_dir,
        "answers": list(zip(questions, answers, test["answer"])),
    }


def main() -> None:
    out_root = os.environ.get("LEANVISION_DEMO_DIR", "outputs/demo")
    dtp = run_dtp_vit(out_root)
    clip = run_dtp_clip(out_root)
    captioners = {
        "GatedSparseBlip": run_captioner(out_root, "gated_sparse_blip_shapes"),
        "QVisionMultiModel": run_captioner(out_root, "qvision_shapes"),
    }
    llava = run_dtp_llava(out_root)
    print("\n=== leanvision demo summary ===")
    print(
        f"DTP-ViT on digits: test accuracy {dtp['accuracy']:.3f}, boundary ratio {dtp['boundary_ratio']:.3f} "
        f"(prior {dtp['compression_rate']}), {dtp['seconds']:.0f} s"
    )
    print(f"  export: {dtp['export']} (reloaded with trust_remote_code=True in a fresh interpreter)")
    print("  fresh-process predictions (predicted, true): " + ", ".join(f"{p}/{t}" for p, t in dtp["predictions"]))
    print("  boundary figures: " + ", ".join(dtp["figures"]))
    print(
        f"DTP-CLIP on single-object shapes: zero-shot top-1 {clip['top1']:.3f} (chance {1 / len(class_names()):.3f}), "
        f"top-5 {clip['top5']:.3f}, boundary ratio {clip['boundary_ratio']:.3f} (prior {clip['compression_rate']}), "
        f"{clip['seconds']:.0f} s"
    )
    print(f"  export: {clip['export']} (pipeline('zero-shot-image-classification') in a fresh interpreter)")
    print("  fresh-process predictions (predicted / true): " + ", ".join(f"{p} / {t}" for p, t in clip["predictions"]))
    print("  boundaries on scikit-image photos: " + ", ".join(clip["figures"]))
    for label, run in captioners.items():
        scores = ", ".join(f"{name} {value:.3f}" for name, value in run["metrics"].items())
        print(f"{label} on shapes (held-out captions): {scores}, {run['seconds']:.0f} s")
        print(f"  export: {run['export']} (captioned with pipeline('image-to-text') in a fresh interpreter)")
        for path, caption, truth in run["captions"]:
            print(f"  {os.path.basename(path)}: {caption!r} (true: {truth!r})")
    print(
        f"DTP-LLaVA on shapes questions (DTP-CLIP tower, two stages): held-out VQA exact match "
        f"{llava['vqa_accuracy']:.3f}, {llava['vqa_accuracy'] / llava['prior_accuracy']:.2f}x the question-type prior "
        f"{llava['prior_accuracy']:.3f}, {llava['seconds']:.0f} s"
    )
    print(f"  export: {llava['export']} (asked with pipeline('image-text-to-text') in a fresh interpreter)")
    for question, answer, truth in llava["answers"]:
        print(f"  {question!r} -> {answer!r} (true: {truth!r})")


if __name__ == "__main__":
    main()
