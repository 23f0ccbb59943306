"""leanvision demo: captions from GatedSparseBlip and QVision, DTP-ViT labels, DTP-CLIP zero-shot labels and the
DTP boundary overlays for one uploaded image, and DTP-LLaVA's answer to a question about it.

Every model loads through transformers alone (`pipeline(..., trust_remote_code=True)`), by Hub repo id or local
folder; no leanvision install is needed. A model's source is taken from its command-line flag, else its environment
variable, else `space_config.json` beside this file; models given nowhere are shown as "not configured".

    python app.py --gsb user/gsb-coco --zero-shot ./dtp_clip-export --host 127.0.0.1 --port 7860
"""

import os

# Offline-safe: no usage analytics, no version check, no Hub telemetry.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import argparse  # noqa: E402
import json  # noqa: E402

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from PIL import Image, ImageDraw, UnidentifiedImageError  # noqa: E402
from transformers import pipeline  # noqa: E402

# key -> (command-line flag, environment variable, pipeline task, display name)
MODELS = {
    "gsb": ("--gsb", "LEANVISION_CAPTIONER_GSB", "image-to-text", "GatedSparseBlip"),
    "qvision": ("--qvision", "LEANVISION_CAPTIONER_QVISION", "image-to-text", "QVision"),
    "classifier": ("--classifier", "LEANVISION_CLASSIFIER", "image-classification", "DTP-ViT"),
    "zero_shot": ("--zero-shot", "LEANVISION_ZERO_SHOT", "zero-shot-image-classification", "DTP-CLIP"),
    "assistant": ("--assistant", "LEANVISION_ASSISTANT", "image-text-to-text", "DTP-LLaVA"),
}
CONFIG_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "space_config.json")
NOT_CONFIGURED = "not configured"
DEFAULT_CANDIDATE_LABELS = ["a person", "an animal", "a vehicle", "food", "a building"]
DEFAULT_TEMPLATE = "a photo of {}"
TOP_K = 5
DEFAULT_QUESTION = "What color is the circle?"
ANSWER_TOKENS = 32
# Greedy decoding: the same image always gets the same caption.
GREEDY = {"do_sample": False, "num_beams": 1}
OVERLAY_SIZE = 320
# Largest upload decoded (width x height), checked from the file header (leanvision's loader uses the same limit).
MAX_IMAGE_PIXELS = 8192 * 8192
# Requests waiting in Gradio's queue beyond the one running; later ones are refused with "queue is full".
QUEUE_SIZE = 64


def read_config(path: str = CONFIG_FILE) -> dict:
    """space_config.json: {"models": {key: repo id or folder}, "candidate_labels": [...]}; empty when absent."""
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def resolve_sources(flags: dict, environ=os.environ, config: dict | None = None) -> dict:
    """key -> model source (flag, else environment variable, else config file) or None."""
    from_file = (config or {}).get("models", {})
    return {
        key: flags.get(key) or environ.get(env) or from_file.get(key) or None
        for key, (_, env, _, _) in MODELS.items()
    }


def load_pipelines(sources: dict) -> dict:
    """key -> transformers pipeline for every configured model (remote code from the model's own repo/folder)."""
    return {
        key: pipeline(MODELS[key][2], model=source, trust_remote_code=True)
        for key, source in sources.items()
        if source
    }


def segment_ids(boundaries: np.ndarray) -> np.ndarray:
    """seg_t = cumsum(b)_t - b_t: a patch with b_t = 1 closes its segment (raster order)."""
    return np.cumsum(boundaries) - boundaries


def draw_boundaries(image: Image.Image, boundaries, size: int = OVERLAY_SIZE) -> Image.Image:
    """The image with its patch grid, each pooled segment tinted in its own colour and a red bar after each boundary.

    A deliberate single-file copy of leanvision.training.tools.visualize.draw_boundaries, drawn with PIL: the Space runs
    without a leanvision install.
    """
    b = np.asarray(boundaries, dtype=np.float64).round().astype(np.int64).reshape(-1)
    grid = int(round(len(b) ** 0.5))
    if grid * grid != len(b):
        raise ValueError(f"boundaries must cover a square patch grid, got {len(b)} patches")
    seg = segment_ids(b).reshape(grid, grid)
    base = image.convert("RGB").resize((size, size), Image.BICUBIC)
    tint = (colormaps["tab20"](seg % 20)[..., :3] * 255).round().astype(np.uint8)
    out = Image.blend(base, Image.fromarray(tint).resize((size, size), Image.NEAREST), 0.35)
    draw = ImageDraw.Draw(out)
    cell = size / grid
    for i in range(1, grid):
        draw.line([(0, i * cell), (size, i * cell)], fill="white", width=1)
        draw.line([(i * cell, 0), (i * cell, size)], fill="white", width=1)
    for index in np.flatnonzero(b):
        row, col = divmod(int(index), grid)
        x = min((col + 1) * cell, size - 2)
        draw.line([(x, row * cell), (x, (row + 1) * cell)], fill=(255, 0, 0), width=3)
    return out


def boundary_summary(boundaries) -> str:
    b = np.asarray(boundaries, dtype=np.float64).round().astype(np.int64).reshape(-1)
    return f"{int(b.sum())} boundaries, {int(segment_ids(b).max()) + 1} segments / {len(b)} patches"


@torch.no_grad()
def dtp_overlay(pipe, image: Image.Image) -> tuple[Image.Image, str]:
    """The boundary overlay and its summary for a DTP model, from the boundaries the exported model returns."""
    processor = pipe.image_processor
    pixel_values = processor(images=[image], return_tensors="pt")["pixel_values"].to(pipe.model.device)
    # DTP-CLIP: its DTP-ViT image tower; DTP-ViT classifier: the model itself (its output carries `boundaries`).
    tower = getattr(pipe.model, "vision_model", pipe.model)
    boundaries = tower(pixel_values=pixel_values.to(tower.dtype)).boundaries[0].float().cpu().numpy()
    # Undo the normalisation, so the overlay shows the resized, cropped image the model saw.
    pixels = pixel_values[0].float().cpu().numpy().transpose(1, 2, 0)
    pixels = pixels * np.asarray(processor.image_std) + np.asarray(processor.image_mean)
    shown = Image.fromarray((pixels.clip(0, 1) * 255).round().astype(np.uint8))
    return draw_boundaries(shown, boundaries), boundary_summary(boundaries)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB: 16-bit images scaled from 0-65535 and float images from [0, 1] (or 0-255), where PIL's own
    conversion clips them to white or black. (The exports' processing_common.to_rgb does the same; this app runs
    without leanvision, so it keeps its own copy.)"""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        if not np.isfinite(pixels).all():
            raise gr.Error("The image has NaN or inf pixel values.")
        if image.mode.startswith("I;16") or pixels.max() > 255:
            top = 65535.0
        elif image.mode == "F" and pixels.min() >= 0 and pixels.max() <= 1:
            top = 1.0
        else:
            top = 255.0
        image = Image.fromarray(np.clip(pixels / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    return image.convert("RGB")


def check_uploads(component: gr.Image) -> gr.Image:
    """Makes `component` check each upload before Gradio decodes it: a file PIL cannot read, a truncated one, and one
    above MAX_IMAGE_PIXELS (read from the header, so a huge image never reaches memory) are refused with a message
    naming the upload. (A gr.Image subclass would make Gradio write a .pyi file beside this one.)"""
    decode = component.preprocess

    def preprocess(payload):
        name = repr(getattr(payload, "orig_name", None) or "the upload")
        try:
            if payload is not None and payload.path:
                with Image.open(payload.path) as header:
                    width, height = header.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise gr.Error(f"{name} has {width} x {height} pixels, more than the {MAX_IMAGE_PIXELS:,} this "
                                   "demo accepts; resize it first.")
            image = decode(payload)
            if isinstance(image, Image.Image):
                image.load()  # decode here, where a truncated file gets its message (image_mode=None decodes lazily)
            return image
        except (UnidentifiedImageError, Image.DecompressionBombError):
            raise gr.Error(f"{name} is not an image file this demo can read.") from None
        except (OSError, SyntaxError) as err:  # truncated or corrupted data
            raise gr.Error(f"{name} could not be decoded (truncated or corrupted?): {err}") from None

    component.preprocess = preprocess
    return component


def parse_labels(text: str) -> list[str]:
    return [label.strip() for label in (text or "").split(",") if label.strip()]


def predict(pipes: dict, image, labels_text: str, template: str):
    """Outputs in the order of `build_demo`'s outputs: 2 captions, 2 label sets, 2 overlays, the boundary summary."""
    if image is None:
        raise gr.Error("Upload an image first.")
    try:
        return run_models(pipes, to_rgb(image), labels_text, template)
    except gr.Error:
        raise
    except (ValueError, TypeError) as err:  # the pipelines' checks (labels, template, image): say what is wrong
        raise gr.Error(str(err)) from None


def run_models(pipes: dict, image: Image.Image, labels_text: str, template: str):
    """Every configured model on one RGB image (`predict`'s outputs)."""
    captions = [
        pipes[key](image, **GREEDY)[0]["generated_text"] if key in pipes else NOT_CONFIGURED
        for key in ("gsb", "qvision")
    ]
    classes = NOT_CONFIGURED
    if "classifier" in pipes:
        classes = {p["label"]: p["score"] for p in pipes["classifier"](image, top_k=TOP_K)}
    zero_shot = NOT_CONFIGURED
    if "zero_shot" in pipes:
        labels = parse_labels(labels_text)
        if not labels:
            raise gr.Error("Give at least one candidate label (comma-separated).")
        predictions = pipes["zero_shot"](
            image, candidate_labels=labels, hypothesis_template=template or DEFAULT_TEMPLATE
        )
        zero_shot = {p["label"]: p["score"] for p in predictions}
    overlays, summaries = [], []
    for key in ("classifier", "zero_shot"):
        overlay, summary = dtp_overlay(pipes[key], image) if key in pipes else (None, NOT_CONFIGURED)
        overlays.append(overlay)
        summaries.append(f"{MODELS[key][3]}: {summary}")
    return (*captions, classes, zero_shot, *overlays, "\n".join(summaries))


def ask(pipes: dict, image, question: str) -> str:
    """DTP-LLaVA's greedy reply to one user turn holding the image and the question."""
    if "assistant" not in pipes:
        return NOT_CONFIGURED
    if image is None:
        raise gr.Error("Upload an image first.")
    if not (question or "").strip():
        raise gr.Error("Type a question about the image.")
    messages = [{"role": "user", "content": [{"type": "image", "image": to_rgb(image)},
                                             {"type": "text", "text": question.strip()}]}]
    try:
        answer = pipes["assistant"](text=messages, max_new_tokens=ANSWER_TOKENS, return_full_text=False, **GREEDY)
    except (ValueError, TypeError) as err:
        raise gr.Error(str(err)) from None
    return answer[0]["generated_text"]


def build_demo(pipes: dict, sources: dict, candidate_labels=None) -> gr.Blocks:
    status = "\n".join(
        f"- **{MODELS[key][3]}** ({MODELS[key][2]}): " + (f"`{source}`" if source else NOT_CONFIGURED)
        for key, source in sources.items()
    )
    with gr.Blocks(title="leanvision demo") as demo:
        gr.Markdown(
            "# leanvision: token-efficient vision-language models\n"
            "Upload an image: two captioners describe it (greedy decoding), DTP-ViT classifies it, DTP-CLIP ranks "
            "your candidate labels, and the overlays show how each DTP image tower pooled the patches into "
            "segments (one colour per segment, a red bar where a segment closes). Ask DTP-LLaVA a question about "
            "the same image below.\n\n" + status
        )
        with gr.Row():
            with gr.Column():
                # image_mode=None: Gradio keeps the file's mode (16-bit stays 16-bit) and `to_rgb` scales it.
                image = check_uploads(gr.Image(type="pil", image_mode=None, label="Image", elem_id="image"))
                labels = gr.Textbox(
                    value=", ".join(candidate_labels or DEFAULT_CANDIDATE_LABELS),
                    label="Zero-shot candidate labels (comma-separated)", elem_id="candidate-labels",
                )
                template = gr.Textbox(value=DEFAULT_TEMPLATE, label="Hypothesis template", elem_id="template")
                submit = gr.Button("Submit", variant="primary", elem_id="submit")
            with gr.Column():
                outputs = [
                    gr.Textbox(label="GatedSparseBlip caption", elem_id="caption-gsb"),
                    gr.Textbox(label="QVision caption", elem_id="caption-qvision"),
                    gr.Label(label="DTP-ViT labels", elem_id="labels-classifier"),
                    gr.Label(label="DTP-CLIP zero-shot labels", elem_id="labels-zero-shot"),
                ]
        with gr.Row():
            outputs.append(gr.Image(label="DTP-ViT boundaries", elem_id="overlay-classifier"))
            outputs.append(gr.Image(label="DTP-CLIP image-tower boundaries", elem_id="overlay-zero-shot"))
        outputs.append(gr.Textbox(label="DTP segments", elem_id="boundary-summary", lines=2))
        with gr.Row():
            question = gr.Textbox(value=DEFAULT_QUESTION, label="Question for DTP-LLaVA", elem_id="question")
            answer = gr.Textbox(label="DTP-LLaVA answer", elem_id="answer")
        ask_button = gr.Button("Ask", elem_id="ask")
        submit.click(lambda *inputs: predict(pipes, *inputs), [image, labels, template], outputs, api_name="predict")
        ask_button.click(lambda *inputs: ask(pipes, *inputs), [image, question], answer, api_name="ask")
    # One request runs at a time (a pipeline is not thread-safe); at most QUEUE_SIZE wait.
    return demo.queue(default_concurrency_limit=1, max_size=QUEUE_SIZE)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for key, (flag, env, task, name) in MODELS.items():
        parser.add_argument(flag, dest=key, help=f"{name} ({task}): Hub repo id or local folder (or ${env})")
    parser.add_argument("--host", help="address to listen on (default: gradio's, GRADIO_SERVER_NAME)")
    parser.add_argument("--port", type=int, help="port (default: gradio's, GRADIO_SERVER_PORT)")
    args = parser.parse_args(argv)
    config = read_config()
    sources = resolve_sources({key: getattr(args, key) for key in MODELS}, config=config)
    demo = build_demo(load_pipelines(sources), sources, config.get("candidate_labels"))
    demo.launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
