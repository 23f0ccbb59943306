"""Tests of the QVisionMultiModel family: config, Q-Former captioner, generation, backbones loading, processor."""

import json

import numpy as np
import pytest
from huggingface_hub.errors import StrictDataclassError
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    GPT2Tokenizer,
    GPTNeoConfig,
    GPTNeoForCausalLM,
)

from leanvision.configuration.configuration_qvision import QVisionConfig
from leanvision.modeling.modeling_qvision import QVisionForConditionalGeneration, QVisionModel
from leanvision.processing.processing_qvision import QVisionProcessor


CAPTIONS = [
    "a cat sitting on a mat",
    "a dog running in the park",
    "two birds on a tree branch",
    "a red car parked on the street",
]
VOCAB_SIZE = 300
VISION = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8
)
# Local attention window of 8 exercises GPT-Neo's sliding-window layers in the longer generations below.
TEXT = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=32,
    num_layers=4,
    num_heads=4,
    max_position_embeddings=64,
    attention_types=[[["global", "local"], 2]],
    window_size=8,
    bos_token_id=0,
    eos_token_id=0,
)
QFORMER = dict(num_query_tokens=4, qformer_hidden_size=32, qformer_num_layers=2, qformer_num_heads=4)


def tiny_config(**overrides) -> QVisionConfig:
    kwargs = {"vision_config": dict(VISION), "text_config": dict(TEXT), "cross_attention_every_n": 2, **QFORMER}
    kwargs.update(overrides)
    return QVisionConfig(**kwargs)


def tiny_model(seed: int = 0, **overrides) -> QVisionForConditionalGeneration:
    torch.manual_seed(seed)
    return QVisionForConditionalGeneration(tiny_config(**overrides)).eval()


def make_image_sensitive(model: QVisionForConditionalGeneration):
    """Open the gates and enlarge the image path so that different images give different captions."""
    with torch.no_grad():
        model.language_projection.weight.normal_(std=0.5)
        for block in model.cross_attention_blocks.values():
            block.attn_gate.fill_(1.0)
            block.ffn_gate.fill_(1.0)
            block.attn.v_proj.weight.normal_(std=0.5)
            block.attn.out_proj.weight.normal_(std=0.5)
    return model


def greedy(model, **kwargs):
    return model.generate(do_sample=False, return_dict_in_generate=True, output_logits=True, **kwargs)


@pytest.fixture(scope="module")
def tokenizer():
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(CAPTIONS, trainer)
    model = json.loads(bpe.to_str())["model"]
    return GPT2Tokenizer(vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]])


@pytest.fixture(scope="module")
def processor(tokenizer):
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return QVisionProcessor(image_processor, tokenizer)


@pytest.fixture
def pixel_values():
    torch.manual_seed(1)
    return torch.randn(3, 3, 32, 32)


# ----------------------------------------------------------------------------------------------------------- config


def test_config_round_trip_serialises_sub_configs_in_full(tmp_path):
    config = tiny_config(use_global_token=False, vision_feature_layer=-2)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "qvision_multimodel"
    for key in ("num_layers", "num_heads", "window_size", "attention_types", "vocab_size", "bos_token_id"):
        assert key in saved["text_config"]
    for key in ("hidden_size", "num_hidden_layers", "image_size", "patch_size"):
        assert key in saved["vision_config"]

    reloaded = QVisionConfig.from_pretrained(tmp_path)
    assert reloaded.to_dict() == config.to_dict()
    assert reloaded.use_global_token is False and reloaded.vision_feature_layer == -2
    assert reloaded.num_hidden_layers == TEXT["num_layers"]
    assert (reloaded.bos_token_id, reloaded.eos_token_id) == (0, 0)
    assert reloaded.qformer_intermediate_size == 4 * QFORMER["qformer_hidden_size"]
    assert reloaded.cross_attention_layers == [1, 3]


@pytest.mark.parametrize(
    "field, value",
    [
        ("num_query_tokens", 0),
        ("qformer_num_heads", 5),
        ("qformer_num_layers", 0),
        ("qformer_dropout", 1.0),
        ("use_global_token", 1),
        ("vision_feature_layer", 3),
        ("vision_feature_layer", -4),
        ("cross_attention_every_n", 0),
        ("cross_attention_every_n", 5),
    ],
)
def test_config_rejects_invalid_fields(field, value):
    with pytest.raises(StrictDataclassError, match=field):
        tiny_config(**{field: value})


def test_original_size_config_has_clip_b32_and_the_original_gpt_neo_widths():
    config = QVisionConfig.original_size_config()
    vision, text = config.vision_config, config.text_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.patch_size, vision.image_size) == (768, 12, 32, 224)
    assert (text.hidden_size, text.num_layers, text.num_heads, text.vocab_size) == (1024, 24, 16, 50257)
    assert text.attention_layers == ["global", "local"] * 12 and text.window_size == 256
    assert config.qformer_hidden_size == 1024 and config.qformer_intermediate_size == 4096  # patches 768 -> 1024
    assert config.num_query_tokens == 64 and config.qformer_num_heads == 8 and config.qformer_dropout == 0.1
    assert config.cross_attention_layers == [3, 7, 11, 15, 19, 23]
    assert QVisionConfig.original_size_config(qformer_hidden_size=512).qformer_hidden_size == 512


def test_gpt_neo_125m_config_has_clip_b32_and_gpt_neo_125m_widths():
    config = QVisionConfig.gpt_neo_125m_config()
    vision, text = config.vision_config, config.text_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.patch_size, vision.image_size) == (768, 12, 32, 224)
    assert (text.hidden_size, text.num_layers, text.num_heads, text.vocab_size) == (768, 12, 12, 50257)
    assert text.attention_layers == ["global", "local"] * 6
    assert config.num_query_tokens == 64 and config.qformer_num_heads == 8 and config.qformer_dropout == 0.1
    assert config.cross_attention_layers == [3, 7, 11]


# ----------------------------------------------------------------------------------------------------------- model


def test_decoder_equals_plain_gpt_neo_at_init(pixel_values):
    model = tiny_model()
    language_model = GPTNeoForCausalLM(GPTNeoConfig(**TEXT)).eval()
    language_model.load_state_dict(model.language_model.state_dict())
    input_ids = torch.randint(1, VOCAB_SIZE, (3, 12))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, 9:] = 0  # right padding

    with torch.no_grad():
        ours = model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask).logits
        reference = language_model(input_ids=input_ids, attention_mask=attention_mask).logits
        assert torch.equal(ours, reference)

        # Once the gates open, the image changes the logits.
        make_image_sensitive(model)
        opened = model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask).logits
    assert not torch.allclose(opened, reference, atol=1e-3)


def test_output_attentions_shapes_and_normalisation(pixel_values):
    model = tiny_model()
    model.set_attn_implementation("eager")  # as in transformers, only eager attention returns the maps
    input_ids = torch.randint(1, VOCAB_SIZE, (3, 5))
    with torch.no_grad():
        out = model(pixel_values=pixel_values, input_ids=input_ids, output_attentions=True, output_hidden_states=True)
    num_tokens = 1 + QFORMER["num_query_tokens"]  # global token + queries
    num_patches = (VISION["image_size"] // VISION["patch_size"]) ** 2
    assert out.image_embeds.shape == (3, num_tokens, TEXT["hidden_size"])
    assert len(out.qformer_self_attentions) == len(out.qformer_cross_attentions) == QFORMER["qformer_num_layers"]
    assert out.qformer_self_attentions[0].shape == (3, 4, num_tokens, num_tokens)
    assert out.qformer_cross_attentions[0].shape == (3, 4, num_tokens, num_patches)
    assert len(out.cross_attentions) == 2 and out.cross_attentions[0].shape == (3, 4, 5, num_tokens)
    assert len(out.attentions) == TEXT["num_layers"] and len(out.hidden_states) == TEXT["num_layers"] + 1
    for maps in (*out.qformer_self_attentions, *out.qformer_cross_attentions, *out.cross_attentions):
        torch.testing.assert_close(maps.sum(-1), torch.ones(maps.shape[:-1]))

    without_global = tiny_model(use_global_token=False)
    with torch.no_grad():
        image_embeds = without_global.get_image_features(pixel_values).image_embeds
    assert image_embeds.shape == (3, QFORMER["num_query_tokens"], TEXT["hidden_size"])


def test_vision_feature_layer_selects_clip_hidden_state(pixel_values):
    model = tiny_model(vision_feature_layer=1)
    with torch.no_grad():
        features = model.get_image_features(pixel_values).patch_features
        hidden = model.vision_model(pixel_values, output_hidden_states=True).hidden_states[1]
    assert torch.equal(features, model.visual_projection(hidden[:, 1:]))


@pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated")
def test_incremental_decoding_with_cache_matches_full_forward(pixel_values):
    model = make_image_sensitive(tiny_model())
    input_ids = torch.randint(1, VOCAB_SIZE, (3, 14))  # longer than the local window of 8
    with torch.no_grad():
        full = model(pixel_values=pixel_values, input_ids=input_ids, use_cache=False).logits
        out = model(pixel_values=pixel_values, input_ids=input_ids[:, :6], use_cache=True)
        steps = [out.logits]
        for t in range(6, 14):
            # `past_key_values` is the older name of `cache`; both are accepted.
            out = model(image_embeds=out.image_embeds, input_ids=input_ids[:, t : t + 1], past_key_values=out.cache)
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)


def test_greedy_generation_with_cache_equals_without_cache(pixel_values):
    model = make_image_sensitive(tiny_model())
    cached = greedy(model, pixel_values=pixel_values, max_new_tokens=15, use_cache=True)
    uncached = greedy(model, pixel_values=pixel_values, max_new_tokens=15, use_cache=False)
    assert torch.equal(cached.sequences, uncached.sequences)
    assert cached.sequences.shape == (3, 16) and torch.all(cached.sequences[:, 0] == TEXT["bos_token_id"])
    # The image matters: the three images do not all give the same caption.
    assert len({tuple(row.tolist()) for row in cached.sequences}) > 1


def test_batched_generation_equals_single(pixel_values):
    model = make_image_sensitive(tiny_model())
    batched = greedy(model, pixel_values=pixel_values, max_new_tokens=10)
    for i in range(3):
        single = greedy(model, pixel_values=pixel_values[i : i + 1], max_new_tokens=10)
        assert torch.equal(single.sequences[0], batched.sequences[i])
        for step_batched, step_single in zip(batched.logits, single.logits, strict=True):
            torch.testing.assert_close(step_batched[i], step_single[0], atol=1e-5, rtol=0)


def test_batched_prompted_generation_with_left_padding_equals_single(pixel_values):
    model = make_image_sensitive(tiny_model())
    prompts = [torch.tensor([0, 5, 9, 13]), torch.tensor([0, 7])]
    input_ids = torch.tensor([[0, 5, 9, 13], [0, 0, 0, 7]])  # left padded; pad == bos == eos
    attention_mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    # 4 + 4 positions stay inside the local window of 8, where GPT-Neo's left padding is exact.
    batched = greedy(
        model, pixel_values=pixel_values[:2], input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=4
    )
    for i, prompt in enumerate(prompts):
        single = greedy(model, pixel_values=pixel_values[i : i + 1], input_ids=prompt[None], max_new_tokens=4)
        assert torch.equal(single.sequences[0, : len(prompt)], prompt)
        assert torch.equal(single.sequences[0, len(prompt) :], batched.sequences[i, 4:])
        for step_batched, step_single in zip(batched.logits, single.logits, strict=True):
            torch.testing.assert_close(step_batched[i], step_single[0], atol=1e-5, rtol=0)


def test_image_tokens_are_computed_once_per_generation(pixel_values):
    model = tiny_model()
    calls = []
    handle = model.vision_model.register_forward_hook(lambda *args: calls.append(1))
    for use_cache in (True, False):
        calls.clear()
        model.generate(pixel_values=pixel_values, max_new_tokens=6, min_new_tokens=6, use_cache=use_cache)
        assert len(calls) == 1
    handle.remove()


def test_default_generation_is_greedy_and_the_original_sampling_stays_available(pixel_values):
    model = tiny_model()
    config = model.generation_config
    assert config.do_sample is False and config.max_new_tokens == 20
    assert config.bos_token_id == config.eos_token_id == config.pad_token_id == 0
    sequences = model.generate(pixel_values=pixel_values)
    assert sequences.shape[0] == 3 and 2 <= sequences.shape[1] <= 21
    assert torch.equal(model.generate(pixel_values=pixel_values), sequences)
    assert model.ORIGINAL_SAMPLING == {"do_sample": True, "temperature": 0.7}
    torch.manual_seed(0)
    sampled = model.generate(pixel_values=pixel_values, **model.ORIGINAL_SAMPLING)
    assert sampled.shape[0] == 3 and sampled.shape[1] <= 21


def test_clip_is_frozen_and_trainable_parts_get_gradients(pixel_values):
    model = tiny_model().train()
    assert not model.vision_model.training and model.qformer.training
    assert not any(p.requires_grad for p in model.vision_model.parameters())
    input_ids = torch.randint(1, VOCAB_SIZE, (3, 6))

    # At init only the gates receive gradient: tanh'(0) = 1 while tanh(0) = 0 blocks the rest of the image path.
    model(pixel_values=pixel_values, input_ids=input_ids, labels=input_ids).loss.backward()
    for block in model.cross_attention_blocks.values():
        assert block.attn_gate.grad.abs().item() > 0 and block.ffn_gate.grad.abs().item() > 0
    assert all(p.grad is None for p in model.vision_model.parameters())

    model.zero_grad()
    with torch.no_grad():
        for block in model.cross_attention_blocks.values():
            block.attn_gate.fill_(0.5)
            block.ffn_gate.fill_(0.5)
    model(pixel_values=pixel_values, input_ids=input_ids, labels=input_ids).loss.backward()
    for parameter in (
        model.visual_projection.weight,
        model.qformer.query_tokens,
        model.qformer.global_token,
        model.language_projection.weight,
        model.cross_attention_blocks["1"].attn.q_proj.weight,
        model.language_model.transformer.h[0].attn.attention.q_proj.weight,
    ):
        assert parameter.grad is not None and parameter.grad.abs().sum().item() > 0
    assert all(p.grad is None for p in model.vision_model.parameters())


def test_loss_is_shifted_cross_entropy_ignoring_padding(pixel_values):
    model = tiny_model()
    input_ids = torch.randint(1, VOCAB_SIZE, (3, 7))
    labels = input_ids.clone()
    labels[1, 4:] = -100
    with torch.no_grad():
        out = model(pixel_values=pixel_values, input_ids=input_ids, labels=labels)
    logits, targets = out.logits[:, :-1], labels[:, 1:]
    keep = targets != -100
    expected = torch.nn.functional.cross_entropy(logits[keep], targets[keep])
    torch.testing.assert_close(out.loss, expected)


def test_freezing_patterns_and_component_parameters():
    model = tiny_model()
    names = dict(model.named_parameters())
    for name in (
        "vision_model.embeddings.patch_embedding.weight",
        "visual_projection.weight",
        "qformer.query_tokens",
        "qformer.global_token",
        "language_projection.weight",
        "cross_attention_blocks.1.attn_gate",
        "cross_attention_blocks.3.ffn_gate",
        "language_model.transformer.wte.weight",
        "language_model.transformer.wpe.weight",
        "language_model.transformer.h.0.attn.attention.q_proj.weight",
        "language_model.transformer.h.3.mlp.c_fc.weight",
    ):
        assert name in names
    assert model.language_model.lm_head.weight is model.language_model.transformer.wte.weight

    blocks = model.decoder_blocks()
    assert len(blocks) == TEXT["num_layers"]
    assert all(block is model.language_model.transformer.h[i] for i, block in enumerate(blocks))

    components = model.component_parameters()
    assert set(components) == {"vision", "projection", "qformer", "cross_attention", "lm"}
    ids = [id(p) for params in components.values() for p in params]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.parameters()}


def test_resize_token_embeddings_keeps_lm_head_tied(pixel_values):
    model = tiny_model()
    model.resize_token_embeddings(VOCAB_SIZE + 8)
    assert model.language_model.lm_head.weight is model.language_model.transformer.wte.weight
    assert model.config.text_config.vocab_size == VOCAB_SIZE + 8
    with torch.no_grad():
        logits = model(pixel_values=pixel_values, input_ids=torch.tensor([[0, VOCAB_SIZE + 3]] * 3)).logits
    assert logits.shape == (3, 2, VOCAB_SIZE + 8)


def test_from_pretrained_backbones_copies_weights(tmp_path, pixel_values):
    torch.manual_seed(0)
    text_config = GPTNeoConfig(**TEXT)
    language_model = GPTNeoForCausalLM(text_config).eval()
    language_model.save_pretrained(tmp_path / "gpt_neo")
    clip_text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4}
    clip = CLIPModel(CLIPConfig(vision_config=VISION, text_config=clip_text))
    clip.save_pretrained(tmp_path / "clip")
    clip.vision_model.save_pretrained(tmp_path / "clip_vision")

    input_ids = torch.randint(1, VOCAB_SIZE, (3, 6))
    for vision_path in ("clip", "clip_vision"):
        model = QVisionForConditionalGeneration.from_pretrained_backbones(
            vision=str(tmp_path / vision_path), text=str(tmp_path / "gpt_neo"), **QFORMER, cross_attention_every_n=2
        ).eval()
        assert model.config.num_query_tokens == QFORMER["num_query_tokens"]
        assert model.config.cross_attention_layers == [1, 3]
        for name, tensor in clip.vision_model.state_dict().items():
            assert torch.equal(model.vision_model.state_dict()[name], tensor), name
        for name, tensor in language_model.state_dict().items():
            assert torch.equal(model.language_model.state_dict()[name], tensor), name
        assert not any(p.requires_grad for p in model.vision_model.parameters())
        with torch.no_grad():
            assert torch.equal(
                model(pixel_values=pixel_values, input_ids=input_ids).logits, language_model(input_ids).logits
            )


def test_save_load_round_trip(tmp_path, pixel_values):
    model = make_image_sensitive(tiny_model())
    model.save_pretrained(tmp_path)
    reloaded = QVisionForConditionalGeneration.from_pretrained(tmp_path)
    assert not reloaded.training and not any(p.requires_grad for p in reloaded.vision_model.parameters())
    assert reloaded.language_model.lm_head.weight is reloaded.language_model.transformer.wte.weight
    assert reloaded.generation_config.do_sample is False and reloaded.generation_config.max_new_tokens == 20

    input_ids = torch.randint(1, VOCAB_SIZE, (3, 6))
    with torch.no_grad():
        assert torch.equal(
            model(pixel_values=pixel_values, input_ids=input_ids).logits,
            reloaded(pixel_values=pixel_values, input_ids=input_ids).logits,
        )
    assert torch.equal(
        greedy(model, pixel_values=pixel_values, max_new_tokens=8).sequences,
        greedy(reloaded, pixel_values=pixel_values, max_new_tokens=8).sequences,
    )

    # The image side loads alone from the captioner checkpoint (AutoModel class).
    image_model = QVisionModel.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(image_model(pixel_values).image_embeds, model.get_image_features(pixel_values).image_embeds)


# ------------------------------------------------------------------------------------------------------- processor


def test_processor_encodes_captions_with_bos_eos_and_masked_labels(processor, tokenizer):
    image = Image.fromarray((np.random.default_rng(0).random((40, 50, 3)) * 255).astype("uint8"))
    batch = processor(images=[image, image], text=["a cat", "a dog running in the park"])
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    input_ids, attention_mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    eos = tokenizer.eos_token_id
    assert tokenizer.pad_token_id == eos == tokenizer.bos_token_id
    for row in range(2):
        length = int(attention_mask[row].sum())
        assert input_ids[row, 0] == tokenizer.bos_token_id and input_ids[row, length - 1] == eos
        assert torch.equal(labels[row, :length], input_ids[row, :length])
        assert torch.all(labels[row, length:] == -100) and torch.all(attention_mask[row, length:] == 0)
    assert attention_mask[0].sum() < attention_mask[1].sum()
    assert processor.batch_decode(input_ids, skip_special_tokens=True) == ["a cat", "a dog running in the park"]

    prompts = processor(text=["a cat", "a dog running"], add_eos_token=False, padding_side="left")
    assert "pixel_values" not in prompts
    assert prompts["attention_mask"][0, 0] == 0 and prompts["input_ids"][0, -1] != eos

    truncated = processor(text="a dog running in the park", max_length=5)["input_ids"]
    assert truncated.shape == (1, 5) and truncated[0, -1] == eos

    only_images = processor(images=image)
    assert set(only_images) == {"pixel_values"}
    with pytest.raises(ValueError):
        processor()


def test_processor_save_load_round_trip(tmp_path, processor):
    processor.save_pretrained(tmp_path)
    reloaded = QVisionProcessor.from_pretrained(tmp_path)
    image = Image.fromarray((np.random.default_rng(1).random((48, 36, 3)) * 255).astype("uint8"))
    a = processor(images=image, text=CAPTIONS)
    b = reloaded(images=image, text=CAPTIONS)
    assert set(a) == set(b) and all(torch.equal(a[key], b[key]) for key in a)
    assert reloaded.tokenizer.pad_token == reloaded.tokenizer.eos_token


# -------------------------------------------------------------------------------------------------------- learning


def train_steps(model, batch, steps, lr=1e-2):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.slow
def test_overfits_one_image_caption_pair(processor):
    image = Image.fromarray((np.random.default_rng(2).random((32, 32, 3)) * 255).astype("uint8"))
    batch = processor(images=image, text=CAPTIONS[0])
    model = tiny_model().train()
    losses = train_steps(model, batch, steps=30)
    assert losses[-1] < 0.1 * losses[0]

    model.eval()
    caption = model.generate(pixel_values=batch["pixel_values"], do_sample=False, max_new_tokens=20)
    assert processor.batch_decode(caption, skip_special_tokens=True) == [CAPTIONS[0]]


@pytest.mark.slow
def test_learns_to_caption_from_the_image(processor):
    """Two images, two captions sharing their first word: only the image path can tell which caption follows."""
    images = [Image.new("RGB", (32, 32), (20, 20, 20)), Image.new("RGB", (32, 32), (235, 235, 235))]
    batch = processor(images=images, text=CAPTIONS[:2])
    model = tiny_model().train()
    losses = train_steps(model, batch, steps=60)
    assert losses[-1] < 0.05 * losses[0]

    model.eval()
    captions = model.generate(pixel_values=batch["pixel_values"], do_sample=False, max_new_tokens=20)
    assert processor.batch_decode(captions, skip_special_tokens=True) == CAPTIONS[:2]
    assert any(block.attn_gate.item() != 0 for block in model.cross_attention_blocks.values())
