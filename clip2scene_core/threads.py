"""How many threads torch runs on: as asked, or (0) the cores this process may use that are not busy."""

from __future__ import annotations

import logging
import os

import torch

from .errors import UsageError

log = logging.getLogger(__name__)


def free_cores(cores: int | None = None, load: float | None = None) -> int:
    """max(1, cores - round(load)): cores this process may run on (sched_getaffinity) less the 1-minute load
    average. cores and load can be given (tests); else they are read from the system."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:
            load = 0.0
    return max(1, int(cores) - round(load))


def choose_threads(requested: int, cores: int | None = None, load: float | None = None) -> int:
    """requested when positive; 0: free_cores(cores, load)."""
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 0:
        raise UsageError(f"threads must be a whole number, 0 (choose from the free cores) or more, got {requested!r}")
    return requested if requested > 0 else free_cores(cores, load)


def apply_threads(requested: int) -> tuple[int, str]:
    """torch.set_num_threads(choose_threads(requested)); (threads, a line saying what and why)."""
    threads = choose_threads(requested)
    torch.set_num_threads(threads)
    why = "as asked" if requested > 0 else "free cores: usable cores less the 1-minute load average"
    message = f"torch runs on {threads} thread(s) ({why})"
    log.info(message)
    return threads, message
