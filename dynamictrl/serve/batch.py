"""Batch jobs on Ray: `python -m dynamictrl batch --jobs jobs.jsonl [--address auto]`.

One job per line of the jobs file (the format of `dynamictrl.serve.jobs`; relative paths
are taken from the file's folder), e.g.

    {"kind": "generate", "image": "refs/a.png", "pose_video": "poses/d1.mp4", "out": "out/a_d1.mp4",
     "settings": {"prompt": "A woman in a red dress dances in a park.", "seed": 42}}
    {"kind": "pose", "image": "refs/a.png", "driving_video": "dances/d2.mp4", "out": "poses/a_d2.mp4"}

Jobs run on a pool of Ray actors, one GPU each when the cluster has GPUs (an actor keeps
its models loaded from job to job, which one Ray task per job could not). A job whose
mp4 and manifest (pose jobs: mp4 and pose JSON) already exist is skipped, so a rerun
finishes what an interrupted or partly failed run left. A worker that dies takes its job
to another worker (`max_retries` times); a job that fails is reported and the rest go on.
"""

import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from .config import ServeConfig, build_studio, load_extra_kinds
from .jobs import JobContext, is_done, load_jobs, pack_inputs, run_job, safe_name, write_returned_files

READY_TIMEOUT_S = 900.0  # a worker must be placed and have built its Studio within this
FETCH_TIMEOUT_S = 300.0  # fetching a finished job's answer (it may carry a video)


class BatchWorker:
    """A Ray actor holding one Studio (models load on its first job and stay)."""

    def __init__(self, config: dict):
        self.config = ServeConfig.from_dict(config)
        self.studio = build_studio(self.config)
        self.extra_kinds = load_extra_kinds(self.config)

    def ready(self) -> bool:
        return True

    def run(self, job: dict) -> dict:
        return run_job(job, JobContext(self.studio, extra_kinds=self.extra_kinds))


@dataclass
class BatchSummary:
    total: int = 0
    done: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (job id, message)
    elapsed_s: float = 0.0

    def text(self) -> str:
        lines = [
            f"{self.total} job(s): {self.done} done, {self.skipped} skipped (already done), "
            f"{len(self.failed)} failed, in {self.elapsed_s:.1f} s."
        ]
        lines += [f"  FAILED {job_id}: {message}" for job_id, message in self.failed]
        return "\n".join(lines)


@dataclass
class _Task:
    id: str
    job: dict
    attempts: int = 0


def default_workers(gpus_per_worker: float) -> int:
    import ray

    if gpus_per_worker > 0:
        return max(1, int(ray.cluster_resources().get("GPU", 0) // gpus_per_worker))
    return 1  # each CPU worker holds a whole Studio in RAM: more only when asked for


def run_batch(
    jobs_path: str | Path,
    config: ServeConfig,
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    cpus_per_worker: float = 1.0,
    max_retries: int = 1,
    job_timeout_s: float = 3 * 3600.0,
    transfer: str = "shared",
    show_progress: bool = True,
) -> BatchSummary:
    """Runs the jobs file on the Ray cluster this process is connected to (`ray.init` first)."""
    import ray
    from tqdm.auto import tqdm

    from .deployment import describe, replica_lost

    if transfer not in ("shared", "bytes"):
        raise ValueError(f"transfer must be 'shared' or 'bytes', got {transfer!r}.")
    started = time.monotonic()
    records = load_jobs(jobs_path)
    summary = BatchSummary(total=len(records))
    pending: deque[_Task] = deque()
    outs: dict[str, str] = {}
    for record in records:
        if "error" in record:
            summary.failed.append((record["id"], record["error"]))
            continue
        job = record["job"]
        if job["out"] in outs:
            summary.failed.append((record["id"], f"line {record['line']}: same 'out' as {outs[job['out']]}."))
            continue
        outs[job["out"]] = record["id"]
        if is_done(job):
            summary.skipped += 1
        else:
            pending.append(_Task(record["id"], job))
    bar = tqdm(
        total=summary.total,
        initial=summary.skipped + len(summary.failed),
        desc="batch",
        unit="job",
        disable=not show_progress,
        file=sys.stderr,
    )
    bar.set_postfix(failed=len(summary.failed))
    if not pending:
        bar.close()
        summary.elapsed_s = time.monotonic() - started
        return summary

    if gpus_per_worker is None:
        gpus_per_worker = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    count = min(len(pending), workers or default_workers(gpus_per_worker))
    actor_class = ray.remote(BatchWorker).options(
        num_gpus=gpus_per_worker, num_cpus=cpus_per_worker, max_restarts=0, max_task_retries=0
    )

    def start_workers(n: int) -> list:
        actors = [actor_class.remote(config.to_dict()) for _ in range(n)]
        refs = [actor.ready.remote() for actor in actors]
        ready, waiting = ray.wait(refs, num_returns=len(refs), timeout=READY_TIMEOUT_S)
        if waiting:
            for actor in actors:
                ray.kill(actor)
            raise TimeoutError(
                f"{len(waiting)} of {n} batch worker(s) could not start within {READY_TIMEOUT_S:.0f} s "
                f"(each asks for {gpus_per_worker:g} GPU, {cpus_per_worker:g} CPU; free: "
                f"{ray.available_resources()})."
            )
        try:
            ray.get(ready, timeout=60)
        except ray.exceptions.RayError as error:
            for actor in actors:
                ray.kill(actor)
            raise RuntimeError(f"A batch worker failed to start: {describe(error)}") from None
        return actors

    def finish(task: _Task, message: str | None) -> None:
        if message is None:
            summary.done += 1
        else:
            summary.failed.append((task.id, message))
        bar.update(1)
        bar.set_postfix(failed=len(summary.failed))

    idle = start_workers(count)
    running: dict = {}  # ObjectRef -> (actor, task, started)
    try:
        while pending or running:
            if pending and not idle and len(running) < count:
                idle.extend(start_workers(1))  # a dead or stopped worker's replacement, made only when needed
            while idle and pending:
                task = pending.popleft()
                try:
                    job = {**pack_inputs(task.job), "return_files": True} if transfer == "bytes" else task.job
                except OSError as error:  # an input this machine cannot read: that job fails, the rest go on
                    finish(task, str(error))
                    continue
                actor = idle.pop()
                task.attempts += 1
                running[actor.run.remote(job)] = (actor, task, time.monotonic())
            ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            for ref in ready:
                actor, task, _ = running.pop(ref)
                try:
                    answer = ray.get(ref, timeout=FETCH_TIMEOUT_S)
                except ray.exceptions.RayError as error:
                    if not replica_lost(error):
                        idle.append(actor)
                        finish(task, describe(error))
                    elif task.attempts > max_retries:
                        finish(task, f"its worker died {task.attempts} time(s): {describe(error).splitlines()[0]}")
                    else:
                        pending.appendleft(task)  # the worker died (out of memory, a lost node): another one retries
                    continue
                if transfer == "bytes":
                    keys = ("out", "preview", "json")
                    destinations = {safe_name(task.job[k], k): Path(task.job[k]) for k in keys if task.job.get(k)}
                    write_returned_files(answer, destinations, Path(task.job["out"]).parent)
                idle.append(actor)
                finish(task, None)
            now = time.monotonic()
            for ref, (actor, task, since) in list(running.items()):
                if now - since > job_timeout_s:
                    del running[ref]
                    ray.kill(actor)  # the only way to stop a job mid-step; its models go with it
                    finish(task, f"timed out after {job_timeout_s:.0f} s")
    finally:
        bar.close()
        for actor in idle + [entry[0] for entry in running.values()]:
            ray.kill(actor)
    summary.elapsed_s = time.monotonic() - started
    return summary
