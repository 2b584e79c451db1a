"""How this process's memory is backed and given back: glibc's allocator and Linux's pages.

Three settings for steps that allocate and free gigabytes, each a no-op where
the C library is not glibc or the system not Linux (no number changes either
way, only how much memory stays resident and how much system time it costs):

- :func:`release_freed_memory` (``malloc_trim``): give freed heap memory back;
- :func:`map_large_allocations` (``mallopt``): serve chunk-sized allocations by
  their own mappings, so freeing them gives them back at once;
- :func:`without_huge_pages` (``prctl``): ordinary pages instead of transparent
  huge pages.

Standard library only (``ctypes``): every layer may use it.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

#: glibc's ``mallopt`` parameter for the size from which an allocation is its own ``mmap`` (``M_MMAP_THRESHOLD``).
_M_MMAP_THRESHOLD = -3
#: Allocations from this size on are mapped on their own while converting: a store chunk (about 32 MiB) and zarr's
#: encoding buffers of a chunk (a few MiB and more), not the text blocks' 1-10 MiB temporaries, which heaps reuse.
STEADY_MMAP_THRESHOLD = 8 * 2**20
#: glibc's ``mallopt`` parameter for the free memory at a heap's top kept rather than given back (``M_TRIM_THRESHOLD``).
_M_TRIM_THRESHOLD = -1
#: Kept at a heap's top while converting (set with the mmap threshold, which otherwise leaves it at 128 kB): the
#: 1-8 MiB text buffers freed and allocated again for every block of text are then re-used, not touched afresh.
STEADY_TRIM_THRESHOLD = 32 * 2**20
#: ``prctl`` option (linux/prctl.h): no transparent huge pages for this process and its children.
_PR_SET_THP_DISABLE = 41


def _libc(name: str, argtypes: list[Any], restype: Any) -> Callable[..., int] | None:
    """The C library's function ``name`` on Linux, or None (another system, or a C library without it)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = argtypes, restype
    return function  # type: ignore[no-any-return]


_MALLOC_TRIM = _libc("malloc_trim", [ctypes.c_size_t], ctypes.c_int)
_MALLOPT = _libc("mallopt", [ctypes.c_int, ctypes.c_int], ctypes.c_int)
_PRCTL = _libc("prctl", [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong], ctypes.c_int)


def release_freed_memory() -> None:
    """Give the memory freed since the last call back to the system (glibc only; elsewhere nothing is done).

    Converting frees a few chunk-sized arrays and many text buffers of 1-30 MB per block; glibc raises its mmap
    threshold as large ones are freed, so later ones come from its heaps (one per thread: reader, zarr's writers)
    and stay there once freed. Without this, converting the 50,000-participant MetaPhlAn table peaked some 60 MB
    higher. ``malloc_trim`` costs a walk over the free lists, and what it gives back is touched afresh when used
    again: the converter calls it every few chunks (:data:`scalable_assoc.io.store.TRIM_EVERY_CHUNKS`).
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def map_large_allocations() -> None:
    """Make glibc serve every allocation of :data:`STEADY_MMAP_THRESHOLD` bytes or more by ``mmap`` (elsewhere: nothing).

    glibc's threshold starts at 128 kB and rises to the size of each mapped block freed, up to 32 MiB: after the
    first store chunk (just under 32 MiB) is freed, chunks and zarr's encoding buffers come from the heaps of
    whichever threads (reader, zarr's encoders) freed memory last, and how much of those heaps is retained
    depended on the threads' timing: the peak of a 50,000-participant conversion moved by some 50 MB from run to
    run. A fixed threshold maps each of them on its own and unmaps it when freed, so the peak is the blocks
    alive, run after run. Setting it ends glibc's dynamic threshold for the process (allocations from 8 MiB stay
    mapped, as glibc maps them by default until a large block is freed).
    """
    # Setting the mmap threshold ends glibc's dynamic trim threshold too (left at 128 kB): every text buffer freed
    # at a heap's top went back to the system and was touched afresh for the next block (the 307 MB MetaPhlAn
    # table's first pass: 35,000 page faults, one per 9 kB read).
    set_heap_thresholds(STEADY_MMAP_THRESHOLD, STEADY_TRIM_THRESHOLD)


def set_heap_thresholds(mmap_bytes: int, trim_bytes: int) -> None:
    """Fix glibc's ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` (bytes) for this process, as the ``MALLOC_*_THRESHOLD_``
    environment variables would at its start (elsewhere: nothing)."""
    if _MALLOPT is not None:
        _MALLOPT(_M_MMAP_THRESHOLD, mmap_bytes)
        _MALLOPT(_M_TRIM_THRESHOLD, trim_bytes)


def without_huge_pages() -> bool:
    """Ask Linux to back this process's memory (and its children's) with ordinary pages from now on.

    ``meta`` at consortium scale fills a few gigabytes of fresh arrays (NumPy's and Arrow's) and frees them again.
    Where those are backed by transparent huge pages, each first touch of a 2 MiB page needs a free, contiguous
    2 MiB of physical memory, which the kernel compacts memory to find on a machine full of page cache: the system
    time of ``meta`` varied between a third and nearly all of its user time, and stays small and steady with
    ordinary pages. Returns True when the setting took effect; False on other systems or when the kernel refuses
    it (the process then runs as before).
    """
    if _PRCTL is None:
        return False
    if _PRCTL(_PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0:
        return True
    logger.debug("prctl(PR_SET_THP_DISABLE) refused (errno %d); transparent huge pages stay as they were", ctypes.get_errno())
    return False
