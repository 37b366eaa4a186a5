"""The Ray service on this machine: a local Ray (2 CPUs, started once, on loopback), a Serve
app of two CPU replicas over the tiny models behind a token, and the batch runner. Every
wait is bounded. Ray tests are marked `ray` (the schema and CLI checks at the end are not)."""

import argparse
import dataclasses
import ipaddress
import json
import select
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray")

from dynamictrl.serve import cli as serve_cli  # noqa: E402
from dynamictrl.serve.client import RemoteJobError, RemoteStudio  # noqa: E402
from dynamictrl.serve.config import ServeConfig, token_digest  # noqa: E402
from dynamictrl.studio import Cancelled, GenerateSettings  # noqa: E402
from dynamictrl.video import read_video, write_video  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
APP = "dynamictrl-test"
JOB_TIMEOUT_S = 90.0  # a tiny job takes seconds; this only bounds a hang
TOKEN = "test-token-0123456789abcdef"
MAX_REQUEST_BYTES = 1_000_000  # the test service's body limit (a tiny job by value is ~0.1 MB)


def tiny_settings(**overrides) -> GenerateSettings:
    values = dict(prompt="a person dancing", num_frames=9, width=48, height=64, steps=2, seed=7)
    values.update(overrides)
    return GenerateSettings(**values)


def wav(path: Path, seconds: float, amplitude: float = 0.3) -> Path:
    from scipy.io import wavfile

    t = np.arange(int(seconds * 16000)) / 16000
    wavfile.write(path, 16000, (amplitude * np.sin(2 * np.pi * 200 * t) * 32767).astype(np.int16))
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for this file (its processes idle at ~5% of a core: stopped when the
    file is done); the replicas import dynamictrl and the test job kinds
    (tests/ray_jobs.py) through PYTHONPATH."""
    from ray import serve

    # Ray starts its workers (the replicas here) at nice 15; in this file they are the
    # critical path, and nothing else in the session should come before them. The raylet
    # reads this from its environment, ours.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_worker_niceness", "0")
        serve_cli.start_local_ray(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            namespace="dynamictrl-tests",
            runtime_env={
                "env_vars": {
                    "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}",
                    "HF_HUB_OFFLINE": "1",
                    "TOKENIZERS_PARALLELISM": "false",
                }
            },
        )
        try:
            yield
        finally:
            serve.shutdown()
            ray.shutdown()


@pytest.fixture(scope="session")
def serve_root(tmp_path_factory) -> Path:
    from dynamictrl.tiny import save_tiny_weights

    root = tmp_path_factory.mktemp("serve")
    save_tiny_weights(root / "weights")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (80, 60, 3), dtype=np.uint8)).save(root / "ref.png")
    write_video(root / "pose.mp4", rng.integers(0, 255, (12, 64, 48, 3), dtype=np.uint8), fps=16)
    return root


@pytest.fixture(scope="session")
def reference_run(serve_root) -> tuple[np.ndarray, list]:
    """A local run of the same job, decoded from its mp4 as the remote results are, and its
    live previews (every step; previews only read the latents)."""
    import torch

    from dynamictrl.tiny import tiny_studio

    studio = tiny_studio(serve_root / "weights")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a replica with num_cpus=1 (Ray sets OMP_NUM_THREADS=1)
    previews = []
    try:
        studio.generate(
            serve_root / "ref.png",
            serve_root / "local" / "ref_run.mp4",
            tiny_settings(),
            pose_video_path=serve_root / "pose.mp4",
            preview=previews.append,
            preview_every=1,
        )
    finally:
        torch.set_num_threads(threads)
    return read_video(serve_root / "local" / "ref_run.mp4").frames, previews


@pytest.fixture(scope="session")
def reference_frames(reference_run) -> np.ndarray:
    return reference_run[0]


def close_to(frames: np.ndarray, reference: np.ndarray) -> bool:
    """The H.264 tolerance of tests/test_parallel.py: several processes add float noise
    that flips a few uint8 values, which the encoder may spread to neighbouring levels."""
    difference = np.abs(frames.astype(int) - reference.astype(int))
    return frames.shape == reference.shape and difference.mean() < 0.05 and difference.max() <= 4


@pytest.mark.ray
class TestService:
    @pytest.fixture(scope="class")
    def service(self, ray_session, serve_root):
        """Two CPU replicas of the tiny studio behind the gateway, HTTP on a free port, with a
        token and a 1 MB body limit."""
        from ray import serve

        from dynamictrl.serve.deployment import deploy
        from tests.ray_jobs import KINDS

        config = ServeConfig(
            weights_dir=str(serve_root / "weights"),
            tiny=True,
            outputs_dir=str(serve_root / "outputs"),
            shared_dirs=[str(serve_root)],
            extra_kinds=KINDS,
            job_timeout_s=JOB_TIMEOUT_S,
            token_sha256=token_digest(TOKEN),
            max_request_bytes=MAX_REQUEST_BYTES,
        )
        port = free_port()
        deploy(config, name=APP, port=port, replicas=2, gpus_per_replica=0, timeout_s=240)
        try:
            yield {"url": f"http://127.0.0.1:{port}/dynamictrl", "config": config, "port": port}
        finally:
            serve.delete(APP)  # frees the two CPUs for the batch tests

    @pytest.fixture
    def client(self, service):
        return RemoteStudio(app_name=APP, poll_s=0.2, job_timeout_s=JOB_TIMEOUT_S)

    def test_four_concurrent_jobs_all_finish_and_match_a_local_run(self, client, serve_root, reference_frames):
        shared = RemoteStudio(app_name=APP, poll_s=0.2, job_timeout_s=JOB_TIMEOUT_S, transfer="shared")
        messages = {i: [] for i in range(4)}

        def job(i):
            studio = shared if i == 3 else client  # three by value, one through the shared folder
            out = (serve_root / "outputs" / "shared.mp4") if i == 3 else (serve_root / "client" / f"c{i}.mp4")
            return studio.generate(
                serve_root / "ref.png",
                out,
                tiny_settings(),
                pose_video_path=serve_root / "pose.mp4",
                progress=lambda f, m: messages[i].append((f, m)),
                return_frames=True,
            )

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(job, range(4), timeout=2 * JOB_TIMEOUT_S))
        local = json.loads((serve_root / "local" / "ref_run.json").read_text())
        for i, result in enumerate(results):
            assert result.video_path.is_file() and result.manifest_path == result.video_path.with_suffix(".json")
            np.testing.assert_array_equal(read_video(result.video_path).frames, reference_frames)
            np.testing.assert_array_equal(result.frames, reference_frames)
            manifest = json.loads(result.manifest_path.read_text())
            assert manifest["settings"] == local["settings"]
            assert manifest["inputs"]["image"]["sha256"] == local["inputs"]["image"]["sha256"]
            # By value the manifest names the caller's files, not the replica's temp copies.
            assert manifest["inputs"]["image"]["path"] == str(serve_root / "ref.png")
            assert messages[i][-1] == (1.0, "done")
            fractions = [f for f, _ in messages[i]]
            assert fractions == sorted(fractions)
        # Progress is polled (every 0.2 s) and a tiny job denoises in a fraction of that, so
        # not every job shows a step; across the four, the replica's step reports get through.
        assert any(m.startswith("denoising step") for i in range(4) for _, m in messages[i])
        # Two replicas, one job each at a time: two of the four waited in the queue.
        assert sum(any(m.startswith("waiting for a free replica") for _, m in messages[i]) for i in range(4)) >= 2

        def replicas_with_models():  # each replica reports what it holds after a job (asynchronously)
            return len({row["name"].split(":")[0] for row in client.system_status()["models"] if row["loaded"]}) == 2

        wait_for(replicas_with_models, 15, "both replicas to report loaded models")

    def test_queue_position_and_cancel_running_or_queued(self, client):
        first, second = client.submit({"kind": "sleep", "seconds": 30}), client.submit({"kind": "sleep", "seconds": 30})
        wait_for(lambda: all(client.status(j)["state"] == "running" for j in (first, second)), 30, "both replicas busy")
        third = client.submit({"kind": "sleep", "seconds": 30})
        assert client.status(third)["queue_position"] == 1
        assert client.status(third)["state"] == "queued"

        client.cancel(third)  # still in the router: it never reaches a replica
        wait_for(lambda: client.status(third)["state"] == "cancelled", 10, "the queued job cancelled")

        def cancel_button(fraction, message):  # what the app's ProgressReporter does on Cancel
            if message.startswith("sleeping"):
                raise Cancelled()

        started = time.monotonic()
        with pytest.raises(Cancelled):
            client.wait(first, progress=cancel_button, timeout_s=JOB_TIMEOUT_S)
        assert client.status(first)["state"] == "cancelled"
        client.cancel(second)
        wait_for(lambda: client.status(second)["state"] == "cancelled", 10, "the running job cancelled")
        assert time.monotonic() - started < 15  # stopped at the next step, not after 30 s

    def test_bad_inputs_are_clear_errors_and_not_retried(self, client, serve_root, tmp_path):
        with pytest.raises(
            ValueError, match=r"settings\.width: Input should be less than or equal to 2048 \(got 8000\)"
        ):
            client.generate(
                serve_root / "ref.png",
                tmp_path / "x.mp4",
                tiny_settings(width=8000),
                pose_video_path=serve_root / "pose.mp4",
            )
        with pytest.raises(ValueError, match="Unknown job kind"):
            client.submit({"kind": "paint"})
        outside = RemoteStudio(app_name=APP, transfer="shared", poll_s=0.2, job_timeout_s=JOB_TIMEOUT_S)
        Image.new("RGB", (48, 64)).save(tmp_path / "elsewhere.png")
        with pytest.raises(ValueError, match="outside the folders"):
            outside.generate(
                tmp_path / "elsewhere.png",
                serve_root / "outputs" / "x.mp4",
                tiny_settings(),
                pose_video_path=serve_root / "pose.mp4",
            )
        assert not (tmp_path / "x.mp4").exists()

    def test_pose_lipsync_mask_and_caption_come_back_like_local_results(self, client, serve_root, tmp_path):
        from dynamictrl.pose.types import load_poses
        from dynamictrl.studio import PoseSettings

        pose = client.extract_poses(
            serve_root / "ref.png",
            serve_root / "pose.mp4",
            PoseSettings(num_frames=5, width=48, height=64),
            out_path=tmp_path / "p.mp4",
            preview_path=tmp_path / "overlay.mp4",
            json_path=tmp_path / "p.json",
        )
        assert pose.sequence.num_frames == 5 and read_video(pose.pose_video_path).num_frames == 5
        assert pose.preview_path.is_file() and len(load_poses(pose.json_path)[0]) == 5

        frames = np.random.default_rng(3).integers(0, 255, (3, 240, 320, 3), dtype=np.uint8)
        frames[:, :16, :16] = (255, 0, 0)  # makes the tiny DWPose find a face (see dynamictrl/testing/onnx.py)
        video = write_video(tmp_path / "talk.mp4", frames, fps=25)
        result = client.lipsync(video, wav(tmp_path / "a.wav", 0.5), tmp_path / "talking.mp4")
        assert result.report.output_frames == 12 and result.report.looped
        assert read_video(result.video_path).num_frames == 12
        manifest = json.loads(result.manifest_path.read_text())
        assert manifest["kind"] == "lipsync" and manifest["inputs"]["video"]["path"] == str(video)
        with pytest.raises(ValueError, match="silent"):  # an AudioError on the replica: the caller's to fix
            client.lipsync(video, wav(tmp_path / "quiet.wav", 0.5, amplitude=0.0), tmp_path / "q.mp4")

        red = tmp_path / "red.png"
        Image.new("RGB", (360, 480), (255, 0, 0)).save(red)  # the tiny detector finds people in red
        masked = client.mask(red, "background", 48, 64)
        assert masked.mask.shape == (64, 48) and 0 < masked.mask.mean() < 1 and (masked.masked[masked.mask] == 0).all()
        caption = client.caption(masked.masked, mask_mode="background")
        assert caption.text and caption.t5_tokens <= 226

    def test_http_endpoint(self, service, serve_root, reference_frames):
        url = service["url"]
        with urllib.request.urlopen(url + "/healthz", timeout=30) as response:
            assert json.loads(response.read()) == {"ok": True}
        remote = RemoteStudio(url=url, poll_s=0.2, job_timeout_s=JOB_TIMEOUT_S, token=TOKEN)
        result = remote.generate(
            serve_root / "ref.png",
            serve_root / "http" / "h.mp4",
            tiny_settings(),
            pose_video_path=serve_root / "pose.mp4",
        )
        np.testing.assert_array_equal(read_video(result.video_path).frames, reference_frames)
        with pytest.raises(KeyError, match="Unknown job"):
            remote.status("nope")
        with pytest.raises(ValueError, match="needs exactly one"):
            remote.submit({"kind": "generate", "image": "a.png", "out": "a.mp4", "settings": {"prompt": ""}})
        status = remote.system_status()
        assert "2 Ray Serve replica(s)" in status["device"] and status["jobs"]["done"] >= 1
        assert [job["state"] for job in remote.jobs()] == ["done"]  # its own job, nobody else's

    # ------------------------------------------------------------ security (issue 15)
    def test_token_is_required_except_for_health_and_docs(self, service):
        url = service["url"]
        assert call("GET", url + "/healthz")[0] == 200
        for method, path in (("POST", "/jobs"), ("GET", "/jobs"), ("GET", "/jobs/abc"), ("POST", "/jobs/abc/cancel")):
            code, answer = call(
                method,
                url + path,
                body={"kind": "sleep", "seconds": 0} if method == "POST" else None,
                headers={"X-Owner-Key": "k" * 20},
            )
            assert code == 401 and "Bearer" in answer["detail"], (path, code, answer)
            assert call(method, url + path, headers={"Authorization": "Bearer wrong-token-0123456789"})[0] == 401
        with pytest.raises(PermissionError, match="token"):
            RemoteStudio(url=url, token="not-the-token-0123456789").submit({"kind": "sleep", "seconds": 0})

    def test_openapi_schema_is_derived_from_the_settings(self, service):
        from dynamictrl.lipsync.settings import LipSyncSettings
        from dynamictrl.studio import PoseSettings

        code, schema = call("GET", service["url"] + "/openapi.json")
        assert code == 200
        models = schema["components"]["schemas"]
        for cls in (GenerateSettings, PoseSettings, LipSyncSettings):
            properties = models[cls.__name__]["properties"]
            assert set(properties) == {f.name for f in dataclasses.fields(cls)}
            for f in dataclasses.fields(cls):
                if f.default is not dataclasses.MISSING:
                    assert properties[f.name].get("default") == f.default, (cls.__name__, f.name)
        assert {"GenerateJob", "PoseJob", "LipSyncJob", "MaskJob", "CaptionJob"} <= set(models)
        with urllib.request.urlopen(service["url"] + "/docs", timeout=30) as page:
            assert b"swagger" in page.read().lower()

    def test_bad_fields_are_422_naming_the_field(self, service, serve_root):
        url, auth = service["url"], {"Authorization": f"Bearer {TOKEN}", "X-Owner-Key": "o" * 20}
        job = {
            "kind": "generate",
            "image": str(serve_root / "ref.png"),
            "pose_video": str(serve_root / "pose.mp4"),
            "out": "x.mp4",
            "settings": {"prompt": "a", "steps": "many"},
        }
        for settings, field in (
            ({"prompt": "a", "steps": "many"}, "steps"),
            ({"prompt": "a", "sead": 1}, "sead"),
            ({"prompt": "a", "guidance": float("inf")}, "guidance"),
            ({"prompt": "a", "num_frames": 10}, "4k+1"),
        ):
            code, answer = call("POST", url + "/jobs", body={**job, "settings": settings}, headers=auth)
            assert code == 422 and field in json.dumps(answer["detail"]), (settings, code, answer)
        code, answer = call("POST", url + "/jobs", body={**job, "kind": "paint"}, headers=auth)
        assert code == 422 and "paint" in json.dumps(answer["detail"])
        code, answer = call(
            "POST",
            url + "/jobs",
            body={
                "kind": "mask",
                "image": "a.png",
                "mode": "background",
                "width": 48,
                "height": 64,
                "points": [["x", 1, 1]],
            },
            headers=auth,
        )
        assert code == 422 and "points" in json.dumps(answer["detail"])
        remote = RemoteStudio(url=url, token=TOKEN)
        with pytest.raises(ValueError, match="steps"):
            remote.submit({**job, "settings": {"prompt": "a", "steps": "many"}})

    def test_jobs_belong_to_their_owner(self, service, client):
        url = service["url"]
        owner = RemoteStudio(url=url, poll_s=0.2, job_timeout_s=JOB_TIMEOUT_S, token=TOKEN)
        other = RemoteStudio(url=url, poll_s=0.2, job_timeout_s=JOB_TIMEOUT_S, token=TOKEN)
        job_id = owner.submit({"kind": "sleep", "seconds": 0.2})
        assert job_id in [job["id"] for job in owner.jobs()]
        assert job_id not in [job["id"] for job in other.jobs()]
        assert job_id not in [job["id"] for job in client.jobs()]  # the Ray handle, another owner key
        for attempt in (other.status, other.cancel, other.transport.result, client.status, client.cancel):
            with pytest.raises(KeyError, match="Unknown job"):
                attempt(job_id)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        assert call("GET", f"{url}/jobs/{job_id}", headers=headers)[0] == 404  # no owner key at all
        assert call("GET", f"{url}/jobs", headers=headers)[0] == 400
        answer = owner.wait(job_id, timeout_s=JOB_TIMEOUT_S)  # the probes above neither cancelled nor took it
        assert answer["kind"] == "sleep" and owner.status(job_id)["state"] == "done"
        # Without an owner key of its own, a submission gets one back and needs it afterwards.
        code, submitted = call("POST", url + "/jobs", body={"kind": "sleep", "seconds": 0}, headers=headers)
        assert code == 200 and len(submitted["owner_key"]) >= 16
        mine = {**headers, "X-Owner-Key": submitted["owner_key"]}
        assert call("GET", f"{url}/jobs/{submitted['job_id']}", headers=mine)[0] == 200
        assert call("GET", f"{url}/jobs/{submitted['job_id']}", headers={**headers, "X-Owner-Key": "x" * 20})[0] == 404
        code, answer = call(
            "POST", url + "/jobs", body={"kind": "sleep", "seconds": 0}, headers={**headers, "X-Owner-Key": "short"}
        )
        assert code == 422 and "16" in answer["detail"]

    def test_oversized_bodies_are_refused_before_they_are_read(self, service):
        port, path = service["port"], "/dynamictrl/jobs"
        auth = f"Authorization: Bearer {TOKEN}\r\nX-Owner-Key: {'o' * 20}\r\n"
        # Declared: refused from the headers alone (the body is never sent).
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(
                f"POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n"
                f"Content-Length: 146000000\r\n\r\n".encode()
            )
            status, body = read_response(sock)
        assert status == 413 and "1 MB" in body
        # Chunked (no length): refused with 411 from the headers too (Ray Serve's proxy would
        # read such a body whole before the gateway could count it); the gateway's memory
        # does not grow by what the client pushes meanwhile.
        import psutil

        gateway = psutil.Process(
            call("GET", service["url"] + "/status", headers={"Authorization": f"Bearer {TOKEN}"})[1]["gateway"]["pid"]
        )
        rss_before = gateway.memory_info().rss
        total, chunk = 64 * MAX_REQUEST_BYTES, b"x" * 65536
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(
                f"POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n"
                "Transfer-Encoding: chunked\r\n\r\n".encode()
            )
            sent = 0
            while sent < total and not select.select([sock], [], [], 0)[0]:
                try:
                    sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                except OSError:  # the server answered and closed while we were still sending
                    break
                sent += len(chunk)
            status, body = read_response(sock)
        assert status == 411 and "Content-Length" in body and "1 MB" in body
        assert sent < total / 2, f"the whole body ({sent} bytes) was sent before the refusal"
        grown = gateway.memory_info().rss - rss_before
        print(f"chunked body refused after {sent / 1e6:.1f} MB sent; gateway RSS grew {grown / 1e6:.1f} MB")
        assert grown < 8 * MAX_REQUEST_BYTES, grown
        # A job below the limit still goes through afterwards.
        assert call("GET", service["url"] + "/healthz")[0] == 200

    def test_status_shows_hosts_pids_and_folders_only_with_the_token(self, service, serve_root):
        url = service["url"]
        code, public = call("GET", url + "/status")
        assert code == 200 and public["replicas"] and public["jobs"]["done"] >= 1
        assert str(serve_root) not in json.dumps(public)
        assert socket.gethostname() not in [str(value) for replica in public["replicas"] for value in replica.values()]
        assert all(
            set(replica)
            <= {
                "replica",
                "device",
                "gpu",
                "vram_free_gb",
                "vram_total_gb",
                "vram_allocated_gb",
                "models",
                "seen_s_ago",
                "busy",
            }
            for replica in public["replicas"]
        )
        code, full = call("GET", url + "/status", headers={"Authorization": f"Bearer {TOKEN}"})
        assert code == 200 and full["outputs_dir"] == str(serve_root / "outputs")
        assert all("pid" in replica and "node" in replica for replica in full["replicas"])
        assert call("GET", url + "/status", headers={"Authorization": "Bearer wrong-token-0123456789"})[0] == 401

    def test_ray_listens_on_loopback_only(self, service):
        """Every listening socket of every process this Ray started (GCS, raylet, agents,
        workers, the Serve proxy) is on 127.0.0.1."""
        import psutil

        listening = []
        for process in psutil.Process().children(recursive=True):
            try:
                sockets = process.net_connections(kind="inet")
            except psutil.NoSuchProcess:
                continue
            listening += [(process.name(), s.laddr) for s in sockets if s.status == psutil.CONN_LISTEN]
        assert any(addr.port == service["port"] for _, addr in listening)  # the Serve proxy is among them
        exposed = [(name, addr) for name, addr in listening if not loopback(addr.ip)]
        assert not exposed, exposed

    def test_replica_killed_mid_job_is_retried_on_the_other(self, client, serve_root, reference_frames):
        out = serve_root / "outputs" / "after_crash.mp4"
        job = {
            "kind": "crash_once",
            "then": "generate",
            "marker": str(serve_root / "crash.marker"),
            "image": str(serve_root / "ref.png"),
            "pose_video": str(serve_root / "pose.mp4"),
            "out": str(out),
            "settings": {
                "prompt": "a person dancing",
                "num_frames": 9,
                "width": 48,
                "height": 64,
                "steps": 2,
                "seed": 7,
            },
        }
        job_id = client.submit(job)
        answer = client.wait(job_id, timeout_s=JOB_TIMEOUT_S)
        status = client.status(job_id)
        assert status["runs"] == 2 and (serve_root / "crash.marker").is_file()
        assert answer["outputs"]["video"] == str(out)
        np.testing.assert_array_equal(read_video(out).frames, reference_frames)

    def test_live_previews_reach_the_caller(self, service, client, serve_root, reference_run, tmp_path):
        """The job's status carries the latest preview; RemoteStudio hands it out as a local
        Studio does: the last one (step 2 of 2) has the local run's pixels."""
        local = reference_run[1][-1]
        over_http = RemoteStudio(url=service["url"], poll_s=0.2, job_timeout_s=JOB_TIMEOUT_S, token=TOKEN)
        for name, studio in (("handle", client), ("http", over_http)):
            seen = []
            studio.generate(
                serve_root / "ref.png",
                tmp_path / f"{name}.mp4",
                tiny_settings(),
                pose_video_path=serve_root / "pose.mp4",
                preview=seen.append,
                preview_every=1,
            )
            assert seen and [p.step for p in seen] == sorted({p.step for p in seen}), name  # each picture once
            last = seen[-1]
            assert (last.step, last.steps) == (2, 2) and last.frames.shape == local.frames.shape == (3, 8, 6, 3)
            np.testing.assert_array_equal(last.frames, local.frames)
        # Without preview_after the status stays small: the step only.
        job_id = client.submit({"kind": "sleep", "seconds": 0})
        client.wait(job_id, timeout_s=JOB_TIMEOUT_S)
        status = client.status(job_id)
        assert status["preview_step"] is None and "preview" not in status

    def test_a_playlist_is_refused_by_name(self, client, serve_root, tmp_path):
        """Issue 15 through the gateway: an HLS playlist naming a local video, as the pose or
        the driving video, by value and through the shared folder, is refused by what it is."""
        from tests import test_badinputs
        from tests.badinputs.make_corpus import PROBE_CASES, write_playlist

        playlist = write_playlist(serve_root / "playlist.m3u8", serve_root / "pose.mp4")
        shared = RemoteStudio(app_name=APP, poll_s=0.2, job_timeout_s=JOB_TIMEOUT_S, transfer="shared")
        cases = {case.name: case for case in PROBE_CASES}
        for name, role in (("hls_playlist_pose", "pose_video_path"), ("hls_playlist_driving", "driving_video_path")):
            for transfer, studio in (("by value", client), ("shared folder", shared)):
                out = (serve_root / "outputs" if transfer == "shared folder" else tmp_path) / f"{name}.mp4"
                started = time.monotonic()
                with pytest.raises(
                    ValueError, match=r"playlist.m3u8 is an HLS playlist \(\.m3u8\), not a video file"
                ) as error:
                    studio.generate(serve_root / "ref.png", out, tiny_settings(), **{role: playlist})
                assert not out.exists() and not out.with_suffix(".json").exists()
                test_badinputs.RESULTS.append(
                    {
                        "case": name,
                        "stage": cases[name].stage,
                        "what": cases[name].what,
                        "expected": cases[name].expected,
                        "via": f"Ray {transfer}",
                        "outcome": f"{type(error.value).__name__}: {error.value}",
                        "seconds": round(time.monotonic() - started, 2),
                        "passed": True,
                    }
                )

    def test_replica_dying_every_time_is_a_clear_error_not_a_hang(self, client):
        started = time.monotonic()
        with pytest.raises(RemoteJobError, match="died 1 time"):
            client.wait(client.submit({"kind": "crash_always", "max_retries": 0}), timeout_s=JOB_TIMEOUT_S)
        assert time.monotonic() - started < 30


def call(method: str, url: str, body=None, headers=None) -> tuple[int, dict]:
    """(HTTP status, JSON answer) of one request; error statuses are answers too."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def read_response(sock: socket.socket) -> tuple[int, str]:
    """The status and body of a raw HTTP/1.1 response (read until the body is complete)."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        if not piece:
            break
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), 0
    )
    while len(body) < length:
        piece = sock.recv(65536)
        if not piece:
            break
        body += piece
    return int(head.split(b" ")[1]), body.decode(errors="replace")


def loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback


@pytest.mark.ray
class TestBatch:
    def write_jobs(self, folder: Path, serve_root: Path) -> Path:
        (folder / "broken.png").write_bytes(b"not an image")
        settings = {"prompt": "a person dancing", "num_frames": 9, "width": 48, "height": 64, "steps": 2}
        lines = [
            {
                "kind": "generate",
                "image": str(serve_root / "ref.png"),
                "pose_video": str(serve_root / "pose.mp4"),
                "out": f"out/g{seed}.mp4",
                "settings": {**settings, "seed": seed},
            }
            for seed in range(4)
        ]
        lines.insert(
            2,
            {
                "kind": "generate",
                "id": "the-bad-one",
                "image": "broken.png",
                "pose_video": str(serve_root / "pose.mp4"),
                "out": "out/bad.mp4",
                "settings": settings,
            },
        )
        lines.append(
            {
                "kind": "pose",
                "image": str(serve_root / "ref.png"),
                "driving_video": str(serve_root / "pose.mp4"),
                "out": "out/pose.mp4",
                "settings": {"num_frames": 5, "width": 48, "height": 64},
            }
        )
        path = folder / "jobs.jsonl"
        path.write_text("# six jobs, one with a broken image\n" + "\n".join(json.dumps(line) for line in lines) + "\n")
        return path

    def run_cli(self, jobs: Path, serve_root: Path) -> int:
        parser = argparse.ArgumentParser()
        serve_cli.add_batch_arguments(parser)
        args = parser.parse_args(
            [
                "--jobs",
                str(jobs),
                "--tiny",
                "--weights-dir",
                str(serve_root / "weights"),
                "--workers",
                "2",
                "--job-timeout",
                str(JOB_TIMEOUT_S),
                "--no-progress",
            ]
        )
        return serve_cli.run_batch(args)

    def test_batch_reports_the_bad_job_and_a_rerun_skips_the_done_ones(self, ray_session, serve_root, tmp_path, capsys):
        jobs = self.write_jobs(tmp_path, serve_root)
        assert self.run_cli(jobs, serve_root) == 1
        report = capsys.readouterr().out
        assert "6 job(s): 5 done, 0 skipped (already done), 1 failed" in report
        assert "FAILED the-bad-one: Could not read the image" in report
        outputs = sorted(p.name for p in (tmp_path / "out").iterdir())
        assert outputs == sorted([*(f"g{s}.{e}" for s in range(4) for e in ("mp4", "json")), "pose.mp4", "pose.json"])
        assert json.loads((tmp_path / "out" / "g3.json").read_text())["settings"]["seed"] == 3
        stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()}

        assert self.run_cli(jobs, serve_root) == 1
        report = capsys.readouterr().out
        assert "6 job(s): 0 done, 5 skipped (already done), 1 failed" in report
        assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()} == stamps


@pytest.mark.ray
@pytest.mark.slow  # starts two processes inside a replica (~60 s with its deploy on 2 cores)
class TestProcessGroupReplica:
    """`serve --gpus-per-replica 2 --device cpu`: one replica whose two processes (gloo,
    ulysses=2) run each job together. Deployed after TestService is gone (Ray has 2 CPUs)."""

    @pytest.fixture(scope="class")
    def group_client(self, ray_session, serve_root):
        from ray import serve

        from dynamictrl.serve.deployment import deploy
        from tests.ray_jobs import KINDS

        config = ServeConfig(
            weights_dir=str(serve_root / "weights"),
            tiny=True,
            device="cpu",
            outputs_dir=str(serve_root / "outputs"),
            shared_dirs=[str(serve_root)],
            extra_kinds=KINDS,
            job_timeout_s=JOB_TIMEOUT_S,
            processes_per_replica=2,
        )
        deploy(config, name=APP + "-group", port=free_port(), replicas=1, gpus_per_replica=None, timeout_s=240)
        try:
            yield RemoteStudio(app_name=APP + "-group", poll_s=0.2, job_timeout_s=JOB_TIMEOUT_S)
        finally:
            serve.delete(APP + "-group")  # frees the two CPUs for the batch tests

    def test_one_job_on_two_processes_gives_the_single_process_video(
        self, group_client, serve_root, reference_run, tmp_path
    ):
        seen = []
        result = group_client.generate(
            serve_root / "ref.png",
            tmp_path / "group.mp4",
            tiny_settings(),
            pose_video_path=serve_root / "pose.mp4",
            preview=seen.append,
            preview_every=1,
        )
        assert close_to(read_video(result.video_path).frames, reference_run[0])
        manifest = json.loads(result.manifest_path.read_text())
        assert manifest["parallel"] == {"ulysses": 2, "ring": 1, "cfg": 1}
        assert seen[-1].step == 2 and seen[-1].frames.shape == reference_run[1][-1].frames.shape  # rank 0's previews
        status = group_client.system_status()
        assert "2 processes (ulysses=2,ring=1,cfg=1) on cpu" in status["device"]

    def test_a_cancel_ends_the_running_job_and_its_processes(self, group_client):
        before = group_client.system_status()["replicas"][0]["group_pids"]  # reported after the job above
        assert len(before) == 2
        job_id = group_client.submit({"kind": "sleep", "seconds": 30})  # custom kinds run on every rank
        wait_for(lambda: group_client.status(job_id)["fraction"] > 0, 30, "the sleep job reporting from rank 0")
        started = time.monotonic()
        group_client.cancel(job_id)
        wait_for(lambda: group_client.status(job_id)["state"] == "cancelled", 20, "the job cancelled")
        assert time.monotonic() - started < 20
        assert not [pid for pid in before if Path(f"/proc/{pid}").exists()]  # the group was ended, and reaped

    # Runs after the cancel above: the replica starts a new group for it.
    def test_a_failing_rank_ends_the_job_and_its_processes(self, group_client, serve_root, tmp_path):
        pids = tmp_path / "pids"
        job = {
            "kind": "fail_on_rank",
            "rank": 1,
            "pids": str(pids),
            "image": str(serve_root / "ref.png"),
            "pose_video": str(serve_root / "pose.mp4"),
            "out": "fail_on_rank.mp4",
            "settings": {"prompt": "a person dancing", "num_frames": 9, "width": 48, "height": 64, "steps": 2},
        }
        started = time.monotonic()
        with pytest.raises(
            RemoteJobError, match="Process 1 of the replica's 2 failed: RuntimeError: injected failure on rank 1"
        ):
            group_client.wait(group_client.submit(job), timeout_s=JOB_TIMEOUT_S)
        assert time.monotonic() - started < 60
        ranks = {int(path.name): int(path.read_text()) for path in pids.iterdir()}
        assert sorted(ranks) == [0, 1]
        # Rank 0 waited for rank 1 in a collective: the replica ended both (and reaped them).
        assert not [pid for pid in ranks.values() if Path(f"/proc/{pid}").exists()]
        assert not (serve_root / "outputs" / "fail_on_rank.mp4").exists()


def test_gpus_per_replica_becomes_a_process_group():
    """`--gpus-per-replica N` (N > 1): N processes per replica, N GPUs asked of Ray, or N
    CPUs with --device cpu; clear refusals otherwise (no Ray needed)."""
    from dynamictrl.serve.deployment import build_app, replica_gpus

    assert serve_cli.processes_per_replica(None, None) == 1 and serve_cli.processes_per_replica(0.5, None) == 1
    assert serve_cli.processes_per_replica(4.0, "cfg=2,ulysses=2") == 4
    with pytest.raises(ValueError, match="whole number"):
        serve_cli.processes_per_replica(2.5, None)
    with pytest.raises(ValueError, match="--gpus-per-replica N"):
        serve_cli.processes_per_replica(1, "ulysses=2")
    with pytest.raises(ValueError, match="needs 4 processes, but each replica has 2"):
        ServeConfig(processes_per_replica=2, parallel="cfg=2,ulysses=2")
    assert str(ServeConfig(processes_per_replica=4).layout) == "ulysses=4,ring=1,cfg=1"
    gpu = ServeConfig(processes_per_replica=2)
    assert replica_gpus(gpu, None, 8) == 2.0 and replica_gpus(gpu, 2.0, 8) == 2.0
    with pytest.raises(ValueError, match="no GPUs. Add --device cpu"):
        replica_gpus(gpu, None, 0)
    with pytest.raises(ValueError, match="only 1 GPU"):
        replica_gpus(gpu, None, 1)
    cpu = ServeConfig(processes_per_replica=2, device="cpu")
    worker = build_app(cpu, replicas=1, runtime_env={})._bound_deployment.init_args[0]._bound_deployment
    assert worker.ray_actor_options == {"num_gpus": 0.0, "num_cpus": 2.0}


def test_remote_outputs_are_checked_before_anything_is_sent(tmp_path):
    """RemoteStudio writes results by value here: a path that is a folder, or a folder that
    cannot be written, is refused before the job is sent (the URL below answers nothing:
    a request would fail differently)."""
    from dynamictrl.lipsync.settings import LipSyncSettings
    from dynamictrl.studio import OutputError, PoseSettings

    remote = RemoteStudio(url="http://127.0.0.1:9/dynamictrl", token=TOKEN)
    (tmp_path / "taken.mp4").mkdir()
    image, video = tmp_path / "ref.png", tmp_path / "in.mp4"
    calls = {
        "generate": lambda out: remote.generate(image, out, tiny_settings(), pose_video_path=video),
        "lipsync": lambda out: remote.lipsync(video, tmp_path / "a.wav", out, LipSyncSettings()),
        "pose": lambda out: remote.extract_poses(image, video, PoseSettings(), out_path=out),
    }
    for call_with in calls.values():
        with pytest.raises(OutputError, match="is a folder"):
            call_with(tmp_path / "taken.mp4")
        with pytest.raises(OutputError, match="not writable"):
            call_with(Path("/proc/dynamictrl-out.mp4"))
    with pytest.raises(OutputError, match="must be an .mp4"):
        calls["generate"](tmp_path / "out.avi")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.mp4"]


def test_jobs_file_errors_name_the_line(tmp_path):
    from dynamictrl.serve.jobs import load_jobs

    path = tmp_path / "jobs.jsonl"
    path.write_text(
        '{"kind": "generate", "image": "a.png", "out": "a.mp4", "settings": {"prompt": ""}}\n'
        "\n{not json\n"
        '{"kind": "pose", "image": "a.png", "driving_video": "d.mp4", "out": "p.mp4", "settings": {"fps": 8}}\n'
        '{"kind": "generate", "image": "a.png", "pose_video": "p.mp4", "out": "b.mp4", '
        '"settings": {"prompt": "", "sead": 1}}\n'
    )
    records = load_jobs(path)
    assert [r["line"] for r in records] == [1, 3, 4, 5]
    assert "needs exactly one" in records[0]["error"] and records[1]["error"].startswith("line 3:")
    assert records[2]["job"]["json"] == str(tmp_path / "p.json")  # what marks a pose job done
    assert records[2]["job"]["image"] == str(tmp_path / "a.png")
    assert "settings.sead: unknown field" in records[3]["error"]


def test_replica_options_follow_the_flags():
    """One GPU and one job per replica; fixed count or autoscaling bounds (no Ray needed)."""
    from dynamictrl.serve.deployment import build_app

    fixed = build_app(ServeConfig(), replicas=3, gpus_per_replica=1, runtime_env={})
    worker = fixed._bound_deployment.init_args[0]._bound_deployment
    assert worker.num_replicas == 3 and worker.ray_actor_options == {"num_gpus": 1, "num_cpus": 1.0}
    assert worker._deployment_config.max_ongoing_requests == 1
    assert fixed._bound_deployment.ray_actor_options["num_cpus"] == 0  # the gateway takes no CPU from the replicas

    scaled = build_app(
        ServeConfig(), min_replicas=0, max_replicas=4, gpus_per_replica=0, runtime_env={"py_modules": ["x"]}
    )
    worker = scaled._bound_deployment.init_args[0]._bound_deployment
    bounds = worker._deployment_config.autoscaling_config
    assert (bounds.min_replicas, bounds.initial_replicas, bounds.max_replicas) == (0, 1, 4)
    assert bounds.target_ongoing_requests == 1
    assert worker.ray_actor_options == {"num_gpus": 0, "num_cpus": 1.0, "runtime_env": {"py_modules": ["x"]}}
    with pytest.raises(ValueError, match="min_replicas"):
        build_app(ServeConfig(), min_replicas=3, max_replicas=2, gpus_per_replica=0, runtime_env={})


def test_body_limit_counts_a_body_as_it_arrives():
    """The second line of the body limit (no Ray): whatever arrives is counted and refused
    past the limit, before the app has it whole; a declared length or chunking is refused
    from the headers."""
    import asyncio

    from fastapi import FastAPI, Request

    from dynamictrl.serve.http_api import BodyLimit

    app = FastAPI()
    pulled = []

    @app.post("/echo")
    async def echo(request: Request) -> dict:
        return {"bytes": len(await request.body())}

    def run(headers: list, pieces: int) -> tuple[int, str]:
        sent = []

        async def receive():
            pulled.append(1)
            return {"type": "http.request", "body": b"x" * 1000, "more_body": len(pulled) < pieces}

        async def send(message):
            sent.append(message)

        scope = {
            "type": "http",
            "method": "POST",
            "path": "/echo",
            "raw_path": b"/echo",
            "query_string": b"",
            "headers": headers,
            "http_version": "1.1",
            "scheme": "http",
            "server": ("x", 80),
            "root_path": "",
        }
        pulled.clear()
        asyncio.run(BodyLimit(app, max_bytes=5000)(scope, receive, send))
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body").decode()
        return sent[0]["status"], body

    assert run([], pieces=3) == (200, '{"bytes":3000}')
    status, body = run([], pieces=100)  # no length header at all: counted
    assert status == 413 and "0.005 MB" in body and len(pulled) == 6  # stopped right past the limit
    assert run([(b"content-length", b"6000")], pieces=6)[0] == 413 and not pulled  # never read
    assert run([(b"transfer-encoding", b"chunked")], pieces=6)[0] == 411 and not pulled


def test_job_schema_follows_the_settings_dataclasses():
    """Derived, not restated: a nested dataclass, a default factory, metadata ranges and
    choices, and a dataclass's own rules all reach the model without naming a field."""
    from pydantic import ValidationError

    from dynamictrl.serve.schema import settings_model, to_dataclass

    @dataclasses.dataclass
    class Memory:
        offload: str = dataclasses.field(default="auto", metadata={"choices": ("auto", "none"), "help": "where"})
        blocks: int = dataclasses.field(default=2, metadata={"min": 1, "max": 8})

    @dataclasses.dataclass
    class Settings:
        prompt: str
        tags: list[str] = dataclasses.field(default_factory=lambda: ["a"])
        memory: Memory = dataclasses.field(default_factory=Memory)
        ratio: float | None = None

        def __post_init__(self):
            if self.ratio is not None and self.ratio > 1:
                raise ValueError(f"ratio must be <= 1, got {self.ratio}.")

    model = settings_model(Settings)
    assert list(model.model_fields) == ["prompt", "tags", "memory", "ratio"]
    built = to_dataclass(Settings, model.model_validate({"prompt": "p", "memory": {"blocks": 3}}))
    assert built == Settings(prompt="p", memory=Memory(blocks=3)) and isinstance(built.memory, Memory)
    schema = model.model_json_schema()
    assert schema["$defs"]["Memory"]["properties"]["offload"]["enum"] == ["auto", "none"]
    assert schema["$defs"]["Memory"]["properties"]["blocks"]["maximum"] == 8
    for bad, where in (
        ({"prompt": "p", "memory": {"blocks": 9}}, ("memory", "blocks")),
        ({"prompt": "p", "memory": {"offload": "gpu"}}, ("memory", "offload")),
        ({"prompt": "p", "memory": {"speed": 1}}, ("memory", "speed")),
        ({}, ("prompt",)),
        ({"prompt": "p", "ratio": 2}, ()),
    ):
        with pytest.raises(ValidationError) as error:
            model.model_validate(bad)
        assert error.value.errors()[0]["loc"] == where, bad
    # The real settings: every field, default and the Studio's own checks.
    generate = settings_model(GenerateSettings)
    assert list(generate.model_fields) == [f.name for f in dataclasses.fields(GenerateSettings)]
    assert generate.model_validate({"prompt": "x"}).num_frames == GenerateSettings(prompt="x").num_frames
    with pytest.raises(ValidationError, match="multiples of 16"):
        generate.model_validate({"prompt": "x", "width": 50})


def test_serving_beyond_loopback_needs_a_token_or_insecure(monkeypatch):
    """Refused before Ray starts; a token shorter than 16 characters is refused too."""
    from dynamictrl.serve.config import check_exposure, is_loopback

    monkeypatch.delenv("DYNAMICTRL_SERVE_TOKEN", raising=False)
    parser = argparse.ArgumentParser()
    serve_cli.add_serve_arguments(parser)
    with pytest.raises(ValueError, match="--insecure"):
        serve_cli.run_serve(parser.parse_args(["--host", "0.0.0.0", "--tiny"]))
    with pytest.raises(ValueError, match="at least 16"):
        serve_cli.run_serve(parser.parse_args(["--host", "0.0.0.0", "--tiny", "--token", "short"]))
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and not is_loopback("0.0.0.0")
    check_exposure("0.0.0.0", ServeConfig(token_sha256=token_digest(TOKEN)))
    check_exposure("0.0.0.0", ServeConfig(insecure=True))
    check_exposure("127.0.0.1", ServeConfig())


def test_a_ranks_error_crosses_to_the_replica_as_data_and_keeps_its_kind():
    """No exception object is unpickled by the replica: a rank sends module, class and text,
    and the replica rebuilds the class (or its nearest builtin base), so input errors stay
    input errors (HTTP 4xx) and Cancelled stays Cancelled."""
    import json

    from dynamictrl.serve.group import _described, _rebuilt
    from dynamictrl.studio import Cancelled
    from dynamictrl.video import VideoTooShortError

    class Foreign(Exception):
        pass

    cases = [
        (ValueError("bad width"), ValueError, "bad width"),
        (Cancelled("cancelled by the user"), Cancelled, "cancelled by the user"),
        (VideoTooShortError("too short", 3), ValueError, "too short"),  # needs 2 arguments
        (Foreign("odd"), RuntimeError, "Foreign: odd"),
    ]
    for error, kind, text in cases:
        sent = _described(error)
        assert json.loads(json.dumps(sent)) == sent  # plain data
        rebuilt = _rebuilt(sent)
        assert type(rebuilt) is kind and str(rebuilt) == text
