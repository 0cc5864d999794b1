"""Recipes: YAML files describing data, pre-training steps and evaluation.

Loading goes: YAML (with line numbers) -> ``extends`` merge -> ``--set`` overrides ->
``defaults`` merged into each step -> pydantic validation -> each component's own
argument model -> cross-references. Every problem found is reported at once, as
``file:line key.path: message``, before anything trains.
"""

from __future__ import annotations

import copy
import os
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
import yaml
from pydantic import AllowInfNan, BaseModel, BeforeValidator, ConfigDict, Field

from sslmed.core.errors import RecipeError, UsageError
from sslmed.core.registry import Nested, Registry, close_matches, nested_specs

Loc = tuple[str | int, ...]

#: YAML nesting deeper than this is refused (recipes nest about 5 levels)
MAX_YAML_DEPTH = 64
#: a YAML document whose aliases expand to more nodes than this is refused
MAX_YAML_NODES = 100_000
#: the keys a recipe file may have at its top level
RECIPE_KEYS = ("name", "description", "data_root", "data", "defaults", "steps", "evaluation", "extends")


def looks_like_path(value: str) -> bool:
    """True for an ``init_from`` value meant as a path (not as a step name of the recipe)."""
    return "/" in value or "\\" in value or value.endswith((".safetensors", ".json")) or value.startswith("~")


def _not_bool(value: Any) -> Any:
    # YAML reads `true`/`yes`/`on` as booleans, and Python's bool is an int: refuse it
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got the boolean {str(value).lower()}")
    return value


#: an integer that is not a boolean
Int = Annotated[int, BeforeValidator(_not_bool)]
#: a finite float (no .inf/.nan) that is not a boolean
Float = Annotated[float, BeforeValidator(_not_bool), AllowInfNan(False)]


def _folder_name(value: str) -> str:
    """Names that become folders (recipe, step) must stay inside their parent folder."""
    if value.startswith(".") or len(value) > 100:
        raise ValueError("must be a folder name of at most 100 characters, not starting with '.'")
    return value


#: letters, digits, ``_ . -``; not starting with a dot (no ``.``, ``..`` or hidden folders)
FolderName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$"), pydantic.AfterValidator(_folder_name)]

_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")


def _file_name(value: str) -> str:
    """Data names become file names in a run folder (``splits/<name>.csv``): no path, ever."""
    if not _FILE_NAME.match(value):
        raise ValueError(
            f"data name {value!r} becomes a file name: use letters, digits and '_ . -' "
            "(at most 100, not starting with '.' or '-'), no '/' or '..'"
        )
    return value


#: a data section's key: it names files in the run folder (``RunDir.split_file``), so it is a name
DataName = Annotated[str, pydantic.AfterValidator(_file_name)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ComponentSpec(BaseModel):
    """``{name: <component>, <its arguments>...}``; arguments checked by the component."""

    model_config = ConfigDict(extra="allow")
    name: str

    def spec(self) -> dict[str, Any]:
        """The spec as a plain dict, as given to :meth:`Registry.build`."""
        return self.model_dump()


class OptimizerSettings(_Strict):
    """The optimiser of one step."""

    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: Float = Field(1e-3, gt=0)
    weight_decay: Float = Field(1e-4, ge=0)
    momentum: Float = Field(0.9, ge=0, le=1, description="sgd only")


class ScheduleSettings(_Strict):
    """The learning-rate schedule of one step (stepped once per batch)."""

    name: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: Float = Field(0.0, ge=0)


class ReconstructionSettings(_Strict):
    """Reconstruction added to any objective: a decoder rebuilds the clean global views
    (before erasing) from their last feature maps; loss = objective + weight · pixel loss."""

    decoder: Annotated[ComponentSpec, Nested("decoder")] = Field(
        default_factory=lambda: ComponentSpec(name="resnet_decoder"),
        description="the decoder, a component spec {name: ..., <its arguments>} (see `sslmed list decoder`)",
    )
    weight: Float = Field(1.0, ge=0, description="λ: loss = objective + λ · reconstruction")
    loss: Literal["mse", "l1"] = Field("mse", description="pixel loss between reconstruction and clean view")
    warmup_steps: Int = Field(
        0, ge=0, description="raise λ linearly from 0 over this many optimiser steps (0: full λ from the start)"
    )
    reconstruct: Literal["both", "first"] = Field(
        "both", description="reconstruct both global views, or only the first (cheaper)"
    )


class StepSettings(_Strict):
    """One pre-training step: what trains, on what data, for how long, on what hardware."""

    name: FolderName
    data: str = Field(description="a key of the recipe's data section")
    split: str = Field("train", description="which split of the data to pre-train on")
    init_from: str | None = Field(
        None,
        description="what starts this step's backbone: an earlier step's name, or a path (with a '/') to another "
        "run's backbone export: its step folder or backbone.safetensors (relative to the working folder)",
    )
    backbone: Annotated[ComponentSpec, Nested("backbone")]
    objective: Annotated[ComponentSpec, Nested("objective")]
    augmentations: list[Annotated[ComponentSpec, Nested("augmentation")]] = Field(min_length=1)
    reconstruction: ReconstructionSettings | None = Field(
        None,
        description="add reconstruction to the objective (a decoder and a weight), e.g. {weight: 1.0}; "
        "works with every objective that encodes through SSLMethod.encode",
    )
    image_size: Int = Field(64, ge=8, le=1024)
    in_channels: Literal[1, 3] = 1
    epochs: Int = Field(1, ge=1)
    max_steps: Int = Field(-1, description="stop after this many optimiser steps (-1: no limit)")
    batch_size: Int = Field(64, ge=2)
    num_workers: Int = Field(0, ge=0)
    optimizer: OptimizerSettings = OptimizerSettings()
    schedule: ScheduleSettings = ScheduleSettings()
    seed: Int = 0
    accelerator: str = "auto"
    devices: int | str | list[int] = 1
    strategy: str = "auto"
    num_nodes: Int = Field(1, ge=1)
    precision: str = "32-true"
    sync_batchnorm: bool = False
    log_every_n_steps: Int = Field(10, ge=1)
    checkpoint_every_n_steps: Int | None = Field(
        50,
        ge=1,
        description="no longer used (kept so older recipes load): checkpoints are written at the end of every "
        "epoch, where resume is exact",
    )
    keep_checkpoints: bool = Field(
        False,
        description="keep the step's Lightning checkpoints after it finished (they resume an unfinished step only; "
        "the exported backbone is kept either way)",
    )
    snapshot_every_n_epochs: Int | None = Field(
        None,
        ge=1,
        description="also export the backbone at the end of every N-th epoch, to steps/<name>/snapshots/epoch<E>/ "
        "(each a backbone export that init_from and `sslmed eval` take): probe them to see accuracy against images "
        "seen",
    )
    cache: str = Field(
        "auto",
        min_length=1,
        description="decode-once image cache: auto (on for file-based data of 4,000+ images), on, off, or a folder "
        "to keep it in (default folder: $SSLMED_CACHE_DIR or ~/.cache/sslmed)",
    )

    @pydantic.field_validator("cache", mode="before")
    @classmethod
    def _cache_words(cls, value: Any) -> Any:
        if isinstance(value, bool):  # YAML reads a bare on/off as true/false
            return "on" if value else "off"
        return value

    augment_on: Literal["auto", "device", "cpu"] = Field(
        "auto",
        description="where the augmentations run: device (batched on the training device, from uint8 batches), "
        "cpu (per image in the loader workers), auto (device on a GPU, else cpu)",
    )


class SupervisedSettings(_Strict):
    """The supervised-from-scratch reference: same backbone, trained on the labels.

    With a validation split it is trained to convergence there: at most ``epochs``,
    stopped after ``patience`` epochs without a better validation balanced accuracy, the
    best epoch's weights scored on the test split (the fine-tuning machinery with the
    whole network at one learning rate). Without one, exactly ``epochs``."""

    epochs: Int = Field(30, ge=1, description="at most this many epochs (early stopping on validation may end sooner)")
    batch_size: Int = Field(64, ge=2)
    lr: Float = Field(1e-3, gt=0)
    max_steps: Int = -1
    patience: Int = Field(5, ge=1, description="epochs without a better validation balanced accuracy before stopping")


class FineTuneSettings(_Strict):
    """Fine-tuning evaluation: backbone + head end to end, for the pre-trained backbone and the
    same network from random init, early-stopped on the validation split."""

    epochs: Int = Field(10, ge=1, description="at most this many epochs (early stopping may end sooner)")
    max_steps: Int = Field(-1, description="stop after this many optimiser steps (-1: no limit)")
    batch_size: Int = Field(64, ge=2)
    lr: Float = Field(1e-3, gt=0, description="the head's learning rate")
    backbone_lr_ratio: Float = Field(0.1, gt=0, le=1, description="the backbone's learning rate, as a fraction of lr")
    weight_decay: Float = Field(1e-4, ge=0)
    patience: Int = Field(3, ge=1, description="epochs without a better validation balanced accuracy before stopping")
    min_scale: Float = Field(0.6, gt=0, le=1, description="random-resized-crop scale of the training images")
    label_fractions: list[Float] | None = Field(
        None, description="fractions of the training labels fine-tuned on (default: the evaluation's label_fractions)"
    )

    @pydantic.field_validator("label_fractions")
    @classmethod
    def _fractions_in_range(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and (not value or any(not 0 < f <= 1 for f in value)):
            raise ValueError("each label fraction must be in (0, 1], and at least one is needed")
        return value


class EvaluationSettings(_Strict):
    """Frozen-feature probes on a labelled train/test split, with reference rows."""

    data: str = Field(description="a key of the recipe's data section, with labels")
    step: str | None = Field(None, description="the step whose backbone is probed (default: the last)")
    train_split: str = "train"
    test_split: str = "test"
    probes: list[Literal["linear", "knn"]] = ["linear", "knn"]
    label_fractions: list[Float] = [1.0]
    baselines: list[Literal["random_init", "raw_pixels", "supervised"]] = ["random_init", "supervised"]
    supervised: SupervisedSettings = SupervisedSettings()
    finetune: FineTuneSettings | None = Field(
        None,
        description="also fine-tune end to end (pre-trained vs random init), at every label fraction "
        "(or at finetune.label_fractions)",
    )
    class_weight: Literal["balanced", "none"] = Field(
        "balanced",
        description="how the linear probes, fine-tuning and the supervised reference weight the classes: "
        "'balanced' (each class in inverse proportion to its training images, as scikit-learn's "
        "class_weight='balanced') or 'none' (every image alike); kNN is never weighted",
    )
    knn_k: Int = Field(20, ge=1)
    batch_size: Int = Field(128, ge=1)
    seed: Int = 0
    trust: bool = Field(
        True,
        description="calibrate the exported linear probe and fit its out-of-distribution score "
        "(multi-class); off for experiment grids whose models are never served",
    )
    export: Literal["linear", "fine-tuned"] = Field(
        "linear",
        description="the classifier written to the run's model/ (what sslmed serve, predict and export use): "
        "'linear', the linear probe on the frozen pre-trained backbone with all training labels; or "
        "'fine-tuned', the network fine-tuned end to end with all training labels (the finetune "
        "settings; needs a validation split), its calibration and out-of-distribution check "
        "fitted as for 'linear'",
    )

    @pydantic.field_validator("label_fractions")
    @classmethod
    def _fractions_in_range(cls, value: list[float]) -> list[float]:
        for fraction in value:
            if not 0 < fraction <= 1:
                raise ValueError(f"each label fraction must be in (0, 1], got {fraction}")
        return value

    @pydantic.model_validator(mode="after")
    def _fine_tuned_export_needs_finetuning(self) -> EvaluationSettings:
        if self.export == "fine-tuned" and self.finetune is None:
            raise ValueError(
                "export: 'fine-tuned' needs a finetune section (e.g. finetune: {epochs: 4}), "
                "whose settings train the exported model"
            )
        return self


class Recipe(_Strict):
    """A whole recipe."""

    name: FolderName
    description: str = ""
    data_root: str | None = Field(None, description="where relative data paths start")
    data: dict[DataName, Annotated[ComponentSpec, Nested("dataset")]]
    steps: list[StepSettings] = Field(min_length=1)
    evaluation: EvaluationSettings | None = None

    def step(self, name: str) -> StepSettings:
        """The step called ``name``."""
        for step in self.steps:
            if step.name == name:
                return step
        raise UsageError(f"no step {name!r} in recipe {self.name!r}")

    def probed_step(self) -> StepSettings:
        """The step whose backbone the evaluation probes."""
        if self.evaluation and self.evaluation.step:
            return self.step(self.evaluation.step)
        return self.steps[-1]


# --------------------------------------------------------------------------- YAML


class _LineMap:
    """Where each key path of a recipe came from: ``(file, line)``."""

    def __init__(self) -> None:
        self.where: dict[Loc, tuple[str, int]] = {}

    def record(self, node: yaml.Node, source: str, loc: Loc = ()) -> None:
        self.where[loc] = (source, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                loc_key = loc + (key_node.value,)
                self.record(value_node, source, loc_key)
                self.where[loc_key] = (source, key_node.start_mark.line + 1)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self.record(item, source, loc + (index,))

    def override(self, loc: Loc, text: str) -> None:
        """``--set`` gave the value at ``loc``: problems there point at it, not at the file."""
        for known in [k for k in self.where if k[: len(loc)] == loc]:
            del self.where[known]
        self.where[loc] = (f"--set {text}", 0)

    def lookup(self, loc: Loc) -> tuple[str, int] | None:
        for end in range(len(loc), -1, -1):
            if loc[:end] in self.where:
                return self.where[loc[:end]]
        return None


class YamlLimitError(yaml.MarkedYAMLError):  # type: ignore[misc]  # PyYAML ships no types
    """YAML that parses but is refused: too deep, aliases expanding without bound, a key twice."""


class _RecipeLoader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML ships no types
    """PyYAML's safe loader with limits for files nobody should trust blindly.

    Nesting deeper than :data:`MAX_YAML_DEPTH` and aliases that expand to more than
    :data:`MAX_YAML_NODES` nodes (the "billion laughs" shape) or refer to themselves
    are refused before anything is built; a key given twice in one mapping is an error
    instead of silently keeping the last.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise YamlLimitError(None, None, f"nested more than {MAX_YAML_DEPTH} levels deep", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _value in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key: SafeLoader reports it below
                continue
            if first != key_node.start_mark.line + 1:
                raise YamlLimitError(
                    None, None, f"key {key!r} is given twice (first on line {first})", key_node.start_mark
                )
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping


def _check_expansion(node: yaml.Node) -> None:
    """Refuse alias graphs that refer to themselves or expand beyond :data:`MAX_YAML_NODES`.

    Sizes are memoised per node, so the check itself stays linear in the file.
    """
    sizes: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(node, False)]
    while stack:  # iterative post-order walk: no recursion limit to hit
        current, done = stack.pop()
        key = id(current)
        if done:
            children = _children(current)
            sizes[key] = 1 + sum(sizes[id(child)] for child in children)
            active.discard(key)
            if sizes[key] > MAX_YAML_NODES:
                raise YamlLimitError(
                    None,
                    None,
                    f"aliases expand to more than {MAX_YAML_NODES:,} values; a recipe needs far fewer",
                    current.start_mark,
                )
            continue
        if key in sizes:
            continue
        if key in active:
            raise YamlLimitError(None, None, "an alias refers to itself", current.start_mark)
        active.add(key)
        stack.append((current, True))
        stack.extend((child, False) for child in _children(current) if id(child) not in sizes)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def safe_yaml(text: str) -> tuple[Any, yaml.Node | None]:
    """Parse one YAML document with the limits of :class:`_RecipeLoader`: ``(data, node)``.

    Raises ``yaml.YAMLError`` (with a ``problem_mark`` where the problem is).
    """
    loader = _RecipeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        _check_expansion(node)
        return loader.construct_document(node), node
    finally:
        loader.dispose()


def _yaml_problem(exc: yaml.YAMLError) -> str:
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    return f"{context}, {problem}" if context and "found" in problem else problem


def _read_yaml(path: Path, lines: _LineMap) -> dict[str, Any]:
    if not path.is_file():
        raise UsageError(f"recipe file not found: {path}")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"recipe file cannot be read: {path} ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise RecipeError(
            [f"{path}:{line}: not a text file (byte {exc.start} is not UTF-8): a recipe is YAML text"]
        ) from None
    try:
        data, node = safe_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise RecipeError([f"{where}: invalid YAML: {_yaml_problem(exc)}"]) from None
    except RecursionError:  # a limit above was not enough for this Python's stack
        raise RecipeError([f"{path}: invalid YAML: nested too deeply"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError([f"{path}:1: a recipe must be a mapping of keys, not {type(data).__name__}"])
    if data and not any(key in data for key in RECIPE_KEYS):
        # say so once instead of echoing every line of some other file as an unknown key
        raise RecipeError(
            [
                f"{path}:1: not an sslmed recipe: none of its {len(data)} top-level keys is a recipe key "
                f"({', '.join(RECIPE_KEYS)})"
            ]
        )
    if node is not None:
        lines.record(node, str(path))
    return data


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``: mappings merge key by key, anything else replaces."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _load_with_extends(path: Path, lines: _LineMap, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in seen + (path,))
        raise RecipeError([f"{path}: 'extends' makes a cycle: {chain}"])
    own_lines = _LineMap()
    data = _read_yaml(path, own_lines)
    parent = data.pop("extends", None)
    if parent is None:
        lines.where.update(own_lines.where)
        return data
    if not isinstance(parent, str):
        raise RecipeError([f"{path}: 'extends' must be a path to another recipe"])
    base = _load_with_extends(path.parent / parent, lines, seen + (path,))
    lines.where.update(own_lines.where)  # the child's lines win where both define a key
    return deep_merge(base, data)


def parse_override(text: str) -> tuple[list[str | int], Any]:
    """``"steps.0.epochs=2"`` -> ``(["steps", 0, "epochs"], 2)``; values parse as YAML."""
    if "=" not in text:
        raise UsageError(f"--set expects KEY=VALUE (e.g. steps.0.epochs=2), got {text!r}")
    key, raw = text.split("=", 1)
    parts: list[str | int] = [int(p) if p.isdigit() else p for p in key.strip().split(".")]
    if not key.strip() or any(p == "" for p in parts):
        raise UsageError(f"--set has an empty key in {text!r}")
    try:
        value = safe_yaml(raw)[0] if raw.strip() else ""
    except YamlLimitError as exc:
        raise UsageError(f"--set {key.strip()}: the value is refused: {exc.problem}") from None
    except yaml.YAMLError:
        value = raw  # not YAML: the text itself
    except RecursionError:
        raise UsageError(f"--set {key.strip()}: the value is nested too deeply") from None
    return parts, value


def apply_override(data: dict[str, Any], text: str) -> None:
    """Set one ``KEY=VALUE`` in the raw recipe, creating mappings on the way."""
    parts, value = parse_override(text)
    node: Any = data
    for depth, part in enumerate(parts[:-1]):
        where = ".".join(str(p) for p in parts[: depth + 1])
        if isinstance(node, list):
            if not isinstance(part, int) or part >= len(node):
                raise UsageError(f"--set {text}: {where} is not an item of a list of {len(node)}")
            node = node[part]
        elif isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            raise UsageError(f"--set {text}: {where} is not a mapping or list")
    last = parts[-1]
    if isinstance(node, list):
        if not isinstance(last, int) or last >= len(node):
            raise UsageError(f"--set {text}: index {last} is out of range (list of {len(node)})")
        node[last] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise UsageError(f"--set {text}: cannot set a key inside a {type(node).__name__}")


def _apply_defaults(data: dict[str, Any], lines: _LineMap) -> None:
    """Merge ``defaults`` into each step; inherited keys keep the defaults' line numbers."""
    defaults = data.pop("defaults", None) or {}
    if not isinstance(defaults, dict):
        return
    steps = data.get("steps")
    if not isinstance(steps, list):
        return
    inherited = {loc[1:]: where for loc, where in lines.where.items() if loc[:1] == ("defaults",) and len(loc) > 1}
    for index, step in enumerate(steps):
        if not isinstance(step, dict):
            continue
        for tail, where in inherited.items():
            lines.where.setdefault(("steps", index) + tail, where)
        steps[index] = deep_merge(defaults, step)


# --------------------------------------------------------------------- validation


def format_loc(loc: Loc) -> str:
    """``("steps", 1, "objective", "lr")`` -> ``steps[1].objective.lr``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _model_at(model: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The pydantic model that holds the key at ``loc`` (for 'did you mean')."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        current = _unwrap(field.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    for arg in typing.get_args(annotation) or ():
        inner = _unwrap(arg)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            return inner
    return annotation


def _describe(error: Mapping[str, Any], model: type[BaseModel], prefix: Loc) -> tuple[Loc, str]:
    loc = prefix + tuple(error["loc"])
    if error["type"] == "extra_forbidden":
        owner = _model_at(model, tuple(error["loc"])[:-1])
        valid = list(owner.model_fields) if owner else []
        hint = close_matches(str(loc[-1]), valid)
        message = "unknown key"
        if hint:
            message += f"; did you mean {' or '.join(hint)}?"
        elif valid:
            message += f" (valid keys: {', '.join(valid)})"
        return loc, message
    if error["type"] == "missing":
        return loc, "required key is missing"
    return loc, error["msg"] + (
        f" (got {error['input']!r})" if not isinstance(error.get("input"), dict) and "input" in error else ""
    )


class _Problems:
    def __init__(self, lines: _LineMap, source: str) -> None:
        self.lines = lines
        self.source = source
        self.items: list[tuple[str, int, str]] = []

    def add(self, loc: Loc, message: str) -> None:
        where = self.lines.lookup(loc)
        file, line = where if where else (self.source, 0)
        key = format_loc(loc)
        place = f"{file}:{line}" if line else file  # line 0: not from a file (--set)
        self.items.append((file, line, f"{place} {key}: {message}" if key else f"{place} {message}"))

    def raise_if_any(self) -> None:
        if self.items:
            ordered = [text for _, _, text in sorted(self.items, key=lambda i: (i[0], i[1]))]
            raise RecipeError(ordered, source=self.source)


def _check_component(problems: _Problems, registry: Registry, kind: str, raw: Any, loc: Loc) -> str | None:
    """Validate one component spec, and the components nested in its arguments; returns
    its name if known."""
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        return None  # the enclosing model's pass already reported it
    name: str = raw["name"]
    if name not in registry.names(kind):
        problems.add(loc + ("name",), registry.unknown_message(kind, name))
        return None
    component = registry.get(kind, name)
    args = {k: v for k, v in raw.items() if k != "name"}
    try:
        component.parse_args(args)
    except pydantic.ValidationError as exc:
        for error in exc.errors():
            problems.add(*_describe(error, component.args, loc))
    for marker, spec, where in nested_specs(component.args, args, loc):
        _check_component(problems, registry, marker.kind, spec, where)
    return name


def _check_components(problems: _Problems, registry: Registry, data: dict[str, Any]) -> None:
    for marker, spec, loc in nested_specs(Recipe, data):
        _check_component(problems, registry, marker.kind, spec, loc)
    raw_steps = data.get("steps")
    steps: list[Any] = raw_steps if isinstance(raw_steps, list) else []
    for index, step in enumerate(steps):
        augmentations = step.get("augmentations") if isinstance(step, dict) else None
        if not isinstance(augmentations, list):
            continue
        known = registry.names("augmentation")
        names = [a.get("name") if isinstance(a, dict) else None for a in augmentations]
        if all(isinstance(name, str) and name in known for name in names):
            stages = [registry.get("augmentation", str(name)).metadata.get("stage", "tensor") for name in names]
            if stages.count("views") != 1:
                problems.add(
                    ("steps", index, "augmentations"),
                    "needs exactly one view-making augmentation (stage 'views', e.g. simclr), "
                    f"found {stages.count('views')}",
                )


def _check_references(problems: _Problems, recipe: Recipe) -> None:
    seen: dict[str, int] = {}
    for index, step in enumerate(recipe.steps):
        if step.name in seen:
            problems.add(
                ("steps", index, "name"), f"step name {step.name!r} is already used by steps[{seen[step.name]}]"
            )
        if step.data not in recipe.data:
            hint = close_matches(step.data, list(recipe.data))
            problems.add(
                ("steps", index, "data"),
                f"no data named {step.data!r}"
                + (f"; did you mean {hint[0]!r}?" if hint else f" (defined: {', '.join(recipe.data) or 'none'})"),
            )
        if step.init_from is not None and not (step.init_from not in seen and looks_like_path(step.init_from)):
            # a path is another run's export: found and checked when the run starts (sslmed.training.init_from)
            if step.init_from not in seen:
                earlier = ", ".join(seen) or "none"
                problems.add(
                    ("steps", index, "init_from"),
                    f"{step.init_from!r} is not an earlier step (earlier steps: {earlier}) nor a path "
                    "to a backbone export (e.g. runs/<recipe>/<run>/steps/<step>)",
                )
            else:
                source = recipe.steps[seen[step.init_from]]
                if source.backbone.spec() != step.backbone.spec() or source.in_channels != step.in_channels:
                    problems.add(
                        ("steps", index, "backbone"),
                        f"must match the backbone of step {step.init_from!r} that it starts from "
                        f"({source.backbone.spec()}, in_channels={source.in_channels})",
                    )
        seen.setdefault(step.name, index)
    if recipe.evaluation is not None:
        if recipe.evaluation.data not in recipe.data:
            problems.add(
                ("evaluation", "data"), f"no data named {recipe.evaluation.data!r} (defined: {', '.join(recipe.data)})"
            )
        if recipe.evaluation.step is not None and recipe.evaluation.step not in seen:
            problems.add(("evaluation", "step"), f"no step named {recipe.evaluation.step!r} (steps: {', '.join(seen)})")


def load_raw(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> tuple[dict[str, Any], _LineMap]:
    """The recipe as plain data after ``extends``, overrides and defaults, with its line map."""
    lines = _LineMap()
    data = _load_with_extends(Path(path), lines)
    for text in overrides:
        apply_override(data, text)
        lines.override(tuple(parse_override(text)[0]), text)
    _apply_defaults(data, lines)
    return data, lines


def validate(
    data: dict[str, Any], registry: Registry, lines: _LineMap | None = None, source: str = "<recipe>"
) -> Recipe:
    """Check a raw recipe completely and return the model, or raise every problem."""
    problems = _Problems(lines or _LineMap(), source)
    recipe: Recipe | None = None
    try:
        recipe = Recipe.model_validate(data)
    except pydantic.ValidationError as exc:
        for error in exc.errors():
            problems.add(*_describe(error, Recipe, ()))
    _check_components(problems, registry, data)
    if recipe is not None:
        _check_references(problems, recipe)
    problems.raise_if_any()
    assert recipe is not None
    return recipe


def load_recipe(path: str | Path, registry: Registry, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Load, merge, override and validate a recipe file: the one recipe loader.

    A relative ``data_root`` is made absolute from the recipe's folder; where the recipe
    sets none, :func:`sslmed.app.prepare.load_recipe_file` fills in the default root."""
    data, lines = load_raw(path, overrides)
    recipe = validate(data, registry, lines, source=str(path))
    if recipe.data_root:
        root = Path(os.path.expanduser(recipe.data_root))
        if not root.is_absolute():
            root = Path(path).resolve().parent / root
        recipe = recipe.model_copy(update={"data_root": str(root.resolve())})
    return recipe


def recipe_schema() -> dict[str, Any]:
    """The JSON schema of a recipe (component arguments are per component)."""
    return Recipe.model_json_schema()
