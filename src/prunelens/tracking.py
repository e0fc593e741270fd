"""Optional MLflow tracking: a finished prunelens run, read back from its directory, logged as one MLflow run.

Tracking only listens: it runs after the rounds and lenses are done and never changes what is computed. All is
read through `Run`, so resumed or extended runs log complete data; the MLflow run of a prunelens run is found
again by its `prunelens.run` tag and updated (only new metric values, params and artifacts), never duplicated:

- params: the canonical config (the run's identity) flattened to dotted keys, values cut to 500 characters
  (MLflow's limit in older versions; cut keys are listed in the `prunelens.params_truncated` tag);
- metrics, step = round: every number of the round records (`test_top1`, `density`, `flops_ratio`, …) and the
  per-layer densities (`layer_density.<name>`); each lens' headline numbers as `<lens key>.<column>`, its
  reference rows (floor, same_init, …) as `<lens key>.<column>.<reference>` without a step;
- artifacts: config.yaml, metrics.csv, timings.csv, every lens_*.csv and report.html when present.

mlflow (`pip install 'prunelens[mlflow]'`) is imported only here, only when a config asks for tracking, and used
through MlflowClient: no global MLflow state of the caller (tracking URI, active run) changes.
"""

from __future__ import annotations

import io
import json
import logging
import math
import numbers
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from prunelens.config import ExperimentConfig
from prunelens.errors import PrunelensError
from prunelens.progress import Reporter
from prunelens.runs import CONFIG, METRICS, TIMINGS, Run

PARAM_CHARS = 500
RUN_TAG = "prunelens.run"
QUIET_LOGGERS = ("mlflow", "alembic", "sqlalchemy")
REPORT = "report.html"


def require(cfg: ExperimentConfig) -> None:
    """A config with tracking needs mlflow installed: a one-line error before anything trains."""
    if cfg.tracking.mlflow is not None:
        try:
            import mlflow  # noqa: F401
        except ImportError:
            raise PrunelensError("tracking.mlflow: the mlflow package is not installed (pip install 'prunelens[mlflow]')") from None


def with_uri(cfg: ExperimentConfig, uri: str | None) -> ExperimentConfig:
    """`cfg` tracked at `uri` (the `--mlflow` flag), keeping a configured experiment name."""
    if not uri:
        return cfg
    kept = cfg.tracking.mlflow.model_dump() if cfg.tracking.mlflow else {}
    return cfg.with_overrides(tracking={"mlflow": {**kept, "uri": uri}})


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """`{"pruning": {"fraction": 0.3}}` → `{"pruning.fraction": "0.3"}` (lists and scalars as JSON, strings as is)."""
    if isinstance(data, dict) and data:
        return {k: v for key, value in data.items() for k, v in flatten(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): data if isinstance(data, str) else json.dumps(data)}


def key(name: str) -> str:
    """An MLflow-safe key: letters, digits, `_ - . space /`; anything else becomes `_`."""
    return re.sub(r"[^\w\-. /]", "_", name)[:250]


def round_metrics(records: list[dict[str, Any]]) -> list[tuple[str, float, int]]:
    """(key, value, step) of every number in the round records, the FLOPs ratio and the per-layer densities."""
    out = []
    for rec in records:
        r = int(rec["round"])
        values = {k: v for k, v in rec.items() if k != "round" and isinstance(v, (int, float))}
        if rec.get("flops_dense"):
            values["flops_ratio"] = rec["flops_effective"] / rec["flops_dense"]
        values.update({f"layer_density.{name}": d for name, d in rec.get("layers", {}).items()})
        out += [(key(k), float(v), r) for k, v in values.items() if math.isfinite(v)]
    return out


def lens_metrics(lens_key: str, headline: pd.DataFrame | None) -> list[tuple[str, float, int]]:
    """The numeric headline columns: per round (step = round), reference rows under `.<reference>` at step 0."""
    if headline is None or "round" not in headline:
        return []
    out = []
    for row in headline.to_dict("records"):
        label = str(row.pop("round"))
        for column, value in row.items():
            if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
                name, step = (f"{lens_key}.{column}", int(label)) if label.isdigit() else (f"{lens_key}.{column}.{label}", 0)
                out.append((key(name), float(value), step))
    return out


def stored_lens_tables(run: Run) -> Iterator[tuple[str, str, pd.DataFrame]]:
    """(key, lens name, long table) of every lens whose table the run holds."""
    for rel in sorted(r for r in run.store.manifest if re.fullmatch(r"lenses/[^/]+/lens\.json", r)):
        lens_key = rel.split("/")[1]
        stored = [f"lens_{lens_key}.{ext}" for ext in ("parquet", "csv") if run.store.has(f"lens_{lens_key}.{ext}")]
        if stored and run.store.has(rel):
            read = pd.read_parquet if stored[0].endswith(".parquet") else pd.read_csv
            yield lens_key, run.store.load_json(rel)["name"], read(io.BytesIO(run.store.read(stored[0])))


@contextmanager
def quiet_mlflow() -> Iterator[None]:
    """MLflow's and alembic's INFO chatter (e.g. creating the sqlite tables) off while we log."""
    loggers = {lg: lg.level for lg in map(logging.getLogger, QUIET_LOGGERS)}
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for lg, level in loggers.items():
            lg.setLevel(level)


def experiment_id(client: Any, name: str, location: str | None) -> str:
    """The experiment named `name`, created (on the driver, artifacts at `location`) when missing."""
    if (found := client.get_experiment_by_name(name)) is None:
        try:
            return client.create_experiment(name, artifact_location=location)
        except Exception:  # created meanwhile by another process
            if (found := client.get_experiment_by_name(name)) is None:
                raise
    if found.lifecycle_stage != "active":
        raise PrunelensError(f"tracking.mlflow.experiment: {name!r} is deleted in MLflow; restore it or choose another name")
    return found.experiment_id


def log_run(cfg: ExperimentConfig, run_dir: Path, reporter: Reporter | None = None) -> str | None:
    """Log the finished run at `run_dir` to MLflow (if `cfg` asks for it, holding the run's lock); returns the MLflow run id."""
    if (spec := cfg.tracking.mlflow) is None:
        return None
    require(cfg)
    experiment, reporter = spec.experiment or cfg.name, reporter or Reporter(quiet=True)
    try:
        with quiet_mlflow(), Run(run_dir).writing(on_wait=reporter.notice) as run:
            run_id = _log(run, spec.uri, experiment)
        reporter.log(f"mlflow: logged {run_dir.name} to {spec.uri} (experiment {experiment!r}, run {run_id})")
        return run_id
    except PrunelensError:
        raise
    except Exception as err:  # the tracking store's many error types: one line, the run itself is saved
        problem = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        saved = "the run itself is saved; rerun the same command to log it"
        raise PrunelensError(f"tracking.mlflow: logging {run_dir.name} to {spec.uri} failed ({problem}); {saved}") from None


def _log(run: Run, uri: str, experiment: str) -> str:
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    from prunelens.lenses import LENSES

    db = Path(uri.removeprefix("sqlite:///")).resolve() if uri.startswith("sqlite:///") else None
    if db:  # a sqlite store keeps its artifacts beside the db (not in ./mlruns of the working directory)
        db.parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=uri)
    exp = experiment_id(client, experiment, (db.parent / "mlartifacts").as_uri() if db else None)
    name = run.root.name
    found = client.search_runs([exp], filter_string=f"tags.`{RUN_TAG}` = '{name}'", max_results=1)
    mlrun = found[0] if found else client.create_run(exp, run_name=name, tags={RUN_TAG: name})
    run_id = mlrun.info.run_id
    params = {key(k): v for k, v in flatten(run.canonical).items()}
    cut = sorted(k for k, v in params.items() if len(v) > PARAM_CHARS)
    records = run.records()
    lenses = list(stored_lens_tables(run))
    tags = {
        RUN_TAG: name, "prunelens.run_id": name.rpartition("-")[2], "prunelens.path": str(run.root.resolve()),
        "prunelens.rounds": str(max((r["round"] for r in records), default=-1)), "prunelens.lenses": ",".join(k for k, _, _ in lenses),
        **({"prunelens.params_truncated": ",".join(cut)[:5000]} if cut else {}),
    }  # fmt: skip
    metrics = round_metrics(records)
    for lens_key, lens_name, table in lenses:
        if lens_name in LENSES:
            metrics += lens_metrics(lens_key, LENSES.get(lens_name).headline(table))
    seen = {k: {(m.step, m.value) for m in client.get_metric_history(run_id, k)} for k in mlrun.data.metrics} if found else {}
    now = int(time.time() * 1000)
    fresh = [Metric(k, v, now, s) for k, v, s in metrics if (s, v) not in seen.get(k, set())]
    param_list = [Param(k, v[:PARAM_CHARS]) for k, v in params.items() if k not in mlrun.data.params]  # params never change
    for i in range(0, len(param_list), 100):  # MLflow's batch limits: 100 params, 1000 metrics
        client.log_batch(run_id, params=param_list[i : i + 100])
    for i in range(0, len(fresh), 1000):
        client.log_batch(run_id, metrics=fresh[i : i + 1000])
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    with tempfile.TemporaryDirectory(prefix="prunelens-mlflow-") as tmp:
        for rel in [CONFIG, f"{METRICS}.csv", f"{TIMINGS}.csv", REPORT, *(r for r in run.store.manifest if re.fullmatch(r"lens_[^/]*\.csv", r))]:
            if run.store.has(rel) or (rel == REPORT and (run.root / rel).is_file()):  # the report may be unlisted
                (Path(tmp) / rel).write_bytes(run.store.read(rel) if run.store.has(rel) else (run.root / rel).read_bytes())
        client.log_artifacts(run_id, tmp)
    client.set_terminated(run_id, "FINISHED")
    return run_id
