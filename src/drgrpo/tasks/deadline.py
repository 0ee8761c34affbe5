"""A wall-clock deadline for Python code running in the main thread (SIGALRM), for verifiers.

Why a repeating alarm: a signal handler's exception is raised wherever the interpreter happens
to be when the signal lands. If that is inside a garbage-collector callback, a `__del__` or a
weakref callback, Python reports the exception as "unraisable" and drops it, and the guarded
code runs on past its deadline (seen in CI: hypothesis installs a gc callback, sympy then ran
for 13 s under a 0.2 s limit). The same happens when guarded code catches BaseException. So
after the first alarm, the timer keeps firing every `REPEAT_S` until the block exits; each
firing raises again, and one of them lands in ordinary code.

What no signal can do: interrupt a single long C call (a huge integer power, a regex that
backtracks for minutes). The handler runs when that call returns.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator

REPEAT_S = 0.05
"""Seconds between repeated alarms once the deadline has passed."""


def can_use_alarm() -> bool:
    """SIGALRM timers exist (POSIX) and this is the main thread (the only one they may set)."""
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def time_limit(seconds: float, exc_type: type[BaseException]) -> Iterator[None]:
    """Raise `exc_type` in the block after `seconds`, and again every REPEAT_S until it exits.

    Main thread only (`can_use_alarm`). Nests: an enclosing timer (another deadline, or
    pytest-timeout's) and its handler are restored on exit with the time it had left.
    """
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")

    def on_alarm(signum: int, frame: object) -> None:
        raise exc_type(f"deadline of {seconds:g} s passed")

    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, seconds, REPEAT_S)
    started = time.monotonic()
    try:
        yield
    finally:
        # An alarm that lands during the clean-up raises here too: retry until the timer is off
        # and the old handler is back.
        while True:
            try:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, old_handler)
                break
            except exc_type:
                continue
        if old_delay > 0:
            left = max(old_delay - (time.monotonic() - started), 1e-3)
            signal.setitimer(signal.ITIMER_REAL, left, old_interval)
