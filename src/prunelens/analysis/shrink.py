"""Physical shrink of a stored round: a smaller dense model, its size, FLOPs and measured latency.

`shrink_round` removes the zeroed filters / input channels of a finished round (Torch-Pruning), checks the
outputs equal the masked model's, times both models interleaved, and stores `rounds/NNN/shrink.json` and the
shrunk model as a `torch.export` program (`rounds/NNN/shrunk.pt2`, load with `torch.export.load`) — so
results say what is simulated (masked, effective FLOPs) and what is real (shrunk, measured latency).
"""

from __future__ import annotations

import io
from typing import Any

import torch

from prunelens.data import build_dataset
from prunelens.errors import PrunelensError
from prunelens.lenses.data import LensData
from prunelens.pruning.shrink import compare_latency, footprint, shrink
from prunelens.runs import Run, round_file


def shrink_round(run: Run, r: int | None = None, batch: int = 32, repeats: int = 20) -> dict[str, Any]:
    """Shrink round `r` (default: the last finished) of a run; returns and stores the comparison."""
    if not run.rounds():
        raise PrunelensError(f"{run.root}: no finished rounds")
    r = run.rounds()[-1] if r is None else r
    view = run.round(r)
    model, masks = view.model("cpu"), view.masks()
    example = LensData(build_dataset(run.data_config), "cpu", batch).eval_batch.images
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
    with run.writing():
        run.store.write(round_file(r, "shrunk.pt2"), program.getvalue())
        run.store.save_json(round_file(r, "shrink.json"), report)
    return report
