"""Event handlers: each takes widget values, calls `dynamictrl`, returns widget values.

Nothing here computes anything itself beyond turning widget values into the studio's
settings and its results into images/paths/text. Errors the user can fix (bad sizes,
no person, missing weights, out of memory) reach the page as `gr.Error` messages with
what to do; anything unexpected is logged with its traceback and shown as one line.
"""

import base64
import functools
import hashlib
import html
import inspect
import io
import json
import logging
import math
import random
import re
import secrets
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import gradio as gr
import numpy as np

from dynamictrl import catalog, errors, presets, validation
from dynamictrl import studio as studio_api
from dynamictrl.caption import consistency_hint, has_placeholder
from dynamictrl.lipsync.settings import LipSyncSettings
from dynamictrl.manager import OutOfMemory
from dynamictrl.outputs import save_image_atomic
from dynamictrl.preview import DEFAULT_EVERY
from dynamictrl.segment import variant_for
from dynamictrl.settings import GenerateSettings, PipelineOptions, PoseSettings, widget_spec
from dynamictrl.studio import Cancelled
from dynamictrl.tiny import TINY_SIZE, TINY_STEPS
from dynamictrl.validation import check_frames, check_setting, check_size
from dynamictrl.video import VideoFrames, longest_pose_clip, read_video, write_video
from dynamictrl.weights import DownloadCancelled, WeightsNotFoundError

from .gpu import estimate_generation_seconds, gpu_job

logger = logging.getLogger(__name__)

CUSTOM_SIZE = presets.CUSTOM
# The API's defaults (`GenerateSettings`): the page starts from them, never from copies.
DEFAULTS = GenerateSettings(prompt="")
# Label -> (width, height), from dynamictrl.presets (labels say width x height).
SIZE_PRESETS = {preset.label: (preset.width, preset.height) for preset in presets.SIZE_PRESETS}
# Label -> (steps, first-block-cache threshold), from dynamictrl.presets.
SPEED_PRESETS = {preset.label: (preset.steps, preset.first_block_cache) for preset in presets.SPEED_PRESETS}
DEFAULT_SIZE = presets.size_preset(presets.size_name(DEFAULTS.width, DEFAULTS.height)).label
DEFAULT_SPEED = presets.speed_preset(presets.speed_name(DEFAULTS.steps, DEFAULTS.memory.first_block_cache)).label
TINY_SIZE_PRESET = f"tiny {TINY_SIZE[0]}x{TINY_SIZE[1]}"
TINY_SPEED_PRESET = f"tiny ({TINY_STEPS} steps)"
# The Quality/speed label once Steps no longer matches the chosen preset (no first-block cache).
CUSTOM_SPEED = presets.CUSTOM
MASK_MODES = ("none", "background", "clothing")
MAX_VARIATIONS = validation.MAX_VARIATIONS  # one queue job per seed
# Beside a result, what Reuse restores: the reference as the app read it, and the pose video
# (the studio's own side file when it extracted the poses; the app writes it otherwise).
INPUT_SUFFIX = "_input.png"
POSE_SUFFIX = studio_api.SIDE_OUTPUTS[0]
BROWSER_ID = re.compile(r"^[A-Za-z0-9_-]{20,64}$")  # what `secrets.token_urlsafe` gives out
MAX_SESSIONS = 10_000  # remembered page sessions (browser id, time zone); the oldest are forgotten
PREVIEW_MIN_HEIGHT = 160  # px: a preview is 1/8 of the video; enlarged (nearest) to be seen
MAX_SEED = 2**31 - 1
LIPSYNC_GPU_SECONDS = 180  # ZeroGPU budget: MuseTalk runs 30+ fps once models are on the GPU
# Errors whose message already says what to do: shown as they are.
USER_ERRORS = (ValueError, FileNotFoundError, WeightsNotFoundError, OutOfMemory, KeyError)
# The results folder of calls that come without a gradio session (handlers called from Python).
SHARED_SESSION = "shared"


@dataclass
class AppConfig:
    outputs_dir: Path  # results + manifests, one subfolder per browser session (History lists the session's)
    work_dir: Path  # per-request intermediates: crops, masks, pose videos
    # False: every session writes to and lists `outputs_dir` itself (one local user who wants
    # History to survive page reloads); never on a public server.
    session_folders: bool = True
    tiny: bool = False
    offload: str = "auto"
    size_presets: dict = field(default_factory=lambda: dict(SIZE_PRESETS))
    speed_presets: dict = field(default_factory=lambda: dict(SPEED_PRESETS))
    default_size: str = DEFAULT_SIZE
    default_frames: int = DEFAULTS.num_frames
    default_steps: int = DEFAULTS.steps
    default_speed: str = DEFAULT_SPEED
    preview_every: int = DEFAULT_EVERY  # denoising steps between live previews
    # Unloading models from the System tab: True only for a server behind a login (--auth)
    # or reachable from this machine alone (app.admin_actions_allowed); else neither the
    # buttons nor their endpoints exist.
    admin_actions: bool = True
    # Folders whose paths never reach a visitor (gradio's upload cache, the app's temp
    # folder): an error message shows a file inside them by its name only.
    private_dirs: tuple = ()
    # Encrypts the browser id in the visitor's local storage; kept across restarts by app.py
    # (None: a new one per start, and History starts afresh after a restart).
    browser_secret: str | None = None


# dynamictrl's messages name the CLI's flags; the page has widgets (Frames, fps, Start) and no
# loop option. Each rule rewrites one of those phrases in the page's terms.
APP_TERMS = [
    (re.compile(r"use --frames (\d+) or --loop"), r"set Frames to \1"),
    (re.compile(r"use --loop or a longer video"), "use a longer video"),
    (re.compile(r"use --frames (\d+) or a longer pose video"), r"set Frames to \1 or use a longer pose video"),
    (re.compile(r"lower the fps, start earlier, or loop the video"), "lower the fps or start earlier"),
    (re.compile(r"--frames (\d+)"), r"Frames \1"),
]


def in_app_terms(message: str) -> str:
    for pattern, replacement in APP_TERMS:
        message = pattern.sub(replacement, message)
    return message


def without_private_paths(message: str, private_dirs) -> str:
    """`message` with every path inside `private_dirs` replaced by the file's name: a visitor
    learns which of their files failed, not where the server keeps it."""
    for folder in sorted({str(Path(d)) for d in private_dirs}, key=len, reverse=True):
        pattern = re.escape(folder.rstrip("/")) + r"/(?:[^\s'\"`]*/)?([^\s/'\"`]+)"
        message = re.sub(pattern, lambda match: match.group(1), message)
    return message


def page_manifest(value, private_dirs):
    """The manifest as the page shows it: files by name (`"file"`), never by their path on the
    server. The manifest file in the download keeps the paths. A `"path"` key would also make
    gradio_client take the entry for a file of the server to download."""
    if isinstance(value, dict):
        return {
            ("file" if key == "path" else key): (
                Path(item).name if key == "path" and isinstance(item, str) else page_manifest(item, private_dirs)
            )
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [page_manifest(item, private_dirs) for item in value]
    if isinstance(value, str) and private_dirs:
        return without_private_paths(value, private_dirs)
    return value


def friendly_errors(handler):
    """Turns exceptions into `gr.Error` so the page shows a message, never a stack trace
    nor a path of the server's private folders (`AppConfig.private_dirs`)."""

    @functools.wraps(handler)
    def wrapper(*args, **kwargs):
        config = getattr(args[0], "config", None) if args else None
        private_dirs = getattr(config, "private_dirs", ())
        try:
            return handler(*args, **kwargs)
        except gr.Error as error:
            if private_dirs and isinstance(error.message, str):
                error.message = without_private_paths(error.message, private_dirs)
            raise
        except Cancelled as error:
            errors.log_job_error(logger, error, handler.__name__)
            raise gr.Error(
                "Cancelled: the job stopped before finishing; nothing was written.", title="Cancelled"
            ) from None
        except USER_ERRORS as error:
            # The server log: one line (the raw cause of a failed download is logged by the
            # catalog); the traceback at DEBUG level only.
            errors.log_user_error(logger, error, handler.__name__)
            message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
            raise gr.Error(in_app_terms(without_private_paths(str(message), private_dirs))) from None
        except Exception as error:  # the page gets one line, the log the traceback
            errors.log_job_error(logger, error, handler.__name__)
            detail = without_private_paths(f"{type(error).__name__}: {error}", private_dirs)
            raise gr.Error(f"Unexpected error ({detail}). The server log has the details.") from None

    return wrapper


def session_folder_name(session_hash: str | None) -> str:
    """The results subfolder of a gradio session: a hash of its session id (random per page
    load, sent by the browser or gradio_client), so a client's string never becomes a path
    and the folder name does not reveal the id; `SHARED_SESSION` without a session."""
    if not session_hash:
        return SHARED_SESSION
    return hashlib.sha256(session_hash.encode()).hexdigest()[:24]


def _session_key(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "default"


def _require(value, message: str):
    if value in (None, "", []):
        raise gr.Error(message)
    return value


class ProgressReporter:
    """The studio's progress callback: forwards to `gr.Progress` with the step count and
    an estimate of the time left, and stops the job when its session pressed Cancel."""

    def __init__(self, progress, cancel: threading.Event):
        self.progress = progress
        self.cancel = cancel
        self.denoising_started: tuple[float, float] | None = None  # (time, fraction) at the first step

    def __call__(self, fraction: float, message: str) -> None:
        if self.cancel.is_set():
            raise Cancelled()
        text = message
        if message.startswith("denoising"):
            now = time.perf_counter()
            # Timed from the first step: that one also paid for loading the models.
            if self.denoising_started is None:
                self.denoising_started = (now, fraction)
            else:
                started_at, started_fraction = self.denoising_started
                if fraction > started_fraction:
                    left = (now - started_at) / (fraction - started_fraction) * (1 - fraction)
                    text = f"{message} · about {left:.0f} s left"
        if self.progress is not None:
            self.progress(min(max(fraction, 0.0), 1.0), desc=text)


@dataclass
class Job:
    """One generation as the page asked for it."""

    image_path: str
    settings: GenerateSettings
    pose_settings: PoseSettings
    pose_video_path: str | None = None
    driving_video_path: str | None = None
    provenance: dict | None = None


class Handlers:
    def __init__(self, studio, config: AppConfig):
        self.studio = studio
        self.config = config
        self.config.outputs_dir.mkdir(parents=True, exist_ok=True)
        self.config.work_dir.mkdir(parents=True, exist_ok=True)
        self._cancel_events: dict[str, threading.Event] = {}
        self._armed: dict[str, int] = {}  # per session: jobs clicked on the page, not started yet (`_job_cancel`)
        self._armed_lock = threading.Lock()
        # Per page session: its browser id (History across reloads) and its time zone.
        self._browser_ids: OrderedDict[str, str] = OrderedDict()
        self._time_zones: OrderedDict[str, str] = OrderedDict()
        # Per session: the newest live preview (id, step, steps, image) and the id last shown.
        self._previews: dict[str, tuple] = {}
        self._previews_shown: dict[str, int] = {}
        # Per session: the running variations batch ({"id", "count", "cancelled", "results", ...}).
        self._batches: dict[str, dict] = {}
        self._thumbnails: dict[tuple, str] = {}  # (video path, mtime) -> data URI
        # One download at a time: two of the same model would write the same part file.
        self._download_lock = threading.Lock()
        self._download_cancels: dict[str, threading.Event] = {}
        # ZeroGPU needs the GPU-bound functions decorated once, at build time.
        self._generate_on_gpu = gpu_job(self._generation_seconds)(self._generate_job)
        self._extract_on_gpu = gpu_job(120)(self.studio.extract_poses)
        self._mask_on_gpu = gpu_job(60)(self.studio.mask)
        self._caption_on_gpu = gpu_job(120)(self.studio.caption)
        self._lipsync_on_gpu = gpu_job(LIPSYNC_GPU_SECONDS)(self.studio.lipsync)

    @property
    def _limits(self):
        """The studio's input limits (a remote studio has none here: the service checks)."""
        return getattr(self.studio, "limits", None)

    # ------------------------------------------------------------------ helpers
    def _work_path(self, name: str) -> Path:
        """A fresh file path in the app's temp folder (served to the page from there)."""
        return self.config.work_dir / f"{uuid.uuid4().hex[:10]}_{name}"

    def target_size(self, preset: str, width, height) -> tuple[int, int]:
        if preset == CUSTOM_SIZE:
            if width is None or height is None:
                raise gr.Error("Custom size: enter a width and a height (multiples of 16).")
            size = (int(width), int(height))
        elif preset in self.config.size_presets:
            size = self.config.size_presets[preset]
        else:
            raise gr.Error(f"Unknown size preset {preset!r}.")
        check_size(*size)
        return size

    @staticmethod
    def _frames(value) -> int:
        frames = int(value or 0)
        check_frames(frames)
        return frames

    def _cancel_event(self, request: gr.Request | None) -> threading.Event:
        return self._cancel_events.setdefault(_session_key(request), threading.Event())

    def _job_cancel(self, request: gr.Request | None) -> tuple[threading.Event, bool]:
        """(the session's cancel flag for a job that starts now, whether the page started it).
        A job clicked on the page was armed (flag cleared at the click), so a Cancel pressed
        while it waited in the queue still counts; a job sent through the API was not armed,
        and a Cancel sent when nothing ran must not stop it (API clients drop a queued job with
        gradio_client's `job.cancel()`)."""
        key = _session_key(request)
        cancel = self._cancel_event(request)
        with self._armed_lock:
            from_page = self._armed.get(key, 0) > 0
            if from_page:
                self._armed[key] -= 1
            else:
                cancel.clear()
        return cancel, from_page

    @staticmethod
    def _cancelled_on_page() -> dict:
        """A Cancel pressed on the page is not an error: a "Cancelled" info note, and every output
        keeps what it showed (the previous result stays). API clients get the error instead,
        so a script knows the job did not finish."""
        # An info note: the page's toast shows its kind ("Info") as the heading, so the message says it.
        gr.Info(
            "Cancelled: the job stopped before finishing; nothing was written. The previous result is kept.",
            title="Cancelled",
        )
        return {}

    def _drop_if_empty(self, folder: Path) -> None:
        """Removes a session folder that a failed first job left empty (never the outputs root)."""
        if folder != self.config.outputs_dir and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()

    def session_outputs(self, request: gr.Request | None) -> Path:
        """Where this session's results go and what its History lists: a public server must
        not show one visitor's videos to another. A page that sent its browser id (`start_session`)
        keeps one folder across reloads; other clients one per gradio session."""
        if not self.config.session_folders:
            return self.config.outputs_dir
        session_hash = getattr(request, "session_hash", None)
        browser_id = self._browser_ids.get(session_hash) if session_hash else None
        if browser_id:
            return self.config.outputs_dir / session_folder_name(f"browser:{browser_id}")
        return self.config.outputs_dir / session_folder_name(session_hash)

    @staticmethod
    def _remember(table: OrderedDict, key: str, value: str) -> None:
        table[key] = value
        table.move_to_end(key)
        while len(table) > MAX_SESSIONS:
            table.popitem(last=False)

    def start_session(self, browser_id, browser_tz, request: gr.Request):
        """On page load: the browser's own id (kept in its local storage, a random secret made
        here on its first visit; a value of the wrong form gets a new one) and its time zone.
        Returns the id to store, and this browser's History."""
        if not isinstance(browser_id, str) or not BROWSER_ID.match(browser_id):
            browser_id = secrets.token_urlsafe(24)
        session_hash = getattr(request, "session_hash", None)
        if session_hash:
            self._remember(self._browser_ids, session_hash, browser_id)
            try:
                ZoneInfo(browser_tz)
                self._remember(self._time_zones, session_hash, browser_tz)
            except (TypeError, ValueError, KeyError, OSError):  # not a zone name: times stay in UTC
                logger.debug("ignoring the page's time zone %r", browser_tz)
        return {"browser_id": browser_id, **self.history(request)}

    # ------------------------------------------------------------------ character
    @friendly_errors
    def crop_preview(self, reference, size_preset, width, height):
        """What the model will see: the reference cover-cropped to the target size."""
        if not reference:
            return {
                "crop": None,
                "crop_info": "Upload a reference image: one person, clearly visible, ideally full body.",
            }
        size = self.target_size(size_preset, width, height)
        crop = studio_api.crop_reference(reference, *size, limits=self._limits)
        note = _crop_note(studio_api.load_image(reference).size, size)
        return {
            "crop": crop,
            "crop_info": f"The model sees this {size[0]}x{size[1]} crop: {note}. Click on it to add mask points.",
        }

    @staticmethod
    def size_fields(size_preset):
        custom = size_preset == CUSTOM_SIZE
        return {"width": gr.update(visible=custom), "height": gr.update(visible=custom)}

    def _mask(self, image_path, mode, size, points):
        return self._mask_on_gpu(image_path, mode, size[0], size[1], points=points or None)

    @staticmethod
    def _overlay(crop: np.ndarray, region: np.ndarray, points) -> np.ndarray:
        """The crop with `region` tinted and the clicked points drawn on top."""
        overlay = crop.copy()
        tint = np.array([255, 0, 200], dtype=np.float32)
        overlay[region] = (0.45 * overlay[region] + 0.55 * tint).astype(np.uint8)
        for x, y, label in points or []:
            _draw_point(overlay, x, y, include=bool(label))
        return overlay

    def _mask_view(self, image_path, mode, size, points):
        """The mask widgets for a background / clothing mask: the blacked-out region tinted."""
        result = self._mask(image_path, mode, size, points)
        crop = np.asarray(studio_api.crop_reference(image_path, *size, limits=self._limits))
        overlay = self._overlay(crop, result.mask, points)
        what = "the background" if mode == "background" else "the clothing"
        info = (
            f"**{mode.capitalize()} preview:** {what} would be blacked out for the model (tinted). "
            + (
                "Clicks on the crop preview mark the person. "
                if mode == "background"
                else "Clicks on the crop preview mark the clothes. "
            )
            + "Generate does not use it until you press **Use this mask**."
        )
        return {
            "mask_preview": overlay,
            "masked_preview": result.masked,
            "preview_mode": mode,
            "preview_points": [list(p) for p in points],
            "mask_info": info,
        }

    @friendly_errors
    def mask_start(self, kind, reference, size_preset, width, height):
        """One-click starts from the DWPose person box. "person" shows SAM's person
        segmentation for checking and blacks out nothing; "background" blacks out
        everything but the person; "clothing" blacks out the clothes."""
        _require(reference, "Upload a reference image first (step 1).")
        size = self.target_size(size_preset, width, height)
        if kind in ("background", "clothing"):
            return self._mask_view(reference, kind, size, [])
        if kind != "person":
            raise gr.Error(f"Unknown mask start {kind!r}.")
        # The background mask's complement is the person as SAM found it: shown, not applied.
        person = ~self._mask(reference, "background", size, []).mask
        crop = np.asarray(studio_api.crop_reference(reference, *size, limits=self._limits))
        info = (
            "**Person check:** the tinted region is the person SAM found; nothing is blacked out. If it misses "
            "a limb or takes in the background, click on the crop preview (a background mask from those "
            "points) or press Background to preview replacing the background."
        )
        return {
            "mask_preview": self._overlay(crop, person, []),
            "masked_preview": crop,
            "preview_mode": "none",
            "preview_points": [],
            "mask_info": info,
        }

    @friendly_errors
    def mask_click(
        self, reference, size_preset, width, height, preview_mode, click_label, preview_points, evt: gr.SelectData
    ):
        """A click on the crop adds a SAM point to the previewed mask: on the person
        (background, also from no mask or the person check) or on the clothes (clothing);
        "remove" clicks mark what must stay out. Generate's mask is not changed."""
        _require(reference, "Upload a reference image first (step 1).")
        size = self.target_size(size_preset, width, height)
        mode = preview_mode if preview_mode in ("background", "clothing") else "background"
        x, y = (float(v) for v in evt.index[:2])
        points = [*(preview_points or []), [x, y, 1 if click_label.startswith("add") else 0]]
        return self._mask_view(reference, mode, size, points)

    @staticmethod
    def clear_mask():
        """Clears the preview and Generate's mask: the model sees the whole crop."""
        return {
            "mask_preview": None,
            "masked_preview": None,
            "preview_mode": "none",
            "preview_points": [],
            "mask_mode": "none",
            "mask_points": [],
            "mask_status": mask_status_text("none", []),
            "mask_info": "No mask: the model sees the whole crop.",
        }

    @staticmethod
    def use_mask(preview_mode, preview_points):
        """The previewed mask becomes the one Generate uses."""
        if preview_mode not in ("background", "clothing"):
            raise gr.Error("Preview a Background or Clothing mask first (the Person check blacks out nothing).")
        points = [list(p) for p in preview_points or []]
        return {"mask_mode": preview_mode, "mask_points": points, "mask_status": mask_status_text(preview_mode, points)}

    @staticmethod
    def no_mask():
        return {"mask_mode": "none", "mask_points": [], "mask_status": mask_status_text("none", [])}

    @staticmethod
    def show_mask_status(mask_mode, mask_points):
        """After Mask (Generate's radio) changed: clicks belong to the mode they were made in."""
        return {"mask_status": mask_status_text(mask_mode, mask_points)}

    # ------------------------------------------------------------------ motion
    def _pose_settings(self, preset, width, height, start, frames, fps, retarget, size=None) -> PoseSettings:
        size = size or self.target_size(preset, width, height)
        fps, start = float(fps or 0), float(start or 0)
        for name, value in (("retarget", retarget), ("fps", fps), ("start_s", start)):
            check_setting(PoseSettings, name, value)
        return PoseSettings(
            num_frames=self._frames(frames),
            width=size[0],
            height=size[1],
            fps=fps or None,
            start_s=start,
            retarget=retarget,
        )

    @staticmethod
    def _pose_key(image_path, video_path, settings: PoseSettings) -> str:
        return json.dumps([str(image_path), str(video_path), asdict(settings)], sort_keys=True)

    @friendly_errors
    def whole_clip(self, driving, start, fps):
        """The frame count that uses the whole driving clip (long clips run in windows)."""
        _require(driving, "Upload a driving video first.")
        frames = longest_pose_clip(driving, fps=fps or None, start_s=float(start or 0), limits=self._limits)
        windows = "one window" if frames <= widget_spec("window_frames").default else "overlapping windows"
        return {"frames": frames, "pose_info": f"The whole clip: {frames} frames ({windows})."}

    @friendly_errors
    def extract_poses(
        self,
        reference,
        driving,
        is_pose_video,
        size_preset,
        width,
        height,
        start,
        frames,
        fps,
        retarget,
        progress=gr.Progress(),
    ):
        _require(reference, "Upload a reference image first (step 1).")
        _require(driving, "Upload a driving video (a dance) or a ready pose video first.")
        image_path, video_path = reference, driving
        if is_pose_video:
            return {
                "pose_video": video_path,
                "pose_overlay": None,
                "pose_info": "Using the uploaded video as the pose video as it is.",
                "pose_state": {},
            }
        settings = self._pose_settings(size_preset, width, height, start, frames, fps, retarget)
        reporter = ProgressReporter(progress, threading.Event())
        result = self._extract_on_gpu(
            image_path,
            video_path,
            settings,
            out_path=self._work_path("pose.mp4"),
            preview_path=self._work_path("pose_overlay.mp4"),
            progress=reporter,
        )
        info = (
            f"{result.sequence.num_frames} pose frames at {settings.width}x{settings.height} in "
            f"{result.elapsed_s:.1f} s; frames without a person (previous pose reused): {result.filled_frames}."
        )
        state = {
            "key": self._pose_key(image_path, video_path, settings),
            "path": str(result.pose_video_path),
            "provenance": {
                "driving_video": str(video_path),
                "settings": asdict(settings),
                "filled_frames": result.filled_frames,
                "retarget": result.sequence.retarget_info,
            },
        }
        return {
            "pose_video": str(result.pose_video_path),
            "pose_overlay": str(result.preview_path),
            "pose_info": info,
            "pose_state": state,
        }

    # ------------------------------------------------------------------ prompt
    def _model_view(self, image_path, size, mask_mode, points):
        """The image the model gets: the crop, masked when a mask mode is chosen."""
        if mask_mode in ("background", "clothing"):
            return self._mask_on_gpu(image_path, mask_mode, size[0], size[1], points=points or None).masked
        return studio_api.crop_reference(image_path, *size, limits=self._limits)

    @friendly_errors
    def auto_caption(self, reference, size_preset, width, height, mask_mode, mask_points, progress=gr.Progress()):
        _require(reference, "Upload a reference image first (step 1).")
        size = self.target_size(size_preset, width, height)
        progress(0.1, desc="captioning the reference")
        image = self._model_view(reference, size, mask_mode, mask_points)
        caption = self._caption_on_gpu(image, mask_mode if mask_mode in ("background", "clothing") else None)
        return {
            "prompt": caption.text,
            "auto_caption_text": caption.text,
            "hint": self.hint(caption.text, caption.text),
        }

    @classmethod
    def prompt_hint(cls, auto_caption_text, prompt):
        return {"hint": cls.hint(auto_caption_text, prompt)}

    @staticmethod
    def hint(auto_caption, prompt):
        notes = []
        if prompt and has_placeholder(prompt):
            notes.append("⚠️ Replace the **[Describe ...]** part with what the masked region should show.")
        if auto_caption and prompt:
            dropped = consistency_hint(auto_caption, prompt)
            if dropped:
                notes.append(
                    "The prompt no longer mentions: "
                    + ", ".join(f"*{word}*" for word in dropped)
                    + ". A prompt that contradicts the image degrades the video."
                )
        return "\n\n".join(notes) or ("The prompt matches the auto caption." if auto_caption else "")

    # ------------------------------------------------------------------ generate
    @staticmethod
    def dice():
        return {"seed": random.randint(0, MAX_SEED)}

    def speed_preset_steps(self, speed):
        if speed not in self.config.speed_presets:  # "custom": Steps stays as the user set it
            return {}
        return {"steps": self.config.speed_presets[speed][0]}

    def speed_label(self, steps, speed):
        """After a manual change of Steps: the preset's label while Steps still matches it, else
        "custom" (which runs without the preset's first-block cache, as the label then says)."""
        preset = self.config.speed_presets.get(speed)
        if preset is not None and steps is not None and int(steps) == preset[0]:
            return {}
        return {"speed": CUSTOM_SPEED}

    def speed_estimate(self, size_preset, width, height, frames, steps, speed, guidance) -> dict:
        """What each speed preset (and Steps, when custom) would take for this size and length
        on an H100-class GPU: `presets.estimate_gpu_seconds`, an estimate (+-50 %), not a measurement."""
        size = self.config.size_presets.get(size_preset) or (width, height)
        try:
            width, height, frames, steps = int(size[0]), int(size[1]), int(frames), int(steps)
            guidance = float(guidance)
        except (TypeError, ValueError):
            return {"speed_estimate": ""}  # a field is being typed: nothing to estimate until it is a number
        runs = {label: preset for label, preset in self.config.speed_presets.items()}
        if speed not in runs:
            runs[f"Custom: {steps} steps"] = (steps, 0.0)
        parts = []
        for label, (preset_steps, cache) in runs.items():
            seconds = presets.estimate_gpu_seconds(width, height, frames, preset_steps, guidance, cache)
            parts.append(f"{label.split(':')[0]} {presets.time_label(seconds)}")
        return {"speed_estimate": f"Estimated for {width}x{height}, {frames} frames: " + " · ".join(parts)}

    def _speed_for(self, steps: int, first_block_cache: float) -> str:
        return next(
            (label for label, preset in self.config.speed_presets.items() if preset == (steps, first_block_cache)),
            CUSTOM_SPEED,
        )

    @staticmethod
    def _generation_seconds(image_path, out_path, settings, *args, **kwargs) -> int:
        return estimate_generation_seconds(settings.steps, settings.num_frames, settings.width, settings.height)

    def _generate_job(
        self,
        image_path,
        out_path,
        settings,
        pose_video_path,
        driving_video_path,
        pose_settings,
        progress,
        pose_provenance=None,
        preview=None,
        preview_every=DEFAULT_EVERY,
    ):
        extra = {}
        if preview is not None and "preview" in inspect.signature(self.studio.generate).parameters:
            extra = {"preview": preview, "preview_every": preview_every}  # a remote studio has none
        return self.studio.generate(
            image_path,
            out_path,
            settings,
            pose_video_path=pose_video_path,
            driving_video_path=driving_video_path,
            pose_settings=pose_settings,
            progress=progress,
            pose_provenance=pose_provenance,
            **extra,
        )

    def _job(
        self,
        reference,
        driving,
        is_pose_video,
        size_preset,
        width,
        height,
        start,
        frames,
        fps,
        retarget,
        mask_mode,
        mask_points,
        prompt,
        negative_prompt,
        steps,
        guidance,
        seed,
        speed,
        offload,
        pose_state,
    ) -> "Job":
        """The page's values checked and turned into one generation job."""
        _require(reference, "Upload a reference image first (step 1: Character).")
        _require(driving, "Upload a driving video or a pose video first (step 2: Motion).")
        image_path, video_path, points = reference, driving, mask_points
        size = self.target_size(size_preset, width, height)
        num_frames = self._frames(frames)
        steps = int(steps or 0)
        check_setting(GenerateSettings, "steps", steps)
        mask_mode = mask_mode if mask_mode in ("background", "clothing") else None
        prompt = (prompt or "").strip()
        if prompt and has_placeholder(prompt):
            raise gr.Error(
                "The prompt still has a [Describe ...] placeholder: replace it with what the masked region should show."
            )
        pose_settings = self._pose_settings(size_preset, width, height, start, frames, fps, retarget, size=size)
        settings = GenerateSettings(
            prompt=prompt,
            negative_prompt=(negative_prompt or "").strip(),
            num_frames=num_frames,
            width=size[0],
            height=size[1],
            steps=steps,
            guidance=float(guidance),
            seed=int(seed) % (MAX_SEED + 1),
            fps=pose_settings.fps or widget_spec("fps").default,
            mask_mode=mask_mode,
            mask_points=[list(p) for p in points] if (mask_mode and points) else None,
            memory=PipelineOptions(
                offload=offload, first_block_cache=self.config.speed_presets.get(speed, (0, 0.0))[1]
            ),
        )
        # Reuse the poses extracted (and looked at) in step 2 when nothing changed since.
        job = Job(image_path, settings, pose_settings)
        if is_pose_video:
            job.pose_video_path = video_path
        elif pose_state and pose_state.get("key") == self._pose_key(image_path, video_path, pose_settings):
            job.pose_video_path, job.provenance = pose_state["path"], pose_state.get("provenance")
        else:
            job.driving_video_path = video_path
        return job

    def _missing(self, job: "Job") -> list:
        """Every model the job needs that is not on disk (a remote studio checks on its side)."""
        if not hasattr(self.studio, "missing_models"):
            return []
        return self.studio.missing_models(job.settings, driving_video=job.driving_video_path is not None)

    def _missing_view(self, missing: list) -> dict:
        """The one message before a job starts: every missing model with its size, the
        command, and (where downloads are allowed) one button that fetches them all."""
        if not missing:
            return {
                "missing_models": gr.update(value="", visible=False),
                "missing_names": [],
                "download_missing": gr.update(visible=False),
            }
        total = catalog.format_bytes(sum(s.bytes_to_download for s in missing))
        what = "it" if len(missing) == 1 else f"all {len(missing)}"
        return {
            "missing_models": gr.update(value="⚠️ " + catalog.missing_message(missing), visible=True),
            "missing_names": [s.spec.name for s in missing],
            "download_missing": gr.update(value=f"Download {what} ({total})", visible=self._can_download()),
        }

    def _run_job(self, job: "Job", request, progress, preview_every, label: str, from_page_cancel):
        """Runs one generation into the session folder; the result, or None when the page
        cancelled it (the "Cancelled" note is shown)."""
        cancel, from_page = from_page_cancel
        out_dir, out_path = self._new_result(request, label)
        progress(0.0, desc="loading models")
        every = int(preview_every or 0)
        preview = self._preview_sink(_session_key(request)) if every > 0 else None
        try:
            result = self._generate_on_gpu(
                job.image_path,
                out_path,
                job.settings,
                job.pose_video_path,
                job.driving_video_path,
                job.pose_settings,
                ProgressReporter(progress, cancel),
                job.provenance,
                preview,
                max(every, 1),
            )
        except Exception as error:
            self._drop_if_empty(out_dir)  # the studio already removed what the job had written
            if isinstance(error, Cancelled) and from_page:
                errors.log_job_error(logger, error, "generate")
                return None
            raise
        self._keep_inputs(result.video_path, job)
        return result

    def _keep_inputs(self, video_path: Path, job: "Job") -> None:
        """Beside the result, what Reuse restores: the reference (re-encoded as PNG, never
        the upload's own bytes) and the pose video (the studio wrote it when it extracted
        the poses; a pose video from step 2 or an upload is re-encoded here)."""
        stem = video_path.with_suffix("")
        save_image_atomic(f"{stem}{INPUT_SUFFIX}", studio_api.load_image(job.image_path, self._limits))
        pose_path = Path(f"{stem}{POSE_SUFFIX}")
        if job.pose_video_path is not None and not pose_path.exists():
            # Streamed frame by frame: a long pose video never sits in memory.
            pose = VideoFrames(job.pose_video_path, keep=1, max_frames=job.settings.num_frames, limits=self._limits)
            try:
                write_video(pose_path, iter(pose), fps=job.settings.fps)
            finally:
                pose.close()

    def _result_view(self, result) -> dict:
        manifest = page_manifest(json.loads(result.manifest_path.read_text()), self.config.private_dirs)
        return {
            "result_video": str(result.video_path),
            "manifest": manifest,
            "result_files": [str(result.video_path), str(result.manifest_path)],
        }

    @friendly_errors
    def generate(
        self,
        reference,
        driving,
        is_pose_video,
        size_preset,
        width,
        height,
        start,
        frames,
        fps,
        retarget,
        mask_mode,
        mask_points,
        prompt,
        negative_prompt,
        steps,
        guidance,
        seed,
        speed,
        offload,
        pose_state,
        request: gr.Request,
        preview_every=DEFAULT_EVERY,
        progress=gr.Progress(),
    ):
        job = self._job(
            reference,
            driving,
            is_pose_video,
            size_preset,
            width,
            height,
            start,
            frames,
            fps,
            retarget,
            mask_mode,
            mask_points,
            prompt,
            negative_prompt,
            steps,
            guidance,
            seed,
            speed,
            offload,
            pose_state,
        )
        cancel, from_page = self._job_cancel(request)
        try:
            missing = self._missing(job)
            if missing:  # nothing starts: one message lists them all
                return self._missing_view(missing)
            result = self._run_job(
                job, request, progress, preview_every, f"seed{job.settings.seed}", (cancel, from_page)
            )
        finally:
            cancel.clear()
        if result is None:
            return self._cancelled_on_page()
        return {**self._result_view(result), **self._missing_view([])}

    # ------------------------------------------------------------------ variations
    def arm_variations(self, variations, seed, request: gr.Request):
        """Runs (unqueued) at the Variations click: a new batch of K seeds (seed, seed+1, ...,
        as the CLI's --variations), each its own queue job, all stopped by one Cancel."""
        count = int(variations or 0)
        if not 1 <= count <= MAX_VARIATIONS:
            raise gr.Error(f"Variations: 1 to {MAX_VARIATIONS} seeds.")
        key = _session_key(request)
        first = int(seed or 0) % (MAX_SEED + 1)
        self._batches[key] = {
            "id": uuid.uuid4().hex,
            "count": count,
            "seeds": [(first + i) % (MAX_SEED + 1) for i in range(count)],
            "cancelled": False,
            "results": [],
            "pose": None,
            "prompt": None,
        }
        self.arm_cancel(request)
        return {"variations_gallery": [], "variation_pick": None, **self.start_preview(request)}

    @friendly_errors
    def variation(
        self,
        index,
        reference,
        driving,
        is_pose_video,
        size_preset,
        width,
        height,
        start,
        frames,
        fps,
        retarget,
        mask_mode,
        mask_points,
        prompt,
        negative_prompt,
        steps,
        guidance,
        seed,
        speed,
        offload,
        pose_state,
        request: gr.Request,
        preview_every=DEFAULT_EVERY,
        progress=gr.Progress(),
    ):
        """Seed `index` of the session's batch (nothing past its count, nothing after a Cancel).
        The first seed extracts the poses and captions; the others reuse them."""
        key = _session_key(request)
        batch = self._batches.get(key)
        if batch is None or index >= batch["count"] or batch["cancelled"]:
            return {}
        job = self._job(
            reference,
            driving,
            is_pose_video,
            size_preset,
            width,
            height,
            start,
            frames,
            fps,
            retarget,
            mask_mode,
            mask_points,
            prompt,
            negative_prompt,
            steps,
            guidance,
            seed,
            speed,
            offload,
            pose_state,
        )
        job.settings.seed = batch["seeds"][index]
        if batch["pose"] is not None:
            job.pose_video_path, job.driving_video_path, job.provenance = batch["pose"]
        if batch["prompt"] is not None:
            job.settings.prompt = batch["prompt"]
        cancel, from_page = self._job_cancel(request) if index == 0 else (self._cancel_event(request), True)
        try:
            if index == 0:
                missing = self._missing(job)
                if missing:
                    batch["cancelled"] = True  # the other seeds would need them too
                    return self._missing_view(missing)
            result = self._run_job(
                job,
                request,
                progress,
                preview_every,
                f"seed{job.settings.seed}_var{index + 1}of{batch['count']}",
                (cancel, from_page),
            )
        except Exception:
            batch["cancelled"] = True  # a failed seed stops the batch: the others would fail alike
            raise
        finally:
            cancel.clear()
        if result is None:
            batch["cancelled"] = True
            return self._cancelled_on_page()
        if index == 0:
            manifest = json.loads(result.manifest_path.read_text())
            batch["prompt"] = manifest["prompt_used"]
            pose_path = Path(f"{result.video_path.with_suffix('')}{POSE_SUFFIX}")
            batch["pose"] = (str(pose_path), None, manifest["inputs"].get("pose_extraction"))
        batch["results"].append(
            {"video": str(result.video_path), "manifest": str(result.manifest_path), "seed": job.settings.seed}
        )
        gallery = [(item["video"], f"seed {item['seed']}") for item in batch["results"]]
        return {"variations_gallery": gallery, **self._missing_view([])}

    def _picked(self, request, index) -> dict:
        batch = self._batches.get(_session_key(request))
        if batch is None or index is None or not 0 <= int(index) < len(batch["results"]):
            raise gr.Error("Pick one of the variations first (click its video).")
        return batch["results"][int(index)]

    @staticmethod
    def pick_variation(evt: gr.SelectData):
        return {"variation_pick": evt.index}

    @friendly_errors
    def use_variation(self, variation_pick, request: gr.Request):
        """The picked variation becomes the Result (and its seed the Seed), ready to lip-sync or reuse."""
        item = self._picked(request, variation_pick)
        manifest_path = Path(item["manifest"])
        manifest = page_manifest(json.loads(manifest_path.read_text()), self.config.private_dirs)
        return {
            "result_video": item["video"],
            "manifest": manifest,
            "result_files": [item["video"], str(manifest_path)],
            "seed": item["seed"],
        }

    @friendly_errors
    def lipsync_variation(self, variation_pick, request: gr.Request):
        item = self._picked(request, variation_pick)
        return {"lipsync_video": item["video"], "tabs": gr.Tabs(selected="lipsync")}

    # ------------------------------------------------------------------ live previews
    def _preview_sink(self, key: str):
        """The studio's preview callback for a session: keeps the newest preview for `live_preview`."""

        def keep(preview) -> None:
            self._previews[key] = (time.monotonic_ns(), preview.step, preview.steps, preview.strip())

        return keep

    def start_preview(self, request: gr.Request):
        """At a job's click: the preview timer on, the last job's preview gone."""
        key = _session_key(request)
        self._previews.pop(key, None)
        self._previews_shown.pop(key, None)
        return {"preview_timer": gr.Timer(active=True), "live_preview": gr.update(value=None, label="Live preview")}

    def live_preview(self, request: gr.Request):
        """A tick of the preview timer: the newest preview when it changed (else nothing moves)."""
        key = _session_key(request)
        entry = self._previews.get(key)
        if entry is None or self._previews_shown.get(key) == entry[0]:
            return {}
        self._previews_shown[key] = entry[0]
        _id, step, steps, image = entry
        scale = max(1, math.ceil(PREVIEW_MIN_HEIGHT / image.shape[0]))
        enlarged = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
        return {"live_preview": gr.update(value=enlarged, label=f"Live preview · step {step} of {steps}")}

    def stop_preview(self, request: gr.Request):
        """After the job: the timer off, its last preview shown."""
        return {**self.live_preview(request), "preview_timer": gr.Timer(active=False)}

    def _new_result(self, request, label: str) -> tuple[Path, Path]:
        """(session folder, fresh result path): a generated name, never a user's file name."""
        out_dir = self.session_outputs(request)
        out_dir.mkdir(parents=True, exist_ok=True)
        return out_dir, out_dir / f"{time.strftime('%Y%m%d-%H%M%S')}_{uuid.uuid4().hex[:4]}_{label}.mp4"

    def arm_cancel(self, request: gr.Request):
        """Runs (unqueued) when a job's button is clicked: a fresh job starts uncancelled, and
        a Cancel pressed from now on stops it, even while it waits in the queue."""
        self._cancel_event(request).clear()
        with self._armed_lock:
            key = _session_key(request)
            self._armed[key] = self._armed.get(key, 0) + 1

    def arm_generate(self, request: gr.Request):
        """At the Generate click: the job armed for Cancel, the live preview started."""
        self.arm_cancel(request)
        return self.start_preview(request)

    def cancel(self, request: gr.Request):
        """Stops this session's job between steps, and the seeds of its variations not yet
        started; other sessions' jobs are not touched."""
        batch = self._batches.get(_session_key(request))
        if batch is not None:
            batch["cancelled"] = True
        self._cancel_event(request).set()
        self._download_cancels.setdefault(_session_key(request), threading.Event()).set()  # the missing-models one
        gr.Info("Cancelling after the current step…")

    # ------------------------------------------------------------------ lip-sync
    @staticmethod
    def latest_result(result_video):
        if not result_video:
            raise gr.Error("No result yet: generate a video on the Create tab first, or upload one here.")
        return {"lipsync_video": result_video}

    @friendly_errors
    def lipsync(
        self,
        lipsync_video,
        speech,
        bbox_shift,
        extra_margin,
        parsing_mode,
        left_cheek,
        right_cheek,
        request: gr.Request,
        progress=gr.Progress(),
    ):
        _require(lipsync_video, "Upload a video with a visible face, or click 'Use the latest result'.")
        _require(speech, "Upload or record the speech first.")
        video_path, audio_path = lipsync_video, speech
        settings = LipSyncSettings(
            bbox_shift=int(bbox_shift),
            extra_margin=int(extra_margin),
            parsing_mode=parsing_mode,
            left_cheek_width=int(left_cheek),
            right_cheek_width=int(right_cheek),
        )
        cancel, from_page = self._job_cancel(request)
        out_dir, out_path = self._new_result(request, "lipsync")
        progress(0.0, desc="loading models")
        try:
            result = self._lipsync_on_gpu(
                video_path, audio_path, out_path, settings, progress=ProgressReporter(progress, cancel)
            )
        except Exception as error:
            self._drop_if_empty(out_dir)
            if isinstance(error, Cancelled) and from_page:
                return self._cancelled_on_page()
            raise
        finally:
            cancel.clear()
        reused = ", video analysis reused from the cache" if result.report.avatar_cached else ""
        report = f"{result.report.summary()} ({result.elapsed_s:.1f} s{reused})"
        return {
            "lipsync_result": str(result.video_path),
            "lipsync_report": report,
            "lipsync_files": [str(result.video_path), str(result.manifest_path)],
        }

    # ------------------------------------------------------------------ history
    @friendly_errors
    def history(self, request: gr.Request):
        """This session's results only (see `session_outputs`), times in the page's time zone."""
        entries = studio_api.list_history(self.session_outputs(request))
        zone = self._time_zones.get(getattr(request, "session_hash", None) or "")
        gallery = [(entry["video_path"], _history_label(entry, zone)) for entry in entries]
        rows = [[self._thumbnail(entry["video_path"]), *_history_row(entry, zone)] for entry in entries]
        return {
            "gallery": gallery,
            "history_table": rows,
            "history_paths": [entry["manifest_path"] for entry in entries],
            "history_manifest": None,
            "history_index": None,
        }

    def _thumbnail(self, video_path: str) -> str:
        """The first frame, small, as an inline image for the table (cached per file version;
        a video that cannot be read gets no picture, the row stays)."""
        path = Path(video_path)
        key = (str(path), path.stat().st_mtime_ns)
        if key not in self._thumbnails:
            from PIL import Image

            try:
                frame = read_video(path, max_frames=1, limits=self._limits).frames[0]
            except (OSError, ValueError) as error:
                errors.log_user_error(logger, error, "history thumbnail")
                return ""
            image = Image.fromarray(frame)
            image.thumbnail((96, 64))
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            self._thumbnails[key] = f"![]({'data:image/png;base64,' + base64.b64encode(buffer.getvalue()).decode()})"
        return self._thumbnails[key]

    def history_select(self, history_paths, evt: gr.SelectData):
        index = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        if not history_paths or index is None or index >= len(history_paths):
            return {"history_manifest": None, "history_index": None}
        try:
            manifest = json.loads(Path(history_paths[index]).read_text())
        except (OSError, ValueError) as error:
            errors.log_user_error(logger, error, "history_select")
            raise gr.Error(f"The manifest of this result cannot be read ({type(error).__name__}).") from None
        return {"history_manifest": page_manifest(manifest, self.config.private_dirs), "history_index": index}

    @friendly_errors
    def reuse_settings(self, history_manifest, request: gr.Request):
        """The form values a past result was generated with, its inputs (reference, pose video,
        mask) when they are beside it in this session's folder, and the Create tab."""
        manifest = history_manifest
        if not manifest:
            raise gr.Error("Pick a result in the gallery or the table first.")
        settings = manifest_settings(manifest)
        size = (settings.width, settings.height)
        preset = next((label for label, value in self.config.size_presets.items() if value == size), CUSTOM_SIZE)
        mask_mode = settings.mask_mode or "none"
        values = {
            # The custom fields' visibility follows the preset (its change event).
            "size_preset": preset,
            "width": settings.width,
            "height": settings.height,
            "frames": settings.num_frames,
            "fps": settings.fps,
            "mask_mode": mask_mode,
            "mask_points": settings.mask_points or [],
            "mask_status": mask_status_text(mask_mode, settings.mask_points),
            "prompt": settings.prompt or manifest.get("prompt_used", ""),
            "negative_prompt": settings.negative_prompt,
            "steps": settings.steps,
            "speed": self._speed_for(settings.steps, settings.memory.first_block_cache),
            "guidance": settings.guidance,
            "seed": settings.seed,
            "offload": settings.memory.offload,
            "tabs": gr.Tabs(selected="create"),
        }
        restored = []
        video = self.session_outputs(request) / manifest["output"]
        stem = video.with_suffix("")
        reference, pose = Path(f"{stem}{INPUT_SUFFIX}"), Path(f"{stem}{POSE_SUFFIX}")
        if reference.is_file():
            values["reference"] = str(reference)
            restored.append("the reference image")
        if pose.is_file():
            values.update(driving=str(pose), is_pose_video=True, pose_state={})
            restored.append("the pose video")
        if settings.mask_mode:
            restored.append(f"the {settings.mask_mode} mask")
        kept = (
            f"; restored {', '.join(restored)}"
            if restored
            else "; its inputs are not beside it, the reference image and the motion stay as they are"
        )
        gr.Info(f"Loaded the settings of {manifest['output']} into the Create tab{kept}.")
        return values

    # ------------------------------------------------------------------ models
    def _weights_dir(self):
        return getattr(self.studio, "weights_dir", None)

    def _can_download(self) -> bool:
        """Downloads fill the server's disk: an admin action (`AppConfig.admin_actions`), and
        only for a studio on this machine (a remote one has its own weights)."""
        return self.config.admin_actions and hasattr(self.studio, "missing_models")

    def model_row(self, name: str) -> str:
        """One model of the Models tab as HTML: state, sizes, folder, licence, command."""
        status = catalog.status(name, self._weights_dir())
        row = status.row()
        sizes = f"{row['on disk']} on disk" + (f" · {row['to download']} to download" if row["to download"] else "")
        return (
            f'<div class="model-row" data-state="{html.escape(status.state)}">'
            f'<b>{html.escape(row["model"])}</b> <span class="model-state">{html.escape(status.state)}</span>'
            f" · {html.escape(row['used for'])}<br>{html.escape(sizes)} · <code>{html.escape(row['folder'])}</code>"
            f' · licence: <a href="{html.escape(row["licence_url"])}" target="_blank" rel="noopener noreferrer">'
            f"{html.escape(row['licence'])}</a> · <code>{html.escape(row['command'])}</code></div>"
        )

    def models_view(self):
        return {f"model_{spec.name}": self.model_row(spec.name) for spec in catalog.MODELS}

    def _download(self, names: list[str], request, progress) -> bool:
        """Fetches `names` through the catalog with the progress bar (bytes, speed, time left);
        False when Cancel download stopped it (the part fetched stays: Download resumes)."""
        if not self._can_download():
            raise gr.Error(
                "Downloading models is an admin action, off on a server without a login (--auth): "
                f"run `{catalog.COMMAND} {' '.join(names)}` on the server."
            )
        if not self._download_lock.acquire(blocking=False):
            raise gr.Error("Another download is running: wait for it to finish, or cancel it.")
        cancel = self._download_cancels.setdefault(_session_key(request), threading.Event())
        cancel.clear()
        try:
            progress(0.0, desc=f"asking the hub for the files of {', '.join(names)}")
            catalog.download(
                names, self._weights_dir(), progress=lambda p: progress(p.fraction, desc=p.text()), cancel=cancel
            )
        except DownloadCancelled as error:
            errors.log_job_error(logger, error, "download")
            gr.Info("Download cancelled: what was fetched is kept; Download again resumes it.", title="Cancelled")
            return False
        finally:
            self._download_lock.release()
            cancel.clear()
        return True

    @friendly_errors
    def download_model(self, name: str, request: gr.Request, progress=gr.Progress()):
        if self._download([name], request, progress):
            gr.Info(f"{catalog.spec(name).title} is on disk.")
        return {f"model_{name}": self.model_row(name)}

    @friendly_errors
    def download_missing(self, missing_names, request: gr.Request, progress=gr.Progress()):
        """The missing-models message's button: every model the job lacked; then the message
        again (gone when nothing is missing any more)."""
        names = [name for name in missing_names or [] if name in catalog.BY_NAME]
        _require(names, "Nothing to download: press Generate to check what the job needs.")
        if self._download(names, request, progress):
            gr.Info("Downloaded: press Generate again.")
        still = [s for s in catalog.statuses(self._weights_dir(), names) if s.state != catalog.ON_DISK]
        return self._missing_view(still)

    def cancel_download(self, request: gr.Request):
        self._download_cancels.setdefault(_session_key(request), threading.Event()).set()
        gr.Info("Stopping the download; what was fetched is kept.")

    # ------------------------------------------------------------------ system
    @friendly_errors
    def system_status(self):
        status = self.studio.system_status()
        rows = [
            [
                m["name"],
                "yes" if m["loaded"] else "no",
                m["device"] or "",
                m["gb"],
                "yes" if m["in_use"] else "",
                m["load_seconds"],
            ]
            for m in status["models"]
        ]
        lines = [f"**Device:** {status['device']}" + (f" ({status['gpu']})" if status.get("gpu") else "")]
        if status.get("vram_total_gb"):
            lines.append(
                f"**VRAM:** {status['vram_free_gb']} GB free of {status['vram_total_gb']} GB "
                f"({status['vram_allocated_gb']} GB allocated by this process)"
            )
        if status.get("process_ram_gb") is not None:
            lines.append(f"**Process RAM:** {status['process_ram_gb']} GB")
        names = [m["name"] for m in status["models"] if m["loaded"]]
        return {
            "system_info": "\n\n".join(lines),
            "models_table": rows,
            "loaded_models": gr.update(choices=names, value=names[0] if names else None),
        }

    def _require_admin(self):
        if not self.config.admin_actions:  # the buttons are not built then; an API call gets this
            raise gr.Error("Unloading models is an admin action, off on a server without a login (--auth).")

    @friendly_errors
    def unload(self, loaded_models):
        self._require_admin()
        name = _require(loaded_models, "Pick a loaded model to unload.")
        self.studio.manager.unload(name)
        gr.Info(f"Unloaded {name}.")
        return self.system_status()

    @friendly_errors
    def unload_all(self):
        self._require_admin()
        self.studio.manager.unload_all()
        gr.Info("Unloaded every model.")
        return self.system_status()


def transformer_title(mask_mode) -> str:
    """The transformer a mask mode runs (catalog title: DynamiCtrl (base), ... Mask_B01, ... Mask_C01)."""
    variant = variant_for(mask_mode) if mask_mode in ("background", "clothing") else None
    return catalog.spec(catalog.variant_model(variant)).title


def mask_status_text(mask_mode, mask_points) -> str:
    """What Generate will use, in the Generate section."""
    if mask_mode not in ("background", "clothing"):
        return f"**Transformer:** {transformer_title(None)} · **Mask:** none (the model sees the whole crop)"
    clicks = len(mask_points or [])
    source = f"{clicks} click{'s' if clicks != 1 else ''} on the crop" if clicks else "from the person box"
    return f"**Transformer:** {transformer_title(mask_mode)} · **Mask:** the {mask_mode} blacked out ({source})"


HISTORY_HEADERS = ["", "when", "prompt", "size", "frames", "duration", "seed", "steps", "variant", "output"]


def manifest_settings(manifest) -> GenerateSettings:
    """A History manifest's settings, checked: a malformed one (edited, truncated, another
    program's) gets one message naming what is wrong, never a traceback."""
    output = manifest.get("output") if isinstance(manifest, dict) else None
    name = output if isinstance(output, str) else "this result"
    problem = None
    if (
        not isinstance(manifest, dict)
        or not isinstance(output, str)
        or Path(output).name != output
        or not output.endswith(".mp4")
    ):
        problem = "no output video name"
    elif manifest.get("kind") == "lipsync":
        return studio_api.settings_from_manifest(manifest)  # says it is a lip-sync result
    elif not isinstance(manifest.get("settings"), dict):
        problem = "no settings"
    else:
        raw = manifest["settings"]
        ints = ("num_frames", "width", "height", "steps", "seed")
        bad = [key for key in ints if not isinstance(raw.get(key), int) or isinstance(raw.get(key), bool)]
        bad += [key for key in ("guidance", "fps") if not isinstance(raw.get(key), (int, float))]
        bad += [key for key in ("prompt",) if not isinstance(raw.get(key), str)]
        if raw.get("mask_mode") not in (None, "background", "clothing"):
            bad.append("mask_mode")
        points = raw.get("mask_points")
        if points is not None and not (
            isinstance(points, list)
            and all(isinstance(p, list) and len(p) == 3 and all(isinstance(v, (int, float)) for v in p) for p in points)
        ):
            bad.append("mask_points")
        if bad:
            problem = "bad " + ", ".join(bad)
        else:
            try:
                settings = studio_api.settings_from_manifest(manifest)
                check_size(settings.width, settings.height)
                check_frames(settings.num_frames)
                return settings
            except (TypeError, ValueError) as error:
                problem = str(error)
    raise gr.Error(f"The manifest of {name} is malformed ({problem}): its settings cannot be reused.", title="Reuse")


def _local_time(created: str, zone: str | None) -> str:
    """A manifest's UTC time as the page's local time ("2025-06-01 14:03")."""
    try:
        when = datetime.fromisoformat(created)
    except (TypeError, ValueError):
        return ""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(ZoneInfo(zone) if zone else UTC).strftime("%Y-%m-%d %H:%M")


def _history_row(entry: dict, zone: str | None = None) -> list:
    """when, prompt, size, frames, duration, seed, steps, variant, output (the thumbnail comes first)."""
    settings = entry["settings"]
    when = _local_time(entry.get("created", ""), zone)
    if entry.get("kind") == "lipsync":
        audio = Path(entry.get("inputs", {}).get("audio", {}).get("path", "")).name
        return [when, f"lip-sync to {audio}", "", "", "", "", "", "lip-sync", entry["output"]]
    frames, fps = settings.get("num_frames"), settings.get("fps")
    duration = f"{frames / fps:.1f} s" if isinstance(frames, int) and isinstance(fps, (int, float)) and fps else ""
    mask_mode = settings.get("mask_mode")
    variant = transformer_title(mask_mode if mask_mode in ("background", "clothing") else None)
    return [
        when,
        entry.get("prompt_used", ""),
        f"{settings.get('width')}x{settings.get('height')}",
        frames,
        duration,
        settings.get("seed"),
        settings.get("steps"),
        variant,
        entry["output"],
    ]


def _history_label(entry: dict, zone: str | None = None) -> str:
    settings = entry["settings"]
    # Short enough for a thumbnail; the table has the rest.
    created = _local_time(entry.get("created", ""), zone)
    if entry.get("kind") == "lipsync":
        return f"{created} · lip-sync"
    return f"{created} · seed {settings.get('seed')}"


def _crop_note(photo_size: tuple[int, int], size: tuple[int, int]) -> str:
    """Where the cover crop falls on the photo, in words (rounded as `cover_crop` rounds)."""
    photo_width, photo_height = photo_size
    width, height = size
    if photo_height / photo_width < height / width:  # wider than the target: the sides go
        kept, full, cut = width / math.ceil(height * photo_width / photo_height), "height", "width"
    else:
        kept, full, cut = height / math.ceil(width * photo_height / photo_width), "width", "height"
    if kept > 0.99:
        return f"the whole {photo_width}x{photo_height} photo, scaled"
    return f"the full {full} and the middle {kept:.0%} of the {cut} of the {photo_width}x{photo_height} photo"


def _draw_point(image: np.ndarray, x: float, y: float, include: bool) -> None:
    """A small filled square marking a click: green adds, red removes."""
    height, width = image.shape[:2]
    radius = max(2, min(width, height) // 60)
    x0, x1 = max(int(x) - radius, 0), min(int(x) + radius + 1, width)
    y0, y1 = max(int(y) - radius, 0), min(int(y) + radius + 1, height)
    image[y0:y1, x0:x1] = (0, 220, 0) if include else (230, 0, 0)
