"""A worker thread that runs the newest job only: the segmentation node's inference, off the executor.

While the worker computes, the executor stays free for subscriptions, timers and parameter services.
A job submitted while another waits replaces it (that one is dropped and counted): a node that falls
behind serves the freshest sweep instead of a growing queue. No ROS import here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class LatestWorker:
    def __init__(self, run: Callable[[object], None], name: str = "worker"):
        self._run = run
        self._ready = threading.Condition()
        self._job = None
        self._stopping = False
        self.dropped = 0          # jobs replaced by a newer one before they started
        self.busy_since: float | None = None  # time.monotonic() the running job started, None when idle
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, job) -> None:
        with self._ready:
            if self._job is not None:
                self.dropped += 1
            self._job = job
            self._ready.notify()

    @property
    def stopping(self) -> bool:
        return self._stopping

    def _loop(self) -> None:
        while True:
            with self._ready:
                while self._job is None and not self._stopping:
                    self._ready.wait()
                if self._stopping:
                    return
                job, self._job = self._job, None
                self.busy_since = time.monotonic()
            try:
                self._run(job)
            except Exception:  # the worker outlives any one job
                if not self._stopping:
                    log.exception("a job failed in the worker thread")
            finally:
                self.busy_since = None

    def stop(self, timeout_s: float) -> bool:
        """Ask the thread to end after its current job and wait at most timeout_s; True if it ended.
        A job still running after that is abandoned: the thread is a daemon and dies with the process."""
        with self._ready:
            self._stopping = True
            self._job = None
            self._ready.notify()
        self._thread.join(timeout_s)
        return not self._thread.is_alive()
