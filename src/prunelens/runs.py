"""The run reader: the one module that knows the layout of a run directory. Every command reads runs here.

`runs/<name>-<hash>/` (format 2; format-1 runs of prunelens 0.1 lack `run.json` and stay readable):
    canonical.json         the hashed part of the config     config.yaml   the full config as first run
    run.json               format and the data's shapes (classes, channels, image size, mean/std)
    start.pt               θ_start: the state every round rewinds to (init, step k or pretrained)
    rounds/NNN/masks.pt    bool masks            rounds/NNN/weights.pt   trained (masked) state_dict
    rounds/NNN/metrics.json                      the round's record; written last: it marks the round done
    rounds/NNN/shrink.json, shrunk.pt2           `prunelens shrink` (derived), with the sparse-kernel latency
    rounds/NNN/sparse_crossover.{csv,png}        sparse vs dense kernels by density on this machine (derived)
    metrics.{csv,parquet}  long table of the finished rounds (derived)   timings.csv   seconds per round
    lenses/<key>/          lens.json (name, version, options), setup.{json,pt} (the dense-network result),
                           round_NNN.{json,pt}, figures *.png      lens_<key>.{csv,parquet}: its long table
    controls/<kind>/round_NNN.json, controls_<kind>.{csv,parquet}   lottery-ticket controls (derived)
    report.html            `prunelens report`: every figure and table of the run on one page (derived)
    manifest.json          sha256 of every file above (store.py)

Primary files (config, start, rounds) are written once; everything else is derived: recomputable, rebuilt
when stale or missing. A run is identified by its stored canonical config, wherever its directory now is.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from prunelens import config as config_mod
from prunelens.config import ExperimentConfig
from prunelens.errors import PrunelensError
from prunelens.masks import MaskSet
from prunelens.store import MANIFEST, RunStore

CANONICAL, CONFIG, INFO, START = "canonical.json", "config.yaml", "run.json", "start.pt"
METRICS, TIMINGS = "metrics", "timings"
DERIVED = ("metrics.*", "timings.*", "lens_*", "lenses/*", "controls_*", "controls/*", "rounds/*/shrink.json", "rounds/*/shrunk.pt2", "rounds/*/sparse_crossover.csv", "*.png", "report.html")


def round_file(r: int, name: str) -> str:
    """`rounds/NNN/<name>` (masks.pt, weights.pt, metrics.json, shrink.json, shrunk.pt2, sparse_crossover.{csv,png})."""
    return f"rounds/{r:03d}/{name}"


def lens_file(key: str, name: str) -> str:
    return f"lenses/{key}/{name}"


def control_file(kind: str, r: int) -> str:
    return f"controls/{kind}/round_{r:03d}.json"


@dataclass(frozen=True)
class RoundView:
    """The stored files of one finished round."""

    run: Run
    r: int

    def masks(self) -> MaskSet:
        return MaskSet(self.run.store.load_tensors(round_file(self.r, "masks.pt")))

    def weights(self) -> dict[str, Any]:
        return self.run.store.load_tensors(round_file(self.r, "weights.pt"))

    def record(self) -> dict[str, Any]:
        return self.run.store.load_json(round_file(self.r, "metrics.json"))

    def model(self, device: str = "cpu") -> nn.Module:
        """The round's trained network (eval mode) on `device`."""
        model = self.run.build_model()
        model.load_state_dict(self.weights())
        return model.to(device).eval()


class Run:
    """One run directory: its config, data shapes, rounds and analysis results (read), and a locked writer."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.store = RunStore(self.root, DERIVED)

    @classmethod
    def open(cls, where: str | Path, output_dir: str | Path = "runs") -> Run:
        """A finished or partial run given as a directory, a directory name under `output_dir`, an experiment
        name with a single run, `<name>-<hash prefix>`, or a hash prefix."""
        path = Path(where)
        if (path / MANIFEST).is_file():
            return cls(path)
        root = Path(output_dir)
        runs = sorted(p for p in root.glob("*") if (p / MANIFEST).is_file()) if root.is_dir() else []
        matches = [p for p in runs if _matches(p.name, str(where))]
        if len(matches) != 1:
            found = "no such run" if not matches else f"ambiguous ({', '.join(p.name for p in matches[:5])})"
            raise PrunelensError(f"run {str(where)!r}: {found} (looked in {root})")
        return cls(matches[0])

    def exists(self) -> bool:
        return (self.root / MANIFEST).is_file()

    # -- what the run is

    @cached_property
    def canonical(self) -> dict[str, Any]:
        return self.store.load_json(CANONICAL)

    @cached_property
    def config(self) -> ExperimentConfig:
        """The stored config, checked against the stored canonical config, with `output_dir` where the run is now."""
        path = self.root / CONFIG
        try:
            data = yaml.safe_load(self.store.read(CONFIG).decode()) or {}
        except yaml.YAMLError:
            raise PrunelensError(f"{path}: invalid YAML") from None
        cfg = config_mod.from_dict(data, source=str(path)).with_overrides(output_dir=str(self.root.parent))
        if cfg.canonical() != self.canonical:
            raise PrunelensError(f"{path}: does not match {CANONICAL} (edited?)")
        return cfg

    @property
    def format(self) -> int:
        return self.store.load_json(INFO)["format"] if self.store.has(INFO) else 1

    @cached_property
    def info(self) -> dict[str, Any]:
        """The data's shapes: `num_classes`, `in_channels`, `image_size`, `mean`, `std`, `class_names`. Format-1
        runs did not store them: they are read off the dataset (built as prunelens 0.1 built it)."""
        if self.store.has(INFO):
            return self.store.load_json(INFO)["data"]
        from prunelens.data import build_dataset

        return data_info(build_dataset(self.data_config))

    @property
    def data_config(self) -> Any:
        """The dataset section to rebuild the run's data: format-1 runs seeded their data with the experiment seed."""
        cfg = self.config
        return cfg.dataset if self.format > 1 else cfg.dataset.model_copy(update={"seed": cfg.seed})

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.info["in_channels"], *self.info["image_size"])

    def build_model(self) -> nn.Module:
        """The run's architecture at a random initialisation (no pretrained weights), to load stored weights into."""
        from prunelens.models import build_untrained

        info, cfg = self.info, self.config
        return build_untrained(cfg.model, info["num_classes"], info["in_channels"], tuple(info["image_size"]))

    # -- rounds and results

    def rounds(self) -> list[int]:
        """Finished rounds: those whose record (written last) is listed."""
        done = [int(rel.split("/")[1]) for rel in self.store.manifest if rel.startswith("rounds/") and rel.endswith("/metrics.json")]
        return sorted(done)

    def round(self, r: int) -> RoundView:
        if r not in self.rounds():
            done = self.rounds()
            raise PrunelensError(f"{self.root}: round {r} is not finished (finished: {done[0]}…{done[-1]})" if done else f"{self.root}: no finished rounds")
        return RoundView(self, r)

    def records(self) -> list[dict[str, Any]]:
        return [self.round(r).record() for r in self.rounds()]

    def start(self) -> dict[str, Any]:
        return self.store.load_tensors(START)

    # -- writing

    @contextmanager
    def writing(self, on_wait: Callable[[str], None] = lambda message: print(message, file=sys.stderr)) -> Iterator[Run]:
        """Hold the run's lock (waiting for another process if needed) and verify its files first."""
        try:
            self.store.lock(on_wait=on_wait)
        except OSError as err:
            raise PrunelensError(f"{self.root}: cannot create the run directory ({err.strerror})") from None
        try:
            self.store.verify()
            yield self
        finally:
            self.store.unlock()

    def initialise(self, cfg: ExperimentConfig, info: dict[str, Any]) -> None:
        """Write the files that say what the run is (once); refuse a directory holding another config."""
        if self.store.has(CANONICAL):
            if self.store.load_json(CANONICAL) != cfg.canonical():
                raise PrunelensError(f"{self.root}: holds a run of a different config")
        else:
            self.store.save_json(CANONICAL, cfg.canonical())
        if not self.store.has(CONFIG):
            self.store.write(CONFIG, config_mod.dump(cfg).encode())
        if not self.store.has(INFO):
            self.store.save_json(INFO, {"format": config_mod.FORMAT, "data": info})


def _matches(dirname: str, where: str) -> bool:
    name, _, digest = dirname.rpartition("-")
    if where in (dirname, name) or digest.startswith(where):
        return True
    want_name, _, want_digest = where.rpartition("-")
    return bool(want_digest) and want_name == name and digest.startswith(want_digest)


def data_info(bundle: Any) -> dict[str, Any]:
    """What a run stores about its data (`run.json`): enough to rebuild its models without the data."""
    return {
        "name": bundle.name, "num_classes": bundle.num_classes, "in_channels": bundle.in_channels,
        "image_size": list(bundle.image_size), "mean": list(bundle.mean), "std": list(bundle.std),
        "class_names": bundle.class_names,
    }  # fmt: skip
