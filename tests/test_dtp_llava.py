"""DTP-LLaVA: equality with transformers' LLaVA at compression 1.0, batch independence with different segment counts,
the placeholder expansion, the projector, the processor and chat template, the collator's labels, config checks, and
the export as a Hub user meets it (image-text-to-text pipeline in a fresh interpreter, card, publish dry run)."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from helpers import run_fresh
from leanvision.configuration.configuration_dtp_llava import DTPLlavaConfig
from leanvision.modeling.modeling_dtp_llava import DTPLlavaForConditionalGeneration, DTPLlavaMultiModalProjector
from leanvision.modeling.modeling_dtp_vit import dtp_vit_config_from_clip_vision, load_clip_vision_weights
from leanvision.processing.processing_dtp_llava import DTPLlavaProcessor, add_chat_tokens
from leanvision.processing.processing_dtp_vit import build_image_processor
from leanvision.training.data.collators import ConversationCollator, conversation_messages
from leanvision.training.data.tokenizers import word_level_tokenizer

IMAGE_ID = 99
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=100, max_position_embeddings=128)
TOWER = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_attention_heads=4,
             num_pre_layers=1, num_shortened_layers=2)


def tiny_model(**config) -> DTPLlavaForConditionalGeneration:
    torch.manual_seed(0)
    vision = dict(TOWER, **config.pop("vision_config", {}))
    config = DTPLlavaConfig(vision_config=vision, text_config=dict(TEXT, model_type="llama"), image_token_id=IMAGE_ID,
                            **config)
    return DTPLlavaForConditionalGeneration(config).eval()


def test_logits_and_generation_equal_transformers_llava_with_a_clip_tower_at_compression_1():
    torch.manual_seed(0)
    clip = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                            image_size=32, patch_size=8)
    llava = LlavaForConditionalGeneration(
        LlavaConfig(vision_config=clip, text_config=LlamaConfig(**TEXT), image_token_id=IMAGE_ID)
    ).eval()
    ours = DTPLlavaForConditionalGeneration(DTPLlavaConfig(
        vision_config=dtp_vit_config_from_clip_vision(clip, compression_rate=1.0), text_config=LlamaConfig(**TEXT),
        image_token_id=IMAGE_ID,
    )).eval()
    load_clip_vision_weights(ours.vision_tower, llava.model.vision_tower)
    ours.multi_modal_projector.load_state_dict(llava.model.multi_modal_projector.state_dict())
    ours.language_model.model.load_state_dict(llava.model.language_model.state_dict())
    ours.language_model.lm_head.load_state_dict(llava.lm_head.state_dict())

    pixel_values = torch.randn(1, 3, 32, 32)
    prompt = [5, 6, IMAGE_ID, 7, 8, 9]
    expanded = [5, 6] + [IMAGE_ID] * 16 + [7, 8, 9]  # LLaVA's processor writes one token per patch (CLS dropped)
    with torch.no_grad():
        expected = llava(input_ids=torch.tensor([expanded]), pixel_values=pixel_values).logits
        got = ours(input_ids=torch.tensor([prompt]), pixel_values=pixel_values)
    assert got.image_token_counts.tolist() == [16]
    assert got.logits.shape == expected.shape
    torch.testing.assert_close(got.logits, expected, atol=1e-5, rtol=0)
    theirs = llava.generate(input_ids=torch.tensor([expanded]), pixel_values=pixel_values, max_new_tokens=6,
                            do_sample=False)
    mine = ours.generate(input_ids=torch.tensor([prompt]), pixel_values=pixel_values, max_new_tokens=6)
    assert mine[0, : len(prompt)].tolist() == prompt  # sequences start with the prompt, as any decoder-only model
    assert mine[0, len(prompt) :].tolist() == theirs[0, len(expanded) :].tolist()


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_images_with_different_segment_counts_in_one_batch_give_each_sample_its_output_alone(padding_side):
    model = tiny_model(vision_config={"compression_rate": 0.5})
    pixel_values = torch.randn(2, 3, 32, 32)
    boundaries = torch.zeros(2, 16)
    boundaries[0, [3, 7, 11, 15]] = 1  # 4 segments
    boundaries[1, 1::2] = 1  # 8 segments
    prompts = [[5, IMAGE_ID, 7, 8], [5, 6, 6, IMAGE_ID, 7, 8, 9]]
    width = max(map(len, prompts))
    pad = [[0] * (width - len(p)) for p in prompts]
    rows = [pad[i] + p if padding_side == "left" else p + pad[i] for i, p in enumerate(prompts)]
    mask = [[0] * len(pad[i]) + [1] * len(p) if padding_side == "left" else [1] * len(p) + [0] * len(pad[i])
            for i, p in enumerate(prompts)]
    batch = dict(input_ids=torch.tensor(rows), attention_mask=torch.tensor(mask), pixel_values=pixel_values,
                 boundaries=boundaries)
    with torch.no_grad():
        out = model(**batch)
    assert out.image_token_counts.tolist() == [4, 8]
    assert out.attention_mask.sum(dim=1).tolist() == [len(prompts[0]) - 1 + 4, len(prompts[1]) - 1 + 8]
    generated = model.generate(**batch, max_new_tokens=6)
    for i, prompt in enumerate(prompts):
        alone = dict(input_ids=torch.tensor([prompt]), pixel_values=pixel_values[i : i + 1],
                     boundaries=boundaries[i : i + 1])
        with torch.no_grad():
            logits = model(**alone).logits[0]
        torch.testing.assert_close(out.logits[i, -len(logits) :], logits, atol=1e-5, rtol=0)
        new = model.generate(**alone, max_new_tokens=6)[0, len(prompt) :]
        assert generated[i, width:].tolist() == new.tolist()


def test_threshold_boundaries_give_content_adaptive_token_counts_and_no_padded_segment_reaches_the_lm():
    model = tiny_model(vision_config={"compression_rate": 0.5, "boundary_inference": "threshold"})
    with torch.no_grad():
        model.vision_tower.boundary_predictor.bias.fill_(0.0)
    pixel_values = torch.randn(6, 3, 32, 32) * torch.linspace(0.1, 3.0, 6)[:, None, None, None]
    input_ids = torch.tensor([[5, IMAGE_ID, 7]] * 6)
    with torch.no_grad():
        out = model(input_ids=input_ids, pixel_values=pixel_values)
        segments = model.vision_tower(pixel_values).segment_mask.sum(dim=1)
    counts = out.image_token_counts
    assert counts.tolist() == segments.tolist() and len(set(counts.tolist())) > 1
    assert out.attention_mask.sum(dim=1).tolist() == (counts + 2).tolist()


def test_labels_count_only_text_tokens_and_visual_positions_are_ignored():
    model = tiny_model()
    input_ids = torch.tensor([[5, IMAGE_ID, 7, 8]])
    labels = torch.tensor([[-100, -100, 7, 8]])
    pixel_values = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out = model(input_ids=input_ids, pixel_values=pixel_values, labels=labels)
    n = int(out.image_token_counts[0])  # 8 segments at the default rate 0.5
    assert out.logits.shape[1] == 1 + n + 2
    # Expanded: [5, n visual, 7, 8]; token 7 is predicted from the last visual position, 8 from 7's.
    log_probs = out.logits[0].log_softmax(-1)
    expected = -(log_probs[n, 7] + log_probs[n + 1, 8]) / 2
    torch.testing.assert_close(out.loss, expected)


def test_projector_depths_follow_the_equation():
    for depth in (1, 2, 3):
        config = DTPLlavaConfig(vision_config=TOWER, text_config=dict(TEXT, model_type="llama"),
                                image_token_id=IMAGE_ID, projector_depth=depth)
        projector = DTPLlavaMultiModalProjector(config)
        x = torch.randn(2, 5, 32)
        expected = projector.linear_1(x)
        for k in range(2, depth + 1):
            expected = getattr(projector, f"linear_{k}")(torch.nn.functional.gelu(expected))
        torch.testing.assert_close(projector(x), expected)
        assert len([m for m in projector.modules() if isinstance(m, torch.nn.Linear)]) == depth


def test_full_strategy_keeps_the_cls_token():
    default = tiny_model(vision_config={"compression_rate": 1.0})
    full = tiny_model(vision_config={"compression_rate": 1.0}, vision_feature_select_strategy="full")
    input_ids, pixel_values = torch.tensor([[5, IMAGE_ID]]), torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert default(input_ids=input_ids, pixel_values=pixel_values).image_token_counts.tolist() == [16]
        assert full(input_ids=input_ids, pixel_values=pixel_values).image_token_counts.tolist() == [17]


@pytest.mark.parametrize("fields, message", [
    ({"vision_feature_select_strategy": "cls"}, "vision_feature_select_strategy"),
    ({"vision_feature_layer": 4}, "vision_feature_layer"),
    ({"vision_feature_layer": 0, "vision_config": dict(TOWER, compression_rate=0.5)}, "before the token pooling"),
    ({"projector_depth": 0}, "projector_depth"),
])
def test_config_refuses_bad_values(fields, message):
    fields = {"vision_config": TOWER, **fields}
    with pytest.raises(Exception, match=message):
        DTPLlavaConfig(text_config=dict(TEXT, model_type="llama"), image_token_id=IMAGE_ID, **fields)


def test_model_refuses_a_placeholder_count_that_differs_from_the_images():
    model = tiny_model()
    with pytest.raises(ValueError, match="2 image token"):
        model(input_ids=torch.tensor([[IMAGE_ID, 5, IMAGE_ID]]), pixel_values=torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="image_token_id is not set"):
        DTPLlavaForConditionalGeneration(DTPLlavaConfig(vision_config=TOWER, text_config=dict(TEXT, model_type="llama")))


TEXTS = ["what color is the circle ?", "red", "describe the image .", "a red circle at the top left"]


@pytest.fixture(scope="module")
def processor():
    return DTPLlavaProcessor(build_image_processor(32), add_chat_tokens(word_level_tokenizer(TEXTS)))


def test_processor_applies_the_chat_template_with_image_items(processor):
    image = Image.fromarray(np.full((40, 50, 3), 200, dtype=np.uint8))
    messages = [{"role": "user", "content": [{"type": "image", "image": image},
                                             {"type": "text", "text": "What color is the circle?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert text == "<|user|><image>What color is the circle?<|end|><|assistant|>"
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert inputs["pixel_values"].shape == (1, 3, 32, 32)
    tokens = processor.tokenizer.convert_ids_to_tokens(inputs["input_ids"][0])
    assert tokens == ["<|user|>", "<image>", "what", "color", "is", "the", "circle", "?", "<|end|>", "<|assistant|>"]
    assert int((inputs["input_ids"] == processor.image_token_id).sum()) == 1
    with pytest.raises(ValueError, match="1 '<image>' token"):
        processor(images=[image, image], text=text)


def test_processor_save_and_load_keep_the_template_and_the_image_token(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    loaded = DTPLlavaProcessor.from_pretrained(tmp_path)
    assert loaded.chat_template == processor.chat_template
    assert loaded.image_token_id == processor.image_token_id
    assert loaded.tokenizer.eos_token == "<|end|>"


def test_collator_labels_only_the_assistant_turns_and_their_end_token(processor):
    turns = [
        {"from": "human", "value": "<image>\nwhat color is the circle?"},
        {"from": "gpt", "value": "red"},
        {"from": "human", "value": "describe the image."},
        {"from": "gpt", "value": "a red circle at the top left"},
    ]
    assert conversation_messages(turns)[0]["content"] == [{"type": "image"},
                                                          {"type": "text", "text": "what color is the circle?"}]
    image = Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8))
    rows = [{"image": image, "conversations": turns}, {"image": image, "conversations": turns[:2]}]
    batch = ConversationCollator(processor)(rows)
    tokenizer = processor.tokenizer
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    first = batch["labels"][0]
    assert batch["input_ids"][0][first != -100].tolist() == tokenizer(
        "red<|end|>a red circle at the top left<|end|>", add_special_tokens=False)["input_ids"]
    spans = torch.nonzero(first != -100).flatten().tolist()
    ids = batch["input_ids"][0].tolist()
    assert tokenizer.convert_ids_to_tokens(ids[spans[0] - 1]) == "<|assistant|>"  # the prompt ends before the answer
    second = batch["labels"][1]
    assert tokenizer.decode(batch["input_ids"][1][second != -100]) == "red <|end|>"
    assert (second[batch["attention_mask"][1] == 0] == -100).all()
    assert not (batch["labels"] == processor.image_token_id).any()


def _saved_tiny_model(folder, processor):
    model = tiny_model(vision_config={"compression_rate": 0.5})
    model.language_model.resize_token_embeddings(len(processor.tokenizer))
    model.config.text_config.vocab_size = len(processor.tokenizer)
    model.config.image_token_id = processor.image_token_id
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.generation_config.max_new_tokens = 5
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model


PIPELINE = """
import base64, importlib.util, json, sys
from PIL import Image
from transformers import pipeline
pipe = pipeline("image-text-to-text", model=sys.argv[1], trust_remote_code=True)
messages = [{"role": "user", "content": [{"type": "image", "image": Image.open(sys.argv[2])},
                                         {"type": "text", "text": "what color is the circle?"}]}]
out = pipe(text=messages, max_new_tokens=5, return_full_text=False)
spec = importlib.util.spec_from_file_location("handler", sys.argv[1] + "/handler.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
handler = module.EndpointHandler(sys.argv[1])
image = base64.b64encode(open(sys.argv[2], "rb").read()).decode()
answer = handler({"inputs": {"image": image, "text": "what color is the circle?"}, "parameters": {"max_new_tokens": 5}})
try:
    handler({"inputs": image, "parameters": {"max_new_tokens": 5}})
    refusal = None
except ValueError as err:
    refusal = str(err)
print(json.dumps({"text": out[0]["generated_text"], "class": type(pipe.model).__module__, "handler_task": handler.task,
                  "handler": answer, "refusal": refusal}))
"""


def test_export_loads_without_leanvision_and_answers_chat_messages_in_the_pipeline_and_handler(processor, tmp_path):
    from leanvision.hub_cards.export import export_model
    from leanvision.hub_cards.publish import publish

    model = _saved_tiny_model(tmp_path / "model", processor)
    export_model(str(tmp_path / "model"), str(tmp_path / "export"))
    files = set(os.listdir(tmp_path / "export"))
    assert {"configuration_dtp_llava.py", "modeling_dtp_llava.py", "processing_dtp_llava.py", "README.md",
            "model.safetensors", "chat_template.jinja"} <= files
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["auto_map"]["AutoModelForImageTextToText"] == "modeling_dtp_llava.DTPLlavaForConditionalGeneration"
    card = (tmp_path / "export" / "README.md").read_text()
    assert "pipeline_tag: image-text-to-text" in card and "image-text-to-text" in card.split("---", 2)[2]

    image_path = tmp_path / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(image_path)
    result = run_fresh(PIPELINE, tmp_path, str(tmp_path / "export"), str(image_path))
    assert result["class"].startswith("transformers_modules.")
    messages = [{"role": "user", "content": [{"type": "image", "image": Image.open(image_path)},
                                             {"type": "text", "text": "what color is the circle?"}]}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    ids = model.generate(**inputs, max_new_tokens=5)[0, inputs["input_ids"].shape[1] :]
    assert result["text"].strip() == processor.tokenizer.decode(ids, skip_special_tokens=True).strip()
    # The Inference Endpoints handler serves the same answer for {"image": base64, "text": question}.
    assert result["handler_task"] == "image-text-to-text"
    assert result["handler"] == [{"generated_text": result["text"]}]
    assert result["refusal"].startswith("'inputs' must be an object with 'image' and 'text'")

    dry = publish(str(tmp_path / "model"), "someone/tiny-dtp-llava", dry_run=True, out_dir=str(tmp_path / "dry"))
    assert "someone/tiny-dtp-llava" in (tmp_path / "dry" / "README.md").read_text() and os.path.isdir(dry)


# Records, per rank, the eval rows this rank answers (their reference answers) and its answers.
RECORD_ANSWERS = """
import json, os, sys
from leanvision.training.tasks import visual_instruction
answer_questions = visual_instruction.answer_questions
def recording(model, processor, rows, *args, **kwargs):
    answers = answer_questions(model, processor, rows, *args, **kwargs)
    with open(os.path.join(os.environ["ANSWERS"], f"rank{os.environ.get('RANK', '0')}.json"), "w") as f:
        json.dump({"references": list(rows["answer"]), "answers": answers}, f)
    return answers
visual_instruction.answer_questions = recording
from leanvision.training.train import main
main(sys.argv[1:])
"""


@pytest.mark.slow
def test_two_ranks_answer_their_own_shards_and_gather_the_one_process_scores(tmp_path):
    from helpers import launch_two_ranks
    from test_captioning import setup_for

    from leanvision.training.data.shapes_vqa import shapes_vqa_splits
    from leanvision.training.tasks.visual_instruction import VisualInstructionTrainer

    recipe = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "training", "recipes",
                          "dtp_llava_shapes_stage1.yaml")
    script, answers = tmp_path / "record.py", tmp_path / "answers"
    script.write_text(RECORD_ANSWERS)
    answers.mkdir()
    # 7 eval questions over 2 ranks: shards of 4 and 3, the first answered in batches of 2 (one padded batch).
    base = [recipe, "--dataset_name", "shapes_vqa", "--max_train_samples", "8", "--max_eval_samples", "7",
            "--generation_max_new_tokens", "3", "--output_dir", str(tmp_path / "run"), "--disable_tqdm", "true",
            "--report_to", "none"]
    launch_two_ranks([*base, "--max_steps", "1", "--per_device_train_batch_size", "4",
                      "--per_device_eval_batch_size", "2"], tmp_path, script=str(script), ANSWERS=str(answers))
    two_ranks = json.loads((tmp_path / "run" / "eval_results.json").read_text())
    shards = [json.loads((answers / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    references = list(shapes_vqa_splits(train=0, test=7, seed=0)["test"]["answer"])
    assert shards[0]["references"] + shards[1]["references"] == references  # each question once, in order
    assert [len(shard["answers"]) for shard in shards] == [4, 3]

    # One process, the same saved model and questions, another batch size.
    setup, training_args = setup_for([*base, "--model_name_or_path", str(tmp_path / "run"),
                                      "--per_device_eval_batch_size", "3"])
    trainer = VisualInstructionTrainer(
        model=setup.model, args=training_args, eval_dataset=setup.eval_dataset, data_collator=setup.data_collator,
        processing_class=setup.processor, **setup.trainer_kwargs,
    )
    one_rank = trainer.evaluate()
    assert trainer.last_answers == shards[0]["answers"] + shards[1]["answers"]
    scores = [key for key in one_rank if key.startswith(("eval_vqa_", "eval_prior_"))]
    assert "eval_vqa_accuracy" in scores and two_ranks["eval_vqa_count"] == 7
    for key in scores:
        assert two_ranks[key] == pytest.approx(one_rank[key], abs=1e-12), key
