"""DTP-LLaVA from pretrained parts, offline: a tiny CLIP and a tiny instruct-style Qwen2 (a byte-level BPE tokenizer
with its own ChatML chat template) saved locally. The built model holds both folders' weights bitwise, the processor
renders chat messages with the language model's own template (`<image>` where the image item was) and falls back
to `DEFAULT_CHAT_TEMPLATE` for a tokenizer without one, the labels cover exactly the assistant answers under that
template, and a short `train.py` run saves a model that reloads and answers."""

import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    pipeline,
)

from leanvision.processing.processing_dtp_llava import DEFAULT_CHAT_TEMPLATE
from leanvision.training.builders import build_dtp_llava
from leanvision.training.data.collators import ConversationCollator
from leanvision.training.families import load_saved
from leanvision.training.tasks.visual_instruction import answer_questions
from leanvision.training.train import main as train_main

# Qwen2.5-Instruct's layout: a default system turn, `<|im_start|>role\n...<|im_end|>\n`, contents read as strings.
CHATML = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
CORPUS = ["You are a helpful assistant.", "what color is the circle?", "red", "a red circle at the top left",
          "describe the image.", "how many shapes are there?", "blue square green triangle 1 2 3"]
TURNS = [
    {"from": "human", "value": "<image>\nwhat color is the circle?"},
    {"from": "gpt", "value": "red"},
    {"from": "human", "value": "describe the image."},
    {"from": "gpt", "value": "a red circle at the top left"},
]


def instruct_tokenizer(chat_template=CHATML) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (Qwen2's kind) trained on `CORPUS`, ChatML special tokens, `<|im_end|>` as eos."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    ))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   chat_template=chat_template)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """Folders of a tiny CLIP (+ its image processor) and of two tiny Qwen2 LMs, one whose tokenizer has a chat
    template and one whose tokenizer has none."""
    root = tmp_path_factory.mktemp("parts")
    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                           image_size=32, patch_size=8),
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                         vocab_size=64, max_position_embeddings=16),
        projection_dim=16,
    ))
    clip.save_pretrained(root / "clip")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(root / "clip")
    tokenizer = instruct_tokenizer()
    language_model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    language_model.save_pretrained(root / "instruct")
    tokenizer.save_pretrained(root / "instruct")
    language_model.save_pretrained(root / "plain")
    instruct_tokenizer(chat_template=None).save_pretrained(root / "plain")
    return SimpleNamespace(root=root, clip=str(root / "clip"), instruct=str(root / "instruct"),
                           plain=str(root / "plain"), clip_model=clip, language_model=language_model,
                           vocab=len(tokenizer))


def build(parts, text_backbone):
    args = SimpleNamespace(model_name_or_path=None, vision_backbone=parts.clip, text_backbone=text_backbone,
                           tokenizer_name_or_path=None, image_size=None)
    return build_dtp_llava(args, {}, [])


def assert_tower_is_the_clip_vision_model(tower, clip_vision):
    """CLIP layer i is DTP-ViT pre-layer i for i < num_pre_layers, else shortened layer i - num_pre_layers."""
    own, num_pre = tower.state_dict(), tower.config.num_pre_layers
    for key, value in clip_vision.state_dict().items():
        if key.startswith("encoder.layers."):
            index, rest = key[len("encoder.layers."):].split(".", 1)
            index = int(index)
            key = f"pre_layers.{index}.{rest}" if index < num_pre else f"shortened_layers.{index - num_pre}.{rest}"
        elif key == "embeddings.position_embedding.weight":
            key, value = "embeddings.position_embedding", value[None]
        assert torch.equal(own[key], value), key


def test_pretrained_parts_give_the_tower_and_language_model_weights_bitwise(parts):
    model, processor = build(parts, parts.instruct)
    assert_tower_is_the_clip_vision_model(model.vision_tower, parts.clip_model.vision_model)
    own = model.language_model.state_dict()
    resized = ("model.embed_tokens.weight", "lm_head.weight")
    for key, value in parts.language_model.state_dict().items():
        if key in resized:  # one new row: `<image>`
            assert own[key].shape[0] == parts.vocab + 1 and torch.equal(own[key][: parts.vocab], value), key
        else:
            assert torch.equal(own[key], value), key
    tokenizer = processor.tokenizer
    assert len(tokenizer) == parts.vocab + 1  # only `<image>` was added; the instruct model keeps its own eos
    assert model.config.image_token_id == processor.image_token_id == tokenizer.convert_tokens_to_ids("<image>")
    assert tokenizer.eos_token == "<|im_end|>"
    assert model.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert processor.image_processor.crop_size == {"height": 32, "width": 32}  # the CLIP folder's own


def messages(image=None, question="what color is the circle?"):
    item = {"type": "image"} if image is None else {"type": "image", "image": image}
    return [{"role": "user", "content": [item, {"type": "text", "text": question}]}]


def test_the_processor_uses_the_language_models_own_chat_template_with_the_image_placeholder(parts):
    _, processor = build(parts, parts.instruct)
    assert processor.chat_template == CHATML
    prompt = processor.apply_chat_template(messages(), add_generation_prompt=True)
    assert prompt == (SYSTEM + "<|im_start|>user\n<image>\nwhat color is the circle?<|im_end|>\n"
                      "<|im_start|>assistant\n")
    image = Image.fromarray(np.full((40, 50, 3), 200, dtype=np.uint8))
    inputs = processor.apply_chat_template(messages(image), add_generation_prompt=True, tokenize=True,
                                           return_dict=True)
    assert inputs["pixel_values"].shape == (1, 3, 32, 32)
    assert inputs["input_ids"][0].tolist() == processor.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert int((inputs["input_ids"] == processor.image_token_id).sum()) == 1
    batch = processor.apply_chat_template([messages(image), messages(image, "describe the image.")],
                                          add_generation_prompt=True, tokenize=True, return_dict=True)
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    assert (batch["input_ids"] == processor.image_token_id).sum(dim=1).tolist() == [1, 1]
    with pytest.raises(ValueError, match="image and text items"):
        processor.apply_chat_template([{"role": "user", "content": [{"type": "video"}]}])


def test_a_tokenizer_without_a_chat_template_gets_the_default_one(parts):
    _, processor = build(parts, parts.plain)
    assert processor.chat_template == DEFAULT_CHAT_TEMPLATE
    assert processor.tokenizer.eos_token == "<|end|>"
    assert processor.apply_chat_template(messages(), add_generation_prompt=True) == (
        "<|user|><image>what color is the circle?<|end|><|assistant|>")


def test_labels_cover_exactly_the_assistant_answers_under_the_language_models_template(parts):
    _, processor = build(parts, parts.instruct)
    image = Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8))
    batch = ConversationCollator(processor)([{"image": image, "conversations": TURNS},
                                            {"image": image, "conversations": TURNS[:2]}])
    tokenizer = processor.tokenizer
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    assert tokenizer.decode(ids) == (
        SYSTEM + "<|im_start|>user\n<image>\nwhat color is the circle?<|im_end|>\n<|im_start|>assistant\nred"
        "<|im_end|>\n<|im_start|>user\ndescribe the image.<|im_end|>\n<|im_start|>assistant\n"
        "a red circle at the top left<|im_end|>\n"
    )
    positions = torch.nonzero(labels != -100).flatten().tolist()
    spans, start = [], positions[0]
    for previous, position in zip(positions, positions[1:] + [None]):
        if position != previous + 1:
            spans.append(tokenizer.decode(ids[start : previous + 1]))
            start = position
    # Each answer with the end of its turn (`<|im_end|>` stops generation); nothing of the prompts, nor the "\n" the
    # template writes after the end token.
    assert spans == ["red<|im_end|>", "a red circle at the top left<|im_end|>"]
    assert torch.equal(labels[labels != -100], ids[labels != -100])
    second = batch["labels"][1]
    assert tokenizer.decode(batch["input_ids"][1][second != -100]) == "red<|im_end|>"
    assert (second[batch["attention_mask"][1] == 0] == -100).all()


def test_a_short_training_run_from_pretrained_parts_saves_a_model_that_reloads_and_answers(parts, tmp_path):
    run = tmp_path / "run"
    train_main([
        "--family", "dtp_llava", "--vision_backbone", parts.clip, "--text_backbone", parts.instruct,
        "--dataset_name", "shapes_vqa", "--max_train_samples", "16", "--max_eval_samples", "4",
        "--max_steps", "3", "--per_device_train_batch_size", "4", "--learning_rate", "1e-3",
        "--generation_max_new_tokens", "3", "--output_dir", str(run), "--save_strategy", "no",
        "--eval_strategy", "no", "--disable_tqdm", "true", "--report_to", "none", "--use_cpu", "true",
    ])
    family, model, processor = load_saved(str(run))
    assert family.name == "dtp_llava" and processor.chat_template == CHATML
    assert_tower_is_the_clip_vision_model(model.vision_tower, parts.clip_model.vision_model)  # frozen tower
    trained = model.language_model.state_dict()["model.layers.0.mlp.up_proj.weight"]
    assert not torch.equal(trained, parts.language_model.state_dict()["model.layers.0.mlp.up_proj.weight"])
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    rows = [{"image": image, "question": "what color is the circle?"},
            {"image": image, "question": "how many shapes are there?"}]
    answers = answer_questions(model, processor, rows, batch_size=2, max_new_tokens=3, do_sample=False)
    assert len(answers) == 2 and all(isinstance(answer, str) for answer in answers)
    # The reloaded model answers as the generate() of the same prompt does, through the LM's template.
    inputs = processor.apply_chat_template(messages(image), add_generation_prompt=True, tokenize=True,
                                           return_dict=True)
    assert processor.tokenizer.decode(inputs["input_ids"][0]).startswith(SYSTEM)
    new = model.generate(**inputs, max_new_tokens=3, do_sample=False)[0, inputs["input_ids"].shape[1]:]
    assert answers[0] == processor.tokenizer.decode(new, skip_special_tokens=True).strip()
    pipe = pipeline("image-text-to-text", model=model, processor=processor)
    out = pipe(text=messages(image), max_new_tokens=3, do_sample=False, return_full_text=False)
    assert out[0]["generated_text"].strip() == answers[0]
    assert os.path.isfile(run / "chat_template.jinja")
