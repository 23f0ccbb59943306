"""Progressive freezing: schedule parsing, and a tiny QVision trained by a plain transformers Trainer on CPU."""

import json
import logging

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import Trainer, TrainingArguments, get_scheduler

from leanvision.configuration.configuration_qvision import QVisionConfig
from leanvision.modeling.modeling_qvision import QVisionForConditionalGeneration
from leanvision.training.callbacks import (
    FreezingSchedule,
    ProgressiveFreezingCallback,
    build_freezing_callback,
    lowest_block_count,
)

VOCAB_SIZE = 64
NUM_BLOCKS = 4
CONFIG = dict(
    vision_config=dict(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=8
    ),
    text_config=dict(
        vocab_size=VOCAB_SIZE, hidden_size=16, num_layers=NUM_BLOCKS, num_heads=2, max_position_embeddings=16,
        attention_types=[[["global", "local"], 2]], window_size=8, bos_token_id=0, eos_token_id=0,
    ),
    num_query_tokens=2, qformer_hidden_size=16, qformer_num_layers=1, qformer_num_heads=2, qformer_dropout=0.0,
    cross_attention_every_n=2,
)
EMBEDDINGS = r"^language_model\.transformer\.w[tp]e\."
# Phase 1 freezes the embeddings and the lowest 3 of 4 blocks; phase 2 (from step 4) only the lowest 2.
SCHEDULE = [
    {"start_step": 0, "freeze": [r"^vision_model\.", EMBEDDINGS], "freeze_lowest_block_fraction": 0.75,
     "learning_rate": 1e-3},
    {"start_step": 4, "freeze": [r"^vision_model\.", EMBEDDINGS], "freeze_lowest_block_fraction": 0.5,
     "learning_rate": 5e-3},
]
BOUNDARY = 4
MAX_STEPS = 8
BATCH = 4
WARMUP = 2


def tiny_model() -> QVisionForConditionalGeneration:
    torch.manual_seed(0)
    return QVisionForConditionalGeneration(QVisionConfig(**CONFIG))


def dataset(num_examples: int = 16) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    examples = []
    for _ in range(num_examples):
        input_ids = torch.randint(1, VOCAB_SIZE, (6,), generator=generator)
        examples.append(
            {
                "pixel_values": torch.randn(3, 16, 16, generator=generator),
                "input_ids": input_ids,
                "attention_mask": torch.ones_like(input_ids),
                "labels": input_ids,
            }
        )
    return examples


def training_args(output_dir, **overrides) -> TrainingArguments:
    kwargs = dict(
        output_dir=str(output_dir),
        max_steps=MAX_STEPS,
        per_device_train_batch_size=BATCH,
        learning_rate=1e-2,  # every phase sets its own
        lr_scheduler_type="linear",
        warmup_steps=WARMUP,
        weight_decay=0.1,  # frozen parameters must not decay either
        logging_steps=1,
        save_strategy="steps",
        save_steps=2,
        report_to="none",
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def block_names(model, index) -> list[str]:
    block = model.decoder_blocks()[index]
    return [f"language_model.transformer.h.{index}.{name}" for name, _ in block.named_parameters()]


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def learning_rates(log_history) -> dict[int, float]:
    return {entry["step"]: entry["learning_rate"] for entry in log_history if "learning_rate" in entry}


class ListHandler(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One uninterrupted 8-step run, checkpoints every 2 steps."""
    output_dir = tmp_path_factory.mktemp("freezing_run")
    model = tiny_model()
    initial = snapshot(model)
    callback = build_freezing_callback(SCHEDULE, model=model)
    handler = ListHandler()
    logger = logging.getLogger("leanvision.freezing")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        trainer = Trainer(model=model, args=training_args(output_dir), train_dataset=dataset(), callbacks=[callback])
        trainer.train()
    finally:
        logger.removeHandler(handler)
    return dict(
        model=model, initial=initial, final=snapshot(model), trainer=trainer, callback=callback,
        output_dir=output_dir, messages=handler.messages,
    )


def checkpoint_weights(run, step) -> dict[str, torch.Tensor]:
    return load_file(str(run["output_dir"] / f"checkpoint-{step}" / "model.safetensors"))


def permanently_frozen(model) -> list[str]:
    names = [n for n in dict(model.named_parameters()) if n.startswith("vision_model.")]
    names += ["language_model.transformer.wte.weight", "language_model.transformer.wpe.weight"]
    return names + block_names(model, 0) + block_names(model, 1)


# ----------------------------------------------------------------------------------------------- schedule parsing


@pytest.mark.parametrize(
    "value, message",
    [
        ([], "non-empty list"),
        ("not json", "list of phases"),
        ([{"freeze": []}], "exactly one of 'start_epoch' or 'start_step'"),
        ([{"start_step": 0, "start_epoch": 0}], "exactly one of"),
        ([{"start_step": 0, "unfreeze": ["x"]}], "unknown keys"),
        ([{"start_step": 1}], "must start at step 0"),
        ([{"start_step": 0}, {"start_step": 0}], "increasing order"),
        ([{"start_step": 0}, {"start_epoch": 1}], "not both"),
        ([{"start_step": 0.5}], "non-negative integer"),
        ([{"start_epoch": -1}], "non-negative number"),
        ([{"start_step": 0, "freeze": "vision"}], "list of regular expressions"),
        ([{"start_step": 0, "freeze": ["("]}], "invalid 'freeze' pattern"),
        ([{"start_step": 0, "freeze_lowest_block_fraction": 1.5}], r"in \[0, 1\]"),
        ([{"start_step": 0, "learning_rate": "fast"}], "learning_rate must be a number"),
        ([{"start_step": 0, "learning_rate": 0}], "learning_rate must be positive"),
        ([7], "must be a mapping"),
    ],
)
def test_from_recipe_rejects_invalid_schedules(value, message):
    with pytest.raises(ValueError, match=message):
        FreezingSchedule.from_recipe(value)


def test_from_recipe_reads_yaml_strings_and_round_trips():
    schedule = FreezingSchedule.from_recipe(
        [{"start_epoch": 0, "learning_rate": "2e-5"}, {"start_epoch": 7, "freeze_lowest_block_fraction": 0.5}]
    )
    assert schedule.unit == "epoch" and schedule.phases[0].learning_rate == 2e-5
    assert FreezingSchedule.from_recipe(schedule.to_list()).phases == schedule.phases
    assert schedule.phase_index(0, 6.99) == 0 and schedule.phase_index(0, 7.0) == 1
    assert schedule.learning_rate(1, default=3e-4) == 3e-4
    assert build_freezing_callback(None) is None and build_freezing_callback([]) is None


@pytest.mark.parametrize("fraction, num_blocks, expected", [(0.7, 12, 8), (0.5, 12, 6), (0.7, 10, 7), (0.3, 10, 3)])
def test_lowest_block_count_is_floor(fraction, num_blocks, expected):
    assert lowest_block_count(fraction, num_blocks) == expected


def test_frozen_names_by_pattern_and_block_fraction():
    model = tiny_model()
    schedule = FreezingSchedule.from_recipe(SCHEDULE)
    vision = {n for n in dict(model.named_parameters()) if n.startswith("vision_model.")}
    embeddings = {"language_model.transformer.wte.weight", "language_model.transformer.wpe.weight"}
    for index, num_frozen_blocks in [(0, 3), (1, 2)]:
        blocks = {n for i in range(num_frozen_blocks) for n in block_names(model, i)}
        assert schedule.frozen_names(model, index) == vision | embeddings | blocks


def test_patterns_matching_nothing_and_fraction_without_blocks_are_errors():
    model = tiny_model()
    with pytest.raises(ValueError, match="matches no parameter"):
        build_freezing_callback([{"start_step": 0, "freeze": ["^encoder\\."]}], model=model)
    # Any family: a model without decoder_blocks() is frozen by patterns only.
    plain = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    schedule = FreezingSchedule.from_recipe([{"start_step": 0, "freeze": ["^0\\."]}])
    assert schedule.frozen_names(plain, 0) == {"0.weight", "0.bias"}
    with pytest.raises(ValueError, match="decoder_blocks"):
        FreezingSchedule.from_recipe([{"start_step": 0, "freeze_lowest_block_fraction": 0.5}]).frozen_names(plain, 0)


# ------------------------------------------------------------------------------------------- training with Trainer


def test_frozen_parameters_stay_bit_identical(run):
    for name in permanently_frozen(run["model"]):
        assert torch.equal(run["final"][name], run["initial"][name]), name
    # Frozen parameters have no optimizer state: AdamW skipped them, weight decay included.
    optimizer = run["trainer"].optimizer
    parameters = dict(run["model"].named_parameters())
    for name in permanently_frozen(run["model"]):
        assert parameters[name] not in optimizer.state, name


def test_parameters_unfrozen_at_the_boundary_change_only_after_it(run):
    model = run["model"]
    unfrozen = block_names(model, 2)
    before, after = checkpoint_weights(run, BOUNDARY), checkpoint_weights(run, BOUNDARY + 2)
    for name in unfrozen:
        assert torch.equal(before[name], run["initial"][name]), name
        assert not torch.equal(after[name], run["initial"][name]), name
        assert not torch.equal(run["final"][name], after[name]), name
    # Trainable from the start: changed by the boundary already.
    for name in block_names(model, 3) + ["qformer.query_tokens", "visual_projection.weight"]:
        assert not torch.equal(before[name], run["initial"][name]), name
    # In the optimizer since step 0, AdamW state started at the first step after unfreezing.
    state = run["trainer"].optimizer.state
    parameters = dict(model.named_parameters())
    for name in unfrozen:
        assert int(state[parameters[name]]["step"]) == MAX_STEPS - BOUNDARY, name
    assert int(state[parameters["qformer.query_tokens"]]["step"]) == MAX_STEPS


def expected_learning_rates(schedule, max_steps, warmup, base_lr=1.0) -> dict[int, float]:
    """lr of optimizer step s (logged at step s + 1) = phase lr * multiplier of transformers' linear schedule."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base_lr)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=warmup, num_training_steps=max_steps)
    multipliers = [scheduler.lr_lambdas[0](s) for s in range(max_steps)]
    return {
        s + 1: schedule.learning_rate(schedule.phase_index(s, None), 1e-2) * multipliers[s] for s in range(max_steps)
    }


def test_learning_rate_follows_the_schedule(run):
    expected = expected_learning_rates(FreezingSchedule.from_recipe(SCHEDULE), MAX_STEPS, WARMUP)
    logged = learning_rates(run["trainer"].state.log_history)
    assert set(logged) == set(expected)
    for step, value in expected.items():
        assert logged[step] == pytest.approx(value, rel=1e-12, abs=1e-15), step
    for group in run["trainer"].optimizer.param_groups:
        assert group["initial_lr"] == 5e-3


def test_trainable_counts_are_logged_per_phase(run):
    model = run["model"]
    sizes = {name: p.numel() for name, p in model.named_parameters()}
    total = sum(sizes.values())
    vision = sum(n for name, n in sizes.items() if name.startswith("vision_model."))
    embeddings = sizes["language_model.transformer.wte.weight"] + sizes["language_model.transformer.wpe.weight"]
    block = sum(p.numel() for p in model.decoder_blocks()[0].parameters())
    expected = [total - vision - embeddings - 3 * block, total - vision - embeddings - 2 * block]

    history = run["callback"].history
    assert [(h["freezing_phase"], h["step"], h["trainable_parameters"]) for h in history] == [
        (1, 0, expected[0]), (2, BOUNDARY, expected[1])
    ]
    logged = [e for e in run["trainer"].state.log_history if "freezing_phase" in e]
    assert logged == history
    assert len(run["messages"]) == 2 and f"{expected[1]:,} of {total:,}" in run["messages"][1]
    # The same counts are what requires_grad says at the end (phase 2).
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected[1]


def test_checkpoints_record_the_active_phase(run):
    def active_phase(step):
        state = json.loads((run["output_dir"] / f"checkpoint-{step}" / "trainer_state.json").read_text())
        return state["stateful_callbacks"]["ProgressiveFreezingCallback"]["attributes"]["active_phase"]

    # The phase switches at the start of step BOUNDARY + 1, after checkpoint BOUNDARY was written.
    assert [active_phase(step) for step in (2, 4, 6, 8)] == [0, 0, 1, 1]


@pytest.mark.parametrize("checkpoint", [BOUNDARY + 2, BOUNDARY])
def test_resume_lands_in_phase_2_and_continues_identically(run, tmp_path, checkpoint):
    model = tiny_model()
    callback = ProgressiveFreezingCallback(SCHEDULE, model=model)
    trainer = Trainer(model=model, args=training_args(tmp_path), train_dataset=dataset(), callbacks=[callback])
    trainer.train(resume_from_checkpoint=str(run["output_dir"] / f"checkpoint-{checkpoint}"))

    assert [(h["freezing_phase"], h["step"]) for h in callback.history] == [(2, checkpoint)]
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert set(block_names(model, 2)) <= trainable and not set(block_names(model, 1)) & trainable
    logged, reference = learning_rates(trainer.state.log_history), learning_rates(run["trainer"].state.log_history)
    for step in range(checkpoint + 1, MAX_STEPS + 1):
        assert logged[step] == reference[step], step
    for name, value in snapshot(model).items():
        assert torch.equal(value, run["final"][name]), name


def test_epoch_schedule_switches_at_the_epoch(tmp_path):
    model = tiny_model()
    schedule = [dict(SCHEDULE[0], start_epoch=0), dict(SCHEDULE[1], start_epoch=1)]
    for phase in schedule:
        del phase["start_step"]
    callback = build_freezing_callback(schedule, model=model)
    # 8 examples, batch 2, accumulation 2: 2 optimizer steps per epoch.
    args = training_args(
        tmp_path, max_steps=-1, num_train_epochs=2, per_device_train_batch_size=2, gradient_accumulation_steps=2,
        save_strategy="no",
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset(8), callbacks=[callback])
    trainer.train()
    assert [(h["freezing_phase"], h["step"]) for h in callback.history] == [(1, 0), (2, 2)]
    logged = learning_rates(trainer.state.log_history)
    by_step = FreezingSchedule.from_recipe([SCHEDULE[0], dict(SCHEDULE[1], start_step=2)])
    expected = expected_learning_rates(by_step, 4, WARMUP)
    assert logged == pytest.approx(expected, rel=1e-12)


def test_optimizer_built_after_freezing_is_an_error(tmp_path):
    model = tiny_model()
    callback = build_freezing_callback(SCHEDULE, model=model)
    for name in block_names(model, 2):  # frozen before Trainer builds its optimizer: phase 2 could not train it
        model.get_parameter(name).requires_grad_(False)
    trainer = Trainer(model=model, args=training_args(tmp_path, save_strategy="no"), train_dataset=dataset(),
                      callbacks=[callback])
    with pytest.raises(ValueError, match="not in the optimizer"):
        trainer.train()
