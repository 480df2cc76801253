"""The job spec: pydantic models of the YAML a user writes, and one loader that checks it all.

Every mistake is reported before any work starts, as one line that names the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nas.errors import SpecError
from nas.hardware import HardwareTargetSpec
from search_spaces import ConfigError, SearchSpace, get_space, space_type
from workers.datasets import (
    DatasetError,
    check_options,
    dataset_names,
    generated_dataset_names,
    load_dataset,
)

#: Metrics a subnet is measured on; latency depends on a hardware target (``latency_ms@cpu``).
METRICS = {"accuracy": "max", "macs": "min", "params": "min", "latency_ms": "min"}
TARGET_METRICS = {"latency_ms"}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SearchSpaceSpec(Strict):
    name: str
    #: Narrow dimensions: ``{pattern: allowed values}``, e.g. ``{"kernel.*": [3, 5]}``.
    choices: dict[str, list[int]] = Field(default_factory=dict)
    #: The space's own constructor options, e.g. ``{"width_mult": 0.5}`` for ``mobilenetv3``
    #: (the dataset's sample shape and class count are set from the data, not here).
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("options")
    @classmethod
    def not_data_sized(cls, options: dict[str, Any]) -> dict[str, Any]:
        sized = sorted({"input_shape", "input_length", "num_classes", "choices"} & set(options))
        if sized:
            raise ValueError(
                f"option '{sized[0]}' is set from the dataset (or by 'choices'), not in options"
            )
        return options


class DatasetSpec(Strict):
    #: ``mnist1d``, ``digits``, ``image_folder`` (needs ``path``) or ``tensors`` (needs
    #: ``source``).
    name: str
    #: ``image_folder``: a directory of class subfolders (or ``train/`` and ``test/`` of them).
    path: str | None = None
    #: ``tensors``: ``package.module:function`` returning ``(x, y)`` or
    #: ``(x_train, y_train, x_test, y_test)``.
    source: str | None = None
    #: ``image_folder``: resize every image to this square size; ``digits``: serve the 8x8
    #: digits as one-channel images of this size instead of flat vectors of 64.
    image_size: int | None = Field(None, ge=1, le=4096)
    val_fraction: float = Field(0.2, gt=0.0, lt=0.5)
    #: Generated datasets only: validate on this many fresh samples instead of ``val_fraction``
    #: of the training split (ranking subnets needs a large validation set; generating is free).
    val_samples: int | None = Field(None, ge=100, le=100_000)
    split_seed: int = 0

    @field_validator("name")
    @classmethod
    def known(cls, name: str) -> str:
        if name not in dataset_names():
            raise ValueError(f"unknown dataset '{name}'; available: {', '.join(dataset_names())}")
        return name

    @model_validator(mode="after")
    def options_fit_the_dataset(self) -> DatasetSpec:
        try:
            check_options(
                self.name, {"path": self.path, "source": self.source, "image_size": self.image_size}
            )
        except DatasetError as error:
            raise ValueError(str(error)) from None
        return self

    @model_validator(mode="after")
    def generated_if_val_samples(self) -> DatasetSpec:
        if self.val_samples is not None and self.name not in generated_dataset_names():
            raise ValueError(
                f"val_samples needs a generated dataset ({', '.join(generated_dataset_names())}),"
                f" not '{self.name}'"
            )
        return self


class OptimizerSpec(Strict):
    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(0.01, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)


class RangeSpec(Strict):
    """Where a tuned hyperparameter is sampled: a float range (``log`` for scale-free ones such
    as a learning rate) or a list of ``choices``."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[int] | None = None

    @model_validator(mode="after")
    def range_or_choices(self) -> RangeSpec:
        if (self.choices is None) == (self.low is None or self.high is None):
            raise ValueError("give either 'low' and 'high' or 'choices'")
        if self.choices is None and not 0 < self.low < self.high:  # type: ignore[operator]
            raise ValueError(f"need 0 < low < high, got low={self.low}, high={self.high}")
        if self.choices is not None and not self.choices:
            raise ValueError("'choices' must not be empty")
        return self


#: What ``training.tune`` may vary between supernet training runs.
TUNABLE = {"lr", "weight_decay", "batch_size", "random_subnets"}


class EarlyStoppingSpec(Strict):
    """The learning-curve stopping rule (``nas.predictors.curves.StoppingRule``): at epochs
    ``min_epochs * rung_factor ** i`` stop a run out of the best ``rung_keep`` of the runs so
    far (at least ``fallback_peers``) there; and, from epoch ``model_from`` on, stop a run when
    P(its final score ends above the ``k``-th best finished run's, less ``tolerance``) has
    stayed below ``threshold * (1 - decay * epoch / epochs)`` for ``patience`` epochs. Before
    ``min_finished`` runs have finished (the predictor needs them) the probability gives way
    to ranks: a run stops when it is out of the best ``fallback_keep`` of the runs so far for
    ``patience`` epochs; at 1, the default, only the rungs stop it then. Defaults are
    ``StoppingRule``'s."""

    k: int = Field(3, ge=1)
    tolerance: float = Field(0.002, ge=0.0)
    threshold: float = Field(0.015, ge=0.0, le=1.0)
    patience: int = Field(2, ge=1)
    min_epochs: int = Field(1, ge=1)
    model_from: int = Field(5, ge=1)
    min_finished: int = Field(5, ge=2)
    fallback_keep: float = Field(1.0, gt=0.0, le=1.0)
    fallback_peers: int = Field(5, ge=1)
    decay: float = Field(1.0, ge=0.0, le=1.0)
    rung_factor: float = Field(4.0, gt=1.0)
    rung_keep: float = Field(0.5, gt=0.0, le=1.0)


class TrainingSpec(Strict):
    epochs: int = Field(gt=0)
    batch_size: int = Field(128, ge=2)
    optimizer: OptimizerSpec = OptimizerSpec()
    #: The sandwich rule: largest, smallest and ``random_subnets`` random subnets per step.
    sampling: Literal["sandwich"] = "sandwich"
    random_subnets: int = Field(2, ge=0)
    distillation: Literal["inplace", "none"] = "inplace"
    #: CPUs of each training process (its torch threads).
    cpus: int = Field(1, ge=1)
    #: Where the supernet trains; ``cuda`` asks Ray for one GPU and trains with bf16 autocast
    #: (channels-last for images).
    device: Literal["cpu", "cuda"] = "cpu"
    #: Compile each elastic block with ``torch.compile`` (dynamic sizes); off by default.
    compile: bool = False
    #: Data-parallel training processes (Ray Train workers, gloo on CPUs, NCCL on GPUs); one
    #: trains in a plain Ray actor. Each takes ``batch_size / workers`` rows of every batch.
    workers: int = Field(1, ge=1)
    #: Each process's Ray resources besides its ``cpus`` and, with ``device: cuda``, its one
    #: GPU: custom resources that route training to matching nodes, e.g. ``{trainer_node: 1}``.
    resources_per_worker: dict[str, float] = Field(default_factory=dict)
    #: Supernet training runs; with more than one, each samples ``tune`` with Optuna's
    #: ``sampler`` and the best finished run's supernet is profiled and searched.
    trials: int = Field(1, ge=1)
    tune: dict[str, RangeSpec] = Field(default_factory=dict)
    sampler: Literal["tpe", "random"] = "tpe"
    early_stopping: EarlyStoppingSpec | None = None

    @field_validator("resources_per_worker")
    @classmethod
    def resources_valid(cls, resources: dict[str, float]) -> dict[str, float]:
        for name, amount in resources.items():
            if name == "CPU":
                raise ValueError("give the CPUs of each worker as 'cpus', not in resources")
            if name == "GPU":
                raise ValueError("set 'device: cuda' instead: each worker then takes one GPU")
            if amount < 0:
                raise ValueError(f"resource {name}={amount} must not be negative")
        return resources

    def worker_resources(self) -> dict[str, float]:
        """Each training process's Ray resources: ``{"CPU": cpus, "GPU": 1 on cuda, ...}``."""
        gpu = {"GPU": 1.0} if self.device == "cuda" else {}
        return {"CPU": self.cpus, **gpu, **self.resources_per_worker}

    @model_validator(mode="after")
    def batch_covers_workers(self) -> TrainingSpec:
        if self.batch_size < self.workers:
            raise ValueError(
                f"batch_size={self.batch_size} must give each of the {self.workers} workers a row"
            )
        return self

    @model_validator(mode="after")
    def tune_known(self) -> TrainingSpec:
        unknown = sorted(set(self.tune) - TUNABLE)
        if unknown:
            raise ValueError(f"cannot tune '{unknown[0]}'; tunable: {', '.join(sorted(TUNABLE))}")
        if self.trials > 1 and not self.tune:
            raise ValueError(f"trials={self.trials} needs 'tune': runs would all be the same")
        return self


class ConstraintSpec(Strict):
    metric: str
    max: float | None = None
    min: float | None = None

    @model_validator(mode="after")
    def has_bound(self) -> ConstraintSpec:
        if self.max is None and self.min is None:
            raise ValueError(f"constraint on '{self.metric}' needs 'max' or 'min'")
        return self


class SearchSpec(Strict):
    #: ``predictive``: NSGA-II on fitted predictors, measuring ``batch`` subnets per iteration
    #: until ``budget`` real evaluations are spent; ``nsga2``: NSGA-II measuring every candidate.
    strategy: Literal["predictive", "nsga2"] = "predictive"
    #: Random subnets, spread over sizes, measured before the search (they also seed its first
    #: population).
    profile_samples: int = Field(16, ge=0)
    #: Real evaluations in all, the profiled subnets included (``predictive`` only).
    budget: int = Field(96, ge=2)
    #: Subnets measured per iteration (``predictive`` only). Smaller batches refit the
    #: predictors more often and reach a front in fewer evaluations (see the README's search
    #: efficiency figures); larger ones keep more evaluators busy at once.
    batch: int = Field(4, ge=1)
    #: NSGA-II's population and generations: on predictions for ``predictive`` (cheap, so
    #: large), on real measurements for ``nsga2``.
    population: int = Field(64, ge=4)
    generations: int = Field(40, ge=1)
    evaluators: int = Field(2, ge=1)

    @model_validator(mode="after")
    def budget_covers_profile(self) -> SearchSpec:
        if self.strategy == "predictive" and self.budget < self.profile_samples + 2:
            raise ValueError(
                f"budget={self.budget} must cover the {self.profile_samples + 2} profiled subnets"
                " (profile_samples plus the largest and the smallest)"
            )
        return self


class JobSpec(Strict):
    #: Stored in a 255-character column, shown in tables: printable text only.
    name: str = Field(min_length=1, max_length=255)
    seed: int = 0
    search_space: SearchSpaceSpec
    dataset: DatasetSpec
    training: TrainingSpec
    hardware_targets: list[HardwareTargetSpec] = Field(min_length=1)
    #: Accuracy, then one or two costs (``macs``, ``params`` or ``latency_ms@TARGET``).
    objectives: list[str] = Field(default=["accuracy", "macs"], min_length=2, max_length=3)
    constraints: list[ConstraintSpec] = Field(default_factory=list)
    search: SearchSpec = SearchSpec()

    @field_validator("name")
    @classmethod
    def printable(cls, name: str) -> str:
        if not name.isprintable():
            raise ValueError(f"name {name!r} must be printable text (no control characters)")
        return name

    @model_validator(mode="after")
    def consistent(self) -> JobSpec:
        names = [t.name for t in self.hardware_targets]
        if len(set(names)) != len(names):
            raise ValueError(f"hardware target names must be unique, got {names}")
        for key in [*self.objectives, *(c.metric for c in self.constraints)]:
            check_metric_key(key, names)
        costs = self.objectives[1:]
        if self.objectives[0] != "accuracy" or "accuracy" in costs or len(set(costs)) < len(costs):
            raise ValueError(
                f"objectives must be ['accuracy', COST] or ['accuracy', COST, OTHER_COST],"
                f" got {self.objectives}"
            )
        return self

    def space(self) -> SearchSpace:
        """The search space, narrowed by ``choices``, sized for the dataset's samples."""
        splits = load_dataset(**self.dataset_kwargs())
        name = self.search_space.name
        sized = space_type(name).data_kwargs(splits.input_shape, splits.num_classes)
        return get_space(
            name, **sized, **self.search_space.options, choices=self.search_space.choices
        )

    def dataset_kwargs(self) -> dict[str, Any]:
        """``load_dataset``'s arguments; options the dataset does not take are left out, so
        that the cache key of a dataset does not change with the spec's version."""
        data = self.dataset.model_dump()
        return {k: v for k, v in data.items() if v is not None or k == "val_samples"}

    def target(self, name: str) -> HardwareTargetSpec:
        return next(t for t in self.hardware_targets if t.name == name)


def directions(keys: list[str]) -> list[str]:
    """``"max"`` or ``"min"`` for each metric key (``latency_ms@cpu`` is minimised)."""
    return [METRICS[key.partition("@")[0]] for key in keys]


def check_metric_key(key: str, targets: list[str]) -> None:
    """``accuracy``, ``macs``, ``params`` or ``latency_ms@TARGET`` with a declared target."""
    metric, _, target = key.partition("@")
    if metric not in METRICS:
        raise ValueError(f"unknown metric '{metric}'; known: {', '.join(METRICS)}")
    if (metric in TARGET_METRICS) != bool(target):
        hint = f"'{metric}@TARGET'" if metric in TARGET_METRICS else f"'{metric}' without @"
        raise ValueError(f"metric key '{key}' must be written {hint}")
    if target and target not in targets:
        raise ValueError(
            f"metric '{key}' names unknown hardware target '{target}'; declared: {targets}"
        )


def spec_imports(data: Any) -> list[str]:
    """The modules of user code that a spec (parsed YAML/JSON, not yet validated) would import
    by dotted path: a ``tensors`` dataset's ``source``. Validating the spec already imports
    them (it loads the dataset), so ``nas serve`` checks this against its allow-list first.
    """
    dataset = data.get("dataset") if isinstance(data, dict) else None
    if isinstance(dataset, dict) and dataset.get("name") == "tensors":
        source = dataset.get("source")
        if isinstance(source, str):
            return [source.partition(":")[0]]
    return []


def _first_error(error: ValidationError) -> str:
    """One line from pydantic's report: the field path and its message."""
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "spec"
    message = first["msg"].removeprefix("Value error, ")
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{where}: {message}{more}"


def parse_spec(data: Any, source: str = "spec") -> JobSpec:
    """Validate already-parsed YAML/JSON data, including the search space and its choices."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as error:
        raise SpecError(f"{source}: {_first_error(error)}") from None
    try:
        space_type(spec.search_space.name)
    except ConfigError as error:
        raise SpecError(f"{source}: search_space: {error}") from None
    try:
        load_dataset(**spec.dataset_kwargs())
    except DatasetError as error:
        raise SpecError(f"{source}: dataset: {error}") from None
    try:
        space = spec.space()  # sized for the data: the options and choices are checked here
    except ConfigError as error:
        raise SpecError(f"{source}: search_space: {error}") from None
    latency_keys = [
        k
        for k in [*spec.objectives, *(c.metric for c in spec.constraints)]
        if k.partition("@")[0] in TARGET_METRICS
    ]
    if latency_keys and spec.search.strategy == "predictive" and not space.describes_layers():
        raise SpecError(
            f"{source}: objectives/constraints: '{latency_keys[0]}' needs a latency predictor, "
            f"and search space '{space.name}' has no layer table for one; use macs or params, "
            "or search.strategy: nsga2 (which measures every candidate's latency)"
        )
    for i, target in enumerate(spec.hardware_targets):
        try:
            if target.input_shape is not None:
                space.check_input_shape(target.input_shape)
        except ConfigError as error:
            raise SpecError(f"{source}: hardware_targets.{i}.input_shape: {error}") from None
    return spec


def load_spec(path: str | Path) -> JobSpec:
    """Read and validate a YAML job spec file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise SpecError(f"cannot read spec {path}: {error.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "invalid YAML"
        raise SpecError(f"{path}: malformed YAML{where}: {problem}") from None
    return parse_spec(data, str(path))
