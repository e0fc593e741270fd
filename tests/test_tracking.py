"""Optional MLflow tracking against a real local sqlite store: params, per-round and lens metrics, artifacts,
one MLflow run per prunelens run across resumes and extensions, config validation, the run id unchanged."""

import os
import sys

import pytest
import yaml

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no usage pings from the tests
os.environ.setdefault("DO_NOT_TRACK", "true")

from conftest import tiny_config  # noqa: E402

from prunelens import cli, commands, config  # noqa: E402, F401 (commands imports every command module)
from prunelens.errors import PrunelensError  # noqa: E402
from prunelens.experiment import run  # noqa: E402
from prunelens.lenses import LENSES  # noqa: E402
from prunelens.runs import Run  # noqa: E402
from prunelens.tracking import flatten, lens_metrics, with_uri  # noqa: E402

config.from_dict({"tracking": {"mlflow": {"uri": "sqlite:///unused.db"}}})  # loading a tracked config needs no mlflow either
MLFLOW_AT_IMPORT = "mlflow" in sys.modules

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy")  # inside mlflow's sqlalchemy store

GRADCAM = {"name": "gradcam", "options": {"faithfulness": False, "mprt": False, "references": ["floor"]}}


def store_uri(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def only_run(client):
    experiments = client.search_experiments()
    assert [e.name for e in experiments if e.name != "Default"] == ["tiny"]
    (exp,) = [e for e in experiments if e.name == "tiny"]
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    return runs[0]


def history(client, run_id, key):
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_tracked_run_logs_everything_once_and_updates_on_extend(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = store_uri(tmp_path)
    cfg = tiny_config(tmp_path, pruning={"rounds": 1}, lenses=[GRADCAM], lens_images=8, tracking={"mlflow": {"uri": uri}})
    result = run(cfg, quiet=True)
    client = MlflowClient(tracking_uri=uri)
    logged = only_run(client)
    name = result.run_dir.name
    assert logged.info.run_name == name and logged.info.status == "FINISHED"
    assert logged.data.tags["prunelens.run"] == name and logged.data.tags["prunelens.run_id"] == cfg.run_id
    assert logged.data.params["pruning.fraction"] == "0.3" and logged.data.params["training.epochs"] == "1"
    assert logged.data.params == {k: v for k, v in flatten(cfg.canonical()).items()}
    records = Run(result.run_dir).records()
    for metric in ("test_top1", "val_top1", "density", "train_loss"):
        assert history(client, logged.info.run_id, metric) == [(r["round"], float(r[metric])) for r in records]
    ratio = history(client, logged.info.run_id, "flops_ratio")
    assert [s for s, _ in ratio] == [0, 1] and [v for _, v in ratio] == pytest.approx([r["flops_effective"] / r["flops_dense"] for r in records])
    (lens,) = result.lenses
    headline = LENSES.get("gradcam").headline(lens.table)
    expected = lens_metrics(lens.key, headline)
    assert {(k, s) for k, _, s in expected} >= {(f"{lens.key}.spearman", r) for r in (0, 1)}
    assert f"{lens.key}.spearman.floor" in logged.data.metrics  # a reference row, no step
    for key, value, step in expected:
        assert (step, pytest.approx(value)) in history(client, logged.info.run_id, key)
    artifacts = {f.path for f in client.list_artifacts(logged.info.run_id)}
    assert {"metrics.csv", "timings.csv", "config.yaml", f"lens_{lens.key}.csv"} <= artifacts
    assert not (tmp_path / "mlruns").exists() and (tmp_path / "mlartifacts").is_dir()  # beside the db, not in the cwd

    again = run(cfg, quiet=True)  # resumed: nothing to train, the same MLflow run
    assert again.run_dir == result.run_dir
    assert only_run(client).info.run_id == logged.info.run_id
    assert history(client, logged.info.run_id, "test_top1") == [(r["round"], float(r["test_top1"])) for r in records]

    path = tmp_path / "tiny.yaml"  # the CLI flag, one more round: the same MLflow run gains step 2
    path.write_text(yaml.safe_dump({**cfg.model_dump(mode="json", exclude={"tracking"}), "lenses": [GRADCAM]}))
    assert cli.main(["run", str(path), "--mlflow", uri, "--rounds", "2", "-q"]) == 0
    extended = only_run(client)
    assert extended.info.run_id == logged.info.run_id and extended.data.tags["prunelens.rounds"] == "2"
    records = Run(result.run_dir).records()
    assert history(client, logged.info.run_id, "test_top1") == [(r["round"], float(r["test_top1"])) for r in records]
    assert [s for s, _ in history(client, logged.info.run_id, f"{lens.key}.spearman")] == [0, 1, 2]


@pytest.mark.parametrize(
    "uri, message",
    [
        ("file:///tmp/mlruns", "file stores are deprecated in MLflow >= 3.7 and refused from 3.13; use sqlite:///"),
        ("mlruns", "file stores are deprecated"),
        ("http://example.com:5000", "is not sqlite:///PATH or http(s)://127.0.0.1|localhost"),
        ("sqlite://", "is not sqlite:///PATH"),
        ("postgresql://user@db/mlflow", "is not sqlite:///PATH"),
    ],
)
def test_bad_uri_is_one_line_naming_the_field(tmp_path, uri, message):
    with pytest.raises(PrunelensError) as err:
        tiny_config(tmp_path, tracking={"mlflow": {"uri": uri}})
    text = str(err.value)
    assert "tracking.mlflow.uri" in text and message in text and "\n" not in text


def test_local_server_uris_are_accepted(tmp_path):
    for uri in ("http://127.0.0.1:5000", "https://localhost/mlflow", "sqlite:////abs/mlflow.db"):
        assert tiny_config(tmp_path, tracking={"mlflow": {"uri": uri}}).tracking.mlflow.uri == uri


def test_tracking_is_not_part_of_the_run_id(tmp_path):
    plain = tiny_config(tmp_path)
    tracked = tiny_config(tmp_path, tracking={"mlflow": {"uri": store_uri(tmp_path), "experiment": "other"}})
    assert tracked.run_id == plain.run_id and tracked.run_dir == plain.run_dir and "tracking" not in tracked.canonical()
    flagged = with_uri(tracked, "http://127.0.0.1:5000")
    assert flagged.tracking.mlflow.experiment == "other" and flagged.run_id == plain.run_id
    assert with_uri(plain, None) is plain


def test_missing_mlflow_fails_before_training(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` raises ImportError
    cfg = tiny_config(tmp_path, tracking={"mlflow": {"uri": store_uri(tmp_path)}})
    with pytest.raises(PrunelensError, match=r"^tracking\.mlflow: the mlflow package is not installed \(pip install 'prunelens\[mlflow\]'\)$"):
        run(cfg, quiet=True)
    assert not cfg.run_dir.exists()


def test_importing_prunelens_does_not_import_mlflow():
    assert not MLFLOW_AT_IMPORT  # checked when this module was collected, before any test ran


def test_store_failure_is_one_line_after_the_run(tmp_path):
    pytest.importorskip("mlflow")
    from prunelens.tracking import log_run

    (tmp_path / "afile").write_text("not a directory")
    cfg = tiny_config(tmp_path, tracking={"mlflow": {"uri": f"sqlite:///{tmp_path / 'afile' / 'mlflow.db'}"}})
    with pytest.raises(PrunelensError) as err:
        log_run(cfg, cfg.run_dir)
    text = str(err.value)
    assert text.startswith(f"tracking.mlflow: logging {cfg.run_dir.name} to sqlite:///") and "rerun the same command" in text
    assert "\n" not in text
