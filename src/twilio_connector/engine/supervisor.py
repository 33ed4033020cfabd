"""The engine's service loops, supervised: one that raises (a defect) is logged and started again, and reported
while it keeps failing, so that readiness never says ready over a loop restarting in circles."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from ..ports.journal import JournalDamaged

__all__ = ["Supervisor"]

log = logging.getLogger(__name__)

#: A failed loop is restarted after RESTART_FIRST s, doubling up to RESTART_CAP while it keeps failing; it
#: counts as failing (not ready) until it has run FAILING_FOR s without failing.
RESTART_FIRST, RESTART_CAP, FAILING_FOR = 1.0, 30.0, 15.0


class Supervisor:
    """Runs the engine's service loops; one that raises (a defect) is logged and started again, after a pause
    that doubles while it keeps failing. `failing` names the loops that failed within the last `FAILING_FOR`
    seconds, with their error, for readiness: a loop restarting in circles is not a ready connector."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._failures: dict[str, tuple[float, int, str]] = {}  # name -> (last failure, failures in a row, error)

    @property
    def failing(self) -> dict[str, str]:
        now = self._clock()
        return {name: error for name, (at, _, error) in self._failures.items() if now - at < FAILING_FOR}

    async def run(self, name: str, loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
        while True:
            started = self._clock()
            try:
                await loop()
                return
            except asyncio.CancelledError:
                raise
            except JournalDamaged:
                return  # the connector stops, and says why once
            except Exception as exc:
                pause = self._failed(name, exc, self._clock() - started)
            await asyncio.sleep(pause)

    def _failed(self, name: str, exc: Exception, ran: float) -> float:
        """Log the failure (a traceback the first time in a row, a line after) and return the pause before the
        restart."""
        _, row, _ = self._failures.get(name, (0.0, 0, ""))
        row = 1 if ran >= FAILING_FOR else row + 1
        error = f"{exc.__class__.__name__}: {exc}"
        self._failures[name] = (self._clock(), row, error)
        pause = min(RESTART_CAP, RESTART_FIRST * 2.0 ** (row - 1))
        if row == 1:
            log.exception("the %s loop failed; restarting it in %g s", name, pause)
        else:
            log.error(
                "the %s loop failed again (%d times in a row: %s); restarting it in %g s", name, row, error, pause
            )
        return pause
