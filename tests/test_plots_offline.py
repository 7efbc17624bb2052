"""`dvc plots show` / `dvc plots diff` render every plot without network.

.dvc/config points DVC at plots/vendor/offline.html, DVC's page with Vega, Vega-Lite and
Vega-Embed inlined (plots/vendor/build.py). The page is opened in headless Chromium with every
host name unresolvable, and each Vega plot must have drawn its canvas or SVG. The same page with
DVC's default template (scripts from a CDN) draws none: the check can fail, and the network is
really off. Chromium: skipped when absent (a user's machine), required in CI
(``DEEPCOVID_REQUIRE_BROWSER=1``; .ci/run installs it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from workspace import REPO

VENDORED = {"vega": "5.20.2", "vega-lite": "5.2.0", "vega-embed": "6.18.2"}


@pytest.fixture(scope="module")
def chromium() -> str:
    found = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    if found is None:
        if os.environ.get("DEEPCOVID_REQUIRE_BROWSER") == "1":
            pytest.fail("headless Chromium required (DEEPCOVID_REQUIRE_BROWSER=1) but not found")
        pytest.skip("no Chromium on this machine")
    return found


def _dvc() -> str:
    return shutil.which("dvc", path=str(Path(sys.executable).parent)) or "dvc"


def _render(chromium: str, page: Path) -> str:
    """The DOM after the page's scripts ran, with no host name resolvable (no network)."""
    proc = subprocess.run(
        [
            chromium,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--virtual-time-budget=20000",
            f"--user-data-dir={page.parent / 'chromium-profile'}",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _vega_plots() -> int:
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    return sum(1 for p in spec["plots"] if isinstance(p, dict))  # the data-series plots (not image folders)


def _drawn(dom: str) -> int:
    """Vega-Embed containers holding a drawn canvas or SVG."""
    count = 0
    for block in re.split(r'(?=<div[^>]*class="[^"]*vega-embed)', dom)[1:]:
        if re.search(r"<canvas|<svg[^>]*class=\"marks\"", block[:5000]):
            count += 1
    return count


def test_the_template_holds_the_pinned_scripts_and_no_remote_one():
    page = (REPO / "plots/vendor/offline.html").read_text(encoding="utf-8")
    for name, version in VENDORED.items():
        assert f"<!-- {name}@{version} (npm, sha256 " in page
        assert (REPO / f"plots/vendor/LICENSE-{name}").is_file()
    assert page.count("{plot_divs}") == 1 and "<script src=" not in page
    config = (REPO / ".dvc/config").read_text()
    assert re.search(r"html_template\s*=\s*\.\./plots/vendor/offline\.html", config)


def test_dvc_plots_show_and_diff_render_every_plot_offline(chromium, tmp_path):
    expected = _vega_plots()
    assert expected >= 6
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    for command, out in ((["plots", "show"], tmp_path / "show"), (["plots", "diff", "HEAD"], tmp_path / "diff")):
        proc = subprocess.run(
            [_dvc(), *command, "-o", str(out)], cwd=REPO, capture_output=True, text=True, env=env, timeout=300
        )
        assert proc.returncode == 0, proc.stderr
        html = (out / "index.html").read_text(encoding="utf-8")
        assert "cdn.jsdelivr.net" not in html
        assert _drawn(_render(chromium, out / "index.html")) == expected, command
    # the same plots with DVC's default page (its scripts on a CDN): nothing is drawn offline
    default = tmp_path / "default.html"
    default.write_text("<!DOCTYPE html><html><head>{scripts}</head><body>{plot_divs}</body></html>")
    proc = subprocess.run(
        [_dvc(), "plots", "show", "--html-template", str(default), "-o", str(tmp_path / "cdn")],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "cdn.jsdelivr.net" in (tmp_path / "cdn" / "index.html").read_text()
    assert _drawn(_render(chromium, tmp_path / "cdn" / "index.html")) == 0
