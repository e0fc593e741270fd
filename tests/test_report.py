"""`prunelens report`: a self-contained report.html of a real tiny run, checked in headless Chromium, and of a sweep."""

import base64
import json
import re
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import tiny_config

from prunelens.cli import main
from prunelens.experiment import run
from prunelens.report.sections import headline_sentence

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def chromium():
    """Headless Chromium via selenium; fails (never skips) when it is not installed."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: install chromium and chromium-driver (apt-get install -y chromium chromium-driver; CI's .ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1366,900"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def relative_links(html: str) -> list[str]:
    return [h for h in re.findall(r'href="([^"]+)"', html) if not h.startswith(("#", "data:"))]


def test_run_report_in_browser(tmp_path, capsys):
    chromium().quit()  # fail fast, before training, when the browser is missing
    cfg = tiny_config(tmp_path, lenses=[{"name": "gradcam", "options": {"references": ["floor"]}}])
    result = run(cfg, quiet=True)
    assert main(["report", str(result.run_dir)]) == 0
    page = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert page == result.run_dir / "report.html"
    assert "report.html" in json.loads((result.run_dir / "manifest.json").read_text())  # a derived file of the run
    html = page.read_text()
    assert not re.search(r'(src|href)="(https?:)?//', html), "the page must need no network"
    key = result.lenses[0].key  # gradcam-<hash of its non-default options>
    for section in ("accuracy", "efficiency", "layers", f"lens-{key}"):
        assert f'id="{section}"' in html
    assert "spearman" in html and "references: floor" in html  # the lens' headline table and its sentence in the story
    links = relative_links(html)
    assert {"metrics.csv", f"lens_{key}.csv"} <= set(links)
    assert all((page.parent / href).is_file() for href in links), links

    began = time.monotonic()
    driver = chromium()
    try:
        driver.get(page.as_uri())
        images = driver.execute_script("return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.src.slice(0, 22)])")
        assert len(images) >= 5  # accuracy, FLOPs, layer density and the lens' stored figures
        assert all(done and width > 0 and src == "data:image/png;base64," for done, width, src in images), images
        errors = [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
        assert not errors, errors
        assert driver.execute_script("return performance.getEntriesByType('resource').length") == 0
        targets = driver.execute_script("return Array.from(document.querySelectorAll('a.source')).map(a => a.href)")
        assert targets and all(Path(t.removeprefix("file://")).is_file() for t in targets), targets
        assert driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")  # no sideways scrolling
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1366, min(height, 12000))
        shot = tmp_path / "report.png"
        assert driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 1000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert base64.b64decode(driver.print_page())[:4] == b"%PDF"  # print media rules render
    finally:
        driver.quit()
    print(f"browser check: {time.monotonic() - began:.1f} s")


def sweep_file(tmp_path):
    data = {
        "name": "sw", "output_dir": str(tmp_path / "runs"),
        "dataset": {"name": "shapes", "image_size": 16, "options": {"n_train": 200, "n_val": 50, "n_test": 50}},
        "model": {"name": "conv2", "options": {"width": 0.125}},
        "pruning": {"rounds": 1}, "training": {"epochs": 1, "batch_size": 50},
        "sweep": {"grid": {"seed": [0, 1]}},
    }  # fmt: skip
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_sweep_report(tmp_path, capsys):
    assert main(["run", str(sweep_file(tmp_path)), "-q"]) == 0
    out = tmp_path / "runs" / "sweeps" / "sw"
    assert f"report: {out / 'report.html'}" in capsys.readouterr().out
    html = (out / "report.html").read_text()
    assert re.search(r"<td>[0-9.]+ ± [0-9.]+</td>", html)  # the two seeds share every other label: mean ± std
    assert html.count('src="data:image/png;base64,') >= 1 and "summary.csv" in html
    runs = set(pd.read_csv(out / "summary.csv")["run"])
    reports = [h for h in relative_links(html) if h.endswith("/report.html")]
    assert len(reports) == len(runs) == 2
    assert all((out / h).is_file() for h in relative_links(html))

    def mtimes():
        return {p: p.stat().st_mtime_ns for name in runs for p in (tmp_path / "runs" / name).rglob("*") if p.name != ".lock"}

    before = mtimes()
    assert main(["run", str(sweep_file(tmp_path)), "-q"]) == 0  # a finished sweep again: its runs stay untouched
    assert mtimes() == before

    pd.DataFrame({"x": ["density"], "rho": [0.5]}).to_csv(out / "mis_correlations.csv", index=False)
    assert main(["report", "sw", "--output-dir", str(tmp_path / "runs")]) == 0
    html = (out / "report.html").read_text()
    assert 'id="mis"' in html and 'href="mis_correlations.csv"' in html


def test_headline_sentence_needs_no_lens_specific_code():
    class NewLens:
        headline_metric = None

    headline = pd.DataFrame({"round": ["0", "1", "2", "floor"], "count": [3.0, 2.0, 1.0, float("nan")], "agreement": [1.0, 0.8, 0.6, 0.1]})
    records = [{"round": r, "density": d} for r, d in ((0, 1.0), (1, 0.5), (2, 0.25))]
    text = headline_sentence("new", NewLens, headline, records)
    assert text == "Lens new: agreement is 0.6 at round 2 (25 % of weights), 1 at the dense round; references: floor 0.1."
    NewLens.headline_metric = "count"
    assert headline_sentence("new", NewLens, headline, records).startswith("Lens new: count is 1 at round 2")
