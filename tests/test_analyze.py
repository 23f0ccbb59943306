"""`leanvision.training.tools.analyze` on a tiny QVision: files, attention normalisation, values equal direct
computations."""

import json
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import CLIPImageProcessor, GPT2Tokenizer
from transformers.utils import logging as transformers_logging

from leanvision.cli import main as cli_main
from leanvision.configuration.configuration_qvision import QVisionConfig
from leanvision.modeling.modeling_qvision import QVisionForConditionalGeneration
from leanvision.processing.processing_qvision import QVisionProcessor
from leanvision.training.tools.analyze import analyze, analyze_saved_model, token_similarity
from leanvision.training.files import image_files

CAPTIONS = ["a red circle at the top", "a blue square on the left", "two green triangles"]
VOCAB_SIZE = 300
NUM_QUERIES = 4
GRID = 4  # 32 px images, 8 px patches


def tiny_model(**overrides) -> QVisionForConditionalGeneration:
    torch.manual_seed(0)
    config = QVisionConfig(
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
            patch_size=32 // GRID,
        ),
        text_config=dict(
            vocab_size=VOCAB_SIZE, hidden_size=32, num_layers=4, num_heads=4, max_position_embeddings=64,
            attention_types=[[["global", "local"], 2]], window_size=8, bos_token_id=0, eos_token_id=0,
        ),
        num_query_tokens=NUM_QUERIES, qformer_hidden_size=32, qformer_num_layers=2, qformer_num_heads=4,
        cross_attention_every_n=2, **overrides,
    )
    model = QVisionForConditionalGeneration(config).eval()
    with torch.no_grad():  # open the gates so that the words depend on the image tokens
        for block in model.cross_attention_blocks.values():
            block.attn_gate.fill_(1.0)
            block.ffn_gate.fill_(1.0)
    return model


@pytest.fixture(scope="module")
def processor():
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(CAPTIONS, trainer)
    vocab = json.loads(bpe.to_str())["model"]
    tokenizer = GPT2Tokenizer(vocab=vocab["vocab"], merges=[tuple(m) for m in vocab["merges"]])
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return QVisionProcessor(image_processor, tokenizer)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)) for _ in range(3)]


@pytest.fixture(scope="module")
def teacher_forced(processor, images, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("analysis")
    model = tiny_model()
    return model, out_dir, analyze(model, processor, images, str(out_dir), captions=CAPTIONS)


def test_writes_every_file_atomically(teacher_forced):
    _, out_dir, result = teacher_forced
    paths = result["paths"]
    assert len(paths["query_to_patch"]) == len(paths["word_to_query"]) == len(paths["word_to_patch"]) == 3
    for path in paths["query_to_patch"] + paths["word_to_query"] + paths["word_to_patch"] + [
        paths["token_similarity_png"]
    ]:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] > 100
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(
        [f"{kind}_{i}.png" for kind in ("query_to_patch", "word_to_query", "word_to_patch") for i in range(3)]
        + ["attention.json", "token_similarity.json", "token_similarity.png"]
    )  # no temporary files left behind


def test_attention_maps_are_distributions_over_the_patch_grid(teacher_forced):
    _, out_dir, result = teacher_forced
    query_to_patch = result["query_to_patch"]
    assert query_to_patch.shape == (3, 1 + NUM_QUERIES, GRID * GRID)
    np.testing.assert_allclose(query_to_patch.sum(-1), 1.0, atol=1e-5)
    for word_to_query, word_to_patch in zip(result["word_to_query"], result["word_to_patch"]):
        np.testing.assert_allclose(word_to_query.sum(-1), 1.0, atol=1e-5)
        np.testing.assert_allclose(word_to_patch.sum(-1), 1.0, atol=1e-5)
    saved = json.loads((out_dir / "attention.json").read_text())
    assert saved["patch_grid"] == GRID and saved["tokens"] == ["g", "q1", "q2", "q3", "q4"]
    np.testing.assert_allclose(saved["images"][1]["query_to_patch"], query_to_patch[1])


def test_maps_equal_a_direct_computation(teacher_forced, processor, images):
    model, _, result = teacher_forced
    pixel_values = processor(images=images)["pixel_values"]
    with torch.no_grad():
        image_out = model.get_image_features(pixel_values, output_attentions=True)
        expected_qp = image_out.qformer_cross_attentions[-1].mean(1)
        np.testing.assert_allclose(result["query_to_patch"], expected_qp.numpy(), atol=1e-6)
        for i, caption in enumerate(CAPTIONS):
            tokens = processor.tokenizer(caption, add_special_tokens=False)["input_ids"]
            out = model(pixel_values=pixel_values[i : i + 1], input_ids=torch.tensor([[0, *tokens]]),
                        output_attentions=True)
            # Caption token k is predicted at position k: mean over heads, then over the two gated blocks.
            blocks = [a[0].mean(0)[: len(tokens)] for a in out.cross_attentions]
            expected_wq = (blocks[0] + blocks[1]) / 2
            np.testing.assert_allclose(result["word_to_query"][i], expected_wq.numpy(), atol=1e-6)
            np.testing.assert_allclose(
                result["word_to_patch"][i], (expected_wq @ expected_qp[i]).numpy(), atol=1e-6
            )
            assert result["words"][i] == [processor.tokenizer.decode([t]) for t in tokens]
            assert result["captions"][i] == caption


def test_token_similarity_json_equals_a_direct_computation(teacher_forced, processor, images):
    model, out_dir, result = teacher_forced
    report = json.loads((out_dir / "token_similarity.json").read_text())
    assert report == result["token_similarity"]
    with torch.no_grad():
        tokens = model.get_image_features(processor(images=images)["pixel_values"]).qformer_last_hidden_state
    tokens = tokens.double()
    g, q = tokens[:, 0], tokens[:, 1:]
    cos = torch.nn.functional.cosine_similarity
    global_query = cos(g[:, None, :], q, dim=-1)
    np.testing.assert_allclose(report["global_query_cosine"], global_query.numpy(), atol=1e-9)
    assert report["mean_global_query_cosine"] == pytest.approx(float(global_query.mean()), abs=1e-9)
    pair_cos = [float(cos(g[i], g[k], dim=0)) for i, k in [(0, 1), (0, 2), (1, 2)]]
    assert report["discriminative_power"] == pytest.approx(1 - np.mean(pair_cos), abs=1e-9)
    per_image = [1 - (pair_cos[0] + pair_cos[1]) / 2, 1 - (pair_cos[0] + pair_cos[2]) / 2,
                 1 - (pair_cos[1] + pair_cos[2]) / 2]
    assert report["per_image_discriminative_power"] == pytest.approx(per_image, abs=1e-9)
    assert report["num_images"] == 3 and report["num_query_tokens"] == NUM_QUERIES


def test_discriminative_power_is_zero_for_identical_images_and_none_for_one():
    same = torch.randn(1, 1 + NUM_QUERIES, 8).expand(3, -1, -1)
    assert token_similarity(same)["discriminative_power"] == pytest.approx(0.0, abs=1e-12)
    assert token_similarity(same[:1])["discriminative_power"] is None


def test_generated_captions_and_no_global_token(processor, images, tmp_path):
    model = tiny_model(use_global_token=False)
    image_paths = []
    for i, image in enumerate(images[:2]):
        image_paths.append(str(tmp_path / f"image_{i}.png"))
        image.save(image_paths[-1])
    # min_new_tokens keeps eos out, so every caption has 5 tokens.
    result = analyze(
        model, processor, image_paths, str(tmp_path / "out"), max_new_tokens=5, generation_kwargs={"min_new_tokens": 5}
    )
    with torch.no_grad():
        expected = model.generate(
            pixel_values=processor(images=images[:2])["pixel_values"], do_sample=False, max_new_tokens=5,
            min_new_tokens=5,
        )
    assert result["captions"] == processor.batch_decode(expected[:, 1:])
    assert all(len(words) == 5 for words in result["words"])
    assert result["query_to_patch"].shape == (2, NUM_QUERIES, GRID * GRID)
    assert result["token_similarity"] is None and "token_similarity_json" not in result["paths"]
    assert not (tmp_path / "out" / "token_similarity.json").exists()


def test_analyze_saved_model_reads_folders_of_images(processor, images, tmp_path, capsys):
    model = tiny_model()
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(images[:2]):
        image.save(folder / f"{i}.png")
    (folder / "notes.txt").write_text("not an image")
    result = analyze_saved_model(
        str(tmp_path / "model"), [str(folder)], str(tmp_path / "out"), captions=CAPTIONS[:2]
    )
    direct = analyze(model, processor, images[:2], str(tmp_path / "direct"), captions=CAPTIONS[:2])
    np.testing.assert_allclose(result["query_to_patch"], direct["query_to_patch"], atol=1e-6)
    assert result["token_similarity"]["discriminative_power"] == pytest.approx(
        direct["token_similarity"]["discriminative_power"], abs=1e-9
    )
    assert image_files([str(folder), str(folder / "1.png")]) == [
        str(folder / "0.png"), str(folder / "1.png"), str(folder / "1.png")
    ]
    with pytest.raises(ValueError, match="notes.txt' is not an image file PIL can open"):
        image_files([str(folder / "notes.txt")])
    with pytest.raises(FileNotFoundError, match="missing.png"):
        image_files([str(folder / "missing.png")])

    # One bad file in the folder: the good images are analysed, the bad one is reported, the exit code is 1.
    (folder / "2.jpg").write_bytes(b"not a jpeg")
    code = cli_main(["analyze", str(folder), "--model", str(tmp_path / "model"), "--out-dir", str(tmp_path / "cli"),
                     "--max-new-tokens", "3"])
    err = capsys.readouterr().err
    assert code == 1 and "2.jpg' is not an image file" in err and "1 of 3 images could not be read" in err
    assert (tmp_path / "cli" / "query_to_patch_0.png").exists() and (tmp_path / "cli" / "query_to_patch_1.png").exists()


@pytest.fixture
def figures(monkeypatch):
    """Every figure analyze saves, as (file name, suptitle, axes titles, number of image panels) before it closes."""
    from leanvision.training.tools import analyze as analyze_module

    saved = []
    original = analyze_module.save_figure_atomically

    def record(fig, path):
        suptitle = fig._suptitle.get_text() if fig._suptitle is not None else ""
        panels = [ax for ax in fig.axes if ax.images]
        saved.append((os.path.basename(path), suptitle, [ax.get_title() for ax in panels], len(panels)))
        return original(fig, path)

    monkeypatch.setattr(analyze_module, "save_figure_atomically", record)
    return saved


def test_figures_show_every_query_and_name_the_file_and_caption(processor, images, tmp_path, figures):
    path = tmp_path / "photo.png"
    images[0].save(path)
    analyze(tiny_model(), processor, [str(path)], str(tmp_path / "out"), captions=CAPTIONS[:1])
    by_name = {name: (suptitle, titles, panels) for name, suptitle, titles, panels in figures}

    suptitle, titles, panels = by_name["query_to_patch_0.png"]
    assert f"photo.png, caption {CAPTIONS[0]!r}" in suptitle and "every Q-Former token (5)" in suptitle
    assert panels == 2 + 1 + NUM_QUERIES  # image, mean, g and every query
    assert titles[2:] == [f"{t} -> patches" for t in ["g", "q1", "q2", "q3", "q4"]]
    assert "photo.png" in by_name["word_to_query_0.png"][1][0]
    assert "photo.png" in by_name["word_to_patch_0.png"][0] and "every word" in by_name["word_to_patch_0.png"][0]


def test_query_subset_is_named_in_the_title(images, tmp_path, figures):
    from leanvision.training.tools.analyze import plot_query_to_patch

    labels = ["g"] + [f"q{j + 1}" for j in range(40)]
    weights = np.full((41, GRID * GRID), 1 / GRID**2)
    plot_query_to_patch(images[0], weights, labels, str(tmp_path / "q.png"), max_tokens=33)
    _, suptitle, titles, panels = figures[-1]
    assert "tokens g..q32 shown, 33 of 41" in suptitle and panels == 2 + 33 and titles[-1] == "q32 -> patches"


def test_one_image_skips_the_pair_metrics_with_a_stated_reason(processor, images, tmp_path, figures, capsys):
    model = tiny_model()
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    images[0].save(tmp_path / "one.png")
    out = tmp_path / "out"
    assert cli_main(["analyze", str(tmp_path / "one.png"), "--model", str(tmp_path / "model"), "--out-dir", str(out),
                     "--max-new-tokens", "3"]) == 0
    printed = capsys.readouterr().out

    report = json.loads((out / "token_similarity.json").read_text())
    assert report["discriminative_power"] is None and report["per_image_discriminative_power"] is None
    assert set(report["skipped"]) == {"discriminative_power", "per_image_discriminative_power",
                                      "global_global_cosine_figure"}
    assert all("at least two images" in reason for reason in report["skipped"].values())
    assert "token similarity: discriminative_power skipped: needs at least two images" in printed
    name, suptitle, titles, panels = figures[-1]
    assert name == "token_similarity.png" and panels == 1  # no 1x1 global-vs-global matrix
    assert "skipped: needs at least two images" in suptitle


def test_out_dir_that_is_a_file_is_one_line_before_anything_runs(processor, images, tmp_path, capsys):
    images[0].save(tmp_path / "one.png")
    (tmp_path / "taken").write_text("a file")
    code = cli_main(["analyze", str(tmp_path / "one.png"), "--model", str(tmp_path / "no-model"), "--out-dir",
                     str(tmp_path / "taken")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"--out-dir {str(tmp_path / 'taken')!r} is an existing file, not a folder" in err


def test_no_warning_that_the_eager_only_decoder_cannot_switch_attention(processor, images, tmp_path):
    """Only the Q-Former's and the gated cross-attention's maps are drawn, so GPT-Neo (eager-only) needs no switch and
    transformers' "does not support setting its attention implementation" warning is not shown to the user."""
    records = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = records.append
    transformers_logging.add_handler(handler)
    try:
        analyze(tiny_model(), processor, images[:1], str(tmp_path), captions=CAPTIONS[:1])
    finally:
        transformers_logging.remove_handler(handler)
    assert not [r for r in records if "attention implementation" in r.getMessage()]
