"""How the operating system backs this process's memory, for steps that touch gigabytes once.

``meta`` at consortium scale fills a few gigabytes of fresh arrays (NumPy's
and Arrow's) and frees them again. Linux backs large allocations with
transparent huge pages where NumPy and Arrow's allocator ask for them; each
first touch of a 2 MiB page then has to find a free, contiguous 2 MiB of
physical memory, and on a machine whose memory is full of page cache the
kernel compacts memory to make one. That made the system time of ``meta``
vary between a third and nearly all of its user time; with ordinary 4 KiB
pages it stays small and steady. Only the paging changes: no number does.
"""

from __future__ import annotations

import ctypes
import logging
import sys

logger = logging.getLogger(__name__)

#: ``prctl`` option (linux/prctl.h): no transparent huge pages for this process and its children.
_PR_SET_THP_DISABLE = 41


def without_huge_pages() -> bool:
    """Ask Linux to back this process's memory (and its children's) with ordinary pages from now on.

    Returns True when the setting took effect; False on other systems or when
    the kernel refuses it (the process then runs as before).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
        done = prctl(_PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False
    if not done:
        logger.debug("prctl(PR_SET_THP_DISABLE) refused (errno %d); transparent huge pages stay as they were", ctypes.get_errno())
    return done
