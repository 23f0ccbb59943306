"""LoRA adapters (peft) for every leanvision family: adapter set-up, loading and merging (the adapter's Hub repo is
written by `hub_cards/publish.py`).

    leanvision train RECIPE.yaml --model_name_or_path BASE --lora [--lora_r 8 --lora_alpha 16 ...]
    leanvision merge-lora ADAPTER_DIR --base BASE OUT_DIR

An adapter folder holds peft's `adapter_config.json` + `adapter_model.safetensors`, the processor and
`leanvision_adapter.json` (family and where the base came from). Its `base_model_name_or_path` is the base's Hub
id, or only the folder name of a local base, so that no local path is written.
"""

import contextlib
import functools
import json
import logging
import os
import re
import shutil
import warnings
from .files import staged_folder, write_json_atomically

logger = logging.getLogger("leanvision.lora")

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_RECORD = "leanvision_adapter.json"
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")

# Attention projections of each family's trainable towers (peft matches a name or a dotted suffix of one).
DEFAULT_TARGET_MODULES = {
    "dtp_vit": ("q_proj", "k_proj", "v_proj", "out_proj"),
    "dtp_clip": ("q_proj", "k_proj", "v_proj", "out_proj"),  # image and text towers
    "gated_sparse_blip": (
        "qkv", "projection", "query", "key", "value", "attention.output.dense", "crossattention.output.dense",
    ),
    "qvision_multimodel": ("q_proj", "k_proj", "v_proj", "out_proj"),  # Q-Former, cross-attention, GPT-Neo
    "dtp_llava": ("q_proj", "k_proj", "v_proj", "o_proj"),  # the language model's (Llama / Qwen2 names)
}
# Towers that stay frozen under LoRA (peft `exclude_modules`, a regex over full module names).
FROZEN_MODULES = {
    "gated_sparse_blip": r"model\.vae\..*",
    "qvision_multimodel": r"vision_model\..*",
    "dtp_llava": r"vision_tower\..*",
}


def target_modules(family_name: str, value) -> list[str]:
    """Target module names from a recipe list or a comma-separated string; None: the family's defaults."""
    if value is None:
        return list(DEFAULT_TARGET_MODULES[family_name])
    names = value.split(",") if isinstance(value, str) else list(value)
    names = [str(name).strip() for name in names]
    if not names or not all(names):
        raise ValueError(f"lora_target_modules must name one or more modules, got {value!r}")
    return names


def lora_config(model, family_name: str, args):
    """The checked `peft.LoraConfig` of `args` (LoraArguments fields) for `model` of family `family_name`."""
    from peft import LoraConfig

    if isinstance(args.lora_r, bool) or not isinstance(args.lora_r, int) or args.lora_r < 1:
        raise ValueError(f"lora_r (the LoRA rank) must be a positive integer, got {args.lora_r!r}")
    if not args.lora_alpha > 0:
        raise ValueError(f"lora_alpha must be positive, got {args.lora_alpha!r}")
    if not 0 <= args.lora_dropout < 1:
        raise ValueError(f"lora_dropout must be in [0, 1), got {args.lora_dropout!r}")
    targets = target_modules(family_name, args.lora_target_modules)
    frozen = FROZEN_MODULES.get(family_name)
    all_names = [name for name, _ in model.named_modules() if name]
    names = [name for name in all_names if not (frozen and re.fullmatch(frozen, name))]
    excluded = len(names) < len(all_names)
    for target in targets:
        if not any(name == target or name.endswith("." + target) for name in names):
            where = " outside its frozen tower" if excluded else ""
            raise ValueError(
                f"LoRA target module {target!r} matches no module of the {family_name} model{where}; "
                f"the defaults are {list(DEFAULT_TARGET_MODULES[family_name])}"
            )
    return LoraConfig(
        r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout, target_modules=targets,
        exclude_modules=frozen if excluded else None, bias="none",
    )


def public_base_name(name_or_path: str) -> str:
    """What an adapter records as its base: a Hub id as is, a local folder by its name only."""
    return os.path.basename(os.path.abspath(name_or_path)) if os.path.isdir(name_or_path) else name_or_path


@contextlib.contextmanager
def peft_wrapping():
    """Wrapping a model in a `PeftModel`: peft 0.21 reads transformers' deprecated `is_gradient_checkpointing` there
    (a FutureWarning about peft's code, not ours)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def apply_lora(model, family, args):
    """`model` (loaded from `model_name_or_path`) wrapped as a `peft.PeftModel` in which only the LoRA weights train.

    `args` carries the `LoraArguments` fields. The base's recorded name (adapter_config.json's
    `base_model_name_or_path`, the README peft writes) becomes `public_base_name` of where it was loaded from.
    """
    from peft import get_peft_model

    if not model.name_or_path:
        raise ValueError(
            "LoRA adapts a trained model: pass --model_name_or_path (a saved or exported leanvision model folder, "
            "or a Hub repo)"
        )
    config = lora_config(model, family.name, args)
    model.name_or_path = model.config.name_or_path = public_base_name(model.name_or_path)
    with peft_wrapping():
        peft_model = get_peft_model(model, config)
    # LoRA training here never changes the vocabulary, so the base's embedding weights need not be saved with the
    # adapter; peft's "auto" check would look the base's public name up on the Hub and warn when it cannot.
    peft_model.save_pretrained = functools.partial(peft_model.save_pretrained, save_embedding_layers=False)
    trainable, total = peft_model.get_nb_trainable_parameters()
    logger.info(
        "LoRA r=%d alpha=%g on %s: %d of %d parameters train (%.2f%%)",
        config.r, config.lora_alpha, sorted(config.target_modules), trainable, total, 100 * trainable / total,
    )
    return peft_model


def write_adapter_record(adapter_dir: str, family_name: str, base_name_or_path: str) -> None:
    """`leanvision_adapter.json`: the family and whether the base came from the Hub or a local folder."""
    write_json_atomically(os.path.join(adapter_dir, ADAPTER_RECORD), {
        "family": family_name,
        "base_model": public_base_name(base_name_or_path),
        "base_model_source": "local folder" if os.path.isdir(base_name_or_path) else "hub",
    })


def is_adapter_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, ADAPTER_CONFIG))


def read_adapter_record(adapter_dir: str) -> dict:
    if not is_adapter_dir(adapter_dir):
        raise ValueError(f"{adapter_dir!r} is not a LoRA adapter folder: {ADAPTER_CONFIG} is missing")
    path = os.path.join(adapter_dir, ADAPTER_RECORD)
    if not os.path.isfile(path):
        raise ValueError(f"{adapter_dir!r} has no {ADAPTER_RECORD}: it was not trained by leanvision")
    with open(path) as f:
        return json.load(f)


def load_base_model(name_or_path: str):
    """The in-package leanvision model saved (or exported) in a folder or a Hub repo."""
    from transformers import PretrainedConfig

    from .families import get_family

    config, _ = PretrainedConfig.get_config_dict(name_or_path)
    return get_family(config.get("model_type")).model_class.from_pretrained(name_or_path)


def load_adapter_model(base, adapter_dir: str):
    """The adapter in `adapter_dir` on top of `base`, in eval mode.

    `base`: a model instance (the in-package class, or the remote-code class of an export loaded with
    `AutoModel...from_pretrained(..., trust_remote_code=True)`; its layers are adapted in place), or the folder / Hub
    id of a leanvision model, loaded with the in-package class.
    """
    from peft import PeftModel

    family = read_adapter_record(adapter_dir)["family"]
    if isinstance(base, (str, os.PathLike)):
        base = load_base_model(str(base))
    if base.config.model_type != family:
        raise ValueError(f"the adapter in {adapter_dir!r} adapts a {family} model, not {base.config.model_type}")
    with peft_wrapping():
        return PeftModel.from_pretrained(base, adapter_dir).eval()


def merge_adapter(adapter_dir: str, base: str, out_dir: str, overwrite: bool = False) -> str:
    """Folds the adapter into `base` (a leanvision model folder or Hub id) and saves a plain model folder with its
    processor to `out_dir`, ready for `leanvision export` (written to a temporary folder, renamed at the end)."""
    from .families import get_family

    if os.path.exists(out_dir) and not overwrite:
        raise ValueError(f"output folder {out_dir!r} exists; pass overwrite=True (--overwrite) to replace it")
    family = get_family(read_adapter_record(adapter_dir)["family"])
    model = load_adapter_model(base, adapter_dir).merge_and_unload()
    # An exported base names its remote code, which the merged folder does not hold (`export` adds it back).
    for key in ("auto_map", "custom_pipelines"):
        if hasattr(model.config, key):
            delattr(model.config, key)
    has_processor = any(os.path.isfile(os.path.join(adapter_dir, name)) for name in PROCESSOR_FILES)
    processor = family.load_processor(adapter_dir if has_processor else base)
    with staged_folder(out_dir) as tmp_dir:
        model.save_pretrained(tmp_dir)
        processor.save_pretrained(tmp_dir)
        metrics = os.path.join(adapter_dir, "eval_results.json")
        if os.path.isfile(metrics):
            shutil.copy(metrics, tmp_dir)
    return out_dir
