"""Typed experiment configuration: defaults, one-line validation errors, YAML loading, canonical hash."""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from prunelens.errors import PrunelensError

FORMAT = 2
"""Version of the run layout and seeding scheme; part of every run id (runs of format 1 stay readable)."""
MAX_SEED = 2**32 - 1
NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
"""A run name: one plain file-name component of letters, digits, `.`, `_`, `-` (at most 100 characters)."""
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_VALUES = 100_000
MAX_CONFIG_DEPTH = 32


def _open_unit(value: float) -> float:
    if not 0.0 < value < 1.0:
        raise ValueError("is not in (0, 1)")
    return value


OpenUnit = Annotated[float, AfterValidator(_open_unit)]
"""A fraction strictly between 0 and 1."""


def _plain_name(value: str) -> str:
    if not re.fullmatch(NAME, value):
        raise ValueError("is not a plain name (letters, digits, '.', '_', '-', starting with a letter or digit; at most 100)")
    return value


RunName = Annotated[str, AfterValidator(_plain_name)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True, allow_inf_nan=False)


class DatasetConfig(_Section):
    """Which data, where it lives on disk, and how it is split and augmented."""

    name: str = "shapes"
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seed of the data itself: synthetic images, the val split, the max_train subset")
    root: Path | None = Field(None, description="directory or file with the data (datasets read from disk)")
    image_size: int | None = Field(None, gt=0, le=4096, description="resize (or, for `shapes`, render) to this size")
    val_fraction: OpenUnit = Field(0.1, description="share of train held out as val when a dataset has no val split")
    max_train: int | None = Field(None, gt=0, description="use only the first N (stratified) training images")
    augment: bool = Field(False, description="random crop (padding 4) + horizontal flip, per batch on the device")
    options: dict[str, Any] = Field(default_factory=dict, description="dataset-specific options")


class ModelConfig(_Section):
    """Which network, and optional weights read from a local file."""

    name: str = "conv2"
    weights: Path | None = Field(None, description="state_dict file to load (pretrained weights, torchvision .pth)")
    options: dict[str, Any] = Field(default_factory=dict, description="model-specific options (e.g. depth, width)")


class PruningConfig(_Section):
    """What is prunable, how weights are scored and selected, and the schedule of pruning rounds.

    IMP: `rounds` of `fraction` with `rewind: init|step|pretrained`. One-shot to rate r: `rounds: 1, rate: r`.
    Iterative to rate r in n steps: `rounds: n, rate: r` (fraction per round 1 − (1 − r)^(1/n)). Prune + fine-tune:
    `rewind: none`; retraining settings in the experiment's `retraining` section.
    """

    method: str = Field("magnitude", description="importance score (`prunelens list`)")
    scope: Literal["global", "layerwise", "uniform_plus", "erk"] = Field(
        "global", description="one pooled threshold, the same fraction per tensor, uniform with a dense first layer, or ERK densities"
    )
    granularity: Literal["unstructured", "filters", "channels"] = Field(
        "unstructured", description="single weights, whole output filters/rows, or whole input channels/columns (connection sparsity)"
    )
    norm: float = Field(1.0, gt=0, description="n of the Ln norm that scores a filter or input channel")
    fraction: OpenUnit = Field(0.2, description="fraction of the *remaining* prunable weights removed per round")
    rate: OpenUnit | None = Field(None, description="final pruning rate to reach after `rounds` rounds (sets the per-round fraction)")
    rounds: int = Field(5, ge=0, description="pruning rounds after dense training (not part of the run id)")
    score_iterations: int = Field(1, ge=1, description="prune in this many score→select steps per round (SynFlow: 100)")
    persistent: bool = Field(True, description="keep pruned weights at zero while retraining (False: zero once, as Seuffert & von Rad's code; docs/methods.md §6.4)")
    lr_reset: bool = Field(
        True, description="restart the LR schedule every round (False: continue where the previous round ended; use step/exponential)"
    )
    prune_classifier: bool = True
    include_bias: bool = False
    include_bn: bool = False
    exclude: list[str] = Field(default_factory=list, description="fnmatch patterns of parameter names never pruned")
    layer_fractions: dict[str, OpenUnit] = Field(
        default_factory=dict, description="fnmatch pattern → per-round fraction for matching tensors (pruned on their own)"
    )
    rewind: Literal["init", "step", "pretrained", "none"] = Field(
        "init", description="weights each round restarts from: θ0, θ after `rewind_step` steps, model.weights, or none (fine-tune)"
    )
    rewind_step: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _one_rate(self) -> PruningConfig:
        if self.rate is not None and self.fraction != PruningConfig.model_fields["fraction"].default:
            raise ValueError("set either pruning.fraction (per round) or pruning.rate (final), not both")
        return self

    @property
    def round_fraction(self) -> float:
        """Fraction of the remaining weights removed per round: `fraction`, or derived from `rate`."""
        if self.rate is None:
            return self.fraction
        return 1 - (1 - self.rate) ** (1 / max(self.rounds, 1))

class TrainingConfig(_Section):
    """Optimiser, learning-rate schedule and length of each round's training."""

    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    epochs: int = Field(8, ge=0)
    batch_size: int = Field(128, gt=0)
    eval_batch_size: int = Field(1000, gt=0)
    schedule: Literal["constant", "step", "cosine", "exponential"] = "cosine"
    milestones: list[int] = Field(default_factory=list, description="epochs at which `step` multiplies the LR by gamma")
    gamma: float = Field(0.1, gt=0, description="LR factor: per milestone (step) or per epoch (exponential)")
    warmup_steps: int = Field(0, ge=0, description="linear LR warm-up from 0")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16: autocast forward and loss (weights, masks and optimizer stay fp32)")
    channels_last: bool = Field(False, description="convs in channels-last memory format (faster on GPUs with tensor cores)")
    compile: bool = Field(False, description="torch.compile the model for training")


class LensConfig(_Section):
    """An explanation lens to run on every round; a bare string in YAML means `{name: <string>}`."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data


def _tracking_uri(value: str) -> str:
    scheme = value.partition(":")[0].lower() if ":" in value else ""
    if scheme in ("file", "") or len(scheme) == 1:  # a plain path (or a drive letter) is a file store too
        raise ValueError("MLflow file stores are deprecated in MLflow >= 3.7 and refused from 3.13; use sqlite:///path/to/mlflow.db")
    if scheme == "sqlite" and value.startswith("sqlite:///") and len(value) > len("sqlite:///"):
        return value
    if scheme in ("http", "https") and urlsplit(value).hostname in ("127.0.0.1", "localhost"):
        return value
    raise ValueError("is not sqlite:///PATH or http(s)://127.0.0.1|localhost[:PORT] (a local MLflow tracking server)")


class MlflowConfig(_Section):
    """Where a finished run is logged in MLflow (tracking.py); never changes what is computed."""

    uri: Annotated[str, AfterValidator(_tracking_uri)] = Field(description="sqlite:///PATH or http(s)://127.0.0.1|localhost[:PORT]")
    experiment: str | None = Field(None, min_length=1, max_length=500, description="MLflow experiment (default: the config's name)")


class TrackingConfig(_Section):
    """Experiment trackers the finished run is logged to (not part of the run id)."""

    mlflow: MlflowConfig | None = None


class ExperimentConfig(_Section):
    """A whole experiment; its `run_id` names the run directory."""

    name: RunName = Field("experiment", description="names the run directory <name>-<hash>")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="drives initialisation, data order and every random choice (seeding.py)")
    order_seed: int | None = Field(
        None, ge=0, le=MAX_SEED, description="seed of the SGD noise only: data order, augmentation, dropout (default: seed)"
    )
    device: str = "cpu"
    threads: int | None = Field(None, ge=1, description="CPU threads for torch (default: the cores available ÷ concurrent workers)")
    output_dir: Path = Path("runs")
    dataset: DatasetConfig = DatasetConfig()
    model: ModelConfig = ModelConfig()
    pruning: PruningConfig = PruningConfig()
    training: TrainingConfig = TrainingConfig()
    retraining: TrainingConfig | None = Field(
        None, description="training of pruned rounds; fields not given are taken from `training` (default: same as `training`)"
    )
    lenses: list[LensConfig] = Field(default_factory=list, description="explanation lenses run on every round (not part of the run id)")
    lens_images: int = Field(64, gt=0, le=100_000, description="size of the fixed evaluation batch the lenses explain (first N test images)")
    tracking: TrackingConfig = Field(TrackingConfig(), description="log the finished run to MLflow (not part of the run id)")

    @model_validator(mode="before")
    @classmethod
    def _inherit_retraining(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("retraining"), dict) and isinstance(data.get("training", {}), dict):
            data = {**data, "retraining": {**data.get("training", {}), **data["retraining"]}}
        return data

    @property
    def noise_seed(self) -> int:
        """Seed of the SGD-noise streams (data order, augmentation, dropout)."""
        return self.seed if self.order_seed is None else self.order_seed

    def canonical(self) -> dict[str, Any]:
        """Non-default fields that determine training results (no name, output dir, threads, lenses, tracking or round count)."""
        excluded = {"name", "output_dir", "threads", "lenses", "lens_images", "tracking"}
        data = self.model_dump(mode="json", exclude_defaults=True, exclude=excluded)
        if self.pruning.rate is None:  # with a final rate, the round count changes every round's fraction
            data.get("pruning", {}).pop("rounds", None)
        return {k: v for k, v in data.items() if v != {}}

    @property
    def run_id(self) -> str:
        """Stable hash of `canonical()`: adding a new option with a default keeps old ids valid."""
        return config_hash(self.canonical())

    @property
    def run_dir(self) -> Path:
        return self.output_dir / f"{self.name}-{self.run_id}"

    def with_overrides(self, **sections: dict[str, Any]) -> ExperimentConfig:
        """A copy with some fields replaced, validated again, e.g. `with_overrides(pruning={"rounds": 8})`."""
        data = self.model_dump()
        for key, value in sections.items():
            data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
        return from_dict(data)


def config_hash(canonical: dict[str, Any]) -> str:
    """The run id: a hash of the layout format and the canonical config."""
    text = json.dumps({"format": FORMAT, "config": canonical}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    """`("lenses", 0, "options", "target")` → `lenses[0].options.target`."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out or "config"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def format_error(err: ValidationError, prefix: tuple[Any, ...] = ()) -> str:
    """The first problem of a pydantic error as `<field>: <input>: <message>` on one line."""
    first = err.errors()[0]
    loc = field_path((*prefix, *first["loc"]))
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        return f"{loc}: unknown field"
    if first["type"] == "missing":
        return f"{loc}: required field is missing"
    if isinstance(first["input"], dict):  # a whole-section check
        return f"{loc}: {msg}"
    more = f" (and {len(err.errors()) - 1} more problem(s))" if len(err.errors()) > 1 else ""
    value = _short(first["input"])
    return f"{loc}: {value} {msg}{more}" if msg.startswith("is ") else f"{loc}: {value}: {msg}{more}"


def _check_values(data: Any, path: tuple[Any, ...] = ()) -> None:
    """Every float anywhere in the config is finite (also inside free-form `options`)."""
    if isinstance(data, float) and not math.isfinite(data):
        raise PrunelensError(f"{field_path(path)}: {data!r} is not a finite number")
    if isinstance(data, dict):
        for key, value in data.items():
            _check_values(value, (*path, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            _check_values(value, (*path, i))


def check_lenses(cfg: ExperimentConfig) -> None:
    """Every lens is registered and its options are valid for it (`lenses[i].options.<field>` on error)."""
    if not cfg.lenses:
        return
    from prunelens.lenses import LENSES  # lenses import torch-heavy code; configs without lenses do not need it

    for i, spec in enumerate(cfg.lenses):
        if spec.name not in LENSES:
            raise PrunelensError(f"lenses[{i}].name: unknown lens {spec.name!r}; known: {', '.join(LENSES.names())}")
        try:
            LENSES.get(spec.name).Options.model_validate(spec.options)
        except ValidationError as err:
            raise PrunelensError(format_error(err, ("lenses", i, "options"))) from None


def from_dict(data: dict[str, Any], source: str = "config") -> ExperimentConfig:
    """Validate a plain dict (lens options included); any problem is a one-line `PrunelensError` naming the field."""
    if not isinstance(data, dict):
        raise PrunelensError(f"{source}: expected a mapping of config sections, got {type(data).__name__}")
    try:
        _check_values(data)
        cfg = ExperimentConfig.model_validate(data)
        check_lenses(cfg)
    except ValidationError as err:
        raise PrunelensError(f"{source}: {format_error(err)}") from None
    except PrunelensError as err:
        raise PrunelensError(f"{source}: {err}") from None
    return cfg


def _measure(data: Any, path: Path, depth: int = 0, sizes: dict[int, int] | None = None) -> int:
    """The number of values `data` expands to (YAML aliases share objects; counted once per use), bounded."""
    sizes = {} if sizes is None else sizes
    if depth > MAX_CONFIG_DEPTH:
        raise PrunelensError(f"{path}: nested more than {MAX_CONFIG_DEPTH} levels deep")
    if not isinstance(data, (dict, list)):
        return 1
    if id(data) not in sizes:
        children = data.values() if isinstance(data, dict) else data
        sizes[id(data)] = 1 + sum(_measure(child, path, depth + 1, sizes) for child in children)
        if sizes[id(data)] > MAX_CONFIG_VALUES:
            raise PrunelensError(f"{path}: expands to more than {MAX_CONFIG_VALUES} values (YAML aliases?)")
    return sizes[id(data)]


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file with `yaml.safe_load`, bounded in size, depth and alias expansion; any problem
    (missing, not UTF-8, bad syntax) is a one-line error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise PrunelensError(f"config file not found: {path}")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise PrunelensError(f"{path}: larger than {MAX_CONFIG_BYTES >> 10} KiB; not a config file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise PrunelensError(f"{path}: not UTF-8 text (byte {err.start})") from None
    try:
        data = yaml.safe_load(text)
    except RecursionError:
        raise PrunelensError(f"{path}: nested too deeply") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise PrunelensError(f"{path}:{where} invalid YAML ({getattr(err, 'problem', None) or err})") from None
    _measure(data, path)
    return {} if data is None else data


def load(path: str | Path) -> ExperimentConfig:
    """Read and validate a single-experiment YAML config file."""
    return from_dict(read_yaml(path), source=str(path))


def dump(cfg: ExperimentConfig) -> str:
    """The full config (defaults included) as YAML."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
