"""Thread set-up for work that must yield the CPU to searches (writes, re-embedding)."""

from __future__ import annotations

import logging
import os
import sys
import threading

log = logging.getLogger("crossfade")


def lower_priority(nice: int) -> None:
    """Give the calling thread this CPU priority (Linux schedules threads apart, and a team
    of threads it starts inherits the value); elsewhere, or if refused, keep it as it is."""
    if nice and sys.platform == "linux":
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        except OSError as e:  # e.g. a process already nicer than asked: keep its value
            log.warning("%s keeps its CPU priority: %s", threading.current_thread().name, e)
