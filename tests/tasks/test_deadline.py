"""drgrpo.tasks.deadline: the repeating SIGALRM deadline survives being swallowed once."""

from __future__ import annotations

import gc
import signal
import sys
import time

import pytest

from drgrpo.tasks.deadline import REPEAT_S, can_use_alarm, time_limit

pytestmark = [
    pytest.mark.skipif(not can_use_alarm(), reason="needs SIGALRM in the main thread"),
    # A deadline that does not fire again would hang; the thread method still ends the run.
    pytest.mark.timeout(20, method="thread"),
]


class Late(BaseException):
    pass


def test_a_deadline_swallowed_by_the_guarded_code_fires_again():
    caught = 0
    start = time.monotonic()
    with pytest.raises(Late), time_limit(0.1, Late):
        while True:
            try:
                while True:
                    pass
            except Late:
                caught += 1  # a careless `except BaseException` that carries on
                if caught > 3:
                    raise
    elapsed = time.monotonic() - start
    assert caught == 4
    assert 0.1 + 3 * REPEAT_S * 0.5 < elapsed < 2.0


def test_a_deadline_dropped_inside_a_gc_callback_fires_again(monkeypatch):
    """The CI failure: the alarm lands in a garbage-collector callback, where an exception is
    'unraisable' and dropped. A one-shot timer would never fire again; this one does."""
    dropped = []
    monkeypatch.setattr(sys, "unraisablehook", lambda info: dropped.append(info.exc_type))
    slow_once = []

    def callback(phase, info):
        if phase == "start" and not slow_once:
            slow_once.append(True)
            time.sleep(0.5)  # the first deadline (0.1 s) lands in here

    gc.callbacks.append(callback)
    try:
        start = time.monotonic()
        with pytest.raises(Late), time_limit(0.1, Late):
            gc.collect()  # the callback sleeps; the first alarm interrupts it, dropped
            while True:
                pass
    finally:
        gc.callbacks.remove(callback)
    assert dropped and dropped[0] is Late
    assert time.monotonic() - start < 2.0


def test_a_block_that_finishes_leaves_no_timer_and_the_old_handler():
    handler = signal.getsignal(signal.SIGALRM)
    before, interval = signal.getitimer(signal.ITIMER_REAL)  # pytest-timeout may have one
    with time_limit(5.0, Late):
        pass
    after = signal.getitimer(signal.ITIMER_REAL)
    if before == 0:
        assert after == (0.0, 0.0)
    else:
        assert 0 < after[0] <= before and after[1] == interval
    assert signal.getsignal(signal.SIGALRM) is handler


def test_nested_deadlines_restore_the_outer_timer_and_handler():
    fired = []

    def outer_handler(*_):
        fired.append(True)

    previous = signal.signal(signal.SIGALRM, outer_handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 30.0)
        with pytest.raises(Late), time_limit(0.05, Late):
            time.sleep(5)
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 25.0 < remaining <= 30.0
        assert signal.getsignal(signal.SIGALRM) is outer_handler
        assert not fired
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_inner_deadline_raises_its_own_exception_inside_an_outer_one():
    class Outer(BaseException):
        pass

    with pytest.raises(Late), time_limit(10.0, Outer), time_limit(0.05, Late):
        time.sleep(5)


@pytest.mark.parametrize("seconds", [0, -1.0])
def test_a_non_positive_limit_is_refused(seconds):
    with pytest.raises(ValueError, match="seconds must be > 0"), time_limit(seconds, Late):
        pass
