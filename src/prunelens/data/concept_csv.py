"""Per-image 0/1 concepts CSVs, shared by `imagefolder` and `ham10000` (the `concepts_csv` option) and `derm7pt`:
reading a CSV as strings, its id column and 0/1 cells, and the `missing_concepts` policy for images without a row."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from prunelens.data.common import option_error
from prunelens.errors import PrunelensError

MISSING_POLICIES = ("error", "drop")
"""The values of the `missing_concepts` option: what an image without a row in the concepts CSV does."""
_TRUE, _FALSE = ("1", "true"), ("0", "false")


def read_csv(path: Path, columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """All cells as strings (empty ones as ""); each of `columns` must be present, and there must be a data row."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError) as err:
        raise PrunelensError(f"{path}: not a readable CSV file ({err})") from None
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise PrunelensError(f"{path}: no {', '.join(map(repr, missing))} column(s)")
    if frame.empty:
        raise PrunelensError(f"{path}: no data rows")
    return frame


def read_concepts_csv(
    path: Path, id_column: str = "image_id", fallbacks: tuple[str, ...] = (), hint: str = ""
) -> tuple[pd.DataFrame, list[str], str]:
    """The per-image concepts CSV `path` (the `concepts_csv` option): its cells as strings, the id of each row
    (stripped; none empty, none repeated) and the id column: `id_column`, or else the first column when its
    name is one of `fallbacks`. A missing file is an error of the option; `hint` ends the missing-column error."""
    if not path.is_file():
        raise option_error("concepts_csv", f"{path}: not found")
    frame = read_csv(path)
    if id_column not in frame.columns:
        if not (len(frame.columns) and frame.columns[0] in fallbacks):
            columns = ", ".join(map(str, frame.columns))
            raise PrunelensError(f"{path}: no {id_column!r} column (columns: {columns}){'; ' + hint if hint else ''}")
        id_column = str(frame.columns[0])
    ids = frame[id_column].str.strip()
    if (ids == "").any():
        raise PrunelensError(f"{path}: data row {int((ids == '').to_numpy().argmax()) + 1}: empty {id_column}")
    if ids.duplicated().any():
        raise PrunelensError(f"{path}: image {ids[ids.duplicated()].iloc[0]} has more than one row")
    return frame, ids.tolist(), id_column


def binary_concepts(frame: pd.DataFrame, columns: Sequence[str], path: Path) -> torch.Tensor:
    """(rows, len(columns)) bool: the cells of `columns`, each 0/1 or true/false (any case, spaces around
    ignored); any other value is an error naming `path`, the data row (1 = the first after the header) and
    the column."""
    values = frame[list(columns)].apply(lambda column: column.str.strip().str.lower()).to_numpy(str)
    bad = ~np.isin(values, _TRUE + _FALSE)
    if bad.any():
        row, column = np.argwhere(bad)[0]
        raise PrunelensError(
            f"{path}: data row {row + 1}, column {columns[column]!r}: {frame[columns[column]].iloc[row]!r} is not 0/1 or true/false"
        )
    return torch.from_numpy(np.isin(values, _TRUE))


def check_missing_policy(options: dict[str, Any]) -> str:
    """The `missing_concepts` option, checked to be one of `MISSING_POLICIES`."""
    policy = options["missing_concepts"]
    if policy not in MISSING_POLICIES:
        raise option_error("missing_concepts", f"{policy!r} is not 'error' or 'drop'")
    return str(policy)


def apply_missing_policy(
    csv: Path, images: Sequence[str], found: np.ndarray, policy: str, dataset: str, where: Path | str
) -> list[str]:
    """The notes of the `missing_concepts` policy for the `images` (names for messages, e.g. ids) of which
    `found` (bool) have a row in `csv`: none when all do; `error` raises naming the first without one and how
    many of `where`'s images have none; `drop` (the caller drops them) notes the count and the first."""
    if found.all():
        return []
    first, count = images[int((~found).argmax())], int((~found).sum())
    if policy == "error":
        raise PrunelensError(
            f"{csv}: no row for image {first} ({count} image(s) of {where} have none; missing_concepts: drop skips them)"
        )
    return [f"{dataset}: dropped {count} image(s) without concepts in {csv} (first: {first})"]
