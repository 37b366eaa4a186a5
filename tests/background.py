"""Processes that tests start at the beginning of the session and check when their turn comes.

Most tests run in pytest's own process and leave one of the two cores idle much of the
time, while a few (torchrun launches, the memory measurements) are fresh interpreters that
spend ~10 s each importing torch and diffusers. Started early, those processes run beside
the in-process tests instead of one after another at the end; their tests then find them
finished. What they run and what the tests assert is unchanged.

A test module declares what it needs with `early(name, start, module, tests)`: `start`
gets pytest's `getfixturevalue`, makes the inputs and returns a function that starts the
processes and returns their `Run` (or a dict of them).
`tests/conftest.py` starts, at the session's first test, every declared start whose tests
are selected, one after another in a background thread; the module's fixture calls
`result(name, getfixturevalue)`, which waits (or starts the run there and then when nothing
started it, e.g. for a single test picked with -k).
"""

import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

TIMEOUT_S = 900.0  # bounds a hang; the slowest run takes ~1-2 minutes on 2 busy cores


class Run:
    """A command started now; its output goes to temporary files (a pipe nobody reads
    would block it) and `wait` returns it as a CompletedProcess with the time it ended."""

    def __init__(self, command: list[str], **popen_kwargs):
        self.command = command
        self._out, self._err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        self.process = subprocess.Popen(command, stdout=self._out, stderr=self._err, **popen_kwargs)
        # The in-process tests are the session's critical path but leave a core idle a third
        # of the time (ffmpeg, Python, sleeps). Under SCHED_IDLE the kernel gives this process
        # (and its children, e.g. torchrun's ranks) a core only when nothing else wants it, so
        # it takes that idle time instead of slowing the tests beside it. At nice 19 it still
        # did (469-475 s against 433 s for the session without these processes; 427-473 s
        # under SCHED_IDLE). Nothing they assert depends on their speed. Set right after the
        # start: the interpreter makes no thread that early.
        if hasattr(os, "SCHED_IDLE"):  # Linux
            os.sched_setscheduler(self.process.pid, os.SCHED_IDLE, os.sched_param(0))
        else:
            os.setpriority(os.PRIO_PROCESS, self.process.pid, 19)  # the lowest nice level
        self.ended_at: float | None = None
        self._waiter = threading.Thread(target=self._wait_for_exit, daemon=True)
        self._waiter.start()

    def _wait_for_exit(self) -> None:
        self.process.wait()
        self.ended_at = time.time()

    def wait(self, timeout_s: float = TIMEOUT_S) -> subprocess.CompletedProcess:
        self._waiter.join(timeout_s)
        if self._waiter.is_alive():
            self.kill()
            raise TimeoutError(f"{' '.join(self.command[:4])} ... did not finish within {timeout_s:.0f} s")
        outputs = []
        for handle in (self._out, self._err):
            handle.seek(0)
            outputs.append(handle.read().decode(errors="replace"))
        return subprocess.CompletedProcess(self.command, self.process.returncode, *outputs)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@dataclass
class _Declared:
    start: Callable
    module: Path
    tests: tuple[str, ...]
    started: object = None
    queued: bool = False
    ready: threading.Event = field(default_factory=threading.Event)
    error: Exception | None = None


_declared: dict[str, _Declared] = {}


def early(name: str, start: Callable, module: str, tests: tuple[str, ...]) -> None:
    """Declares a run that the tests named `tests` of `module` (a test file's __file__) check."""
    _declared[name] = _Declared(start, Path(module).resolve(), tuple(tests))


def modules() -> set[Path]:
    """The test files that declared early runs."""
    return {run.module for run in _declared.values()}


def wanted_by(items) -> list[str]:
    """The declared runs that at least one of the selected `items` checks."""
    return [
        name
        for name, run in _declared.items()
        if any(item.path == run.module and item.originalname in run.tests for item in items)
    ]


def start_in_background(names: list[str], getfixturevalue) -> threading.Thread:
    """Starts the runs one after another (each waits for the one before: a few processes at
    a time, not all of them) in a daemon thread. The fixtures they need are made here,
    in the calling thread, first."""
    starts = []
    for name in names:
        run = _declared[name]
        run.queued = True
        try:
            starts.append((run, run.start(getfixturevalue)))
        except Exception as error:  # reported to the test that asks for it
            run.error = error
            run.ready.set()

    def launch_each():
        for run, begin in starts:
            try:
                run.started = begin()
                for each in _runs_of(run.started):
                    each.wait()
            except Exception as error:  # reported to the test that asks for it
                run.error = error
            finally:
                run.ready.set()

    thread = threading.Thread(target=launch_each, daemon=True, name="early runs")
    thread.start()
    return thread


def result(name: str, getfixturevalue):
    """What the run `name` started (a Run or a dict of them), finished; started here if
    nothing started it early."""
    run = _declared[name]
    if not run.queued:
        run.queued, run.started = True, run.start(getfixturevalue)()
        for each in _runs_of(run.started):
            each.wait()
        run.ready.set()
    if not run.ready.wait(TIMEOUT_S):
        raise TimeoutError(f"the early run {name!r} did not finish within {TIMEOUT_S:.0f} s")
    if run.error is not None:
        raise run.error
    return run.started


def stop_all() -> None:
    """Kills whatever is still running (the session ended early, e.g. with -x)."""
    for run in _declared.values():
        for each in _runs_of(run.started):
            each.kill()


def _runs_of(started) -> list[Run]:
    if started is None:
        return []
    return list(started.values()) if isinstance(started, dict) else [started]
