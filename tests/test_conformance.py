"""What a Hub user expects of any transformers model, checked for every family (in the spirit of transformers'
ModelTesterMixin / GenerationTesterMixin / PipelineTesterMixin, our own code): one table of tiny models (the
folders of tests/fixtures/saved_v0_1), one test per property. Properties that depend on the bundle's own code run on
the export, in an interpreter where leanvision cannot be imported (test_bundles.py)."""

import os

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoProcessor, pipeline

from test_attention import AUTO_CLASS, ROOT, inputs, load, main_output

CAPTIONERS = ("gated_sparse_blip", "qvision_multimodel")
PIPELINE_TASK = {
    "dtp_vit": "image-classification",
    "dtp_clip": "zero-shot-image-classification",
    "gated_sparse_blip": "image-to-text",
    "qvision_multimodel": "image-to-text",
}


def outputs_of(model, family, batch=None):
    with torch.no_grad():
        return main_output(family, model(**(batch or inputs(family))))


def rows(batch: dict, index: slice) -> dict:
    return {key: value[index] for key, value in batch.items()}


def images(count=3, size=(40, 48)):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(count)]


def pipeline_kwargs(family):
    if family == "dtp_clip":
        return {"candidate_labels": ["red circle", "blue square", "green triangle"]}
    if family in CAPTIONERS:
        return {"max_new_tokens": 4, "do_sample": False}
    return {"top_k": 3}


# --- Save and load -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(AUTO_CLASS))
def test_save_and_reload_is_bitwise_identical(family, tmp_path):
    model = load(family, "eager")
    model.save_pretrained(tmp_path)
    reloaded = load_from(family, tmp_path)
    saved, original = load_file(str(tmp_path / "model.safetensors")), model.state_dict()
    for name, tensor in saved.items():
        assert torch.equal(tensor, original[name]), name
    assert torch.equal(outputs_of(reloaded, family), outputs_of(model, family))


@pytest.mark.parametrize("family", sorted(AUTO_CLASS))
def test_sharded_save_reloads_the_same_model(family, tmp_path):
    model = load(family, "eager")
    model.save_pretrained(tmp_path, max_shard_size="100KB")
    shards = [name for name in os.listdir(tmp_path) if name.endswith(".safetensors")]
    assert len(shards) > 1 and (tmp_path / "model.safetensors.index.json").is_file()
    assert torch.equal(outputs_of(load_from(family, tmp_path), family), outputs_of(model, family))


def load_from(family, path):
    return AUTO_CLASS[family].from_pretrained(path, attn_implementation="eager").eval()


# --- dtype, flags, batching ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(AUTO_CLASS))
def test_bfloat16_loading_runs_close_to_float32_and_keeps_dtp_boundaries(family):
    full = load(family, "eager")
    half = AUTO_CLASS[family].from_pretrained(os.path.join(ROOT, family), dtype=torch.bfloat16).eval()
    assert any(p.dtype == torch.bfloat16 for p in half.parameters())
    batch = inputs(family)
    if family == "dtp_vit":
        batch.pop("boundaries")  # let the predictor decide
    with torch.no_grad():
        expected, got = full(**batch), half(**batch)
    torch.testing.assert_close(main_output(family, got).float(), main_output(family, expected), atol=0.15, rtol=0.05)
    if family in ("dtp_vit", "dtp_clip"):
        assert torch.equal(got.boundaries.float(), expected.boundaries)


@pytest.mark.parametrize("family", sorted(AUTO_CLASS))
def test_return_dict_false_gives_the_same_values_as_a_tuple(family):
    model = load(family, "eager")
    with torch.no_grad():
        as_dict = model(**inputs(family))
        as_tuple = model(**inputs(family), return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(as_dict.to_tuple())
    for got, expected in zip(as_tuple, as_dict.to_tuple()):
        if isinstance(expected, torch.Tensor):
            assert torch.equal(got, expected)


@pytest.mark.parametrize("family", sorted(AUTO_CLASS))
def test_output_hidden_states_and_attentions_have_one_entry_per_layer(family):
    model = load(family, "eager")
    with torch.no_grad():
        out = model(**inputs(family), output_hidden_states=True, output_attentions=True)
    if family == "dtp_clip":
        vision, text = out.vision_model_output, out.text_model_output
        layers = model.config.vision_config.num_hidden_layers
        assert len(vision.hidden_states) == layers + 1 and len(vision.attentions) == layers
        assert len(text.attentions) == model.config.text_config.num_hidden_layers
        return
    layers = model.config.num_hidden_layers
    assert len(out.hidden_states) == layers + 1 and len(out.attentions) == layers
    for probs in out.attentions:
        torch.testing.assert_close(probs.sum(-1), torch.ones_like(probs.sum(-1)))


@pytest.mark.parametrize("family", sorted(AUTO_CLASS))
def test_each_row_of_a_batch_gets_the_output_it_gets_alone(family):
    model = load(family, "sdpa")
    batch = inputs(family)
    if family == "dtp_vit":
        batch.pop("boundaries")
    together = outputs_of(model, family, batch)
    for i in range(2):
        alone = rows(batch, slice(i, i + 1))
        if family == "gated_sparse_blip":  # drop the padding the other sample needed
            height = int(alone["latent_mask"][0, :, 0].sum())
            alone = {**alone, "latents": alone["latents"][..., :height, :]}
            alone.pop("latent_mask")
        if family in CAPTIONERS:  # and the text padding
            length = int(alone["attention_mask"].sum())
            alone = {**alone, "input_ids": alone["input_ids"][:, :length], "attention_mask": None}
            expected = together[i : i + 1, :length]
        elif family == "dtp_clip":
            expected = together[i : i + 1, i : i + 1]  # image i against text i
        else:
            expected = together[i : i + 1]
        torch.testing.assert_close(outputs_of(model, family, alone), expected, atol=1e-5, rtol=0)


# --- Generation (captioners) ---------------------------------------------------------------------------------------


def caption_inputs(family):
    batch = inputs(family)
    if family == "gated_sparse_blip":
        return {"latents": batch["latents"][:, :, :8], "latent_mask": batch["latent_mask"][:, :8]}
    return {"pixel_values": batch["pixel_values"]}


@pytest.mark.parametrize("family", CAPTIONERS)
def test_greedy_generation_is_the_argmax_of_each_step(family):
    model = load(family, "eager")
    out = model.generate(**caption_inputs(family), max_new_tokens=5, min_new_tokens=5, do_sample=False,
                         return_dict_in_generate=True, output_scores=True)
    assert out.sequences.shape == (2, 1 + 5) and len(out.scores) == 5
    for step, scores in enumerate(out.scores):
        assert torch.equal(scores.argmax(-1), out.sequences[:, 1 + step])
    # The same tokens, fed back in one forward, give the same next-token choices.
    with torch.no_grad():
        logits = model(**caption_inputs(family), input_ids=out.sequences).logits
    assert torch.equal(logits[:, :-1].argmax(-1), out.sequences[:, 1:])


@pytest.mark.parametrize("family", CAPTIONERS)
def test_generation_options(family):
    model = load(family, "eager")
    images_in = caption_inputs(family)
    eos = model.generation_config.eos_token_id
    short = model.generate(**images_in, max_new_tokens=2, do_sample=False)
    assert short.shape[1] <= 1 + 2
    long = model.generate(**images_in, min_new_tokens=6, max_new_tokens=6, do_sample=False)
    assert long.shape[1] == 1 + 6 and not (long[:, 1:] == eos).any()
    beams = model.generate(**images_in, num_beams=3, max_new_tokens=4, do_sample=False)
    assert beams.shape[0] == 2
    sampled = []
    for seed in (0, 0):
        torch.manual_seed(seed)
        sampled.append(model.generate(**images_in, do_sample=True, max_new_tokens=6, min_new_tokens=6))
    assert torch.equal(sampled[0], sampled[1])
    penalised = model.generate(**images_in, min_new_tokens=6, max_new_tokens=6, do_sample=False,
                               repetition_penalty=1e6)
    for row in penalised[:, 1:]:  # a huge penalty never repeats a token
        assert len(set(row.tolist())) == len(row)


@pytest.mark.parametrize("family", CAPTIONERS)
def test_resize_token_embeddings_then_generate(family):
    model = load(family, "eager")
    old = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(old + 8)
    assert model.get_input_embeddings().weight.shape[0] == old + 8
    assert model.get_output_embeddings().weight.shape[0] == old + 8
    with torch.no_grad():
        logits = model(**inputs(family)).logits
    assert logits.shape[-1] == old + 8
    assert model.generate(**caption_inputs(family), max_new_tokens=3, do_sample=False).shape[0] == 2


# --- Pipelines -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(AUTO_CLASS))
def test_pipeline_takes_pil_path_numpy_and_batched_lists(family, tmp_path):
    pipe = pipeline(PIPELINE_TASK[family], model=os.path.join(ROOT, family))
    arrays = images()
    paths = []
    for i, array in enumerate(arrays):
        paths.append(str(tmp_path / f"image{i}.png"))
        Image.fromarray(array).save(paths[-1])
    kwargs = pipeline_kwargs(family)
    single = [pipe(Image.fromarray(array), **kwargs) for array in arrays]
    assert_same_answers([pipe(path, **kwargs) for path in paths], single)
    if family != "dtp_clip":  # transformers' zero-shot pipeline itself takes no arrays
        assert_same_answers([pipe(array, **kwargs) for array in arrays], single)
    assert_same_answers(pipe(paths, batch_size=2, **kwargs), single)
    assert_same_answers(pipe([Image.fromarray(array) for array in arrays], batch_size=3, **kwargs), single)


def assert_same_answers(got, expected):
    """Equal labels / captions; scores equal within float noise (a batch may sum in another order)."""
    assert len(got) == len(expected)
    for answers, reference in zip(got, expected):
        assert [a.get("label", a.get("generated_text")) for a in answers] == [
            r.get("label", r.get("generated_text")) for r in reference
        ]
        for a, r in zip(answers, reference):
            assert abs(a.get("score", 0.0) - r.get("score", 0.0)) < 1e-5


def test_captioner_pipeline_accepts_in_memory_model_and_processor():
    path = os.path.join(ROOT, "gated_sparse_blip")
    model, processor = load("gated_sparse_blip", "sdpa"), AutoProcessor.from_pretrained(path)
    from_objects = pipeline("image-to-text", model=model, processor=processor)
    from_folder = pipeline("image-to-text", model=path)
    image = Image.fromarray(images(1)[0])
    assert from_objects(image, max_new_tokens=4) == from_folder(image, max_new_tokens=4)


# --- Compilation and adapters --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_torch_compile_forward_equals_eager():
    model = load("dtp_vit", "sdpa")
    batch = inputs("dtp_vit")
    expected = outputs_of(model, "dtp_vit", batch)
    compiled = torch.compile(model)
    with torch.no_grad():
        got = compiled(**batch).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


LORA_TARGETS = {
    "dtp_vit": ["q_proj", "v_proj"],
    "dtp_clip": ["q_proj", "v_proj"],
    "gated_sparse_blip": ["query", "value"],
    "qvision_multimodel": ["q_proj", "v_proj"],
}


@pytest.mark.parametrize("family", sorted(AUTO_CLASS))
def test_peft_lora_wrap_starts_as_the_base_model_and_trains_only_adapters(family):
    from peft import LoraConfig, get_peft_model

    model = load(family, "eager")
    expected = outputs_of(model, family)
    wrapped = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS[family]))
    trainable = [name for name, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    torch.testing.assert_close(outputs_of(wrapped, family), expected, atol=1e-6, rtol=0)
