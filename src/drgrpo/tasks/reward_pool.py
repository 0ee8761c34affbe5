"""Reward functions in worker processes, with a hard per-call limit that kills a stuck call.

Why processes: a signal cannot interrupt a long C call (`9**9**9`, a backtracking regex) and a
function that catches BaseException in a loop swallows every SIGALRM; only killing the process
stops them. Each call gets `limit_s` from the moment its worker starts it; KILL_GRACE_S past
that the worker is SIGKILLed, the call is reported as "timeout" and a fresh worker takes its
place.

Start cost is paid once, in the constructor: the workers are forked from a forkserver (a clean
interpreter, never the trainer with its CUDA context and threads) that has preloaded the
graders and math-verify, so a replacement starts in milliseconds; each worker then imports
the reward functions by name (import path or file.py) and warms math-verify up before it
reports ready, so no call pays a cold parser. Without a forkserver (non-POSIX), "spawn".
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import time
from collections import deque
from multiprocessing.connection import wait

START_TIMEOUT_S = 120.0
"""A worker that is not ready after this long is a broken environment, not a slow reward."""
KILL_GRACE_S = 0.1
"""A call is killed this long after its limit: a grader whose own deadline equals the limit
(math-verify's SIGALRM) then gives up cleanly first, and only what no signal stops is killed."""
MAX_CHUNK = 16
"""Most calls sent to a worker in one message."""
_PRELOAD = ["drgrpo.tasks.reward_pool", "drgrpo.tasks.graders", "math_verify"]


def _usable_cores() -> int:
    """Cores this process may run on (a container's or taskset's limit, not the machine's)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


class RewardPoolError(RuntimeError):
    """The pool cannot run: a worker failed to start or to import a reward function."""


def _context():
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)  # only effective before the forkserver starts
        return ctx
    return multiprocessing.get_context("spawn")


def _worker_main(conn, fns: list[tuple[str, dict]], path: list[str], cwd: str) -> None:
    """Load the functions, say ready, then answer (job, index, completion, example) messages."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's; it kills us
    # The forkserver kept the sys.path and cwd of its own start; import paths and relative
    # file.py paths must resolve as they do in the parent now.
    sys.path[:] = path
    os.chdir(cwd)
    from drgrpo.tasks.reward_spec import BUILTIN_REWARDS, load_reward_function

    try:
        funcs = [(load_reward_function(fn), args) for fn, args in fns]
        if any(fn in BUILTIN_REWARDS for fn, _ in fns):
            from drgrpo.tasks.graders import math_verify_reward

            math_verify_reward("\\boxed{0.5}", {"reference": "\\frac{1}{2}"})  # warm the parser
    except BaseException as err:  # noqa: BLE001 - reported to the parent, which raises
        conn.send(("init_error", f"{type(err).__name__}: {err}"))
        return
    conn.send(("ready", os.getpid()))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        for job, index, completion, example in message:  # a chunk; one reply per call
            func, args = funcs[index]
            try:
                out = (job, "ok", func(completion, example, **args))
            except BaseException as err:  # noqa: BLE001 - any reward bug is a counted fault
                out = (job, "error", f"{type(err).__name__}: {err}")
            try:
                conn.send(out)
            except Exception as err:  # an unpicklable return value
                conn.send(
                    (job, "error", f"could not send the value back: {type(err).__name__}: {err}")
                )


class _Worker:
    def __init__(self, ctx, fns: list[tuple[str, dict]]) -> None:
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(
            target=_worker_main, args=(child, fns, list(sys.path), os.getcwd()), daemon=True
        )
        self.process.start()
        child.close()
        self.ready = False
        self.started = time.monotonic()

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()


class RewardPool:
    """`workers` processes (default: every core) that run the given reward functions."""

    def __init__(self, fns: list[tuple[str, dict]], workers: int | None = None) -> None:
        self.fns = [(fn, dict(args)) for fn, args in fns]
        self.size = workers or _usable_cores()
        self.killed = 0
        """Workers killed so far (timeouts and crashes)."""
        self._ctx = _context()
        self._workers = [_Worker(self._ctx, self.fns) for _ in range(self.size)]
        self._wait_ready()

    def _wait_ready(self) -> None:
        while not all(w.ready for w in self._workers):
            starting = [w for w in self._workers if not w.ready]
            if time.monotonic() - min(w.started for w in starting) > START_TIMEOUT_S:
                self.close()
                raise RewardPoolError(f"reward workers not ready after {START_TIMEOUT_S:g} s")
            for conn in wait([w.conn for w in starting], timeout=1.0):
                self._on_ready(next(w for w in starting if w.conn is conn))

    def _on_ready(self, worker: _Worker) -> None:
        try:
            kind, detail = worker.conn.recv()
        except (EOFError, OSError):
            kind, detail = "init_error", f"exited with code {worker.process.exitcode}"
        if kind != "ready":
            self.close()
            raise RewardPoolError(f"a reward worker failed to start: {detail}")
        worker.ready = True

    def run(self, calls: list[tuple[int, str, dict]], limit_s: float) -> list[tuple[str, object]]:
        """Outcome per call (term index, completion, example), in order: ("ok", value),
        ("error", "Type: message") or ("timeout", None).

        Calls go out in chunks (fewer messages); each call's limit starts when the previous
        reply of its chunk arrives, and a killed worker's unstarted calls are sent again."""
        results: list = [None] * len(calls)
        queue = deque(range(len(calls)))
        busy: dict[_Worker, deque[int]] = {}  # worker -> its unanswered jobs, oldest first
        deadline: dict[_Worker, float] = {}  # limit of the job at the front
        while queue or busy:
            chunk = max(1, min(MAX_CHUNK, len(queue) // (2 * self.size)))
            for worker in self._workers:
                if queue and worker.ready and worker not in busy:
                    jobs = [queue.popleft() for _ in range(min(chunk, len(queue)))]
                    worker.conn.send([(job, *calls[job]) for job in jobs])
                    busy[worker], deadline[worker] = (
                        deque(jobs),
                        time.monotonic() + limit_s + KILL_GRACE_S,
                    )
            starting = [w for w in self._workers if not w.ready]
            timeout = max(0.0, min(deadline.values()) - time.monotonic()) if busy else 1.0
            for conn in wait([w.conn for w in busy] + [w.conn for w in starting], timeout):
                worker = next(w for w in self._workers if w.conn is conn)
                if not worker.ready:
                    self._on_ready(worker)
                    continue
                jobs = busy[worker]
                try:
                    _, kind, value = worker.conn.recv()
                except (EOFError, OSError):  # the reward ended its own process
                    worker.process.join(timeout=1.0)
                    kind, value = "error", f"worker exited with code {worker.process.exitcode}"
                    results[jobs[0]] = (kind, value)
                    self._drop(worker, busy, deadline, queue)
                    continue
                results[jobs.popleft()] = (kind, value)
                if jobs:
                    deadline[worker] = time.monotonic() + limit_s + KILL_GRACE_S
                else:
                    del busy[worker], deadline[worker]
            now = time.monotonic()
            for worker in [w for w in busy if now >= deadline[w]]:
                results[busy[worker][0]] = ("timeout", None)
                self._drop(worker, busy, deadline, queue)
            if starting and time.monotonic() - min(w.started for w in starting) > START_TIMEOUT_S:
                raise RewardPoolError(f"a replacement reward worker hung for {START_TIMEOUT_S:g} s")
        return results

    def _drop(self, worker: _Worker, busy: dict, deadline: dict, queue: deque) -> None:
        """Kill `worker`, whose front job is settled; its other jobs go back to the queue."""
        jobs = busy.pop(worker)
        del deadline[worker]
        jobs.popleft()
        queue.extendleft(reversed(jobs))
        self._replace(worker)

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        self.killed += 1
        self._workers[self._workers.index(worker)] = _Worker(self._ctx, self.fns)

    def close(self) -> None:
        for worker in self._workers:
            with contextlib.suppress(OSError):
                worker.conn.send(None)
        deadline = time.monotonic() + 1.0  # idle workers exit at once; a stuck one is killed
        for worker in self._workers:
            worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
            worker.kill()
        self._workers = []

    def __enter__(self) -> RewardPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
