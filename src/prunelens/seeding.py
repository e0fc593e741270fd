"""Named random streams: every random choice of a run is drawn from (seed, stream name, *keys).

One experiment `seed` feeds every stream, so adding randomness to one part of the code never shifts another
part's draws, and a stream can be re-created anywhere (resuming, rewinding to step k, analysing later).
The streams (docs/methods.md §6.6):

- `init`: the model's initial weights (the global RNG while the model is built);
- `order` (keys: epoch) and `augment` (epoch, batch): the data order and augmentation of training;
- `train` (round): the global RNG while round r trains (dropout); `rewind`: during the k dense rewind steps;
- `prune`, `prune_groups` (tensor): random pruning scores, random filters / channels;
- `floor`, `mprt`: the random-init floor model and the cascading randomisation of a lens;
- `control` (round), `reinit`: lottery-ticket controls and partial re-initialisation.

`order`, `augment` and `train` are the SGD noise: they are keyed by the run's noise seed (`order_seed`,
default `seed`), which is what the same-init reference changes.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


def seed_int(seed: int, stream: str, *keys: int) -> int:
    """A 63-bit integer determined by (seed, stream, *keys) alone."""
    entropy = [int(seed), zlib.crc32(stream.encode()), *(int(k) for k in keys)]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def name_key(name: str) -> int:
    """A stable integer key for a string (e.g. a tensor name), unlike Python's salted `hash`."""
    return zlib.crc32(name.encode())


def generator(seed: int, stream: str, *keys: int) -> torch.Generator:
    """A CPU `torch.Generator` for (seed, stream, *keys)."""
    return torch.Generator().manual_seed(seed_int(seed, stream, *keys))


def seed_global(seed: int, stream: str, *keys: int) -> None:
    """Seed Python's, NumPy's and torch's global RNGs from (seed, stream, *keys) (model init, dropout)."""
    value = seed_int(seed, stream, *keys)
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)


@contextmanager
def forked(seed: int, stream: str, *keys: int) -> Iterator[None]:
    """Run a block with the global RNGs seeded from the stream, then restore them as they were."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=devices):
        seed_global(seed, stream, *keys)
        try:
            yield
        finally:
            random.setstate(state[0])
            np.random.set_state(state[1])
