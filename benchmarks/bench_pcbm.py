"""What the concept lens (`pcbm`) adds to the default experiment's wall time on this machine (target: ≤ 25 %).

`python benchmarks/bench_pcbm.py [--repeats N] [--quick]`

1. The default experiment (`configs/quickstart.yaml`) without the pcbm lens — training of the dense round, the
   IMP rounds and the references, and the Grad-CAM lens — run once from scratch into a temporary directory: the
   baseline wall time T.
2. On that finished run, interleaved repeats of the Grad-CAM lens and the pcbm lens recomputed from scratch
   (`force`): the pcbm lens' time P (its share of the default experiment is P / (T + P)) and, for scale, the
   Grad-CAM lens' time.
3. One PCBM fit on the dense network split into its parts (interleaved repeats): embedding the train, val and
   test rows (one batched forward pass per split), the per-concept SVMs, the elastic-net heads (λ grid + refit)
   and the PCBM-h residual.
`--quick`: one IMP round and one epoch (a smoke run of the script, not the figure).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import yaml
from _harness import CpuMeter, environment, header, interleaved, row, spread, timed, verdict

from prunelens import config
from prunelens.config import LensConfig
from prunelens.experiment import analyze_run, prepare, run
from prunelens.lenses.base import LensContext
from prunelens.lenses.concepts.bank import fit_svm_bank
from prunelens.lenses.concepts.heads import fit_head, fit_residual
from prunelens.lenses.concepts.lens import PCBMLens
from prunelens.lenses.data import LensData
from prunelens.lenses.features import embed_rows
from prunelens.runs import Run

QUICKSTART = Path(__file__).resolve().parents[1] / "src" / "prunelens" / "configs" / "quickstart.yaml"
TARGET = 0.25


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    header("pcbm lens vs the default experiment (configs/quickstart.yaml)")
    print(f"  {environment()}")
    raw = yaml.safe_load(QUICKSTART.read_text())
    raw["lenses"] = [lens for lens in raw["lenses"] if lens != "pcbm"]
    if args.quick:
        raw["pruning"]["rounds"], raw["training"]["epochs"] = 1, 1
    meter = CpuMeter()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config.from_dict({**raw, "output_dir": tmp})
        began = time.perf_counter()
        with meter.measure():
            result = run(cfg, quiet=True)
        baseline = time.perf_counter() - began
        row("default experiment without pcbm (T)", f"{baseline:.1f} s", "one run from scratch: training, references, Grad-CAM")
        target = Run.open(result.run_dir)
        lenses = {name: LensConfig(name=name) for name in ("gradcam", "pcbm")}
        times = interleaved({name: lambda s=spec: _timed_lens(target, s) for name, spec in lenses.items()}, args.repeats, meter)
        for name, values in times.items():
            row(f"{name} lens, all rounds + references", f"{spread(values)} s")
        pcbm = sorted(times["pcbm"])[len(times["pcbm"]) // 2]
        share = pcbm / (baseline + pcbm)
        row("pcbm share of the default experiment", f"{100 * share:.1f} %", f"P / (T + P); target ≤ {100 * TARGET:.0f} %: {verdict(share <= TARGET)}")
        row("pcbm added to T", f"{100 * pcbm / baseline:.1f} %", "P / T")
        _parts(target, args.repeats, meter)
    meter.report()


def _timed_lens(target: Run, spec: LensConfig) -> float:
    return timed(lambda: analyze_run(target, [spec], quiet=True, force=True))


def _parts(target: Run, repeats: int, meter: CpuMeter) -> None:
    """One dense PCBM fit, part by part."""
    header("one PCBM fit on the dense network, by part")
    p = prepare(target.config)
    lens = PCBMLens({"references": []})
    dense = target.round(0).model("cpu")
    ctx = LensContext(LensData(p.bundle, "cpu", target.config.lens_images), dense, {}, None, target.config.seed)  # type: ignore[arg-type]
    plan, _ = lens._plan(ctx)
    o = lens.options
    features = {s: embed_rows(dense, ctx.data, s, getattr(plan, s), o.layer)[0] for s in ("train", "val")}
    bank = fit_svm_bank(features["train"], features["val"], plan.samples, list(o.svm_c))
    projections, labels = bank.project(features["train"]), ctx.data.labels("train")[plan.train]
    head, _ = fit_head(projections, labels, plan.classes, o.head, None, list(o.lam_grid), o.l1_ratio, 0)
    parts = {
        "embed train+val+test rows": lambda: [embed_rows(dense, ctx.data, s, getattr(plan, s), o.layer) for s in ("train", "val", "test")],
        f"SVM bank ({len(plan.names)} concepts × {len(o.svm_c)} C)": lambda: fit_svm_bank(features["train"], features["val"], plan.samples, list(o.svm_c)),
        f"elastic-net heads ({len(o.lam_grid)} λ + refit)": lambda: fit_head(projections, labels, plan.classes, o.head, None, list(o.lam_grid), o.l1_ratio, 0),
        "PCBM-h residual": lambda: fit_residual(head, projections, features["train"], labels, 0),
    }
    times = interleaved({name: lambda f=f: timed(f) for name, f in parts.items()}, repeats, meter)
    print(f"  rows: train {len(plan.train)}, val {len(plan.val)}, test {len(plan.test)}; embedding dimension {features['train'].shape[1]}")
    for name, values in times.items():
        row(name, f"{spread(values)} s")


if __name__ == "__main__":
    main()
