"""`leanvision export`: a flat, Hub-ready folder with safetensors weights, processor files and remote code."""

import ast
import importlib.metadata
import json
import os
import re
import sys

from packaging.requirements import Requirement

from ..training.families import family_of_model_dir, load_saved
from ..training.files import staged_folder
from .cards import EXAMPLE_FILE, example_image, recipe_from_model_dir, render_card

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The package folders whose modules a bundle may ship (flat, so their module names never repeat).
SOURCE_DIRS = ("configuration", "modeling", "processing")
_SIBLING_IMPORT = re.compile(r"^from \.\.(?:configuration|modeling|processing)\.(\w+) import ", re.MULTILINE)
_FORBIDDEN_IMPORT = re.compile(r"^\s*(?:from\s+\.\.|from\s+leanvision\b|import\s+leanvision\b)", re.MULTILINE)
# The Inference Endpoints handler every bundle ships, copied verbatim (see handler.py), and the modules its
# requirements.txt leaves out because the endpoint container (and any transformers user) has them.
HANDLER_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "handler.py")
PROVIDED_MODULES = frozenset({"torch", "transformers"})
REQUIREMENTS_HEADER = (
    "# For Inference Endpoints: the transformers release this code is written for (a container may ship an older\n"
    "# one), then the packages the code imports beyond torch and transformers.\n"
)


def flatten_source(text: str, name: str = "<source>") -> str:
    """Rewrites `from ..modeling.modeling_x import A` into the flat `from .modeling_x import A`."""
    flat = _SIBLING_IMPORT.sub(r"from .\1 import ", text)
    leftover = _FORBIDDEN_IMPORT.search(flat)
    if leftover:
        raise ValueError(f"{name} imports {leftover.group(0).strip()!r}, which a flat remote-code bundle cannot follow")
    return flat


def module_path(name: str) -> str:
    """The package-relative file of the module `name` (e.g. "modeling_dtp_vit" -> "modeling/modeling_dtp_vit.py")."""
    paths = [f"{d}/{name}.py" for d in SOURCE_DIRS if os.path.isfile(os.path.join(PACKAGE_ROOT, d, f"{name}.py"))]
    if len(paths) != 1:
        raise ValueError(f"module {name!r} must be one file of {list(SOURCE_DIRS)}, found {paths}")
    return paths[0]


def relative_imports(relative: str) -> set[str]:
    """The package-relative files of the modules that the file `relative` imports relatively: `from .x import`,
    `from . import x` (its own folder) and `from ..pkg.x import` (a sibling folder)."""
    folder = os.path.dirname(relative)
    with open(os.path.join(PACKAGE_ROOT, relative)) as f:
        tree = ast.parse(f.read(), filename=relative)
    found = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom) or not node.level:
            continue
        if node.level == 1:
            names = [node.module] if node.module else [alias.name for alias in node.names]
            candidates = [f"{folder}/{name.replace('.', '/')}.py" for name in names]
        else:  # `from ..pkg.x import`; other forms are refused by `flatten_source`
            candidates = [f"{node.module.replace('.', '/')}.py"] if node.level == 2 and node.module else []
        found |= {path for path in candidates if os.path.isfile(os.path.join(PACKAGE_ROOT, path))}
    return found


def bundle_sources(family) -> list[str]:
    """The package-relative files an export of `family` ships: the entry modules its `auto_map`,
    `processor_auto_map` and `custom_pipelines` name, and every module they import relatively, transitively."""
    entries = [*family.auto_map.values(), *family.processor_auto_map.values()]
    entries += [pipeline["impl"] for pipeline in family.custom_pipelines.values()]
    pending = [module_path(entry.split(".")[0]) for entry in entries]
    found = set()
    while pending:
        path = pending.pop()
        if path not in found:
            found.add(path)
            pending += relative_imports(path) - found
    names = [os.path.basename(path) for path in found]
    clashes = sorted({name for name in names if names.count(name) > 1})
    if clashes:
        raise ValueError(f"a flat bundle of {family.name} would hold two files named {clashes}")
    return sorted(found)


def imported_modules(paths: list[str]) -> set[str]:
    """The top-level modules that the Python files `paths` import absolutely, without the standard library and the
    files' own modules (a flat bundle imports its siblings relatively)."""
    found = set()
    own = {os.path.basename(path)[:-3] for path in paths}
    for path in sorted(paths):
        with open(path) as f:
            tree = ast.parse(f.read(), filename=os.path.basename(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                found.add(node.module.split(".")[0])
    return found - own - set(sys.stdlib_module_names)


def requirements_of(paths: list[str]) -> list[str]:
    """The distributions (pip names) of the modules the files `paths` import beyond torch and transformers."""
    distributions = importlib.metadata.packages_distributions()
    modules = imported_modules(paths) - PROVIDED_MODULES
    return sorted({distributions.get(module, [module])[0] for module in modules}, key=str.lower)


def bundle_requirements(folder: str) -> list[str]:
    """What the bundle in `folder` needs beyond torch and transformers (its requirements.txt)."""
    return requirements_of([os.path.join(folder, name) for name in os.listdir(folder) if name.endswith(".py")])


def family_requirements(family) -> list[str]:
    """What a bundle of `family` will need beyond torch and transformers, read from the package sources (for the
    card, rendered before the bundle exists)."""
    return requirements_of([os.path.join(PACKAGE_ROOT, path) for path in bundle_sources(family)] + [HANDLER_SOURCE])


def transformers_requirement() -> str:
    """leanvision's own transformers range (pyproject.toml), such as "transformers<6,>=5.24": the bundle's code uses
    transformers 5 APIs, so its requirements.txt pins that range."""
    for line in importlib.metadata.requires("leanvision") or ():
        requirement = Requirement(line)
        if requirement.name == "transformers":
            return str(requirement)
    raise RuntimeError("the installed leanvision metadata declares no transformers requirement")


def write_handler(bundle_dir: str) -> None:
    """Copies handler.py into `bundle_dir` and writes requirements.txt from the imports of every file there."""
    with open(HANDLER_SOURCE) as f:
        text = f.read()
    flatten_source(text, "hub_cards/handler.py")  # refuses any import of the package
    with open(os.path.join(bundle_dir, "handler.py"), "w") as f:
        f.write(text)
    with open(os.path.join(bundle_dir, "requirements.txt"), "w") as f:
        f.write(REQUIREMENTS_HEADER + transformers_requirement() + "\n"
                + "".join(f"{name}\n" for name in bundle_requirements(bundle_dir)))


def add_processor_auto_map(bundle_dir: str, auto_map: dict[str, str]) -> None:
    """Writes `auto_map` (e.g. `{"AutoProcessor": "processing_x.XProcessor"}`) into processor_config.json by hand:
    `register_for_auto_class` would instead copy the package-form processor source next to it."""
    path = os.path.join(bundle_dir, "processor_config.json")
    if not os.path.isfile(path):
        raise ValueError(f"the processor wrote no processor_config.json in {bundle_dir!r}")
    with open(path) as f:
        processor_config = json.load(f)
    processor_config["auto_map"] = dict(auto_map)
    with open(path, "w") as f:
        json.dump(processor_config, f, indent=2, sort_keys=True)
        f.write("\n")


def read_eval_results(model_dir: str) -> dict:
    """Evaluation metrics saved by `train.py` (eval_results.json), if any."""
    path = os.path.join(model_dir, "eval_results.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def write_flat_bundle(out_dir: str, family, model, processor, metrics: dict, card: str, example=None) -> None:
    """Writes the flat bundle of a loaded `family` model into `out_dir` through one staged folder: its remote code
    (`bundle_sources`), the Inference Endpoints handler.py and requirements.txt, config with auto maps, weights,
    processor, `metrics` as eval_results.json, `card` as README.md and the `example` image (PIL), if any, as
    EXAMPLE_FILE (the card's widget and snippets use it)."""
    with staged_folder(out_dir) as tmp_dir:
        if example is not None:
            example.save(os.path.join(tmp_dir, EXAMPLE_FILE))
        for relative in bundle_sources(family):
            with open(os.path.join(PACKAGE_ROOT, relative)) as f:
                text = flatten_source(f.read(), relative)
            with open(os.path.join(tmp_dir, os.path.basename(relative)), "w") as f:
                f.write(text)
        model.config.auto_map = dict(family.auto_map)
        if family.custom_pipelines:
            model.config.custom_pipelines = json.loads(json.dumps(family.custom_pipelines))
        model.save_pretrained(tmp_dir)
        processor.save_pretrained(tmp_dir)
        if family.processor_auto_map:
            add_processor_auto_map(tmp_dir, family.processor_auto_map)
        if metrics:
            with open(os.path.join(tmp_dir, "eval_results.json"), "w") as f:
                json.dump(metrics, f, indent=2)
        with open(os.path.join(tmp_dir, "README.md"), "w") as f:
            f.write(card)
        write_handler(tmp_dir)


def export_model(model_dir: str, out_dir: str, overwrite: bool = False) -> str:
    """Writes the flat bundle of the model saved in `model_dir` to `out_dir` (via a temporary folder and a rename)."""
    family_of_model_dir(model_dir)
    if os.path.exists(out_dir) and not overwrite:
        raise ValueError(f"output folder {out_dir!r} exists; pass overwrite=True (--overwrite) to replace it")
    family, model, processor = load_saved(model_dir)
    metrics = read_eval_results(model_dir)
    example = example_image(model_dir)
    card = render_card(family, model.config, metrics, recipe=recipe_from_model_dir(model_dir),
                       num_parameters=model.num_parameters(), example=EXAMPLE_FILE if example else None,
                       requirements=family_requirements(family))
    write_flat_bundle(out_dir, family, model, processor, metrics, card, example)
    return out_dir
