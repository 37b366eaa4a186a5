"""Job kinds only the tests use (registered through `ServeConfig.extra_kinds`): a replica
that dies mid-job, and a job that just takes time (for queue positions and cancels)."""

import os
import time
from pathlib import Path


def crash_once(job, context):
    """Kills its replica the first time (a marker file remembers), then runs the job as
    `job["then"]`: what a caller sees when a replica dies mid-job and the retry succeeds."""
    marker = Path(job["marker"])
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        context.progress(0.1, "about to crash")
        os._exit(1)
    return context.run(
        {key: value for key, value in job.items() if key not in ("then", "marker")} | {"kind": job["then"]}
    )


def crash_always(job, context):
    context.progress(0.1, "about to crash")
    os._exit(1)


def sleep(job, context):
    """Sleeps `seconds` in 0.05 s steps, reporting each (the progress callback stops it
    when the job is cancelled)."""
    started = time.perf_counter()
    steps = max(1, int(job["seconds"] / 0.05))
    for step in range(steps):
        context.progress(step / steps, f"sleeping {step}/{steps}")
        time.sleep(0.05)
    return {
        "kind": "sleep",
        "outputs": {},
        "manifest": None,
        "details": {"pid": os.getpid()},
        "elapsed_s": round(time.perf_counter() - started, 3),
    }


def fail_on_rank(job, context):
    """A generate job whose rank `job["rank"]` of a multi-process replica raises at its
    first denoising step, when the other ranks go on into the next step's collectives and
    wait for it there. Every rank first leaves its pid in `job["pids"]` (a folder)."""
    from dataclasses import replace

    pids = Path(job["pids"])
    pids.mkdir(exist_ok=True)
    (pids / str(context.rank)).write_text(str(os.getpid()))

    def progress(fraction, message):
        if context.rank == job["rank"] and message.startswith("denoising step"):
            raise RuntimeError(f"injected failure on rank {context.rank}")
        context.progress(fraction, message)

    inner = {key: value for key, value in job.items() if key not in ("rank", "pids")} | {"kind": "generate"}
    return replace(context, progress=progress).run(inner)


KINDS = {
    "crash_once": "ray_jobs:crash_once",
    "crash_always": "ray_jobs:crash_always",
    "sleep": "ray_jobs:sleep",
    "fail_on_rank": "ray_jobs:fail_on_rank",
}
