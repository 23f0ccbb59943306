"""The captioning task shared by the captioning families: data, collator, latent caching, generation-based
evaluation with the caption metric module, and the `caption` / `evaluate` commands."""

import json
import os

import pytest
import torch
from PIL import Image

from captioning_helpers import (
    BUCKETS,
    TINY_OVERRIDES,
    TINY_VAE,
    coco30k_style_dataset,
    model_args,
    save_tiny_captioner,
)
from helpers import launch_two_ranks
from leanvision.cli import main as cli_main
from leanvision.training.data.collators import CaptionCollator
from leanvision.training.data.shapes import make_shapes_dataset, shapes_splits
from leanvision.training.data.tokenizers import word_level_tokenizer
from leanvision.training.evaluation.captions import score_captions
from leanvision.training.families import get_family
from leanvision.training.files import image_files
from leanvision.training.inference import (
    caption_dataset,
    caption_images,
    decode_captions,
    decoding_kwargs,
    load_captioner,
)
from leanvision.training.trainer import CaptionTrainer
from leanvision.training.tasks import TASKS
from leanvision.training.train import main as train_main
from leanvision.training.train import parse_args

FAST = ["--save_strategy", "no", "--eval_strategy", "no", "--disable_tqdm", "true", "--report_to", "none",
        "--use_cpu", "true", "--per_device_eval_batch_size", "4"]


def recipe(tmp_path, with_vae: bool, **extra) -> str:
    overrides = json.loads(json.dumps(TINY_OVERRIDES))
    if with_vae:
        overrides["vae_config"] = dict(TINY_VAE)
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({
        "family": "gated_sparse_blip", "config_overrides": overrides, "image_size": 32, "learning_rate": 1e-3,
        "per_device_train_batch_size": 6, "generation_max_new_tokens": 8, "seed": 0, **extra,
    }))
    return str(path)


def setup_for(argv):
    """The TaskSetup and TrainingArguments `train.py` would build from `argv`."""
    arguments, data_args, training_args = parse_args(argv)
    training_args.remove_unused_columns = False
    family = get_family(arguments.family)
    return TASKS[family.task](family, arguments, data_args, training_args), training_args


@pytest.fixture(scope="module")
def captioner_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("captioner")
    save_tiny_captioner(path)
    return path


# --- data and collator ---------------------------------------------------------------------------------------------


def test_word_level_tokenizer_round_trips_captions_with_blip_layout():
    captions = make_shapes_dataset(50, seed=0, split="train")["caption"]
    tokenizer = word_level_tokenizer(captions)
    ids = tokenizer(captions[0])["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == captions[0]
    assert tokenizer.bos_token == "[DEC]" and tokenizer.pad_token_id == 0


def test_collator_pads_mixed_buckets_masks_them_and_ignores_text_padding(tmp_path):
    data = coco30k_style_dataset()["train"].add_column("example_id", list(range(18)))
    _, processor = get_family("gated_sparse_blip").build(
        model_args(), json.loads(json.dumps(TINY_OVERRIDES)), data["caption"]
    )
    collate = CaptionCollator(processor, "caption", "image", max_length=64)

    batch = collate([data[i] for i in range(3)])

    assert batch["latents"].shape == (3, 4, 8, 8)
    for i, (channels, height, width) in enumerate(BUCKETS):
        latent = torch.tensor(data[i]["vae_latent"]).view(channels, height, width)
        assert torch.equal(batch["latents"][i, :, :height, :width], latent)
        assert batch["latent_mask"][i].sum() == height * width
        assert batch["latent_mask"][i, :height, :width].all()
    pad = batch["attention_mask"] == 0
    assert pad.any()  # captions of different lengths
    assert (batch["labels"][pad] == -100).all()
    assert torch.equal(batch["labels"][~pad], batch["input_ids"][~pad])
    assert batch["input_ids"][:, 0].eq(processor.tokenizer.bos_token_id).all()
    assert batch["example_id"].view(-1).tolist() == [0, 1, 2]
    # One bucket only: no padding, so no mask.
    assert "latent_mask" not in collate([data[0], data[3]])


def test_coco30k_schema_local_dataset_trains_with_mixed_buckets(tmp_path):
    data_dir = tmp_path / "coco30k"
    coco30k_style_dataset().save_to_disk(str(data_dir))
    argv = [recipe(tmp_path, with_vae=False), "--dataset_name", str(data_dir), "--output_dir", str(tmp_path / "run"),
            "--max_steps", "3", *FAST]

    setup, _ = setup_for(argv)
    first = setup.data_collator([setup.train_dataset[i] for i in range(6)])
    assert first["latent_mask"].shape == (6, 8, 8) and not first["latent_mask"].all()
    assert set(setup.train_dataset.column_names) == {"vae_latent", "vae_latent_shape", "caption", "example_id"}

    metrics = train_main(argv)

    with open(tmp_path / "run" / "trainer_state.json") as f:
        state = json.load(f)
    assert state["global_step"] == 3
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert all(torch.isfinite(torch.tensor(loss)) for loss in losses)
    for name in ("eval_loss", "eval_bleu_4", "eval_rouge_l", "eval_cider"):
        assert name in metrics
    assert 0.0 <= metrics["eval_bleu_4"] <= 1.0
    _, model, processor = load_captioner(str(tmp_path / "run"))
    assert model.config.vae_config is None and processor.tokenizer.bos_token == "[DEC]"


def test_image_data_are_encoded_once_and_training_skips_the_vae(tmp_path):
    argv = [recipe(tmp_path, with_vae=True), "--output_dir", str(tmp_path / "run"), "--max_train_samples", "12",
            "--max_eval_samples", "4", "--max_steps", "2", *FAST]
    setup, training_args = setup_for(argv)
    model, processor = setup.model, setup.processor

    assert "image" not in setup.train_dataset.column_names
    image = shapes_splits(train=12, test=4, seed=0)["train"][0]["image"]
    with torch.no_grad():
        expected = model.model.encode_pixel_values(processor(images=[image])["pixel_values"])[0]
    row = setup.train_dataset[0]
    assert row["vae_latent_shape"] == [4, 8, 8]
    torch.testing.assert_close(torch.tensor(row["vae_latent"]).view(4, 8, 8), expected)

    vae_calls = []
    model.model.vae.encoder.register_forward_hook(lambda *args: vae_calls.append(1))
    trainer = setup.trainer_class(
        model=model, args=training_args, train_dataset=setup.train_dataset, eval_dataset=setup.eval_dataset,
        data_collator=setup.data_collator, processing_class=processor, **setup.trainer_kwargs,
    )
    trainer.train()
    assert trainer.state.global_step == 2 and vae_calls == []


def test_generation_eval_scores_the_generated_captions_against_every_reference(tmp_path):
    argv = [recipe(tmp_path, with_vae=True), "--output_dir", str(tmp_path / "run"), "--max_train_samples", "8",
            "--max_eval_samples", "6", *FAST]
    setup, training_args = setup_for(argv)
    trainer = CaptionTrainer(
        model=setup.model, args=training_args, eval_dataset=setup.eval_dataset,
        data_collator=setup.data_collator, processing_class=setup.processor, **setup.trainer_kwargs,
    )

    metrics = trainer.evaluate()

    references = setup.trainer_kwargs["references"]
    assert len(references) == 6 and all(len(refs) == 5 for refs in references)  # shapes: five references each
    # Captions generated directly from the cached latents, in dataset order.
    generation_kwargs = setup.trainer_kwargs["generation_kwargs"]
    direct = caption_dataset(setup.model, setup.processor, setup.eval_dataset, generation_kwargs)
    assert trainer.last_predictions == direct
    expected = score_captions(direct, references, ["bleu", "rouge_l", "cider"])
    for name in ("bleu_1", "bleu_4", "rouge_l", "cider"):
        assert metrics[f"eval_{name}"] == pytest.approx(expected[name], abs=1e-12)
    assert "eval_loss" in metrics


# --- `leanvision caption` and `leanvision evaluate` ---------------------------------------------------------------


def test_decoding_modes_and_image_listing_reject_bad_input(tmp_path):
    assert decoding_kwargs() == {"max_new_tokens": 40, "do_sample": False, "num_beams": 1}
    assert decoding_kwargs(beams=3)["num_beams"] == 3
    assert decoding_kwargs(temperature=0.7) == {
        "max_new_tokens": 40, "do_sample": True, "num_beams": 1, "temperature": 0.7, "top_k": 0
    }
    with pytest.raises(ValueError, match="one decoding mode"):
        decoding_kwargs(beams=2, temperature=0.5)
    with pytest.raises(ValueError, match="temperature"):
        decoding_kwargs(temperature=0.0)
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="holds no image files PIL can open"):
        image_files([str(tmp_path)])
    with pytest.raises(FileNotFoundError):
        image_files([str(tmp_path / "missing.png")])


def test_caption_command_captions_a_folder_of_images(captioner_dir, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    images = shapes_splits(train=0, test=3, seed=0, image_size=48)["test"]["image"]
    for name, image in zip(("b.png", "a.JPG", "c.webp"), images):
        image.save(folder / name)
    (folder / "notes.txt").write_text("skipped")
    (folder / "sub.png").mkdir()  # a folder, not an image
    _, model, processor = load_captioner(str(captioner_dir))

    for flags, kwargs in (([], decoding_kwargs()), (["--beams", "2"], decoding_kwargs(beams=2))):
        assert cli_main(["caption", str(folder), "--model", str(captioner_dir), *flags]) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        paths = [str(folder / name) for name in ("a.JPG", "b.png", "c.webp")]
        expected = caption_images(model, processor, [Image.open(p) for p in paths], kwargs)
        assert lines == [f"{path}\t{caption}" for path, caption in zip(paths, expected)]
    assert cli_main(["caption", str(folder / "missing.png"), "--model", str(captioner_dir)]) == 2


def test_evaluate_command_writes_scores_json_atomically(captioner_dir, tmp_path):
    out = tmp_path / "scores" / "scores.json"

    assert cli_main(["evaluate", str(captioner_dir), "--dataset", "shapes", "--max-samples", "6",
                     "--metrics", "bleu,cider,spice", "--out", str(out)]) == 0

    report = json.loads(out.read_text())
    test = shapes_splits(train=0, test=6, seed=0)["test"]
    _, model, processor = load_captioner(str(captioner_dir))
    predictions = caption_images(model, processor, list(test["image"]), decoding_kwargs())
    expected = score_captions(predictions, test["captions"], ["bleu", "cider", "spice"])
    assert report["num_samples"] == 6 and report["split"] == "test" and report["family"] == "gated_sparse_blip"
    assert [e["prediction"] for e in report["examples"]] == predictions[:5]
    assert report["scores"]["bleu_4"] == pytest.approx(expected["bleu_4"], abs=1e-12)
    assert report["scores"]["cider"] == pytest.approx(expected["cider"], abs=1e-12)
    if expected["spice"] is None:
        assert report["scores"]["spice"] is None and "spice" in report["skipped"]
    assert sorted(os.listdir(out.parent)) == ["scores.json"]  # no temporary file left
    assert cli_main(["evaluate", str(captioner_dir), "--dataset", "shapes", "--metrics", "bleu,nope"]) == 2


def test_decode_captions_treats_negative_padding_as_pad(captioner_dir):
    _, _, processor = load_captioner(str(captioner_dir))
    tokenizer = processor.tokenizer
    ids = tokenizer(["a red circle", "a blue square at the top"], padding=True)["input_ids"]
    padded = torch.tensor(ids)
    padded[padded == tokenizer.pad_token_id] = -100
    assert decode_captions(processor, padded) == ["a red circle", "a blue square at the top"]


def test_training_starts_from_a_blip_checkpoint_and_a_diffusers_vae(tmp_path):
    from diffusers import AutoencoderKL
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration

    words = sorted({w for c in coco30k_style_dataset()["train"]["caption"] for w in c.split()})
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate([*specials, *words])})
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    blip_dir, vae_dir, data_dir = tmp_path / "blip", tmp_path / "vae", tmp_path / "coco30k"
    text = dict(TINY_OVERRIDES["text_config"], vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                sep_token_id=tokenizer.sep_token_id, eos_token_id=tokenizer.sep_token_id, pad_token_id=0)
    torch.manual_seed(0)
    blip = BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8,
    )))
    blip.save_pretrained(blip_dir)
    tokenizer.save_pretrained(blip_dir)
    vae = AutoencoderKL(**TINY_VAE, scaling_factor=0.25)
    vae.save_pretrained(vae_dir)
    coco30k_style_dataset().save_to_disk(str(data_dir))
    overrides = {"max_latent_size": [16, 16], "vision_num_hidden_layers": 1, "attention_sparsity": 0.5}
    run = tmp_path / "run"

    train_main([
        "--family", "gated_sparse_blip", "--init_from_blip", str(blip_dir), "--vae_name_or_path", str(vae_dir),
        "--config_overrides", json.dumps(overrides), "--dataset_name", str(data_dir), "--output_dir", str(run),
        "--max_steps", "1", "--learning_rate", "0", "--per_device_train_batch_size", "4", *FAST,
    ])

    _, model, processor = load_captioner(str(run))
    assert model.config.vae_scaling_factor == 0.25 and model.config.vision_hidden_size == 32
    own, reference = model.state_dict(), blip.state_dict()
    # Learning rate 0: the saved decoder is BLIP's, the saved VAE is the diffusers one.
    for own_key, blip_key in (
        ("model.text_model.embeddings.word_embeddings.weight", "text_decoder.bert.embeddings.word_embeddings.weight"),
        ("model.text_model.layers.1.crossattention.self.key.weight",
         "text_decoder.bert.encoder.layer.1.crossattention.self.key.weight"),
        ("lm_head.transform.dense.weight", "text_decoder.cls.predictions.transform.dense.weight"),
    ):
        assert torch.equal(own[own_key], reference[blip_key]), own_key
    for key, value in vae.state_dict().items():
        assert torch.equal(own[f"model.vae.{key}"], value), key
    assert processor.tokenizer.get_vocab() == tokenizer.get_vocab()
    assert processor.image_processor.size == {"height": 32, "width": 32}  # the VAE's sample_size


@pytest.mark.slow
def test_two_rank_generation_eval_gathers_every_caption_once(tmp_path):
    data_dir = tmp_path / "coco30k"
    # 7 eval rows over 2 ranks x batch 2: the last batch is padded with a repeated row, which the gather drops.
    coco30k_style_dataset(num_rows=25, num_test=7).save_to_disk(str(data_dir))
    base = [recipe(tmp_path, with_vae=False), "--dataset_name", str(data_dir), "--output_dir", str(tmp_path / "run"),
            *FAST]
    argv = [*base, "--max_steps", "2", "--per_device_eval_batch_size", "2"]
    launch_two_ranks(argv, tmp_path)
    with open(tmp_path / "run" / "eval_results.json") as f:
        two_ranks = json.load(f)

    # One process, same saved model and eval rows.
    setup, training_args = setup_for([*base, "--model_name_or_path", str(tmp_path / "run"),
                                      "--per_device_eval_batch_size", "3"])
    trainer = CaptionTrainer(
        model=setup.model, args=training_args, eval_dataset=setup.eval_dataset, data_collator=setup.data_collator,
        processing_class=setup.processor, **setup.trainer_kwargs,
    )
    one_rank = trainer.evaluate()
    assert len(trainer.last_predictions) == 7
    for name in ("eval_bleu_1", "eval_bleu_4", "eval_rouge_l", "eval_cider"):
        assert two_ranks[name] == pytest.approx(one_rank[name], abs=1e-9), name


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.7])
def test_ablation_measures_the_kept_fraction_from_attention_probabilities(sparsity):
    import math

    from captioning_helpers import tiny_captioner
    from leanvision.training.tools.ablation import format_table, measure_kept_fraction

    model, processor = tiny_captioner(attention_sparsity=sparsity)
    test = shapes_splits(train=0, test=5, seed=0, image_size=32)["test"]
    lengths = [len(processor(text=[c])["input_ids"][0]) for c in test["caption"]]

    kept = measure_kept_fraction(model, processor, list(test["image"]), list(test["caption"]), batch_size=2)

    def k(n):
        return n if sparsity == 0 else max(1, math.floor((1 - sparsity) * n + 1e-9))

    # Query t of a caption may attend to t + 1 tokens; every query may attend to the 16 latent tokens.
    expected_self = sum(k(t + 1) for n in lengths for t in range(n)) / sum(t + 1 for n in lengths for t in range(n))
    assert kept["self"] == pytest.approx(expected_self, abs=1e-12)
    assert kept["cross"] == pytest.approx(k(16) / 16, abs=1e-12)
    row = dict(sparsity=sparsity, gating=True, bleu_4=0.5, meteor=0.4, rouge_l=0.6, cider=1.2,
               kept_self=kept["self"], kept_cross=kept["cross"], run_seconds=10)
    assert f"| {sparsity:g} | on | 0.500 | 0.400 | 0.600 | 1.200 | {kept['self']:.3f} |" in format_table([row])


def test_image_caption_dataset_with_several_captions_per_image(tmp_path):
    from datasets import Dataset, DatasetDict, Image as ImageFeature

    shapes = shapes_splits(train=10, test=4, seed=0, image_size=32)
    # COCO style: an image column and a list of captions per image, no separate references column.
    data = DatasetDict({
        name: Dataset.from_dict({"img": list(split["image"]), "sentences": list(split["captions"])})
        .cast_column("img", ImageFeature())
        for name, split in shapes.items()
    })
    data.save_to_disk(str(tmp_path / "data"))
    argv = [recipe(tmp_path, with_vae=True), "--dataset_name", str(tmp_path / "data"), "--image_column", "img",
            "--caption_column", "sentences", "--output_dir", str(tmp_path / "run"), "--max_steps", "2", *FAST]

    setup, _ = setup_for(argv)

    assert setup.trainer_kwargs["references"] == shapes["test"]["captions"]
    assert set(setup.train_dataset.column_names) == {"vae_latent", "vae_latent_shape", "sentences", "example_id"}

    def draw(epoch):
        setup.data_collator.epoch = epoch
        return tuple(setup.data_collator([setup.train_dataset[0]])["input_ids"][0].tolist())

    options = {tuple(setup.processor(text=[c])["input_ids"][0].tolist()) for c in shapes["train"][0]["captions"]}
    picked = {draw(epoch) for epoch in range(30)}
    # One of the image's captions, drawn afresh each epoch; the same epoch draws the same one (resumable).
    assert len(picked) > 1 and picked <= options
    assert draw(7) == draw(7) and [draw(e) for e in range(5)] == [draw(e) for e in range(5)]
    metrics = train_main(argv)
    assert "eval_cider" in metrics
