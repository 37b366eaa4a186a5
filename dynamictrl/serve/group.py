"""A replica that owns N GPUs and runs each job across them (`serve --gpus-per-replica N`).

The replica (the Ray actor, which Ray gave N GPUs on one node) starts N processes of this
module, one per GPU (`cuda:LOCAL_RANK` of the GPUs Ray made visible to the replica; on
CPUs, with `device="cpu"`, N CPU processes on gloo). They form one torch.distributed
group (`dynamictrl.parallel`, layout `ServeConfig.layout`: ulysses=N unless `--parallel`
says otherwise) and each holds a `Studio(parallel=layout)` for the replica's life, so the
models stay loaded between jobs as in a one-GPU replica.

Why child processes rather than N Ray actors in a placement group: the replica already
holds the N GPUs Ray reserved for it (a replica's resources are on one node), the
children inherit them with CUDA_VISIBLE_DEVICES, and their life is tied to the replica
(a child exits when its parent does), so Serve's own replica management (health, restart,
scale down) covers the whole group with nothing left behind.

A generate job (and any custom kind, which may build on one) goes to every rank; the
other built-in kinds need no collective and run on rank 0 alone. Rank 0 sends progress
and previews and returns the answer; the other ranks write nothing. The replica talks to
each child over a socket pair carrying pickled messages:

    replica -> child: ("job", job) | ("stop",)
    child -> replica: ("ready", pid) | ("failed", error) | ("progress", fraction, message)
                      | ("preview", step, steps, frames) | ("done", answer) | ("error", error)

(an error travels as plain data, its module, class name and text; see `_rebuilt`).

Failures: when a rank raises, the others are usually waiting for it in a collective. The
replica waits `FAILURE_GRACE_S` for every rank to report; if they all do (an input error
raised everywhere before any collective) the group is kept, else it is ended (SIGTERM,
then SIGKILL) and the job fails with the first rank's error; the next job starts a new
group. A rank that dies (exit code, signal) ends the group the same way. Cancelling a
running job ends the group too (a cancel noticed by one rank alone would leave the
others in a collective): the cancel takes effect at once and the next job reloads the
models.
"""

import importlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection, wait

from .config import ServeConfig

logger = logging.getLogger("dynamictrl.serve")

START_TIMEOUT_S = float(os.environ.get("DYNAMICTRL_GROUP_START_TIMEOUT_S", "900"))  # models load in every rank
FAILURE_GRACE_S = 5.0  # after one rank fails: how long the others get to report before the group is ended
STOP_GRACE_S = 10.0  # SIGTERM, then SIGKILL after this
PARENT_CHECK_S = 1.0  # a child checks this often that the replica is still alive
# The kinds that use collectives (every rank runs them); built-in others run on rank 0.
SINGLE_RANK_KINDS = ("pose", "lipsync", "mask", "caption")


class GroupError(RuntimeError):
    """The replica's process group could not start, or a rank died or failed."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _described(error: BaseException) -> dict:
    """An error as plain data: no exception object crosses from a rank to the replica, so
    nothing of a rank's own making is unpickled there (`_rebuilt` turns it back)."""
    return {"module": type(error).__module__, "type": type(error).__name__, "text": str(error)}


def _rebuilt(described: dict) -> BaseException:
    """The rank's error with its own class when that is a builtin or one of ours taking a
    message, else its nearest builtin base (the gateway still tells input errors from the
    service's); a class from elsewhere becomes a RuntimeError naming it."""
    module, name, text = described["module"], described["type"], described["text"]
    cls = None
    if module == "builtins" or module.startswith("dynamictrl."):
        cls = getattr(importlib.import_module(module), name, None)
    if isinstance(cls, type) and issubclass(cls, BaseException):
        try:
            return cls(text)
        except TypeError:  # a constructor that needs more than the message: its nearest builtin base
            base = next(c for c in cls.__mro__ if c.__module__ == "builtins")
            return base(text)
    return RuntimeError(f"{name}: {text}")


class ProcessGroupReplica:
    """The N processes of one replica; `run(job, progress, preview)` runs a job on them."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.layout = config.layout
        self.size = config.processes_per_replica
        self.processes: list[subprocess.Popen] = []
        self.connections: list[Connection] = []
        self.tmp: str | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------ life
    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def alive(self) -> bool:
        return bool(self.processes) and all(process.poll() is None for process in self.processes)

    def start(self) -> None:
        """Starts the N processes and waits until every one has joined the group and built
        its Studio; GroupError (with the failing rank's error) otherwise."""
        self.stop()
        # The ranks' temporary files (jobs by value) live here: ending the group removes them.
        self.tmp = tempfile.mkdtemp(prefix="dynamictrl-group-")
        port = _free_port()
        for rank in range(self.size):
            ours, theirs = socket.socketpair()
            env = dict(
                os.environ,
                RANK=str(rank),
                LOCAL_RANK=str(rank),
                WORLD_SIZE=str(self.size),
                LOCAL_WORLD_SIZE=str(self.size),
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port),
                TMPDIR=self.tmp,
                DYNAMICTRL_GROUP_PARENT=str(os.getpid()),
            )
            process = subprocess.Popen(
                [sys.executable, "-m", "dynamictrl.serve.group", str(theirs.fileno())],
                env=env,
                pass_fds=(theirs.fileno(),),
            )
            theirs.close()
            self.processes.append(process)
            self.connections.append(Connection(ours.detach()))
        for connection in self.connections:
            connection.send(("config", self.config.to_dict()))
        deadline = time.monotonic() + START_TIMEOUT_S
        waiting = set(range(self.size))
        try:
            while waiting:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise GroupError(
                        f"{len(waiting)} of the replica's {self.size} processes did not start within "
                        f"{START_TIMEOUT_S:.0f} s (DYNAMICTRL_GROUP_START_TIMEOUT_S)."
                    )
                for connection in wait([self.connections[rank] for rank in waiting], timeout=min(remaining, 1.0)):
                    rank = self.connections.index(connection)
                    message = self._receive(rank)
                    if message[0] == "failed":
                        error = _rebuilt(message[1])
                        raise GroupError(
                            f"Process {rank} of the replica's {self.size} could not start: "
                            f"{type(error).__name__}: {error}"
                        ) from error
                    waiting.discard(rank)
        except BaseException:
            self.stop()
            raise
        logger.info("replica process group up: %s, pids %s", self.layout, self.pids)

    def _receive(self, rank: int):
        try:
            return self.connections[rank].recv()
        except (EOFError, OSError):
            try:
                code = self.processes[rank].wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                code = None
            how = (
                "closed its connection"
                if code is None
                else f"was killed by signal {-code}"
                if code < 0
                else f"exited with code {code}"
            )
            raise GroupError(
                f"Process {rank} of the replica's {self.size} {how} (out of memory? its log is in the replica's log)."
            ) from None

    def stop(self) -> None:
        """Ends every process (SIGTERM, SIGKILL after STOP_GRACE_S) and removes their files."""
        for connection in self.connections:
            try:
                connection.send(("stop",))
            except OSError:
                continue  # already gone
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for connection in self.connections:
            connection.close()
        self.processes, self.connections = [], []
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    # ------------------------------------------------------------ jobs
    def run(self, job: dict, progress=None, preview=None) -> dict:
        """Runs `job` on the group (started first if it is not running); returns rank 0's
        answer or raises the first failing rank's error. `progress(fraction, message)` may
        raise (e.g. `Cancelled`): the group is then ended and the error goes on."""
        with self._lock:
            if not self.alive():
                self.start()
            ranks = [0] if job.get("kind") in SINGLE_RANK_KINDS else list(range(self.size))
            for rank in ranks:
                self.connections[rank].send(("job", job))
            try:
                answer, failure, keep = self._collect(ranks, progress, preview)
            except BaseException:
                self.stop()
                raise
            if not keep:
                self.stop()
            if failure is not None:
                raise failure
            return answer

    def _collect(self, ranks: list[int], progress, preview):
        pending = set(ranks)
        answer, failure, failed_at = None, None, None
        while pending:
            if failed_at is not None and time.monotonic() - failed_at > FAILURE_GRACE_S:
                return None, failure, False  # the others wait for the failed rank: end them
            for connection in wait([self.connections[rank] for rank in pending], timeout=0.5):
                rank = self.connections.index(connection)
                try:
                    message = self._receive(rank)
                except GroupError as error:
                    return None, failure or error, False
                kind = message[0]
                if kind == "progress" and progress is not None:
                    progress(message[1], message[2])
                elif kind == "preview" and preview is not None:
                    preview(*message[1:])
                elif kind == "done":
                    pending.discard(rank)
                    if rank == 0:
                        answer = message[1]
                elif kind == "error":
                    pending.discard(rank)
                    if failure is None:
                        failure, failed_at = self._failure(rank, _rebuilt(message[1])), time.monotonic()
        return answer, failure, True

    def _failure(self, rank: int, error: BaseException) -> BaseException:
        if isinstance(error, (ValueError, KeyError, FileNotFoundError)):
            return error  # the input's fault: the same error a one-process replica gives
        if type(error).__name__ == "Cancelled":
            return error
        wrapped = GroupError(f"Process {rank} of the replica's {self.size} failed: {type(error).__name__}: {error}")
        wrapped.__cause__ = error
        return wrapped


# ---------------------------------------------------------------- a rank
def _exit_with_parent(parent: int) -> None:
    """A rank must not outlive its replica (killed by Serve, or crashed): it exits once its
    parent is gone (its parent pid changes when the parent dies)."""

    def watch():
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os._exit(1)

    threading.Thread(target=watch, name="dynamictrl-parent-watch", daemon=True).start()


def _rank_main(fd: int) -> int:
    from pathlib import Path

    from .config import build_studio, load_extra_kinds
    from .jobs import JobContext, run_job

    parent = int(os.environ.get("DYNAMICTRL_GROUP_PARENT", os.getppid()))
    if os.getppid() != parent:
        return 1
    _exit_with_parent(parent)
    rank = int(os.environ["RANK"])
    connection = Connection(fd)
    # SIGTERM from the replica: leave at once (a collective may be waiting for a dead rank).
    signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(0))
    _, values = connection.recv()
    config = ServeConfig.from_dict(values)
    try:
        studio = build_studio(config, parallel=config.layout)
        extra_kinds = load_extra_kinds(config)
    except BaseException as error:  # reported to the replica, which fails the deployment or the job with it
        connection.send(("failed", _described(error)))
        return 1
    connection.send(("ready", os.getpid()))

    def progress(fraction, message):
        connection.send(("progress", float(fraction), str(message)))

    def preview(step, steps, frames):
        connection.send(("preview", step, steps, frames))

    while True:
        try:
            message = connection.recv()
        except EOFError:
            return 0
        if message[0] == "stop":
            return 0
        job = message[1]
        main = rank == 0
        # The other ranks report nothing, but get a callable: job kinds call progress unguarded.
        context = JobContext(
            studio,
            progress=progress if main else (lambda fraction, message: None),
            outputs_dir=Path(config.outputs_dir),
            allowed_roots=config.allowed_roots,
            extra_kinds=extra_kinds,
            preview=preview if main else None,
            rank=rank,
        )
        try:
            answer = run_job(job, context)
        except BaseException as error:  # every failure goes to the replica, which decides the group's fate
            import traceback

            traceback.print_exc()
            connection.send(("error", _described(error)))
            continue
        connection.send(("done", answer if main else None))


if __name__ == "__main__":
    sys.exit(_rank_main(int(sys.argv[1])))
