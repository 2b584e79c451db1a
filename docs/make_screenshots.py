"""Make the README's screenshots of the report: its first screen and a heatmap, from the simulated reference study.

Run from the repository root (needs chromium, e.g. Debian's ``chromium``, and ``pip install playwright``)::

    python docs/make_screenshots.py [--work DIR] [--chromium /usr/bin/chromium]

It simulates the reference study (``scalable-assoc simulate``, defaults), runs its plan
(``scalable-assoc run``, which writes ``report.html``), opens the report in headless
chromium at 1280 x 900 CSS pixels and writes ``docs/images/report-first-screen.png`` and
``docs/images/report-heatmap.png`` (the species heatmap).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

IMAGES = Path(__file__).resolve().parent / "images"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="folder for the simulated study (default: a temporary one)")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="chromium executable")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or Path(temporary)
        study = work / "lifelines-sim"
        command = [sys.executable, "-m", "scalable_assoc.cli"]
        subprocess.run([*command, "simulate", "--out", str(study)], check=True)
        subprocess.run([*command, "run", str(study / "plan.yaml"), "--out", str(study / "results"), "--top", "0"], check=True)
        report = study / "results" / "report.html"

        from playwright.sync_api import sync_playwright

        IMAGES.mkdir(exist_ok=True)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(report.as_uri(), wait_until="load")
                page.screenshot(path=str(IMAGES / "report-first-screen.png"))
                heatmap = page.locator('figure[data-kind="heatmap"][data-layer="species"] img').first
                heatmap.screenshot(path=str(IMAGES / "report-heatmap.png"))
            finally:
                browser.close()
    print(f"wrote {IMAGES / 'report-first-screen.png'} and {IMAGES / 'report-heatmap.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
