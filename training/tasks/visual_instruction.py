"""The visual instruction task of `train.py` (DTP-LLaVA): LLaVA-format conversations, loss on the assistant's turns
only, evaluation by answering the held-out questions.

Data: a conversation dataset (`data/conversations.py`: LLaVA JSON in a local folder, a Hub or `save_to_disk`
dataset), or a built-in one named by `dataset_name`: "shapes_vqa" (the default; `data/shapes_vqa.py`, held-out test
images) or "shapes_captions" (the shapes captions as "describe the image" conversations, the stage-1 data).
`max_train_samples` / `max_eval_samples` set how many rows are drawn for them (default 2000 / 200).

Stages (the DTP-ViT plan's LLaVA recipe) are recipes: stage 1 freezes the language model with a `freezing` phase so
that only the projector trains (the tower is frozen by the model's config); stage 2 starts from stage 1's output
(`model_name_or_path`) and trains projector + language model, or a LoRA adapter of the language model (`--lora`).

Evaluation (`VisualInstructionTrainer`): the teacher-forced loss, then greedy answers to every eval question
(`answer_questions`), scored by exact match after normalisation (`eval_vqa_accuracy`, per question type) beside the
question-type prior baseline of the train answers (`eval_prior_accuracy`); rows whose question type is "caption" are
scored with the caption metrics instead (`eval_caption_*`).
"""

import logging
import os

import torch
from accelerate.utils import gather_object

from ..data.collators import ConversationCollator, conversation_messages
from ..data.conversations import load_conversation_dataset
from ..data.loading import training_splits
from ..data.shapes import shapes_splits
from ..data.shapes_vqa import captions_to_conversations, shapes_vqa_splits, vocabulary_texts
from ..evaluation.captions import FAST_METRICS, flat_scores, parse_metric_names, score_captions
from ..evaluation.vqa import question_type_prior_baseline, vqa_accuracy
from ..trainer import LeanTrainer, TaskSetup

logger = logging.getLogger("leanvision.visual_instruction")

BUILT_IN_DATASETS = ("shapes_vqa", "shapes_captions")
DEFAULT_SIZES = (2000, 200)
CAPTION_TYPE = "caption"


def load_conversation_splits(data_args, seed: int):
    """(train, eval) conversation datasets of a run (see the module docstring)."""
    name = data_args.dataset_name or "shapes_vqa"
    train_size = data_args.max_train_samples or DEFAULT_SIZES[0]
    eval_size = data_args.max_eval_samples or DEFAULT_SIZES[1]
    if name == "shapes_vqa":
        data = shapes_vqa_splits(train=train_size, test=eval_size, seed=0)
        return data["train"], data["test"]
    if name == "shapes_captions":
        data = shapes_splits(train=train_size, test=eval_size, seed=0)
        return captions_to_conversations(data["train"]), captions_to_conversations(data["test"])
    return training_splits(load_conversation_dataset(name), data_args, seed)


def conversation_texts(dataset) -> list[str]:
    """Every turn's text without image tokens: the words of a fresh word-level tokenizer."""
    return [turn["value"].replace("<image>", " ") for turns in dataset["conversations"] for turn in turns]


def answer_questions(model, processor, rows, batch_size: int = 16, image_column: str = "image",
                     **generation_kwargs) -> list[str]:
    """The model's answer to the last question of each row (conversation rows: everything before the last assistant
    turn is the prompt; or rows with "image" and "question"), greedy unless `generation_kwargs` say otherwise. Batches
    are left-padded; answers are decoded without special tokens and stripped."""
    answers = []
    device = next(model.parameters()).device
    for start in range(0, len(rows), batch_size):
        batch = [rows[i] for i in range(start, min(start + batch_size, len(rows)))]
        prompts, images = [], []
        for row in batch:
            if "conversations" in row:
                messages = conversation_messages(row["conversations"][:-1], processor.image_token)
            else:
                messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": row["question"]}]}]
            prompts.append(processor.apply_chat_template(messages, add_generation_prompt=True))
            if row.get(image_column) is not None:
                images.append(row[image_column].convert("RGB"))
        inputs = processor(images=images or None, text=prompts, padding_side="left").to(device)
        with torch.no_grad():
            generated = model.generate(**inputs, **generation_kwargs)
        new_tokens = generated[:, inputs["input_ids"].shape[1] :]
        answers += [text.strip() for text in processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    return answers


def score_answers(rows, answers: list[str], caption_metrics=FAST_METRICS) -> dict:
    """`vqa_accuracy` of the question rows (`vqa_accuracy`, `vqa_count`, `vqa_accuracy_<type>`) and the caption metrics
    of the rows of question type "caption" (`caption_<metric>`)."""
    types, references = list(rows["question_type"]), list(rows["answer"])
    questions = [i for i, kind in enumerate(types) if kind != CAPTION_TYPE]
    captions = [i for i, kind in enumerate(types) if kind == CAPTION_TYPE]
    scores = {}
    if questions:
        result = vqa_accuracy([answers[i] for i in questions], [references[i] for i in questions],
                              [types[i] for i in questions])
        scores.update(vqa_accuracy=result["accuracy"], vqa_count=result["count"])
        scores.update({f"vqa_accuracy_{kind}": value for kind, value in result["per_type"].items()})
    if captions:
        result = flat_scores(score_captions([answers[i] for i in captions], [[references[i]] for i in captions],
                                            caption_metrics))
        scores.update({f"caption_{key}": value for key, value in result.items()})
    return scores


class VisualInstructionTrainer(LeanTrainer):
    """Evaluation = the teacher-forced loss on the eval conversations, then `answer_questions` on them, scored by
    `score_answers` and logged as `eval_...`, with `eval_prior_accuracy` (the question-type prior baseline of the
    train answers) beside `eval_vqa_accuracy`. Each rank answers its shard of the eval set and the answers are
    gathered, so every rank scores the whole set once; the answers of the last evaluation are in `last_answers`.

    Args:
        prior_baseline (`dict`, *optional*): `question_type_prior_baseline(train, eval)`.
        generation_kwargs (`dict`, *optional*): passed to `generate()` (e.g. `max_new_tokens`).
        caption_metrics: metric names for the caption rows.
    """

    def __init__(self, *args, prior_baseline=None, generation_kwargs=None, caption_metrics=FAST_METRICS, **kwargs):
        super().__init__(*args, **kwargs)
        self.prior_baseline = prior_baseline
        self.generation_kwargs = dict(generation_kwargs or {})
        self.caption_metrics = parse_metric_names(caption_metrics)
        self.last_answers: list[str] = []

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs).detach().mean()
        return loss, None, None

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict:
        metrics = super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        # Each rank answers its contiguous shard; gathered in rank order, the answers are in dataset order.
        with self.accelerator.split_between_processes(list(range(len(dataset)))) as shard:
            answers = answer_questions(
                model, self.processing_class, dataset.select(shard), batch_size=self.args.per_device_eval_batch_size,
                **self.generation_kwargs,
            )
        self.last_answers = gather_object(answers)
        model.train(was_training)
        scores = score_answers(dataset, self.last_answers, self.caption_metrics)
        if self.prior_baseline is not None:
            scores["prior_accuracy"] = self.prior_baseline["accuracy"]
        for row, answer in list(zip(dataset.select(range(min(3, len(dataset)))), self.last_answers))[:3]:
            logger.info("answer %r (reference %r)", answer, row["answer"])
        scores = {f"{metric_key_prefix}_{key}": value for key, value in scores.items() if value is not None}
        self.log(scores)
        metrics.update(scores)
        return metrics


def setup_visual_instruction(family, model_args, data_args, training_args) -> TaskSetup:
    """Model, processor, datasets, collator and `VisualInstructionTrainer` arguments for DTP-LLaVA."""
    train, evaluation = load_conversation_splits(data_args, training_args.seed)
    texts = conversation_texts(train)
    if (data_args.dataset_name or "shapes_vqa") in BUILT_IN_DATASETS:
        texts += vocabulary_texts()  # a fresh stage-1 tokenizer must also know the stage-2 questions and answers
    model, processor = family.build(model_args, model_args.config_overrides, texts)
    model.generation_config.max_new_tokens = data_args.generation_max_new_tokens
    questions = [i for i, kind in enumerate(evaluation["question_type"]) if kind != CAPTION_TYPE]
    train_questions = [i for i, kind in enumerate(train["question_type"]) if kind != CAPTION_TYPE]
    prior = None
    if questions and train_questions:
        prior = question_type_prior_baseline(train.select(train_questions), evaluation.select(questions))
        logger.info("question-type prior baseline on %d eval questions: accuracy %.3f", len(questions),
                    prior["accuracy"])
    collator = ConversationCollator(processor, data_args.image_column, data_args.max_caption_length)
    return TaskSetup(
        model=model,
        processor=processor,
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=collator,
        trainer_class=VisualInstructionTrainer,
        trainer_kwargs=dict(
            prior_baseline=prior,
            generation_kwargs=dict(max_new_tokens=data_args.generation_max_new_tokens,
                                   num_beams=data_args.generation_num_beams, do_sample=False),
            caption_metrics=data_args.caption_metrics,
        ),
    )


def evaluate_visual_instruction(model_dir: str, dataset: str, split: str | None = None, max_samples: int | None = None,
                                batch_size: int = 16, generation_kwargs: dict | None = None,
                                answers_path: str | None = None) -> dict:
    """`leanvision evaluate` for a saved or exported DTP-LLaVA: answers every question of `dataset` and scores them.

    `dataset`: "shapes" / "shapes_vqa" (the built-in held-out questions, `max_samples` rows, default 200),
    "shapes_captions", a conversation dataset (its `split`, by default test / validation / train), or a LLaVA-Bench
    folder (`questions.jsonl`, `answers_gpt4.jsonl`, `images/`): its answers are written to `answers_path` for an
    external judge (no score is computed here). Returns {"scores", "dataset", "split", "num_samples", "generation"}.
    """
    from ..data.loading import evaluation_split
    from ..evaluation.vqa import QUESTIONS_FILE, load_llava_bench, write_llava_bench_answers
    from ..families import load_saved

    _, model, processor = load_saved(model_dir)
    generation_kwargs = dict(generation_kwargs or {})
    report = {"dataset": dataset, "generation": generation_kwargs}
    if os.path.isfile(os.path.join(dataset, QUESTIONS_FILE)):
        if not answers_path:
            raise ValueError("LLaVA-Bench answers need a file to go to: pass --out")
        rows = load_llava_bench(dataset)[:max_samples]
        answers = answer_questions(model, processor, rows, batch_size, **generation_kwargs)
        write_llava_bench_answers(rows, answers, answers_path, os.path.basename(os.path.normpath(model_dir)))
        return {**report, "scores": {}, "split": "llava-bench", "num_samples": len(rows), "answers_file": answers_path}
    if dataset in ("shapes", "shapes_vqa"):
        rows, split = shapes_vqa_splits(train=0, test=max_samples or DEFAULT_SIZES[1], seed=0)["test"], "test"
    elif dataset == "shapes_captions":
        data = shapes_splits(train=0, test=max_samples or DEFAULT_SIZES[1], seed=0)
        rows, split = captions_to_conversations(data["test"]), "test"
    else:
        rows, split = evaluation_split(load_conversation_dataset(dataset), split, dataset)
        rows = rows.select(range(min(max_samples, len(rows)))) if max_samples else rows
    answers = answer_questions(model, processor, rows, batch_size, **generation_kwargs)
    return {**report, "scores": score_answers(rows, answers), "split": split, "num_samples": len(rows)}
