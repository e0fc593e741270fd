"""Physical shrink of a stored round: a smaller dense model, its size, FLOPs and measured latency.

`shrink_round` removes the zeroed filters / input channels of a finished round (Torch-Pruning), checks the
outputs equal the masked model's, times both models interleaved, and stores `rounds/NNN/shrink.json` and the
shrunk model as a `torch.export` program (`rounds/NNN/shrunk.pt2`, load with `torch.export.load`) — so
results say what is simulated (masked, effective FLOPs) and what is real (shrunk, measured latency).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from prunelens.analyze import eval_batch, load_round
from prunelens.experiment import load_run_config, prepare
from prunelens.pruning.shrink import compare_latency, footprint, shrink
from prunelens.store import RunStore, round_dir


def shrink_round(run_dir: Path, r: int | None = None, batch: int = 32, repeats: int = 20) -> dict[str, Any]:
    """Shrink round `r` (default: the last finished) of a run; returns and stores the comparison."""
    store = RunStore(run_dir)
    r = store.rounds_done()[-1] if r is None else r
    cfg = load_run_config(run_dir)
    bundle, build = prepare(cfg)
    model, masks, _ = load_round(store, build, r, "cpu")
    example = eval_batch(bundle, batch, "cpu").images
    small = shrink(model, masks, example).eval()
    report = {
        "round": r,
        "masked": footprint(model, example, masks),
        "shrunk": footprint(small, example),
        "latency": compare_latency(model, small, example, repeats),
        "batch": batch,
    }
    program = io.BytesIO()
    batch_dim = torch.export.Dim("batch", min=1)
    torch.export.save(torch.export.export(small, (example,), dynamic_shapes=({0: batch_dim},)), program)
    store.write(f"{round_dir(r)}/shrunk.pt2", program.getvalue())
    store.save_json(f"{round_dir(r)}/shrink.json", report)
    return report
