"""The Ray Serve application: a `Gateway` (one replica, no GPU) in front of
`StudioWorker` replicas (one `Studio` each, one GPU each, one job at a time).

Why a gateway: a replica runs one job at a time, so anything sent to it (a cancel, a
status question) would wait behind the job. The gateway holds the job table (state,
progress, queue position, results), answers those at once, retries a job whose replica
died, and is the HTTP ingress. Workers send their progress to it and learn from the
answer whether the caller cancelled, so a cancel takes effect at the next step.

    submit(job, owner_key) -> {job_id, owner_key}    status(job id, owner_key, preview_after) -> state, progress, queue position, preview
    result(job id, owner_key) -> outputs             cancel(job id, owner_key)     jobs_list(owner_key)
    system_status(full=False)
A job belongs to the owner key it was submitted with (the caller's, or one made here and
returned); the other calls answer "unknown job" to any other key.
A replica with `processes_per_replica` > 1 (`serve --gpus-per-replica N`) runs each job
on a process group of its own children (`dynamictrl.serve.group`).
HTTP (prefix /dynamictrl; `dynamictrl.serve.http_api`): POST /jobs, GET /jobs, GET /jobs/{id},
GET /jobs/{id}/result, POST /jobs/{id}/cancel, GET /status, GET /healthz, /docs.
"""

import asyncio
import base64
import hashlib
import hmac
import logging
import os
import secrets
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import ray
from ray import serve
from ray.serve.exceptions import RequestCancelledError

from ..studio import Cancelled
from .config import (
    APP_NAME,
    GATEWAY,
    ROUTE_PREFIX,
    WORKER,
    ServeConfig,
    build_studio,
    check_exposure,
    is_loopback,
    load_extra_kinds,
)
from .jobs import JobContext, JobError, check_job, decode_files, run_job

logger = logging.getLogger("dynamictrl.serve")

TERMINAL = ("done", "failed", "cancelled")
REPORT_TIMEOUT_S = 10.0  # a worker's progress report; on timeout the job goes on
REPORT_EVERY_S = 0.2  # progress reports are throttled to this (the last one always goes)
HEARTBEAT_S = 10.0  # replicas send their model status this often
MAX_LOST_BEFORE_START = 3  # replicas that died before a job started on them (not the job's fault)
RETRY_PAUSE_S = 1.0  # lets the router drop a dead replica before the retry is routed
DEPLOY_POLL_S = 0.25  # how often `deploy` asks Serve whether the application is running (a cheap call)
BUSY_WAIT_S = 900.0  # a cancelled job stops at its next step; one 5B step at 1360x1360 is well under this
KEEP_FINISHED = 1000  # finished job records kept (results are dropped earlier, see result_ttl_s)
MIN_OWNER_KEY_CHARS = 16
# What /status shows of a replica without the token (no host names, PIDs or job ids).
PUBLIC_REPLICA_FIELDS = (
    "replica",
    "device",
    "gpu",
    "vram_free_gb",
    "vram_total_gb",
    "vram_allocated_gb",
    "models",
    "seen_s_ago",
)


def user_error(error: BaseException) -> bool:
    """Errors the caller fixes (bad input, missing file, too big for the GPU), as the app
    and the CLI treat them; anything else is the service's fault."""
    from ..manager import OutOfMemory

    return isinstance(cause_of(error), (ValueError, FileNotFoundError, KeyError, OutOfMemory))


def replica_lost(error: BaseException) -> bool:
    """The replica (its process or its node) went away: the job is not at fault."""
    lost = (
        ray.exceptions.RayActorError,
        ray.exceptions.WorkerCrashedError,
        ray.exceptions.NodeDiedError,
        ray.exceptions.LocalRayletDiedError,
    )
    return isinstance(error, lost) or isinstance(getattr(error, "cause", None), lost)


def cause_of(error: BaseException) -> BaseException:
    """The user-code exception inside Ray's wrapper (its traceback text is not for users)."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, BaseException) else error


def describe(error: BaseException) -> str:
    cause = cause_of(error)
    text = str(cause.args[0]) if isinstance(cause, KeyError) and cause.args else str(cause)
    return text.strip() or type(cause).__name__


async def _wait(response):
    return await response


@dataclass
class JobRecord:
    id: str
    kind: str
    spec: dict = field(repr=False)
    owner: str = field(repr=False)  # SHA-256 of the owner key
    submitted: float
    max_retries: int
    state: str = "queued"
    fraction: float = 0.0
    message: str = "queued"
    replica: str | None = None
    node: str | None = None
    runs: int = 0  # times the job started on a replica
    lost: int = 0  # replicas lost before it started
    error: str | None = None
    error_type: str | None = None
    user_error: bool = False
    result: dict | None = field(default=None, repr=False)
    result_fetched: bool = False
    # The latest live preview (generate jobs with preview_every): {"step", "steps", "frames", "png"},
    # the frames side by side in one PNG; kept after the job ends (a caller polling
    # slower than the steps still gets the last one).
    preview: dict | None = field(default=None, repr=False)
    started: float | None = None
    finished: float | None = None
    cancel: bool = False
    response: object = field(default=None, repr=False)


def keep_replica_server_on_loopback() -> None:
    """Called first in a replica: on a node whose address is loopback (a local `serve`, see
    `cli.start_local_ray`) the replica's inter-deployment gRPC server listens on 127.0.0.1
    too. Ray Serve (2.60) binds that server to [::] whatever the node address, the one port
    of a local service that would otherwise listen beyond the machine; the replica module
    looks the function up when it starts the server, after this constructor. A cluster
    node (non-loopback address) is left as Ray made it. tests/test_serve.py checks the
    listening sockets."""
    if not is_loopback(ray.util.get_node_ip_address()):
        return
    from ray.serve._private import replica as serve_replica

    original = getattr(serve_replica, "add_port_to_grpc_server", None)
    if original is None or getattr(original, "loopback_only", False):
        return

    def add_port_on_loopback(server, address: str):
        if address.startswith("[::]:"):
            address = "127.0.0.1:" + address.rsplit(":", 1)[1]
        return original(server, address)

    add_port_on_loopback.loopback_only = True
    serve_replica.add_port_to_grpc_server = add_port_on_loopback


@serve.deployment(name=WORKER, max_ongoing_requests=1)
class StudioWorker:
    """One Studio (models stay loaded between jobs); runs one job at a time."""

    def __init__(self, config: dict):
        keep_replica_server_on_loopback()
        self.config = ServeConfig.from_dict(config)
        self.extra_kinds = load_extra_kinds(self.config)
        self.group = None
        if self.config.processes_per_replica > 1:
            from .group import ProcessGroupReplica

            self.studio = None  # the models live in the group's processes
            self.group = ProcessGroupReplica(self.config)
            self.group.start()  # here, so a group that cannot start fails the deployment with its error
        else:
            self.studio = build_studio(self.config)
        context = serve.get_replica_context()
        self.replica = context.replica_id.unique_id
        self.app_name = context.app_name
        self.node = socket.gethostname()
        self.busy_job = None
        self._gateway = None
        # Serve counts a cancelled or timed-out request as over while its thread may still
        # be finishing a step; the next job waits for it instead of sharing the Studio.
        self._one_job = threading.Lock()
        try:
            Path(self.config.outputs_dir).mkdir(parents=True, exist_ok=True)
        except OSError as error:  # jobs by value need no outputs folder; jobs by path will say what is wrong
            logger.warning("replica %s: cannot create %s (%s)", self.replica, self.config.outputs_dir, error)
        # The gateway learns what this replica holds without asking it (a question would
        # wait behind the running job).
        threading.Thread(target=self._heartbeat, name="dynamictrl-heartbeat", daemon=True).start()

    def gateway(self):
        if self._gateway is None:
            self._gateway = serve.get_deployment_handle(GATEWAY, app_name=self.app_name)
        return self._gateway

    def _status(self) -> dict:
        if self.group is None:
            status = self.studio.system_status()
        else:  # the ranks cannot be asked while they run a job: what the replica knows itself
            device = "cpu" if (self.config.device or "").startswith("cpu") else "cuda"
            status = {
                "device": f"{self.group.size} processes ({self.group.layout}) on {device}",
                "models": [],
                "process_ram_gb": None,
                "group_pids": self.group.pids,
            }
        return {**status, "replica": self.replica, "node": self.node, "busy_job": self.busy_job, "pid": os.getpid()}

    def _heartbeat(self):
        while True:
            try:
                self.gateway().replica_status.remote(self.replica, self._status()).result(timeout_s=REPORT_TIMEOUT_S)
            except (ray.exceptions.RayError, TimeoutError, RuntimeError) as error:
                logger.warning("replica %s: status report failed (%s)", self.replica, error)
            time.sleep(HEARTBEAT_S)

    def run(self, job: dict) -> dict:
        reporter = Reporter(self.gateway(), job["id"])
        if not self._one_job.acquire(timeout=BUSY_WAIT_S):
            raise RuntimeError(f"Replica {self.replica} is still finishing a cancelled job after {BUSY_WAIT_S:.0f} s.")
        try:
            reporter.start(self.replica, self.node)
            return self._run(job, reporter)
        finally:
            self._one_job.release()

    def _run(self, job: dict, reporter: "Reporter") -> dict:
        self.busy_job = job["id"]
        try:
            if self.group is not None:
                return self.group.run(job, progress=reporter, preview=reporter.preview)
            context = JobContext(
                self.studio,
                progress=reporter,
                outputs_dir=Path(self.config.outputs_dir),
                allowed_roots=self.config.allowed_roots,
                extra_kinds=self.extra_kinds,
                preview=reporter.preview,
            )
            return run_job(job, context)
        finally:
            self.busy_job = None
            try:
                self.gateway().replica_status.remote(self.replica, self._status())
            except (ray.exceptions.RayError, RuntimeError) as error:
                logger.warning("replica %s: status report failed (%s)", self.replica, error)


class Reporter:
    """The Studio's progress callback on a replica: forwards progress to the gateway
    (throttled) and raises `Cancelled` once the gateway says the caller cancelled."""

    def __init__(self, gateway, job_id: str):
        self.gateway = gateway
        self.job_id = job_id
        self.cancelled = False
        self.last = 0.0

    def _ask(self, method: str, *args) -> bool:
        try:
            return bool(getattr(self.gateway, method).remote(self.job_id, *args).result(timeout_s=REPORT_TIMEOUT_S))
        except (ray.exceptions.RayError, TimeoutError, RuntimeError) as error:
            # A slow or restarting gateway must not kill a long job: keep the last answer.
            logger.warning("job %s: progress report failed (%s)", self.job_id, error)
            return self.cancelled

    def start(self, replica: str, node: str) -> None:
        self.cancelled = self._ask("started", replica, node)
        if self.cancelled:
            raise Cancelled("Cancelled before it started.")

    def __call__(self, fraction: float, message: str) -> None:
        now = time.monotonic()
        if now - self.last >= REPORT_EVERY_S or fraction >= 1.0:
            self.last = now
            self.cancelled = self._ask("report", float(fraction), str(message))
        if self.cancelled:
            raise Cancelled("Cancelled by the caller.")

    def preview(self, step: int, steps: int, frames) -> None:
        """A live preview to the gateway, as one PNG of the frames side by side (a few KB at
        1/8 of the video size); only the last is waited for, a lost one is only a missed picture."""
        import io

        import numpy as np
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(np.concatenate(list(frames), axis=1)).save(buffer, format="PNG")
        try:
            sent = self.gateway.preview.remote(self.job_id, int(step), int(steps), len(frames), buffer.getvalue())
            if step >= steps:  # the last one is waited for: it reaches the gateway before the answer does
                sent.result(timeout_s=REPORT_TIMEOUT_S)
        except (TimeoutError, ray.exceptions.RayError, RuntimeError) as error:
            logger.warning("job %s: preview report failed (%s)", self.job_id, error)


class QueueFull(RuntimeError):
    """More jobs are waiting than the service accepts (max_queued_jobs)."""


def owner_digest(owner_key: str) -> str:
    return hashlib.sha256(owner_key.encode()).hexdigest()


@serve.deployment(name=GATEWAY, num_replicas=1, max_ongoing_requests=1000)
@serve.ingress()
class Gateway:
    def __init__(self, worker, config: dict):
        keep_replica_server_on_loopback()
        self.worker = worker
        self.config = ServeConfig.from_dict(config)
        self.extra_kinds = tuple(self.config.extra_kinds)
        self.jobs: dict[str, JobRecord] = {}
        self.replicas: dict[str, dict] = {}  # replica id -> last status it sent
        self.tasks: set[asyncio.Task] = set()

    def __serve_build_asgi_app__(self):
        """The HTTP app, built here because it depends on this gateway's config (token,
        body limit, job kinds)."""
        from .http_api import build_http_app

        return build_http_app(self)

    # ------------------------------------------------------------ job table
    def _record(self, job_id: str, owner_key: str | None) -> JobRecord:
        """The job, if `owner_key` owns it; anyone else learns nothing (not even that it exists)."""
        record = self.jobs.get(job_id)
        if record is None or not owner_key or not hmac.compare_digest(record.owner, owner_digest(owner_key)):
            raise KeyError(
                f"Unknown job {job_id!r} (finished long ago, the service restarted, or it was submitted "
                "with another owner key)."
            )
        return record

    def _queue_position(self, record: JobRecord) -> int | None:
        if record.state != "queued":
            return None
        waiting = sorted((r.submitted, r.id) for r in self.jobs.values() if r.state == "queued")
        return waiting.index((record.submitted, record.id)) + 1

    def _sweep(self) -> None:
        now = time.time()
        for record in self.jobs.values():
            if record.finished and record.result is not None and now - record.finished > self.config.result_ttl_s:
                record.result = None  # results hold file bytes: not kept for callers who never came back
        finished = sorted((r.finished, r.id) for r in self.jobs.values() if r.finished)
        for _, job_id in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            del self.jobs[job_id]

    def _finish(
        self,
        record: JobRecord,
        state: str,
        message: str,
        error: BaseException | None = None,
        result: dict | None = None,
    ) -> None:
        record.state, record.message, record.finished = state, message, time.time()
        record.spec = {}  # inputs by value are no longer needed
        record.response = None
        if state == "done":
            record.fraction, record.result = 1.0, result
        if error is not None:
            record.error, record.error_type = describe(error), type(cause_of(error)).__name__
            record.user_error = user_error(error)
        logger.info("job %s %s: %s", record.id, state, record.error or message)

    async def _run(self, record: JobRecord) -> None:
        deadline = record.submitted + self.config.job_timeout_s
        while True:
            runs_before = record.runs
            record.response = self.worker.run.remote({**record.spec, "id": record.id})
            try:
                answer = await asyncio.wait_for(_wait(record.response), timeout=max(1.0, deadline - time.time()))
            except TimeoutError:
                record.cancel = True  # the worker stops at its next step
                self._finish(
                    record,
                    "failed",
                    "timed out",
                    error=TimeoutError(
                        f"The job did not finish within {self.config.job_timeout_s:.0f} s (queue time included)."
                    ),
                )
                return
            except (asyncio.CancelledError, RequestCancelledError):
                if not record.cancel:
                    raise
                self._finish(record, "cancelled", "cancelled before it started")
                return
            except Exception as error:  # every failure ends in the record, none reaches the event loop
                if isinstance(cause_of(error), Cancelled) or (record.cancel and replica_lost(error)):
                    self._finish(record, "cancelled", "cancelled")
                    return
                if not replica_lost(error):
                    self._finish(record, "failed", "failed", error=error)
                    return
                if record.runs > runs_before:
                    if record.runs > record.max_retries:
                        self._finish(
                            record,
                            "failed",
                            "replica lost",
                            error=RuntimeError(
                                f"The replica running this job died {record.runs} time(s) (last on {record.node}: "
                                f"{describe(error).splitlines()[0]}); not retrying. Too little GPU/CPU memory for "
                                "these settings is the usual cause."
                            ),
                        )
                        return
                else:
                    record.lost += 1
                    if record.lost > MAX_LOST_BEFORE_START:
                        self._finish(
                            record,
                            "failed",
                            "no replica",
                            error=RuntimeError(
                                f"{record.lost} replicas died before the job could start; is the cluster healthy?"
                            ),
                        )
                        return
                record.state, record.fraction = "queued", 0.0
                record.message = "its replica was lost; retrying on another replica"
                logger.warning("job %s: replica lost (%s); retrying", record.id, describe(error).splitlines()[0])
                await asyncio.sleep(RETRY_PAUSE_S)
                if record.cancel:
                    self._finish(record, "cancelled", "cancelled")
                    return
                continue
            self._finish(record, "done", "done", result=answer)
            return

    # ------------------------------------------------------------ handle API
    async def submit(self, job: dict, owner_key: str | None = None) -> dict:
        """Queues a job; returns {"job_id", "owner_key"}: the key (the caller's, or a new
        one) is what status, result and cancel of this job need."""
        if owner_key is None:
            owner_key = secrets.token_urlsafe(24)
        elif not isinstance(owner_key, str) or len(owner_key) < MIN_OWNER_KEY_CHARS:
            raise JobError(
                f"The owner key must be a secret of at least {MIN_OWNER_KEY_CHARS} characters "
                "(or none: the service makes one and returns it)."
            )
        check_job(job, self.extra_kinds)
        job = {**job, "files": decode_files(job.get("files"))}
        self._sweep()
        waiting = sum(1 for r in self.jobs.values() if r.state == "queued")
        if waiting >= self.config.max_queued_jobs:
            raise QueueFull(f"{waiting} jobs are already waiting (max_queued_jobs); try again later or add replicas.")
        retries = job.pop("max_retries", self.config.max_retries)
        record = JobRecord(
            id=uuid.uuid4().hex[:12],
            kind=job["kind"],
            spec=job,
            owner=owner_digest(owner_key),
            submitted=time.time(),
            max_retries=max(0, min(int(retries), self.config.max_retries)),
        )
        self.jobs[record.id] = record
        task = asyncio.get_running_loop().create_task(self._run(record))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return {"job_id": record.id, "owner_key": owner_key}

    async def status(self, job_id: str, owner_key: str | None = None, preview_after: int | None = None) -> dict:
        """The job's state; `preview_after` (a step count, -1 for any) adds the latest live
        preview when it is newer than that step (so a poller fetches each picture once)."""
        record = self._record(job_id, owner_key)
        status = self._status(record)
        if preview_after is not None and record.preview is not None and record.preview["step"] > preview_after:
            status["preview"] = {**record.preview, "png": base64.b64encode(record.preview["png"]).decode("ascii")}
        return status

    def _status(self, record: JobRecord) -> dict:
        now = time.time()
        return {
            "id": record.id,
            "kind": record.kind,
            "state": record.state,
            "fraction": record.fraction,
            "message": record.message,
            "queue_position": self._queue_position(record),
            "replica": record.replica,
            "node": record.node,
            "runs": record.runs,
            "error": record.error,
            "error_type": record.error_type,
            "user_error": record.user_error,
            "waited_s": round((record.started or now) - record.submitted, 3),
            "elapsed_s": round((record.finished or now) - (record.started or now), 3) if record.started else 0.0,
            "has_result": record.result is not None,
            "preview_step": record.preview["step"] if record.preview is not None else None,
        }

    async def result(self, job_id: str, owner_key: str | None = None) -> dict:
        """The finished job's answer (once: file bytes are not kept after it is fetched)."""
        record = self._record(job_id, owner_key)
        if record.state != "done":
            raise ValueError(
                f"Job {job_id} is {record.state}, not done" + (f": {record.error}" if record.error else ".")
            )
        if record.result is None:
            raise KeyError(f"The result of job {job_id} was already fetched or expired.")
        answer, record.result, record.result_fetched = record.result, None, True
        return answer

    async def cancel(self, job_id: str, owner_key: str | None = None) -> dict:
        record = self._record(job_id, owner_key)
        if record.state not in TERMINAL:
            record.cancel = True
            record.message = "cancelling"
            if record.state == "queued" and record.response is not None:
                record.response.cancel()  # still waiting in the router: it never reaches a replica
        return self._status(record)

    async def jobs_list(self, owner_key: str | None = None) -> list[dict]:
        """The jobs of `owner_key` (none without one)."""
        if not owner_key:
            return []
        digest = owner_digest(owner_key)
        return [
            self._status(record) for record in list(self.jobs.values()) if hmac.compare_digest(record.owner, digest)
        ]

    # ------------------------------------------------------------ from the workers
    async def started(self, job_id: str, replica: str, node: str) -> bool:
        record = self.jobs.get(job_id)
        if record is None or record.state in TERMINAL:
            return True  # nobody waits for it any more
        record.state, record.replica, record.node = "running", replica, node
        record.runs += 1
        record.started = time.time()
        record.message = f"started on replica {replica}" + (f" (attempt {record.runs})" if record.runs > 1 else "")
        return record.cancel

    async def report(self, job_id: str, fraction: float, message: str) -> bool:
        record = self.jobs.get(job_id)
        if record is None or record.state in TERMINAL:
            return True
        record.fraction, record.message = min(max(fraction, 0.0), 1.0), message
        return record.cancel

    async def preview(self, job_id: str, step: int, steps: int, frames: int, png: bytes) -> None:
        record = self.jobs.get(job_id)
        if record is None:
            return
        # Accepted after the job ended too: sent without waiting, the last step's preview
        # may arrive after the answer.
        record.preview = {"step": int(step), "steps": int(steps), "frames": int(frames), "png": bytes(png)}

    async def replica_status(self, replica: str, status: dict) -> None:
        self.replicas[replica] = {**status, "seen": time.time()}

    async def system_status(self, full: bool = False) -> dict:
        """Replicas (device, models) and job counts. `full` (the Ray handle, or HTTP with
        the token) adds what locates the service: host names, PIDs, running job ids, folders."""
        now = time.time()
        live = None
        try:
            app = (await asyncio.to_thread(serve.status)).applications.get(serve.get_replica_context().app_name)
            if app is not None and WORKER in app.deployments:
                live = app.deployments[WORKER].replica_states.get("RUNNING", 0)
        except (ray.exceptions.RayError, RuntimeError) as error:
            logger.warning("serve.status failed: %s", error)
        replicas = [
            {**status, "seen_s_ago": round(now - status["seen"], 1)}
            for status in self.replicas.values()
            if now - status["seen"] < 6 * HEARTBEAT_S
        ]
        counts = {
            state: sum(1 for r in self.jobs.values() if r.state == state)
            for state in ("queued", "running", "done", "failed", "cancelled")
        }
        if not full:
            replicas = [
                {**{key: r[key] for key in PUBLIC_REPLICA_FIELDS if key in r}, "busy": bool(r.get("busy_job"))}
                for r in replicas
            ]
        status = {
            "replicas": sorted(replicas, key=lambda r: r["replica"]),
            "running_replicas": live,
            "jobs": counts,
            "max_queued_jobs": self.config.max_queued_jobs,
        }
        if full:
            status.update(
                outputs_dir=self.config.outputs_dir,
                shared_dirs=self.config.shared_dirs,
                gateway={"node": socket.gethostname(), "pid": os.getpid()},
            )
        return status


# ---------------------------------------------------------------- deploying
def cluster_gpus() -> float:
    return float(ray.cluster_resources().get("GPU", 0))


def replica_gpus(config: ServeConfig, asked: float | None, available: float) -> float:
    """The GPUs a multi-process replica asks Ray for: one per process, none on CPUs."""
    processes = config.processes_per_replica
    if (config.device or "").startswith("cpu"):
        return 0.0  # CPU processes on gloo: the documented stand-in for GPUs (tests, trying it out)
    if asked is not None and asked != processes:
        raise ValueError(f"A replica of {processes} processes takes {processes} GPUs, not {asked:g}.")
    if available == 0:
        raise ValueError(
            f"--gpus-per-replica {processes}: the Ray cluster has no GPUs. Add --device cpu to run the "
            f"{processes} processes of each replica on CPUs (gloo), or connect to a cluster with GPUs."
        )
    if available < processes:
        raise ValueError(f"--gpus-per-replica {processes}: the Ray cluster has only {available:g} GPU(s).")
    return float(processes)


def build_app(
    config: ServeConfig,
    replicas: int | None = None,
    min_replicas: int | None = None,
    max_replicas: int | None = None,
    gpus_per_replica: float | None = None,
    cpus_per_replica: float = 1.0,
    runtime_env: dict | None = None,
):
    """The application (not yet running). Fixed `replicas`, or autoscaling between
    `min_replicas` and `max_replicas` (one job per replica: Serve adds a replica while
    jobs wait). `gpus_per_replica` None: 1 when the cluster has GPUs, else 0.
    `runtime_env` (default: this driver's) is how the replicas find the dynamictrl code.
    With `config.processes_per_replica` N > 1 a replica asks Ray for N GPUs (and runs a
    process per GPU), or, with `config.device` "cpu", for N x `cpus_per_replica` CPUs."""
    processes = config.processes_per_replica
    if processes > 1:
        on_cpu = (config.device or "").startswith("cpu")
        gpus_per_replica = replica_gpus(config, gpus_per_replica, 0.0 if on_cpu else cluster_gpus())
        cpus_per_replica = cpus_per_replica * (processes if gpus_per_replica == 0 else 1)
    elif gpus_per_replica is None:
        gpus_per_replica = 1.0 if cluster_gpus() > 0 else 0.0
    if runtime_env is None:
        runtime_env = dict(ray.get_runtime_context().runtime_env or {})
    extra = {"runtime_env": runtime_env} if runtime_env else {}
    options = {
        "ray_actor_options": {"num_gpus": gpus_per_replica, "num_cpus": cpus_per_replica, **extra},
        # Scaling down or redeploying waits for the running job instead of killing it.
        "graceful_shutdown_timeout_s": min(config.job_timeout_s, 3600.0),
        "health_check_timeout_s": 60.0,
        # A replica that cannot load its models fails the deployment after a few tries.
        "max_constructor_retry_count": 3,
        # Progress reports and heartbeats are calls too: an access-log line each would bury the real logs.
        "logging_config": {"enable_access_log": False},
    }
    if min_replicas is not None or max_replicas is not None:
        low = 1 if min_replicas is None else min_replicas
        high = max(low, 1) if max_replicas is None else max_replicas
        if not 0 <= low <= high or high < 1:
            raise ValueError(f"Need 0 <= min_replicas <= max_replicas and max_replicas >= 1, got {low}..{high}.")
        options["autoscaling_config"] = {
            "min_replicas": low,
            "max_replicas": high,
            "initial_replicas": max(low, 1),
            "target_ongoing_requests": 1,
            "upscale_delay_s": 5.0,
            # Models take minutes to load: keep an idle replica a while before letting it go.
            "downscale_delay_s": 600.0,
        }
    else:
        if replicas is None:
            replicas = max(1, int(cluster_gpus() // gpus_per_replica)) if gpus_per_replica > 0 else 1
        if replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {replicas}.")
        options["num_replicas"] = replicas
    worker = StudioWorker.options(**options).bind(config.to_dict())
    return Gateway.options(
        ray_actor_options={"num_cpus": 0, **extra}, logging_config={"enable_access_log": False}
    ).bind(worker, config.to_dict())


def deploy(
    config: ServeConfig,
    name: str = APP_NAME,
    route_prefix: str | None = ROUTE_PREFIX,
    host: str = "127.0.0.1",
    port: int = 8000,
    timeout_s: float = 600.0,
    **scale,
):
    """Starts Serve (HTTP on host:port) and the application; returns the gateway handle
    once every replica is up. Raises TimeoutError if that takes longer than `timeout_s`
    (e.g. the replicas ask for GPUs the cluster does not have). Serving on a non-loopback
    `host` needs `config.token_sha256` or `config.insecure`."""
    check_exposure(host, config)
    if config.tiny:
        from ..tiny import save_tiny_weights

        save_tiny_weights(config.weights_dir)  # once here, not racing in every replica
    serve.start(http_options={"host": host, "port": port})
    # serve.run would wait without a bound for replicas that cannot be placed.
    serve._run(build_app(config, **scale), _blocking=False, name=name, route_prefix=route_prefix)
    wait_until_running(name, timeout_s)
    return serve.get_app_handle(name)


def wait_until_running(name: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        app = serve.status().applications.get(name)
        if app is not None:
            last = app
            status = str(getattr(app.status, "value", app.status))
            if status == "RUNNING":
                return
            if status in ("DEPLOY_FAILED", "UNHEALTHY"):
                details = "; ".join(f"{dep}: {info.message}" for dep, info in app.deployments.items() if info.message)
                raise RuntimeError(f"The Serve application {name!r} failed to start: {app.message or details}")
        time.sleep(DEPLOY_POLL_S)
    details = ""
    if last is not None:
        details = " " + "; ".join(
            f"{dep}: {info.replica_states} {info.message}" for dep, info in last.deployments.items()
        )
    resources = ray.available_resources()
    raise TimeoutError(
        f"The Serve application {name!r} was not running after {timeout_s:.0f} s.{details} "
        f"Free cluster resources: CPU {resources.get('CPU', 0):g}, GPU {resources.get('GPU', 0):g}."
    )


def endpoint(host: str, port: int, route_prefix: str = ROUTE_PREFIX) -> str:
    shown = ray.util.get_node_ip_address() if host in ("0.0.0.0", "::") else host
    return f"http://{shown}:{port}{route_prefix}"
