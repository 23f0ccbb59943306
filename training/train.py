"""One training entry point for every leanvision model family.

    python training/train.py RECIPE.yaml [--flag value ...]
    accelerate launch training/train.py RECIPE.yaml [--flag value ...]

The recipe and the flags are the arguments of `training/arguments.py`. The family's task (`training/tasks/`) builds
the model, data and trainer; the final model and its processor are saved to `output_dir`, ready for
`leanvision export`; with `--lora`, a LoRA adapter of `model_name_or_path` and the processor (training/lora.py).
"""

import logging
import sys

from transformers import set_seed

from leanvision.training.arguments import (
    check_output_dir,
    check_pretrained_sources,
    config_differences,
    parse_args,
    recipe_name,
    write_training_record,
)
from leanvision.training.callbacks import build_freezing_callback, build_temperature_callback
from leanvision.training.families import get_family
from leanvision.training.lora import apply_lora, write_adapter_record
from leanvision.training.tasks import TASKS

logger = logging.getLogger("leanvision.train")


def train(model_args, data_args, training_args, recipe: str | None = None) -> dict:
    """Trains, evaluates and saves; returns the final evaluation metrics. `recipe`: the recipe's file name, for the
    training record."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    family = get_family(model_args.family)
    training_args.remove_unused_columns = False  # the datasets are transformed on the fly
    set_seed(training_args.seed)

    setup = TASKS[family.task](family, model_args, data_args, training_args)
    if model_args.lora:
        if model_args.freezing:
            logger.warning("--lora: the freezing schedule is not applied; only the LoRA weights train")
            model_args.freezing = None
        setup.model = apply_lora(setup.model, family, model_args)
    freezing = build_freezing_callback(model_args.freezing, model=setup.model)
    logger.info(
        "config differences from the %s defaults: %s",
        family.name, config_differences(setup.model.config, family.config_class()),
    )
    trainable = sum(p.numel() for p in setup.model.parameters() if p.requires_grad)
    logger.info(
        "family %s: %d trainable parameters, world size %d", family.name, trainable, training_args.world_size
    )
    trainer = setup.trainer_class(
        model=setup.model,
        args=training_args,
        train_dataset=setup.train_dataset,
        eval_dataset=setup.eval_dataset,
        data_collator=setup.data_collator,
        processing_class=setup.processor,
        compute_metrics=setup.compute_metrics,
        preprocess_logits_for_metrics=setup.preprocess_logits_for_metrics,
        callbacks=setup.callbacks + [c for c in (freezing, build_temperature_callback(setup.model)) if c],
        **setup.trainer_kwargs,
    )
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()
    if trainer.is_world_process_zero():
        if model_args.lora:
            write_adapter_record(training_args.output_dir, family.name, model_args.model_name_or_path)
        write_training_record(training_args.output_dir, family, data_args, training_args, recipe)
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    trainer.save_state()
    return metrics


def main(argv: list[str] | None = None) -> dict:
    """`train.py RECIPE [--flag value ...]` (`argv`, default the command line): trains and returns the eval metrics.
    The arguments and `output_dir` are checked before anything is written."""
    argv = sys.argv[1:] if argv is None else argv
    model_args, data_args, training_args = parse_args(argv)
    check_output_dir(training_args)
    check_pretrained_sources(model_args)
    return train(model_args, data_args, training_args, recipe=recipe_name(argv))


def run_from_command_line(argv: list[str] | None = None) -> int:
    """`main` for `python training/train.py`: an expected failure (bad recipe or flag, Hub or network failure) is one
    line on stderr and exit status 2; any other exception keeps its traceback."""
    from leanvision.training.errors import describe, expected_errors

    try:
        main(argv)
    except expected_errors() as err:
        print(f"train.py: error: {describe(err)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run_from_command_line())
