"""The runs a run depends on, as configs (docs/methods.md §6.8, §9): its shared dense run and its references.

- The *dense run* of a config trains round 0 for every config that differs from it only in pruning settings
  (method, scope, granularity, rates, rounds, retraining, controls of the mask): round 0 depends on the data,
  model, training, seeds, device and the rewind step k alone. It is named `dense-<hash>`.
- *References* for explanation consistency (none of them is a bound): `floor`, the architecture at a random
  initialisation (no run: drawn from the `floor` stream); `same_init`, the dense network retrained from the
  same θ₀ with another data order (`order_seed` + 1: SGD noise only); `other_seed`, an independently trained
  dense network (`seed` + 1). The trained references are dense runs of their own.

Both kinds are ordinary, resumable, hash-named runs, so every run and sweep point that needs one shares it.
"""

from __future__ import annotations

from prunelens.config import MAX_SEED, ExperimentConfig, from_dict

DENSE_NAME = "dense"
REFERENCES = ("floor", "same_init", "other_seed")
TRAINED_REFERENCES = ("same_init", "other_seed")


def dense_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """The config of the run whose round 0 `cfg` shares: pruning at its defaults but the rewind step, no
    retraining section, no lenses, no pruning rounds."""
    data = cfg.model_dump()
    step = {"rewind": "step", "rewind_step": cfg.pruning.rewind_step} if cfg.pruning.rewind == "step" else {}
    data.update(name=DENSE_NAME, pruning={**step, "rounds": 0}, retraining=None, lenses=[])
    return from_dict(data, source="dense run")


def reference_config(cfg: ExperimentConfig, kind: str) -> ExperimentConfig:
    """The dense run of a trained reference `kind` of `cfg` (`same_init` or `other_seed`)."""
    if kind == "same_init":
        changed = cfg.with_overrides(order_seed=(cfg.noise_seed + 1) % (MAX_SEED + 1))
    elif kind == "other_seed":
        changed = cfg.with_overrides(seed=(cfg.seed + 1) % (MAX_SEED + 1), order_seed=None)
    else:
        raise ValueError(f"{kind!r} is not a trained reference (known: {', '.join(TRAINED_REFERENCES)})")
    return dense_config(changed)
