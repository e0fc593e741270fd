"""`prunelens report RUN|SWEEP`: one self-contained `report.html` in the run's (or sweep's) directory.

Every figure is embedded as a base64 PNG and the CSS is inline, so the page opens from disk with no network;
it is laid out for a laptop screen (max-width, scrolling tables, figures scaled to the width) and for print.
Every number table links to the CSV (relative, next to the page) it came from. The content is assembled in
`report/sections.py`; lenses contribute their sections through the lens interface. In a run the page is a
derived file (listed in the manifest, written under the run's lock); a sweep's directory has no manifest.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Collection
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup, escape

from prunelens.errors import PrunelensError
from prunelens.report.sections import run_content, sweep_content
from prunelens.runs import Run
from prunelens.store import MANIFEST, atomic_write

REPORT = "report.html"
TEMPLATE = "report.html.j2"
SUMMARY = "summary.csv"


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def code(text: str) -> Markup:
    """Escaped text with `backticked` spans as <code>."""
    return Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", str(escape(text))))


def _version() -> str:
    try:
        return metadata.version("prunelens")
    except metadata.PackageNotFoundError:
        return ""


def render(content: dict[str, Any]) -> str:
    """The page of `content` (title, facts, story, sections), figures turned into data URIs."""
    source = (resources.files("prunelens.report") / TEMPLATE).read_text(encoding="utf-8")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["code"] = code
    for section in content["sections"]:
        section.figures = [(caption, data_uri(png)) for caption, png in section.figures]
    return env.from_string(source).render(**content, version=_version())


def write_run_report(run: Run) -> Path:
    """`<run>/report.html`; returns its path."""
    if not run.exists():
        raise PrunelensError(f"{run.root}: not a run directory")
    page = render(run_content(run)).encode("utf-8")
    with run.writing():
        run.store.write(REPORT, page)
    return run.root / REPORT


def is_sweep(path: Path) -> bool:
    return (path / SUMMARY).is_file() and not (path / MANIFEST).is_file()


def write_sweep_report(root: Path, runs: Collection[str] | None = None) -> Path:
    """`<output_dir>/sweeps/<name>/report.html`, after the own reports of the sweep's runs named in `runs` (run
    directory names; default: every run); runs with a report are linked. Returns its path."""
    root = Path(root)
    if not is_sweep(root):
        raise PrunelensError(f"{root}: not a sweep directory (no {SUMMARY})")
    runs_dir = root.parent.parent

    def link(name: str) -> str | None:
        run = Run(runs_dir / name)
        if not run.exists():
            return None
        if runs is None or name in runs:
            write_run_report(run)
        return f"../../{name}/{REPORT}" if (run.root / REPORT).is_file() else None

    path = root / REPORT
    atomic_write(path, render(sweep_content(root, link)).encode("utf-8"))
    return path


def write_report(where: str | Path, output_dir: str | Path = "runs") -> Path:
    """The report of a run or a sweep given as a directory, a sweep name under `<output_dir>/sweeps`, or
    anything `Run.open` accepts."""
    path = Path(where)
    for candidate in (path, Path(output_dir) / "sweeps" / str(where)):
        if is_sweep(candidate):
            return write_sweep_report(candidate)
    return write_run_report(Run.open(where, output_dir))
