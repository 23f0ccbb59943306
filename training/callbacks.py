"""Progressive freezing for every model family: a schedule of phases read from the recipe, applied by a callback.

A recipe's `freezing` value is a list of phases, in order::

    freezing:
      - start_epoch: 0                       # or start_step: 0 (one unit for the whole schedule)
        freeze: ['^vision_model\\.', '^language_model\\.transformer\\.w[tp]e\\.']
        freeze_lowest_block_fraction: 0.7    # of model.decoder_blocks(), lowest first
        learning_rate: 2.0e-5
      - start_epoch: 7
        freeze: [...]
        freeze_lowest_block_fraction: 0.5
        learning_rate: 2.0e-4

Semantics:
- A phase is active from its start until the next phase starts; the first phase must start at 0. The active phase
  is a function of training progress only (`state.global_step` or `state.epoch`), so resuming from a checkpoint
  recomputes it: a checkpoint saved in phase 2 resumes in phase 2.
- A phase freezes every parameter whose name matches one of its `freeze` regexes (`re.search` on the names of
  `model.named_parameters()`) and the parameters of the lowest `floor(f * n)` of the model's `n` decoder blocks.
  Every other parameter that the model itself left trainable is trainable. A schedule never unfreezes what the
  model froze when it was built (e.g. QVision's CLIP tower).
- The learning rate is `lr(t) = lr_phase(t) * lambda(t)`: the phase's `learning_rate` (default: the
  `TrainingArguments.learning_rate`) replaces the peak of every parameter group, and `lambda(t)` is the multiplier of
  the run's scheduler (`lr_scheduler_type`, `warmup_steps`) over the whole run; a phase does not restart warmup.

Optimizer: transformers' `Trainer` builds its optimizer once, over the parameters with `requires_grad`, before the
callbacks' `on_train_begin`. The callback applies the first phase in `on_train_begin`, so the optimizer holds every
parameter any phase may train. A frozen parameter gets no gradient (`grad is None`) and `torch.optim.AdamW` then
skips it entirely (no update, no weight decay, no optimizer state), so it stays bit-identical; once unfrozen, it
gets gradients and AdamW starts its state (bias correction from its own first step). With DDP this needs
`find_unused_parameters=True`, Trainer's default (`ddp_find_unused_parameters` unset, no activation checkpointing).
"""

import logging
import math
import re
from dataclasses import dataclass

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

logger = logging.getLogger("leanvision.freezing")

PHASE_KEYS = ("start_epoch", "start_step", "freeze", "freeze_lowest_block_fraction", "learning_rate")


@dataclass(frozen=True)
class FreezingPhase:
    """One phase: from `start` (in the schedule's unit) freeze `freeze` patterns and the lowest blocks."""

    start: float
    freeze: tuple[str, ...] = ()
    freeze_lowest_block_fraction: float = 0.0
    learning_rate: float | None = None


def _number(value, what: str) -> float:
    """A YAML number; PyYAML reads `2e-5` (no dot) as a string, so numeric strings are accepted too."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a number, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise ValueError(f"{what} must be a number, got {value!r}")


def _parse_phase(index: int, raw) -> tuple[str, FreezingPhase]:
    where = f"freezing phase {index + 1}"
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be a mapping with keys {list(PHASE_KEYS)}, got {raw!r}")
    unknown = sorted(set(raw) - set(PHASE_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; allowed keys: {list(PHASE_KEYS)}")
    starts = [key for key in ("start_epoch", "start_step") if key in raw]
    if len(starts) != 1:
        raise ValueError(f"{where} must set exactly one of 'start_epoch' or 'start_step', got {starts or 'neither'}")
    unit = starts[0][len("start_") :]
    start = _number(raw[starts[0]], f"{where}: {starts[0]}")
    if start < 0 or (unit == "step" and start != int(start)):
        raise ValueError(f"{where}: {starts[0]} must be a non-negative {'integer' if unit == 'step' else 'number'}")

    patterns = raw.get("freeze", [])
    if isinstance(patterns, str) or not isinstance(patterns, (list, tuple)):
        raise ValueError(f"{where}: 'freeze' must be a list of regular expressions, got {patterns!r}")
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise ValueError(f"{where}: 'freeze' patterns must be strings, got {pattern!r}")
        try:
            re.compile(pattern)
        except re.error as err:
            raise ValueError(f"{where}: invalid 'freeze' pattern {pattern!r}: {err}") from None

    fraction = _number(raw.get("freeze_lowest_block_fraction", 0.0), f"{where}: freeze_lowest_block_fraction")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"{where}: freeze_lowest_block_fraction must be in [0, 1], got {fraction}")

    learning_rate = raw.get("learning_rate")
    if learning_rate is not None:
        learning_rate = _number(learning_rate, f"{where}: learning_rate")
        if learning_rate <= 0:
            raise ValueError(f"{where}: learning_rate must be positive, got {learning_rate}")
    phase = FreezingPhase(
        start=int(start) if start == int(start) else start,
        freeze=tuple(patterns),
        freeze_lowest_block_fraction=fraction,
        learning_rate=learning_rate,
    )
    return unit, phase


class FreezingSchedule:
    """An ordered list of [`FreezingPhase`]s sharing one unit, `"epoch"` or `"step"`. Phases are indexed from 0."""

    def __init__(self, phases: list[FreezingPhase], unit: str):
        if unit not in ("epoch", "step"):
            raise ValueError(f"unit must be 'epoch' or 'step', got {unit!r}")
        if not phases:
            raise ValueError("a freezing schedule needs at least one phase")
        if phases[0].start != 0:
            raise ValueError(f"the first freezing phase must start at {unit} 0, got {phases[0].start}")
        for i in range(1, len(phases)):
            if phases[i].start <= phases[i - 1].start:
                raise ValueError(
                    f"freezing phases must start in increasing order: phase {i + 1} starts at {unit} "
                    f"{phases[i].start}, not after phase {i} ({phases[i - 1].start})"
                )
        self.phases = tuple(phases)
        self.unit = unit

    @classmethod
    def from_recipe(cls, value) -> "FreezingSchedule":
        """Parses a recipe's `freezing` value: a list of phase mappings."""
        if not isinstance(value, (list, tuple)) or not value:
            raise ValueError(f"freezing must be a non-empty list of phases, got {value!r}")
        parsed = [_parse_phase(i, raw) for i, raw in enumerate(value)]
        units = {unit for unit, _ in parsed}
        if len(units) > 1:
            raise ValueError("freezing phases must all use 'start_epoch' or all use 'start_step', not both")
        return cls([phase for _, phase in parsed], units.pop())

    def to_list(self) -> list[dict]:
        """The recipe form of the schedule (inverse of `from_recipe`)."""
        out = []
        for phase in self.phases:
            raw = {f"start_{self.unit}": phase.start, "freeze": list(phase.freeze)}
            raw["freeze_lowest_block_fraction"] = phase.freeze_lowest_block_fraction
            if phase.learning_rate is not None:
                raw["learning_rate"] = phase.learning_rate
            out.append(raw)
        return out

    def __len__(self) -> int:
        return len(self.phases)

    def phase_index(self, global_step: int, epoch: float | None) -> int:
        """Index of the phase active at this progress: the last phase whose start has been reached."""
        progress = global_step if self.unit == "step" else (epoch or 0.0) + 1e-9
        return max(i for i, phase in enumerate(self.phases) if phase.start <= progress)

    def frozen_names(self, model, index: int) -> set[str]:
        """Names of the parameters phase `index` freezes (whether or not the model already froze them)."""
        phase = self.phases[index]
        names = [name for name, _ in model.named_parameters()]
        frozen = set()
        for pattern in phase.freeze:
            matched = {name for name in names if re.search(pattern, name)}
            if not matched:
                raise ValueError(
                    f"freezing phase {index + 1}: pattern {pattern!r} matches no parameter of "
                    f"{type(model).__name__} (names look like {names[0]!r})"
                )
            frozen |= matched
        if phase.freeze_lowest_block_fraction > 0:
            if not hasattr(model, "decoder_blocks"):
                raise ValueError(
                    f"freezing phase {index + 1}: freeze_lowest_block_fraction needs a model with decoder_blocks(); "
                    f"{type(model).__name__} has none, freeze its blocks by name patterns instead"
                )
            blocks = model.decoder_blocks()
            for block in blocks[: lowest_block_count(phase.freeze_lowest_block_fraction, len(blocks))]:
                ids = {id(p) for p in block.parameters()}
                frozen |= {name for name, p in model.named_parameters() if id(p) in ids}
        return frozen

    def trainable_names(self, model, index: int, base_trainable: set[str]) -> set[str]:
        """Parameters trainable in phase `index`: those of `base_trainable` (the model's own) it does not freeze."""
        return base_trainable - self.frozen_names(model, index)

    def learning_rate(self, index: int, default: float) -> float:
        rate = self.phases[index].learning_rate
        return default if rate is None else rate


def base_trainable_names(model) -> set[str]:
    """Names of the parameters the model leaves trainable as it is (the set a schedule freezes parts of)."""
    return {name for name, p in model.named_parameters() if p.requires_grad}


def lowest_block_count(fraction: float, num_blocks: int) -> int:
    """`floor(fraction * num_blocks)`, robust to float rounding (0.7 * 10 freezes 7 blocks)."""
    return math.floor(fraction * num_blocks + 1e-9)


def set_peak_learning_rate(optimizer, lr_scheduler, learning_rate: float) -> None:
    """
    Makes `learning_rate` the peak of every parameter group while keeping the scheduler's current multiplier:
    `lr = learning_rate * lambda(t)` now, and the scheduler's next steps compute from the new `base_lrs`.
    """
    lambdas = getattr(lr_scheduler, "lr_lambdas", None)  # LambdaLR: every transformers schedule but plateau
    for i, group in enumerate(optimizer.param_groups):
        if lambdas is not None:
            group["lr"] = learning_rate * lambdas[i](lr_scheduler.last_epoch)
        else:
            group["lr"] = group["lr"] * learning_rate / group.get("initial_lr", group["lr"])
        group["initial_lr"] = learning_rate
    if lr_scheduler is not None:
        if hasattr(lr_scheduler, "base_lrs"):
            lr_scheduler.base_lrs = [learning_rate for _ in optimizer.param_groups]
        # Trainer logs `get_last_lr()`, which is only refreshed by `step()`.
        lr_scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


class ProgressiveFreezingCallback(TrainerCallback, ExportableState):
    """
    Applies a [`FreezingSchedule`] during `Trainer.train`: the phase active at the current progress is applied in
    `on_train_begin` (fresh runs and resumes alike) and whenever a new phase starts (`on_step_begin`, before the
    first micro-batch of an optimizer step). Applying a phase sets `requires_grad` and the peak learning rate and
    logs the trainable parameter count (logger, `state.log_history` and `self.history`).

    The parameters the model itself leaves trainable are recorded from `model` when given (do so right after
    building the model), else at the first `on_train_begin`. The model must still be in that state when Trainer
    creates its optimizer: pass the callback to the Trainer and let `train()` apply the phases. `on_train_begin`
    raises a `ValueError` if a parameter some phase trains is missing from the optimizer.

    Its state (`schedule`, `active_phase`) is saved in each checkpoint's `trainer_state.json`.
    """

    def __init__(self, schedule: FreezingSchedule | list, model=None):
        self.schedule = schedule if isinstance(schedule, FreezingSchedule) else FreezingSchedule.from_recipe(schedule)
        self.active_phase: int | None = None
        self.history: list[dict] = []
        self._base_trainable: set[str] | None = None
        if model is not None:
            self._base_trainable = base_trainable_names(model)
            for i in range(len(self.schedule)):
                self.schedule.frozen_names(model, i)  # fail on a bad pattern now, not at train time

    def state(self) -> dict:
        return {"args": {"schedule": self.schedule.to_list()}, "attributes": {"active_phase": self.active_phase}}

    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        if self._base_trainable is None:
            self._base_trainable = base_trainable_names(model)
        self._check_optimizer(model, optimizer)
        index = self.schedule.phase_index(state.global_step, state.epoch)
        self._apply(index, args, state, model, optimizer, lr_scheduler)

    def on_step_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        index = self.schedule.phase_index(state.global_step, state.epoch)
        if index != self.active_phase:
            self._apply(index, args, state, model, optimizer, lr_scheduler)

    def _check_optimizer(self, model, optimizer):
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        wanted = set().union(
            *(self.schedule.trainable_names(model, i, self._base_trainable) for i in range(len(self.schedule)))
        )
        missing = sorted(name for name, p in model.named_parameters() if name in wanted and id(p) not in in_optimizer)
        if missing:
            raise ValueError(
                f"{len(missing)} parameters a freezing phase trains are not in the optimizer (e.g. {missing[0]!r}): "
                "the optimizer was built after they were frozen. Build it from the model as constructed and let "
                "ProgressiveFreezingCallback freeze during train()."
            )

    def _apply(self, index, args, state, model, optimizer, lr_scheduler):
        trainable = self.schedule.trainable_names(model, index, self._base_trainable)
        for name, parameter in model.named_parameters():
            if name in self._base_trainable:
                parameter.requires_grad_(name in trainable)
        learning_rate = self.schedule.learning_rate(index, args.learning_rate)
        set_peak_learning_rate(optimizer, lr_scheduler, learning_rate)
        self.active_phase = index

        count = sum(p.numel() for name, p in model.named_parameters() if name in trainable)
        total = sum(p.numel() for p in model.parameters())
        record = {
            "freezing_phase": index + 1,
            "trainable_parameters": count,
            "total_parameters": total,
            "phase_learning_rate": learning_rate,
            "step": state.global_step,
        }
        self.history.append(record)
        state.log_history.append(dict(record))
        if state.is_world_process_zero:
            logger.info(
                "freezing phase %d/%d (from %s %s) at step %d: %s of %s parameters trainable (%.2f%%), peak lr %g",
                index + 1,
                len(self.schedule),
                self.schedule.unit,
                self.schedule.phases[index].start,
                state.global_step,
                f"{count:,}",
                f"{total:,}",
                100.0 * count / total,
                learning_rate,
            )


class BoundaryTemperatureCallback(TrainerCallback):
    """Anneals the Gumbel temperature of every DTP boundary predictor in the model with the trainer's step: before
    each step, tau = `annealed_temperature` at progress s = global_step / (max_steps - 1), so the first step trains at
    `boundary_temperature` and the last at `boundary_temperature_final`. A function of the step only, so a resumed
    run continues the schedule. The temperature in use is logged as `boundary_temperature`."""

    def __init__(self):
        self.temperature = None

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        progress = state.global_step / max(state.max_steps - 1, 1)
        for module in model.modules():
            anneal = getattr(module, "anneal_temperature", None)  # DTP's BoundaryPredictor (also in remote code)
            if anneal is not None:
                self.temperature = anneal(progress)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and self.temperature is not None:
            logs["boundary_temperature"] = self.temperature
            # Trainer appended this log's copy to the history before calling the callbacks.
            if state.log_history:
                state.log_history[-1]["boundary_temperature"] = self.temperature


def build_temperature_callback(model) -> BoundaryTemperatureCallback | None:
    """The anneal's callback when a boundary predictor of `model` has `boundary_temperature_final` set, else None."""
    for module in model.modules():
        config = getattr(module, "config", None)
        if hasattr(module, "anneal_temperature") and getattr(config, "boundary_temperature_final", None) is not None:
            return BoundaryTemperatureCallback()
    return None


def build_freezing_callback(value, model=None) -> ProgressiveFreezingCallback | None:
    """
    The callback for a recipe's `freezing` value (a list of phases); `None` when it is unset. Pass the
    freshly built `model` to record what it leaves trainable and to check the patterns before training.
    """
    if not value:
        return None
    return ProgressiveFreezingCallback(FreezingSchedule.from_recipe(value), model=model)


__all__ = [
    "BoundaryTemperatureCallback",
    "FreezingPhase",
    "FreezingSchedule",
    "base_trainable_names",
    "ProgressiveFreezingCallback",
    "build_freezing_callback",
    "build_temperature_callback",
    "lowest_block_count",
    "set_peak_learning_rate",
]
