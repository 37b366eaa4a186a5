"""`RemoteStudio`: the Studio methods the app calls, run on a Ray Serve deployment.

    studio = RemoteStudio(address="auto")                      # a Ray cluster: the deployment handle
    studio = RemoteStudio(url="http://head:8000/dynamictrl")   # anything that reaches the HTTP endpoint
    result = studio.generate("ref.png", "out.mp4", settings, pose_video_path="pose.mp4", progress=cb)

Inputs are sent by value and results come back as bytes written where the caller asked
(`transfer="bytes"`, the default: nothing needs to be shared), or the paths are passed
as they are (`transfer="shared"`: the replicas see the same disk, inside the folders the
deployment shares). Each RemoteStudio makes a secret owner key and sends it with its jobs:
the service shows, returns and cancels a job only for that key. A service started with a
token needs it here too (`token=` or DYNAMICTRL_SERVE_TOKEN). `progress(fraction, message)` hears the queue position while the
job waits and the replica's progress while it runs; if it raises `Cancelled` (the app's
Cancel button does), the remote job is cancelled and `Cancelled` is raised here.
`generate(..., preview=cb, preview_every=N)` hears live previews as a local Studio's
(`dynamictrl.preview.Preview`; the latest one each poll, so a fast job may skip some, never
the last). With transfer="bytes" the outputs are written here: their paths are checked
(`dynamictrl.studio.check_outputs`) before anything is sent.
"""

import io
import json
import os
import secrets
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
from PIL import Image

from ..studio import SIDE_OUTPUTS, Cancelled, GenerateResult, LipSyncResult, MaskedReference, PoseResult, check_outputs
from .config import APP_NAME, TOKEN_ENV
from .jobs import encode_files, pack_inputs, safe_name, write_returned_files

CALL_TIMEOUT_S = 30.0  # one request to the gateway (submit, status, cancel, result)
LOST_CONTACT_S = 120.0  # status questions failing this long in a row: the service is gone
CANCEL_WAIT_S = 60.0  # after a cancel, how long to wait for the replica to stop


class RemoteJobError(RuntimeError):
    """A remote job failed for a reason that is not the caller's input."""


@dataclass
class RemotePoseSequence:
    """What a caller reads of a `PoseSequence` made remotely (the arrays stay there; the
    pose video and JSON carry them)."""

    num_frames: int
    filled_frames: int
    retarget_mode: str
    retarget_info: dict = field(default_factory=dict)


@dataclass
class RemoteCaption:
    text: str
    truncated: bool = False
    t5_tokens: int | None = None
    generated_tokens: int = 0
    hit_token_limit: bool = False


class _HandleTransport:
    """Inside the Ray cluster: the gateway's handle (the cluster is the trust boundary; no token)."""

    def __init__(self, address: str | None, app_name: str, owner_key: str):
        import ray
        from ray import serve

        if not ray.is_initialized():
            ray.init(address=address or "auto", log_to_driver=False)
        self.handle = serve.get_app_handle(app_name)
        self.where = f"Ray Serve app {app_name!r}"
        self.owner_key = owner_key

    def call(self, method: str, *args, timeout_s: float = CALL_TIMEOUT_S):
        import ray

        try:
            return getattr(self.handle, method).remote(*args).result(timeout_s=timeout_s)
        except ray.exceptions.RayTaskError as error:
            # The gateway's own exception (e.g. ValueError for a bad job), without Ray's traceback text.
            cause = getattr(error, "cause", None)
            if isinstance(cause, Exception):
                raise cause from None
            raise

    def submit(self, job):
        return self.call("submit", job, self.owner_key)["job_id"]

    def status(self, job_id, preview_after=None):
        return self.call("status", job_id, self.owner_key, preview_after)

    def result(self, job_id):
        return self.call("result", job_id, self.owner_key, timeout_s=300.0)  # may carry a large video

    def cancel(self, job_id):
        return self.call("cancel", job_id, self.owner_key)

    def jobs(self):
        return self.call("jobs_list", self.owner_key)

    def system_status(self):
        return self.call("system_status", True)


class _HttpTransport:
    def __init__(self, url: str, owner_key: str, token: str | None):
        self.url = url.rstrip("/")
        self.where = self.url
        self.headers = {"Content-Type": "application/json", "X-Owner-Key": owner_key}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    def _request(self, method: str, path: str, body=None, timeout_s: float = CALL_TIMEOUT_S):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            detail = _detail(error.read().decode(errors="replace"))
            if error.code == 404:
                raise KeyError(detail) from None
            if error.code in (400, 413, 422):  # the request's to fix: bad job, too large
                raise ValueError(detail) from None
            if error.code == 401:
                raise PermissionError(f"{self.url}: {detail}") from None
            raise RemoteJobError(f"{self.url}{path}: HTTP {error.code}: {detail}") from None

    def submit(self, job):
        job = {**job, "files": encode_files(job.get("files") or {})}
        return self._request("POST", "/jobs", job)["job_id"]

    def status(self, job_id, preview_after=None):
        query = f"?preview_after={int(preview_after)}" if preview_after is not None else ""
        return self._request("GET", f"/jobs/{job_id}{query}")

    def jobs(self):
        return self._request("GET", "/jobs")

    def result(self, job_id):
        import base64

        answer = self._request("GET", f"/jobs/{job_id}/result", timeout_s=300.0)
        answer["files"] = {name: base64.b64decode(value["data"]) for name, value in answer.get("files", {}).items()}
        return answer

    def cancel(self, job_id):
        return self._request("POST", f"/jobs/{job_id}/cancel")

    def system_status(self):
        return self._request("GET", "/status")


def _detail(text: str) -> str:
    """FastAPI's {"detail": ...} message (a schema error list as "field: message; ..."),
    or the raw text when the body is not that."""
    try:
        payload = json.loads(text)
    except ValueError:
        return text
    if not isinstance(payload, dict):
        return text
    detail = payload.get("detail", text)
    if isinstance(detail, list):
        return "; ".join(
            f"{'.'.join(str(part) for part in item.get('loc', [])[1:])}: {item.get('msg')}"
            if isinstance(item, dict)
            else str(item)
            for item in detail
        )
    return str(detail)


def _error_for(status: dict) -> Exception:
    """The failure as the exception a local Studio would have raised (the app shows
    ValueError and friends as the user's to fix)."""
    from ..manager import OutOfMemory
    from ..weights import WeightsNotFoundError

    message = status.get("error") or "the job failed"
    kinds = {
        "ValueError": ValueError,
        "JobError": ValueError,
        "VideoTooShortError": ValueError,
        "KeyError": KeyError,
        "FileNotFoundError": FileNotFoundError,
        "OutOfMemory": OutOfMemory,
        "WeightsNotFoundError": WeightsNotFoundError,
        "TimeoutError": TimeoutError,
    }
    kind = kinds.get(status.get("error_type"))
    if kind is not None:
        return kind(message)
    if status.get("user_error"):
        return ValueError(message)  # e.g. AudioError, NoFaceError: ValueErrors of the input
    return RemoteJobError(f"{status.get('error_type') or 'Error'}: {message}")


class RemoteManager:
    """`studio.manager` for the app's System tab: models live on the replicas."""

    def unload(self, name: str) -> None:
        raise ValueError(
            "The models live on the Ray Serve replicas: scale the deployment down or redeploy to free them."
        )

    def unload_all(self) -> None:
        self.unload("")


class RemoteStudio:
    def __init__(
        self,
        address: str | None = None,
        url: str | None = None,
        app_name: str = APP_NAME,
        transfer: str = "bytes",
        job_timeout_s: float = 3 * 3600.0,
        poll_s: float = 0.5,
        token: str | None = None,
        owner_key: str | None = None,
    ):
        """`token`: the service's shared token over HTTP (default: $DYNAMICTRL_SERVE_TOKEN).
        `owner_key`: the secret this client's jobs belong to (default: a new random one;
        pass the same one to see the same jobs from another process)."""
        if transfer not in ("bytes", "shared"):
            raise ValueError(f"transfer must be 'bytes' or 'shared', got {transfer!r}.")
        self.owner_key = owner_key or secrets.token_urlsafe(32)
        if url:
            self.transport = _HttpTransport(url, self.owner_key, token or os.environ.get(TOKEN_ENV))
        else:
            self.transport = _HandleTransport(address, app_name, self.owner_key)
        self.transfer = transfer
        self.job_timeout_s = job_timeout_s
        self.poll_s = poll_s
        self.manager = RemoteManager()
        self.device = f"remote ({self.transport.where})"

    # ------------------------------------------------------------ jobs
    def submit(self, job: dict) -> str:
        """Sends a job (see `dynamictrl.serve.jobs`); returns its id at once."""
        return self.transport.submit(job)

    def cancel(self, job_id: str) -> dict:
        return self.transport.cancel(job_id)

    def status(self, job_id: str) -> dict:
        return self.transport.status(job_id)

    def jobs(self) -> list[dict]:
        """This client's jobs (those submitted with its owner key) as the gateway sees them."""
        return self.transport.jobs()

    def wait(self, job_id: str, progress=None, timeout_s: float | None = None, preview=None) -> dict:
        """Polls until the job ends; returns its answer or raises its error (`Cancelled`
        when cancelled, `TimeoutError` past `timeout_s`). `preview(Preview)` hears each
        newer live preview the status carries."""
        deadline = time.monotonic() + (timeout_s or self.job_timeout_s)
        failing_since = None
        status = {}
        shown = -1  # the step of the last preview handed to `preview`
        while True:
            try:
                status = self.transport.status(job_id, shown if preview is not None else None)
                failing_since = None
            except (KeyError, ValueError, PermissionError):  # unknown job, bad request, wrong token: no retry
                raise
            except Exception as error:  # transport trouble: retried until LOST_CONTACT_S
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > LOST_CONTACT_S:
                    raise RemoteJobError(
                        f"Lost contact with {self.transport.where} for {LOST_CONTACT_S:.0f} s "
                        f"while job {job_id} ran ({error})."
                    ) from error
                time.sleep(self.poll_s)
                continue
            state = status["state"]
            if preview is not None and status.get("preview"):
                shown = status["preview"]["step"]
                try:
                    preview(preview_of(status["preview"]))
                except Cancelled:
                    self._cancel_and_wait(job_id)
                    raise
            if state == "done":
                if progress is not None:
                    progress(1.0, status.get("message") or "done")
                return self.transport.result(job_id)
            if state == "cancelled":
                raise Cancelled(f"Job {job_id} was cancelled.")
            if state == "failed":
                raise _error_for(status)
            if progress is not None:
                try:
                    progress(*self._progress_of(status))
                except Cancelled:
                    self._cancel_and_wait(job_id)
                    raise
            if time.monotonic() > deadline:
                self.transport.cancel(job_id)
                raise TimeoutError(
                    f"Job {job_id} did not finish within {timeout_s or self.job_timeout_s:.0f} s; it was cancelled."
                )
            time.sleep(self.poll_s)

    @staticmethod
    def _progress_of(status: dict) -> tuple[float, str]:
        if status["state"] == "queued":
            position = status.get("queue_position") or 1
            ahead = "next in line" if position == 1 else f"{position - 1} job(s) ahead"
            note = status.get("message") if status.get("message") not in (None, "queued") else ""
            return 0.0, f"waiting for a free replica ({ahead})" + (f"; {note}" if note else "")
        return float(status.get("fraction") or 0.0), status.get("message") or "running"

    def _cancel_and_wait(self, job_id: str) -> None:
        self.transport.cancel(job_id)
        deadline = time.monotonic() + CANCEL_WAIT_S
        while time.monotonic() < deadline:
            if self.transport.status(job_id)["state"] in ("done", "failed", "cancelled"):
                return
            time.sleep(self.poll_s)

    def run(self, job: dict, progress=None, preview=None) -> dict:
        """Submit + wait; inputs packed by value when transfer="bytes"."""
        if self.transfer == "bytes":
            job = {**pack_inputs(job), "return_files": job["kind"] in ("generate", "pose", "lipsync")}
        else:
            job = {
                key: (str(Path(value).resolve()) if key in _PATH_KEYS and value else value)
                for key, value in job.items()
            }
        return self.wait(self.submit(job), progress, preview=preview)

    def _check_local_outputs(self, *paths, suffix: str | None = None) -> None:
        """Outputs written here (transfer="bytes") are checked before the job is sent: a
        folder that cannot be written, or a path that is a folder, would otherwise be found
        only when the result comes back. With transfer="shared" the replica writes them and
        checks them itself."""
        if self.transfer == "bytes":
            check_outputs(*paths, suffix=suffix)
        elif suffix is not None and paths and Path(paths[0]).suffix.lower() != suffix:
            raise ValueError(f"The output must be an {suffix} file, got {Path(paths[0]).name}.")

    def _write_back(self, answer: dict, destinations: dict[str, Path], default_dir: Path) -> None:
        if self.transfer == "bytes":
            write_returned_files(
                answer, {safe_name(path.name, path.name): path for path in destinations.values()}, default_dir
            )

    # ------------------------------------------------------------ the Studio methods the app calls
    def generate(
        self,
        image_path,
        out_path,
        settings,
        pose_video_path=None,
        driving_video_path=None,
        pose_settings=None,
        progress=None,
        pose_provenance=None,
        preview=None,
        preview_every: int = 5,
        return_frames: bool = False,
    ) -> GenerateResult:
        from dataclasses import asdict

        from ..video import read_video

        out_path = Path(out_path)
        self._check_local_outputs(
            out_path,
            out_path.with_suffix(".json"),
            *(out_path.with_name(out_path.stem + suffix) for suffix in SIDE_OUTPUTS),
            suffix=".mp4",
        )
        if preview is not None and preview_every < 1:
            raise ValueError(f"preview_every must be >= 1 (denoising steps between previews), got {preview_every}.")
        job = {
            "kind": "generate",
            "image": str(image_path),
            "out": str(out_path),
            "settings": asdict(settings),
            "pose_video": str(pose_video_path) if pose_video_path else None,
            "driving_video": str(driving_video_path) if driving_video_path else None,
            "pose_settings": asdict(pose_settings) if pose_settings else None,
            "pose_provenance": pose_provenance,
        }
        if preview is not None:
            job["preview_every"] = int(preview_every)
        answer = self.run(job, progress, preview=preview)
        manifest_path = out_path.with_suffix(".json")
        self._write_back(answer, {"video": out_path, "manifest": manifest_path}, out_path.parent)
        if self.transfer == "shared":
            out_path, manifest_path = Path(answer["outputs"]["video"]), Path(answer["outputs"]["manifest"])
        pose = None
        if "pose" in answer["details"]:
            summary = answer["details"]["pose"]
            pose_path = out_path.with_name(summary["pose_video"]) if summary.get("pose_video") else None
            pose = PoseResult(
                sequence=_pose_sequence(summary),
                pose_video_path=pose_path,
                preview_path=None,
                json_path=None,
                filled_frames=summary["filled_frames"],
                elapsed_s=summary["elapsed_s"],
            )
        # As `Studio.generate`: frames only when asked for (then decoded from the mp4 the
        # replica wrote; the exact frames stay on the replica).
        frames = read_video(out_path).frames if return_frames else None
        num_frames = (
            len(frames) if frames is not None else json.loads(manifest_path.read_text())["settings"]["num_frames"]
        )
        return GenerateResult(out_path, manifest_path, frames, answer["elapsed_s"], pose, num_frames=num_frames)

    def extract_poses(
        self, image_path, driving_video_path, settings, out_path=None, preview_path=None, json_path=None, progress=None
    ) -> PoseResult:
        from dataclasses import asdict

        if out_path is None:
            raise ValueError("A remote pose extraction needs out_path (the pose video is how the poses come back).")
        paths = {
            "out": Path(out_path),
            "preview": Path(preview_path) if preview_path else None,
            "json": Path(json_path) if json_path else None,
        }
        self._check_local_outputs(*paths.values())
        given = [path for path in paths.values() if path]
        if self.transfer == "bytes" and len({path.name for path in given}) < len(given):
            raise ValueError("The pose video, preview and JSON need different file names.")
        job = {
            "kind": "pose",
            "image": str(image_path),
            "driving_video": str(driving_video_path),
            "settings": asdict(settings),
            **{key: str(path) if path else None for key, path in paths.items()},
        }
        answer = self.run(job, progress)
        self._write_back(answer, {key: path for key, path in paths.items() if path}, paths["out"].parent)
        outputs = answer["outputs"]
        if self.transfer == "shared":
            paths = {
                "out": Path(outputs["pose_video"]),
                "preview": Path(outputs["preview"]) if outputs.get("preview") else None,
                "json": Path(outputs["json"]) if outputs.get("json") else None,
            }
        summary = answer["details"]
        return PoseResult(
            sequence=_pose_sequence(summary),
            pose_video_path=paths["out"],
            preview_path=paths["preview"],
            json_path=paths["json"],
            filled_frames=summary["filled_frames"],
            elapsed_s=summary["elapsed_s"],
        )

    def lipsync(self, video_path, audio_path, out_path, settings=None, progress=None) -> LipSyncResult:
        from dataclasses import asdict

        from ..lipsync.pipeline import LipSyncReport
        from ..lipsync.settings import LipSyncSettings

        out_path = Path(out_path)
        self._check_local_outputs(out_path, out_path.with_suffix(".json"), suffix=".mp4")
        job = {
            "kind": "lipsync",
            "video": str(video_path),
            "audio": str(audio_path),
            "out": str(out_path),
            "settings": asdict(settings or LipSyncSettings()),
        }
        answer = self.run(job, progress)
        manifest_path = out_path.with_suffix(".json")
        self._write_back(answer, {"video": out_path, "manifest": manifest_path}, out_path.parent)
        if self.transfer == "shared":
            out_path, manifest_path = Path(answer["outputs"]["video"]), Path(answer["outputs"]["manifest"])
        known = {f.name for f in fields(LipSyncReport)}
        report = LipSyncReport(**{key: value for key, value in answer["details"]["report"].items() if key in known})
        return LipSyncResult(out_path, manifest_path, report, answer["elapsed_s"])

    def mask(
        self,
        image_path,
        mode: str,
        width: int,
        height: int,
        out_path=None,
        mask_path=None,
        points=None,
        dilate_px: int = 0,
    ) -> MaskedReference:
        job = {
            "kind": "mask",
            "image": str(image_path),
            "mode": mode,
            "width": int(width),
            "height": int(height),
            "points": [list(point) for point in points] if points else None,
            "dilate_px": int(dilate_px),
        }
        answer = self.run(job)
        masked = np.asarray(Image.open(io.BytesIO(answer["files"]["masked.png"])).convert("RGB"))
        mask = np.asarray(Image.open(io.BytesIO(answer["files"]["mask.png"])).convert("L")) > 127
        if out_path is not None:
            Image.fromarray(masked).save(out_path)
        if mask_path is not None:
            Image.fromarray(mask.astype(np.uint8) * 255).save(mask_path)
        return MaskedReference(mask=mask, masked=masked, mode=answer["details"]["mode"])

    def caption(self, image, mask_mode: str | None = None) -> RemoteCaption:
        """Like `Studio.caption`: `image` is a path, a PIL image or an array (sent as PNG)."""
        if isinstance(image, (str, Path)):
            job = pack_inputs({"kind": "caption", "image": str(image), "mask_mode": mask_mode})
        else:
            buffer = io.BytesIO()
            (image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))).save(buffer, format="PNG")
            job = {
                "kind": "caption",
                "files": {"image": {"name": "reference.png", "data": buffer.getvalue()}},
                "mask_mode": mask_mode,
            }
        answer = self.wait(self.submit(job))
        return RemoteCaption(**answer["details"]["caption"])

    def system_status(self) -> dict:
        """The app's System panel: the Studio layout (device, models) over every replica,
        plus `replicas` and `jobs` as the gateway sees them."""
        status = self.transport.system_status()
        replicas = status.get("replicas", [])
        devices = sorted({replica.get("gpu") or replica.get("device", "?") for replica in replicas})
        running = status.get("running_replicas")
        count = running if running is not None else len(replicas)
        jobs = status.get("jobs", {})
        models = [
            {**row, "name": f"{replica['replica']}: {row['name']}"}
            for replica in replicas
            for row in replica.get("models", [])
        ]
        return {
            "device": f"{count} Ray Serve replica(s) at {self.transport.where}"
            + (f" ({', '.join(devices)})" if devices else "")
            + f"; jobs queued {jobs.get('queued', 0)}, running {jobs.get('running', 0)}",
            "models": models,
            "process_ram_gb": None,
            "replicas": replicas,
            "jobs": jobs,
        }


_PATH_KEYS = ("image", "pose_video", "driving_video", "video", "audio", "out", "preview", "json")


def preview_of(shown: dict):
    """A job status's `preview` ({"step", "steps", "frames", "png"}: the frames side by side)
    as the `Preview` a local Studio hands out (PNG is lossless: the same pixels)."""
    import base64

    from ..preview import Preview

    strip = np.asarray(Image.open(io.BytesIO(base64.b64decode(shown["png"]))).convert("RGB"))
    frames = np.stack(np.split(strip, int(shown["frames"]), axis=1))
    return Preview(int(shown["step"]), int(shown["steps"]), frames)


def _pose_sequence(summary: dict) -> RemotePoseSequence:
    return RemotePoseSequence(
        num_frames=summary["num_frames"],
        filled_frames=summary["filled_frames"],
        retarget_mode=summary["retarget_mode"],
        retarget_info=summary.get("retarget_info") or {},
    )
