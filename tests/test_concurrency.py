"""Issue #11 part 4: several users at once. Separate `gradio_client.Client` objects are
separate browser sessions of `app.py --tiny`; their jobs share the one GPU slot.

Checked: jobs run one at a time and finish in the order they were queued; each session's
results land in its own folder under the outputs root and its History lists only them;
one session cancelling its running job (the page's Cancel, also the `/cancel` endpoint)
or dropping its queued one (`job.cancel()`) leaves the other sessions' jobs untouched.
"""

import hashlib
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from dynamictrl.video import write_video
from ui.handlers import session_folder_name

pytestmark = pytest.mark.slow  # four app sessions at once

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "assets" / "reference_figure.png"
TINY = "tiny 64x80"
# Status updates of two sessions come over two connections; allow for their delivery order.
DELIVERY_SLACK_S = 0.25
JOB_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def pose_video(tmp_path_factory) -> Path:
    """A ready pose video at the tiny size: the jobs skip pose extraction."""
    frames = np.random.default_rng(1).integers(0, 255, (9, 80, 64, 3), dtype=np.uint8)
    return write_video(tmp_path_factory.mktemp("concurrency") / "pose.mp4", frames, fps=16)


def generate_args(pose_video: Path, seed: int, steps: int = 2) -> list:
    from gradio_client import handle_file

    # image, video, is_pose_video, preset, width, height, start, frames, fps, retarget,
    # mask_mode, prompt, negative, steps, guidance, seed, speed, offload
    return [
        handle_file(str(REFERENCE)),
        handle_file(str(pose_video)),
        True,
        TINY,
        768,
        1360,
        0,
        9,
        16,
        "global",
        "none",
        "a person dancing",
        "",
        steps,
        3.0,
        seed,
        "tiny (2 steps)",
        "auto",
    ]


def new_clients(tiny_app, count: int) -> list:
    from gradio_client import Client

    return [Client(tiny_app.url, verbose=False) for _ in range(count)]


def submit_in_order(clients, args_per_client) -> list:
    """Submits one job per client, each once the server has queued the previous one, so
    the queue order is the list order (a plain burst would race on the connections)."""
    from gradio_client.utils import Status

    jobs = []
    for client, args in zip(clients, args_per_client):
        job = client.submit(*args, api_name="/generate")
        deadline = time.monotonic() + 30
        while job.status().code in (Status.STARTING, Status.JOINING_QUEUE) and not job.done():
            assert time.monotonic() < deadline, "the server did not queue the job"
            time.sleep(0.01)
        jobs.append(job)
    return jobs


class Timeline:
    """When each job was first seen running and finished, from the client's status updates."""

    def __init__(self, jobs):
        self.jobs = jobs
        self.started: dict[int, float] = {}
        self.finished: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self):
        from gradio_client.utils import Status

        running = (Status.PROCESSING, Status.PROGRESS, Status.ITERATING)
        while not self._stop.is_set():
            now = time.monotonic()
            # Later jobs first: a job seen finished in the same sweep that shows its
            # successor running gets the same time, never a later one.
            for index in reversed(range(len(self.jobs))):
                code = self.jobs[index].status().code
                if code in running:
                    self.started.setdefault(index, now)
                elif code in (Status.FINISHED, Status.CANCELLED) or self.jobs[index].done():
                    self.started.setdefault(index, now)
                    self.finished.setdefault(index, now)
            time.sleep(0.01)

    def stop(self):
        self._stop.set()
        self._thread.join()


def session_dir(tiny_app, client) -> Path:
    return tiny_app.outputs / session_folder_name(client.session_hash)


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def history_outputs(client) -> list[str]:
    _gallery, table, _manifest = client.predict(api_name="/history")
    return [row[-1] for row in table["data"]]  # the output's name is the last column


def test_four_sessions_run_one_at_a_time_in_queue_order_into_their_own_folders(tiny_app, pose_video):
    clients = new_clients(tiny_app, 4)
    assert len({client.session_hash for client in clients}) == 4
    # The first job is longer, so the other three are queued while it runs.
    args = [generate_args(pose_video, seed=100 + i, steps=30 if i == 0 else 2) for i in range(4)]
    jobs = submit_in_order(clients, args)
    assert not jobs[0].done(), "the first job ended before the last was queued: nothing waited"
    timeline = Timeline(jobs)
    try:
        results = [job.result(timeout=JOB_TIMEOUT_S) for job in jobs]
    finally:
        timeline.stop()

    assert sorted(timeline.finished, key=timeline.finished.get) == [0, 1, 2, 3]
    for earlier, later in zip(range(3), range(1, 4)):
        # One GPU slot: a job starts only when the one before it has finished.
        assert timeline.started[later] >= timeline.finished[earlier] - DELIVERY_SLACK_S, (
            timeline.started,
            timeline.finished,
        )

    folders = [session_dir(tiny_app, client) for client in clients]
    assert len(set(folders)) == 4
    for i, (client, (video, manifest, _files, *_missing_models)) in enumerate(zip(clients, results)):
        assert manifest["settings"]["seed"] == 100 + i
        # Everything this session made is in its own folder, and only that.
        stem = Path(manifest["output"]).stem
        # (the video, its manifest, and the inputs Reuse restores: reference and pose video)
        assert sorted(p.name for p in folders[i].iterdir()) == sorted(
            [manifest["output"], stem + ".json", stem + "_input.png", stem + "_pose.mp4"]
        )
        # What the client received is the file in its folder, not another session's.
        assert sha256(video) == sha256(folders[i] / manifest["output"])
        assert history_outputs(client) == [manifest["output"]]
    # The session folders are the only thing written at the outputs root by these jobs.
    assert all(folder.parent == tiny_app.outputs for folder in folders)


def test_cancelling_one_session_leaves_the_others_untouched(tiny_app, pose_video):
    from gradio_client.exceptions import AppError

    first, cancelled, third, dropped = clients = new_clients(tiny_app, 4)
    # The cancelled job is long (100 steps, the most the page offers): it is stopped between two of them.
    args = [generate_args(pose_video, seed=200 + i, steps=100 if i == 1 else 2) for i in range(4)]
    jobs = submit_in_order(clients, args)

    # The last job is dropped while it waits (gradio_client's cancel): the server never runs it.
    assert jobs[3].cancel()
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not denoising(jobs[1]):
        assert time.monotonic() < deadline and not jobs[1].done(), "the long job never reported denoising"
        time.sleep(0.02)
    cancelled.predict(api_name="/cancel")  # the Cancel button of that session

    with pytest.raises(AppError, match="Cancelled"):
        jobs[1].result(timeout=JOB_TIMEOUT_S)
    kept = [jobs[0].result(timeout=JOB_TIMEOUT_S), jobs[2].result(timeout=JOB_TIMEOUT_S)]
    for client, (video, manifest, *_files), seed in zip((first, third), kept, (200, 202)):
        assert manifest["settings"]["seed"] == seed and manifest["settings"]["steps"] == 2
        assert sha256(video) == sha256(session_dir(tiny_app, client) / manifest["output"])
        assert history_outputs(client) == [manifest["output"]]
    # The cancelled session has nothing (its partial outputs were removed), the dropped one never ran.
    for client in (cancelled, dropped):
        folder = session_dir(tiny_app, client)
        assert not folder.exists() or list(folder.iterdir()) == []
        assert history_outputs(client) == []

    # The cancel was this session's only: its next job runs to the end.
    video, manifest, *_files = cancelled.predict(*generate_args(pose_video, seed=299), api_name="/generate")
    assert manifest["settings"]["seed"] == 299 and history_outputs(cancelled) == [manifest["output"]]


def denoising(job) -> bool:
    progress = job.status().progress_data or []
    return any("denoising" in (unit.desc or "") for unit in progress)
