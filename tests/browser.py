"""Looking at a report the way a person does: in Debian's chromium (``/usr/bin/chromium``), headless, through playwright.

Skipped when either is missing, unless ``SCALABLE_ASSOC_REQUIRE_BROWSER=1`` (CI), which makes that a failure.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

CHROMIUM = Path("/usr/bin/chromium")
REQUIRE = os.environ.get("SCALABLE_ASSOC_REQUIRE_BROWSER") == "1"


def _playwright():  # -> playwright's sync context manager
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if REQUIRE:
            pytest.fail("SCALABLE_ASSOC_REQUIRE_BROWSER=1 but playwright is not installed (pip install playwright)")
        pytest.skip("playwright is not installed")
    if not CHROMIUM.is_file():
        if REQUIRE:
            pytest.fail(f"SCALABLE_ASSOC_REQUIRE_BROWSER=1 but {CHROMIUM} is missing (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} is missing")
    return sync_playwright()


def check_report_in_browser(
    report: Path, figures: int, significant: int, read: Callable[[Any], Any] | None = None
) -> tuple[list[str], Any]:
    """Open ``report`` headless and check what a reader sees.

    The page loads with no console error, no failed request and no request other than
    ``file:``/``data:``; ``#significant-count`` reads ``significant``; it shows ``figures``
    figures, each loaded, laid out and not blank (pixel variance of its screenshot); every
    in-page link leads to an element and every other link to a file beside the report.
    ``read(page)`` reads anything else while the page is open.

    Returns the file links and what ``read`` returned.
    """
    from PIL import Image

    with _playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = browser.new_page()
            errors: list[str] = []
            outside: list[str] = []
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("requestfailed", lambda request: errors.append(f"failed: {request.url}"))
            page.on("request", lambda request: outside.append(request.url) if not request.url.startswith(("file:", "data:")) else None)
            page.goto(report.as_uri(), wait_until="load")
            assert int(page.inner_text("#significant-count")) == significant
            shown = page.query_selector_all("img.report-figure")
            assert len(shown) == figures
            for figure in shown:
                assert figure.evaluate("img => img.complete && img.naturalWidth > 0"), figure.get_attribute("alt")
                box = figure.bounding_box()
                assert box and box["width"] > 0 and box["height"] > 0
                pixels = np.asarray(Image.open(io.BytesIO(figure.screenshot())).convert("L"), dtype=float)
                assert pixels.var() > 0, f"blank figure: {figure.get_attribute('alt')}"
            links = page.eval_on_selector_all("a[href]", "links => links.map(a => a.getAttribute('href'))")
            anchors = [link for link in links if link.startswith("#")]
            assert all(page.query_selector(link) for link in anchors), anchors  # in-page links lead to sections
            extra = read(page) if read is not None else None
        finally:
            browser.close()
    assert not errors, errors
    assert not outside, outside
    files = [link for link in links if not link.startswith("#")]
    for link in files:  # every output file, relative to the report
        assert not re.match(r"^[a-z]+:", link), link
        assert (report.parent / link).is_file(), link
    return files, extra
