"""process_memory: the meta command's process asks Linux for ordinary pages (no transparent huge pages)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux only")
def test_without_huge_pages_sets_the_process_flag() -> None:
    # in a child process: the flag stays with the process that set it
    script = (
        "from scalable_assoc.process_memory import without_huge_pages\n"
        "print(without_huge_pages())\n"
        "print([line for line in open('/proc/self/status') if line.startswith('THP_enabled')])\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "True"
    if out[1] != "[]":  # kernels since 5.0 report the flag
        assert "THP_enabled:\\t0" in out[1]
