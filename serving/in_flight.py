"""A count of calls in progress, shared by worker threads.

Both the batcher (does another batch run while this one collects?) and the AOTInductor
routing (is another model call running?) decide on it.

Example::

    calls = InFlight()
    with calls as others:  # counted in for the block; others = calls already running
        ...
    calls.begin(); ...; calls.end()  # the same, for a call that starts and ends apart
"""

from __future__ import annotations

import threading


class InFlight:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0

    @property
    def count(self) -> int:
        """Calls running now (a plain read: a stale value only shifts one decision)."""
        return self._count

    def begin(self) -> int:
        """Count one more call in; returns how many were running before it."""
        with self._lock:
            others = self._count
            self._count += 1
        return others

    def end(self) -> None:
        with self._lock:
            self._count -= 1

    def __enter__(self) -> int:
        return self.begin()

    def __exit__(self, *exc: object) -> None:
        self.end()
