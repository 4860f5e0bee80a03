"""Named kill points, so the fault-injection suite (``make faults``) can crash a step exactly
where a crash does the most harm: a file fully written but not yet renamed into place, a model
version created but not yet tagged, one alias moved and the next not.

Environment (read once per process; unset outside the suite, where a failpoint costs one
comparison):

- ``VISIONFORGE_FAILPOINT=NAME[@N]``: the N-th time (default the first) this process passes the
  point named NAME, it sends itself SIGKILL, as the kernel's OOM killer or ``kill -9`` would:
  no ``finally``, no ``atexit``, no flush.
- ``VISIONFORGE_FAILPOINT_TRACE=FILE``: append one JSON line per point passed
  (``{"name": ..., "t": Unix time}``), which is how the suite learns the points a step passes
  and when.

Point names are ``<kind>:<what>``: ``write:<file name>`` (before the rename that publishes a
file), ``dataset:swap`` (between moving the old dataset aside and the new one in),
``mlflow:<call>`` (after a tracking or registry call returned).
"""

from __future__ import annotations

import json
import os
import signal
import time
from functools import cache

KILL_ENV = "VISIONFORGE_FAILPOINT"
TRACE_ENV = "VISIONFORGE_FAILPOINT_TRACE"

_passed: dict[str, int] = {}


def parse_failpoint(text: str) -> tuple[str, int]:
    """``NAME@N`` -> (NAME, N); a plain ``NAME`` is its first pass."""
    name, _, nth = text.rpartition("@")
    if not name or not nth.isdigit():
        return text, 1
    return name, int(nth)


@cache
def _settings() -> tuple[str | None, int, str | None]:
    target, nth = parse_failpoint(os.environ.get(KILL_ENV) or "")
    return (target or None), nth, os.environ.get(TRACE_ENV) or None


def failpoint(name: str) -> None:
    """Pass the point ``name``: record it when tracing, die here when the suite says so."""
    target, nth, trace = _settings()
    if target is None and trace is None:
        return
    count = _passed[name] = _passed.get(name, 0) + 1
    if trace is not None:
        with open(trace, "a") as handle:
            handle.write(json.dumps({"name": name, "t": round(time.time(), 3)}) + "\n")
    if name == target and count == nth:
        os.kill(os.getpid(), signal.SIGKILL)
