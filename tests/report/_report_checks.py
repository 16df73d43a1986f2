"""Checks of a written report, shared by tests/report and tests/system/test_demo_study.py: the
HTML opened in headless chromium (every image decoded, no SEVERE console entry) and the PDF
rasterised by poppler's ``pdftoppm`` (one non-blank PNG per page).

The browser is tests/dashboard's (its ``browser`` fixture and ``_require_browser``: Selenium
with Debian's chromium and chromedriver). A missing chromium, chromedriver or pdftoppm skips
the check, except under ``CI=true`` where it fails (``.ci/run`` installs them).
"""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

_DASHBOARD_CONFTEST = Path(__file__).resolve().parents[1] / "dashboard" / "conftest.py"


def _dashboard_conftest():
    spec = importlib.util.spec_from_file_location("_dashboard_conftest_for_reports", _DASHBOARD_CONFTEST)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_dash = _dashboard_conftest()
#: the dashboard tests' headless chromium fixture (window 1700×1100); import it into a test module
browser = _dash.browser


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_pdftoppm() -> str:
    """The ``pdftoppm`` executable (Debian poppler-utils); skip (fail under CI) without it."""
    exe = shutil.which("pdftoppm")
    if exe is None:
        if in_ci():
            pytest.fail("report test needs pdftoppm (Debian poppler-utils; CI installs it)", pytrace=False)
        pytest.skip("not installed: pdftoppm (Debian poppler-utils)")
    return exe


def expected_pdf_pages(n_merits: int, n_figures: int, rows_per_page: int) -> int:
    """Table pages (at least one) plus one page per figure."""
    return max(1, math.ceil(n_merits / rows_per_page)) + n_figures


def check_html_in_browser(driver, html_path: str | os.PathLike) -> dict:
    """Open the report in ``driver``; assert every image decoded (naturalWidth > 0) and no SEVERE
    browser log entry. Returns ``{"images": [[w, h, alt], ...], "title": ..., "merit_rows": n}``."""
    driver.get(Path(html_path).resolve().as_uri())
    deadline = time.monotonic() + 30
    while driver.execute_script("return document.readyState") != "complete":
        assert time.monotonic() < deadline, "the report page did not finish loading"
        time.sleep(0.05)
    images = driver.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.alt]);")
    assert images, "the report has no images"
    broken = [alt for complete, w, h, alt in images if not complete or w == 0 or h == 0]
    assert not broken, f"broken images: {broken}"
    severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    assert not severe, f"browser console errors: {severe}"
    rows = driver.execute_script("return document.querySelectorAll('#merits tbody tr').length;")
    return {"images": [[w, h, alt] for _, w, h, alt in images], "title": driver.title, "merit_rows": rows}


def check_pdf_pages(pdf_path: str | os.PathLike, out_dir: str | os.PathLike, n_pages: int) -> list[Path]:
    """Rasterise the PDF with pdftoppm (30 dpi); assert ``n_pages`` PNG pages, each non-blank
    (more than 1 % of its pixels darker than near-white, and not one flat colour)."""
    exe = require_pdftoppm()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([exe, "-r", "30", "-png", str(pdf_path), str(out / "page")], check=True, timeout=120,
                   capture_output=True)
    pages = sorted(out.glob("page-*.png"))
    assert len(pages) == n_pages, f"{len(pages)} PDF pages rendered, expected {n_pages}"
    import matplotlib.image

    for page in pages:
        img = np.asarray(matplotlib.image.imread(page), dtype=float)[..., :3].mean(axis=-1)
        assert img.std() > 0.01, f"{page.name} is one flat colour"
        assert (img < 0.9).mean() > 0.01, f"{page.name} is blank"
    return pages
