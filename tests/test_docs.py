"""The documentation's examples run, and its links resolve.

Convention: every page in docs/extending/ ends with its example, the page's **last** ```python block. It is
complete and self-contained (its own imports), registers what it adds under a name ending in `_example`,
uses it in a tiny experiment, checks the results with `assert`, and writes only into a
`tempfile.TemporaryDirectory()`. Each example runs here with `exec` in a fresh namespace, in an empty
working directory, with the temporary directories redirected into tmp_path, so a write anywhere else in
tmp_path fails the test. The registries (and `LENS_FIGURES`) are restored afterwards, so the examples' names
do not leak into other tests. The other python blocks of the pages are fragments: they are only compiled.
Tracebacks point at the lines of the markdown file.

Every relative link in README.md, docs/*.md and docs/extending/*.md must point to an existing file, and a
`#fragment` into a markdown file to one of its headings (GitHub's anchors).
"""

from __future__ import annotations

import re
import tempfile
import time
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXTENDING = sorted((DOCS / "extending").glob("*.md"))
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md")), *EXTENDING]
EXAMPLE_SECONDS = 60  # generous (a loaded CI machine): each takes a few seconds once prunelens is imported

FENCE = re.compile(r"^```([\w+-]*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def code_blocks(path: Path, language: str = "python") -> list[tuple[int, str]]:
    """(line of the block's first code line, code) of every fenced block in `language`."""
    text = path.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start(2)) + 1, m.group(2)) for m in FENCE.finditer(text) if m.group(1) == language]


def padded(line: int, code: str) -> str:
    """`code` preceded by blank lines, so compiled line numbers are the markdown file's."""
    return "\n" * (line - 1) + code


def test_every_extending_page_has_an_example():
    assert {p.stem for p in EXTENDING} >= {"score", "dataset", "model", "lens", "runs"}
    for page in EXTENDING:
        blocks = code_blocks(page)
        assert blocks, f"{page.name}: no python example"
        assert "tempfile.TemporaryDirectory()" in blocks[-1][1], f"{page.name}: the example must write into a temporary directory"


@pytest.mark.parametrize("page", [DOCS / "extending.md", *EXTENDING], ids=lambda p: str(p.relative_to(DOCS)))
def test_python_blocks_compile(page):
    for line, code in code_blocks(page):
        compile(padded(line, code), str(page), "exec")


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """An empty working directory, temporary directories under tmp_path/tmp, and registries restored after
    (imports first, so that an example's time is its own)."""
    import prunelens.experiment  # noqa: F401
    from prunelens.data.base import DATASETS
    from prunelens.lenses import LENSES
    from prunelens.models import MODELS
    from prunelens.pruning.scores import SCORES
    from prunelens.report import LENS_FIGURES

    for registry in (SCORES, DATASETS, MODELS, LENSES):
        monkeypatch.setattr(registry, "_items", dict(registry._items))
    figures = dict(LENS_FIGURES)
    work, temp = tmp_path / "work", tmp_path / "tmp"
    work.mkdir()
    temp.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    yield work, temp
    LENS_FIGURES.clear()
    LENS_FIGURES.update(figures)


@pytest.mark.parametrize("page", EXTENDING, ids=lambda p: p.stem)
def test_example_runs(page, isolated):
    work, temp = isolated
    line, code = code_blocks(page)[-1]
    start = time.perf_counter()
    exec(compile(padded(line, code), str(page), "exec"), {"__name__": f"docs_example_{page.stem}"})
    seconds = time.perf_counter() - start
    assert not list(work.iterdir()), f"the example wrote into the working directory: {sorted(work.iterdir())}"
    assert not list(temp.iterdir()), f"the example left files in the temporary directory: {sorted(temp.iterdir())}"
    assert seconds < EXAMPLE_SECONDS, f"the example took {seconds:.0f} s; keep it tiny"


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a markdown file (outside code blocks)."""
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    out: set[str] = set()
    for heading in re.findall(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", text, re.M):
        slug = "".join(c for c in heading.lower() if c in " -_" or unicodedata.category(c)[0] in "LN").replace(" ", "-")
        n, unique = 0, slug
        while unique in out:
            n += 1
            unique = f"{slug}-{n}"
        out.add(unique)
    return out


def relative_links(path: Path) -> list[str]:
    """Link targets of `path` that are neither URLs nor pure in-page anchors (code blocks and spans left out)."""
    text = re.sub(r"`[^`\n]*`", "", FENCE.sub("", path.read_text(encoding="utf-8")))
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t, re.I) and not t.startswith("#")]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = []
    for target in relative_links(page):
        file, _, fragment = target.partition("#")
        dest = (page.parent / file).resolve()
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            broken.append(f"{target}: no heading #{fragment} in {dest.name}")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {broken}"


def test_link_check_sees_the_index_links():
    """The link check is not vacuous: the index links to every page of docs/extending/."""
    targets = set(relative_links(DOCS / "extending.md"))
    assert {f"extending/{p.name}" for p in EXTENDING} <= targets
    assert "3-importance-scores" in anchors(DOCS / "methods.md")
