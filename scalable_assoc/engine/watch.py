"""Waiting on a cluster that may fail: every wait of a run ends, with a message a person can act on.

Three ways a cluster stops finishing a run, each ending in a
:class:`~scalable_assoc.errors.ClusterFailure` (exit status 1; the chunks
already written are kept and a rerun resumes from them):

- every worker is gone (jobs ended, nodes lost) and none comes back within
  ``no_workers_timeout`` seconds: a thread beside the wait asks the scheduler
  how many workers it has, once a second, and cancels what the run waits on
  when the time is up (distributed's own ``scheduler.no-workers-timeout`` is a
  setting of the scheduler, which a run on someone else's cluster cannot set);
- the scheduler stops or the network to it fails: the client cancels every
  future itself ("scheduler-connection-lost");
- a task ends every worker that runs it (distributed's ``KilledWorker``): the
  caller names the task, see :meth:`ClusterWatch.completed`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import CancelledError
from typing import Any

from distributed import Client, Future, as_completed

from scalable_assoc.errors import ClusterFailure

logger = logging.getLogger(__name__)

#: How long a run waits with no worker at all before it gives up (seconds); ``run --no-workers-timeout``.
DEFAULT_NO_WORKERS_TIMEOUT = 300.0
#: How often the watch asks the scheduler for its worker count (seconds).
POLL_SECONDS = 1.0
_RESUME = "the chunks already finished are kept, and running the same command again resumes from them"


class ClusterWatch:
    """Watches one client's cluster while a run waits on it (a context manager).

    Futures handed to :meth:`gather` or :meth:`completed` are cancelled when
    the cluster has had no worker for ``no_workers_timeout`` seconds, so that
    the wait ends and :class:`ClusterFailure` says why.
    """

    def __init__(self, client: Client, no_workers_timeout: float = DEFAULT_NO_WORKERS_TIMEOUT, poll: float = POLL_SECONDS) -> None:
        if not no_workers_timeout > 0:
            raise ValueError(f"no_workers_timeout must be positive, got {no_workers_timeout!r}")
        self.client = client
        self.no_workers_timeout = float(no_workers_timeout)
        self.poll = float(poll)
        self.failure: ClusterFailure | None = None
        self._waiting: list[Future] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="scalable-assoc-cluster-watch", daemon=True)
        self.address = str(getattr(client.scheduler, "address", None) or "the scheduler")

    def __enter__(self) -> ClusterWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        # A watch stuck asking a scheduler that is gone is a daemon thread: not waited for long.
        self._thread.join(timeout=2 * self.poll)

    def _watch(self) -> None:
        without_since: float | None = None
        while not self._stop.wait(self.poll):
            try:
                workers = int(self.client.scheduler_info(n_workers=0).get("n_workers", 0))
            except Exception:  # the scheduler is gone: the client cancels the futures itself
                continue
            if workers > 0:
                without_since = None
                continue
            now = time.monotonic()
            without_since = now if without_since is None else without_since
            if now - without_since >= self.no_workers_timeout:
                self._give_up()
                return

    def _give_up(self) -> None:
        self.failure = ClusterFailure(
            f"the Dask cluster at {self.address} has had no worker for {self.no_workers_timeout:g} s (all workers lost or none "
            "started: jobs ended, nodes down, or workers that cannot reach the scheduler), so the run stopped; start workers "
            f"(or check why they ended: their logs, squeue/kubectl) and run again; {_RESUME}. "
            "Wait longer with --no-workers-timeout SECONDS"
        )
        with self._lock:
            waiting = [f for f in self._waiting if not f.done()]
        if waiting:
            try:
                self.client.cancel(waiting)
            except Exception:  # the wait then ends through the scheduler connection instead
                logger.debug("cancelling after the no-workers timeout failed", exc_info=True)

    def _track(self, futures: Iterable[Future]) -> list[Future]:
        listed = list(futures)
        with self._lock:
            self._waiting = [f for f in self._waiting if not f.done()] + listed
        return listed

    def _failure_from(self, error: BaseException) -> ClusterFailure:
        """What ended a wait, said for a person: the watch's own reason, else a lost scheduler."""
        if self.failure is not None:
            return self.failure
        reason = " ".join(str(error).split())
        return ClusterFailure(
            f"lost the connection to the Dask scheduler at {self.address} during the run ({reason or type(error).__name__}): "
            f"the scheduler stopped or the network to it failed; start it again (or give --scheduler a running one) and run "
            f"again; {_RESUME}"
        )

    def gather(self, futures: dict[Any, list[Future]]) -> dict[Any, list[Any]]:
        """``client.gather`` of a dict of future lists, ended with :class:`ClusterFailure` when the cluster fails."""
        self._track(f for parts in futures.values() for f in parts)
        try:
            return self.client.gather(futures)
        except CancelledError as error:
            raise self._failure_from(error) from None
        except OSError as error:  # the connection dropped while gathering
            raise self._failure_from(error) from None

    def completed(self, futures: Iterable[Future]) -> Iterator[Future]:
        """Yield each future as it finishes (done or erred); the caller re-raises task errors with ``result()``.

        A future cancelled by the watch or by a lost scheduler ends the wait with
        :class:`ClusterFailure` instead.
        """
        for future in as_completed(self._track(futures)):
            if future.cancelled():
                try:
                    future.result()
                except BaseException as error:  # FutureCancelledError, which carries the reason
                    raise self._failure_from(error) from None
                raise self._failure_from(CancelledError(str(future.key)))
            yield future
