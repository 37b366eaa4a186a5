"""The Python API: one `Studio` object that validates inputs, runs the stages and
writes outputs with a manifest. The CLI and the app are thin adapters over it.

    from dynamictrl.studio import Studio, GenerateSettings
    studio = Studio()
    result = studio.generate("ref.png", "pose.mp4", "out.mp4", GenerateSettings(prompt="a dancer ..."))
"""

import contextlib
import hashlib
import json
import os
import platform
import stat
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import numpy as np
from PIL import Image

from . import weights
from .caption import PLACEHOLDER_PATTERN, check_no_placeholder, has_placeholder
from .images import to_rgb_image
from .limits import Limits, apply_pil_limit, check_prompt_tokens
from .manager import DynamiCtrlModels, ModelManager
from .outputs import NewFiles, save_image_atomic, write_atomic
from .segment import apply_mask, clean_mask, register_segmenter, variant_for

# The settings live in `settings`, their rules in `validation`; imported here too, as the
# Python API has always offered them (`from dynamictrl.studio import GenerateSettings`).
from .settings import DTYPES, GenerateSettings, PoseSettings, settings_from_dict
from .validation import check_generate_settings, check_pose_settings, check_seeds, check_size
from .video import VideoFrames, VideoWriter, write_video

SIDE_OUTPUTS = ("_pose.mp4", "_reference.png")  # written beside a generated video: <stem>_pose.mp4, ...
# Decoded video frames lip-sync keeps at most (it streams the video; this bounds what
# playing it backwards for ping-pong re-reads without decoding again): 256 MiB = ~42
# frames of 1080p, whatever the video's length.
LIPSYNC_FRAME_BUDGET_BYTES = 256 * 1024**2

# progress(fraction in [0, 1], message); return value ignored.
ProgressCallback = Callable[[float, str], None]


@dataclass
class PoseResult:
    sequence: object = field(repr=False)  # dynamictrl.pose.sequence.PoseSequence
    pose_video_path: Path | None
    preview_path: Path | None
    json_path: Path | None
    filled_frames: int
    elapsed_s: float


@dataclass
class GenerateResult:
    video_path: Path
    manifest_path: Path
    # (T, H, W, 3) uint8 with `generate(..., return_frames=True)`; None by default: the
    # frames went straight to the mp4 and were not kept (a long clip never sits in memory).
    frames: np.ndarray | None = field(repr=False)
    elapsed_s: float
    pose: PoseResult | None = None
    # False on the other ranks of a --parallel job (rank 0 writes; `frames` is then empty).
    written: bool = True
    num_frames: int | None = None  # frames written

    def __post_init__(self):
        if self.num_frames is None and self.frames is not None:
            self.num_frames = len(self.frames)


@dataclass
class LipSyncResult:
    video_path: Path
    manifest_path: Path
    report: object  # dynamictrl.lipsync.pipeline.LipSyncReport
    elapsed_s: float


class OutputError(ValueError):
    """An output cannot be written where asked; found before any input is read or model
    loaded."""


def check_outputs(*paths: str | Path | None, suffix: str | None = None) -> None:
    """Refuses, before any work, outputs that could only fail at the end: a path that is
    a folder or a device, a folder that cannot be created or written (checked by creating
    and removing a file in it). `suffix` (e.g. ".mp4") is required of the first path.
    A missing folder is fine when it can be made (it is made when the output is written)."""
    checked = set()
    for index, path in enumerate(paths):
        if path is None:
            continue
        path = Path(path)
        if index == 0 and suffix is not None and path.suffix.lower() != suffix:
            raise OutputError(f"The output must be an {suffix} file, got {path.name}.")
        if path.is_dir():
            raise OutputError(
                f"The output {path} is a folder: give a file name inside it, e.g. "
                f"{path / ('result' + (suffix or path.suffix or '.mp4'))}."
            )
        if path.exists() and not stat.S_ISREG(path.stat().st_mode):
            raise OutputError(
                f"The output {path} exists and is not a regular file (a device or a pipe?): "
                "give the name of a new file."
            )
        folder = path.parent
        existing = folder
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if existing in checked:
            continue
        if not existing.is_dir():
            raise OutputError(f"Cannot write {path}: {existing} is a file, not a folder. Pick another output folder.")
        try:
            handle, probe_path = tempfile.mkstemp(dir=existing, prefix=".dynamictrl-write-check-")
        except OSError as error:
            raise OutputError(
                f"Cannot write {path}: the folder {existing} is not writable ({error.strerror}). "
                "Pick another output folder or fix its permissions."
            ) from None
        os.close(handle)
        os.unlink(probe_path)
        checked.add(existing)


def write_json_atomic(path: str | Path, payload) -> Path:
    """JSON written atomically (`outputs.write_atomic`): a crash or a full disk never leaves
    a truncated manifest (the manifest is written last, after the video)."""
    return write_atomic(path, lambda partial: partial.write_text(json.dumps(payload, indent=2)))


def write_manifest(video_path: Path, manifest_path: Path, manifest: dict) -> None:
    """The manifest comes last and vouches for the video: if it cannot be written, the video
    is removed too (no result without its record)."""
    try:
        write_json_atomic(manifest_path, manifest)
    except BaseException:
        video_path.unlink(missing_ok=True)
        raise


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def package_versions() -> dict[str, str]:
    from . import __version__

    versions = {"python": platform.python_version(), "dynamictrl": __version__}
    for name in ("torch", "diffusers", "transformers", "accelerate", "huggingface-hub", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def load_image(path: str | Path, limits: Limits | None = None) -> Image.Image:
    """Opens any image PIL reads (16-bit, palette, alpha, CMYK...) as 8-bit RGB; larger
    than `limits.max_image_pixels` (default: `Limits.from_env()`) is refused unread."""
    return to_rgb_image(path, max_pixels=limits.max_image_pixels if limits is not None else None)


def resolve_dtype(name: str, device: str):
    import torch

    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {name!r}.")
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def variation_path(out_path: str | Path, seed: int) -> Path:
    """`dance.mp4` -> `dance_seed7.mp4`: one output per seed of a variations job."""
    out_path = Path(out_path)
    return out_path.with_name(f"{out_path.stem}_seed{seed}{out_path.suffix}")


class Cancelled(Exception):
    """Raised by a progress callback to stop a job between steps (the app's Cancel button)."""


def crop_reference(image_path: str | Path, width: int, height: int, limits: Limits | None = None) -> np.ndarray:
    """The reference as the model sees it: cover-resized and centre-cropped to the target size."""
    from .pose.sequence import cover_crop

    check_size(width, height)
    return cover_crop(load_image(image_path, limits), width, height)


def list_history(outputs_dir: str | Path) -> list[dict]:
    """Past results in a folder, newest first: each manifest (see `Studio.generate`) with
    `video_path` added; manifests whose video is gone or which cannot be parsed are skipped."""
    entries = []
    for manifest_path in Path(outputs_dir).glob("*.json"):
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(manifest, dict) or "settings" not in manifest or "output" not in manifest:
            continue  # pose JSONs and other files share the folder
        video_path = manifest_path.with_name(manifest["output"])
        if video_path.is_file():
            entries.append({**manifest, "video_path": str(video_path), "manifest_path": str(manifest_path)})
    return sorted(entries, key=lambda entry: (entry.get("created", ""), entry["video_path"]), reverse=True)


def settings_from_manifest(manifest: dict) -> GenerateSettings:
    """The `GenerateSettings` a manifest recorded (unknown keys of other versions ignored)."""
    if manifest.get("kind") == "lipsync":
        raise ValueError("This is a lip-sync result: its settings are not generation settings. Pick a generated video.")
    # Older manifests hold the memory options flat; keys of other versions are ignored.
    return settings_from_dict(GenerateSettings, manifest["settings"], ignore_unknown=True)


@dataclass
class MaskedReference:
    mask: np.ndarray = field(repr=False)  # (H, W) bool, True = blacked out
    masked: np.ndarray = field(repr=False)  # (H, W, 3) uint8, the reference with the region black
    mode: str = "background"


def fill_placeholder(caption: str, fill: str, mask_mode: str | None) -> str:
    """The auto caption with its "[Describe ...]" placeholder replaced by `fill`; without a
    fill the placeholder stays and generation is refused with the caption in the message."""
    if not has_placeholder(caption):
        return caption
    if not fill.strip():
        raise ValueError(
            f'Auto caption: {caption!r}. Say what the masked {mask_mode} should show (--fill "..."), '
            "or write the whole prompt yourself."
        )
    return PLACEHOLDER_PATTERN.sub(fill.strip().rstrip(".") + ".", caption, count=1)


def default_cache_dir() -> Path:
    """`$DYNAMICTRL_CACHE` if set, else `~/.cache/dynamictrl` (lip-sync avatars live under it)."""
    return Path(os.environ.get("DYNAMICTRL_CACHE", Path.home() / ".cache" / "dynamictrl"))


def _phase(progress: ProgressCallback | None, start: float, end: float) -> ProgressCallback | None:
    """A progress callback reporting into [start, end] of the caller's bar."""
    if progress is None:
        return None
    return lambda fraction, message: progress(start + (end - start) * fraction, message)


def _process_ram_gb() -> float | None:
    """Resident memory of this process (Linux /proc; None elsewhere)."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return round(resident_pages * os.sysconf("SC_PAGE_SIZE") / 1e9, 3)


class Studio:
    """Holds loaded models between calls and strings the stages together."""

    def __init__(
        self,
        model: str = weights.BASE_REPO,
        weights_dir: str | Path | None = None,
        device: str | None = None,
        sam_kind: str = "vit_b",
        caption_model: str = "2b",
        cache_dir: str | Path | None = None,
        limits: Limits | None = None,
        auto_download: bool = True,
        parallel=None,
    ):
        """`parallel`: a layout such as "ulysses=2,cfg=2" (or `parallel.ParallelLayout`) to run
        each job across that many processes started by torchrun (docs/parallel.md); every
        process makes the same Studio and calls the same methods, rank 0 writes the outputs."""
        self.model = model
        # False: a job whose models are not all on disk stops before it starts with one
        # `MissingModelsError` listing them (the app offers the downloads); True: they are
        # downloaded as needed, unless offline (HF_HUB_OFFLINE=1), which also stops first.
        self.auto_download = auto_download
        # Input limits (dynamictrl/limits.py): `Limits.from_env()` unless given.
        self.limits = limits if limits is not None else Limits.from_env()
        apply_pil_limit(self.limits)
        self.sam_kind = sam_kind
        self.caption_model = caption_model
        self.weights_dir = weights_dir
        from . import parallel as parallel_module

        self.parallel = parallel_module.setup(parallel, device)  # None: this process alone
        self.device = self.parallel.device if self.parallel is not None else device or default_device()
        self.manager = ModelManager(device=self.device)
        self._dynamictrl = {}  # torch dtype -> DynamiCtrlModels
        self._t5_tokenizer = None
        self.manager.register("dwpose", self._load_detector)
        self.manager.register("lipsync", self._load_lipsync)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._avatars = None  # lipsync.cache.AvatarCache, made on first lip-sync
        self.lipsync_frame_budget_bytes = LIPSYNC_FRAME_BUDGET_BYTES  # decoded frames lip-sync keeps at most

    def _load_detector(self):
        from .pose.detector import DWPoseDetector

        return DWPoseDetector.from_pretrained(weights_dir=self.weights_dir, device=self.device)

    def _load_lipsync(self):
        import torch

        from .lipsync.models import MuseTalkModels

        # fp16 on a GPU as MuseTalk's realtime mode; fp32 on the CPU as its offline default.
        dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        return MuseTalkModels.from_pretrained(self.weights_dir, dtype=dtype)

    @property
    def writes_outputs(self) -> bool:
        """Whether this process writes files: always, except on ranks > 0 of a --parallel job."""
        return self.parallel is None or self.parallel.is_main

    def dynamictrl(self, dtype: str) -> DynamiCtrlModels:
        """The DynamiCtrl parts in the manager for a dtype (one dtype is held at a time)."""
        torch_dtype = resolve_dtype(dtype, self.device)
        if torch_dtype not in self._dynamictrl:
            for stale in self._dynamictrl.values():
                stale.unload()
            self._dynamictrl = {torch_dtype: DynamiCtrlModels(self.manager, self.model, self.weights_dir, torch_dtype)}
        return self._dynamictrl[torch_dtype]

    def extract_poses(
        self,
        image_path: str | Path,
        driving_video_path: str | Path,
        settings: PoseSettings,
        out_path: str | Path | None = None,
        preview_path: str | Path | None = None,
        json_path: str | Path | None = None,
        progress: ProgressCallback | None = None,
    ) -> PoseResult:
        """Pose video for the reference image from a raw driving video: detect, track,
        retarget, render. Writes the pose mp4, an overlay preview and the pose JSON if asked.

        Streamed in two passes (see `dynamictrl.pose.sequence`): the driving video is
        decoded frame by frame and only keypoints are kept; the pose video and the preview
        are drawn frame by frame into their writers (the preview decodes the driving
        video a second time). Memory does not grow with the clip's pixels."""
        from .pose.sequence import build_pose_sequence
        from .pose.types import save_poses
        from .video import PickedFrames, VideoTooShortError, VideoWriter

        started = time.perf_counter()
        check_outputs(out_path, preview_path, json_path)
        self.check_models(driving_video=True)
        check_pose_settings(settings, self.limits)
        image = load_image(image_path, self.limits)
        driving = PickedFrames(
            driving_video_path,
            settings.num_frames - 1,
            fps=settings.fps,
            start_s=settings.start_s,
            loop=settings.loop,
            limits=self.limits,
        )
        try:
            with self.manager.use("dwpose") as detector:
                sequence = build_pose_sequence(
                    image,
                    driving,
                    detector,
                    width=settings.width,
                    height=settings.height,
                    retarget=settings.retarget,
                    detect_every=settings.detect_every,
                    progress=progress,
                )
        except VideoTooShortError as error:
            # Frame 0 is the reference pose, so k driving frames allow T = 4*(k//4) + 1.
            usable = error.available_frames // 4 * 4 + 1
            # A pose video needs T >= 5, i.e. at least 4 driving frames.
            fix = f"use --frames {usable} or --loop" if usable >= 5 else "use --loop or a longer video"
            raise VideoTooShortError(f"{error} With this video {fix}.", error.available_frames) from error
        finally:
            driving.close()
        fps = settings.fps or driving.fps
        with NewFiles(out_path, preview_path, json_path):  # the pose outputs come together or not at all
            if out_path is not None:
                out_path = write_video(out_path, iter(sequence.pose_frames), fps=fps)
            if preview_path is not None:
                with VideoWriter(preview_path, fps=fps) as writer:
                    for frame in sequence.iter_preview(driving):
                        writer.write(frame)
                preview_path = writer.path
            if json_path is not None:
                json_path = save_poses(
                    json_path,
                    sequence.poses,
                    settings=asdict(settings),
                    reference_image=str(image_path),
                    driving_video=str(driving_video_path),
                    retarget=sequence.retarget_info,
                    filled_frames=sequence.filled_frames,
                    driving_detections=[pose.to_json() for pose in sequence.driving_poses],
                )
        return PoseResult(
            sequence=sequence,
            pose_video_path=Path(out_path) if out_path else None,
            preview_path=Path(preview_path) if preview_path else None,
            json_path=Path(json_path) if json_path else None,
            filled_frames=sequence.filled_frames,
            elapsed_s=time.perf_counter() - started,
        )

    # ------------------------------------------------------------ lip-sync
    def lipsync(
        self,
        video_path: str | Path,
        audio_path: str | Path,
        out_path: str | Path,
        settings=None,
        progress: ProgressCallback | None = None,
    ) -> LipSyncResult:
        """Lip-syncs the face in `video_path` to `audio_path` (MuseTalk 1.5); writes the mp4
        with the audio muxed in and, beside it, `<name>.json`.

        The output lasts as long as the audio (the video ping-pongs or is cut, see the
        report). What depends only on the video is cached per video (`cache_dir`), so a
        second audio clip for the same video skips face detection and encoding.

        The video is streamed through detection, preparation and blending (decoded
        again for each pass, never held whole): memory stays within a fixed bound
        (`LIPSYNC_FRAME_BUDGET_BYTES` of decoded frames plus one batch) whatever the
        video's length; the limits on its size and length are the configured ones.
        """
        from .lipsync.audio import load_audio
        from .lipsync.cache import AvatarCache, avatar_key
        from .lipsync.pipeline import LipSyncPipeline
        from .lipsync.settings import LipSyncSettings
        from .video import VideoFrames

        started = time.perf_counter()
        settings = settings or LipSyncSettings()
        out_path = Path(out_path)
        check_outputs(out_path, out_path.with_suffix(".json"), suffix=".mp4")
        self.check_models(lipsync=True)
        # Bad or too long audio fails before any model loads; the video's limits are judged
        # from its header (by VideoFrames) before anything is decoded.
        audio = load_audio(audio_path, max_seconds=self.limits.max_audio_seconds)
        video = VideoFrames(video_path, limits=self.limits)
        height, width = video.size
        video.keep = max(settings.batch_size + 1, self.lipsync_frame_budget_bytes // max(1, height * width * 3))
        video_hash = file_sha256(video_path)
        if self._avatars is None:
            self._avatars = AvatarCache(self.cache_dir / "avatars")
        key = avatar_key(video_hash, settings, self.manager.get("lipsync").fingerprint)

        avatar = self._avatars.get(key, lambda: (video, video.fps))
        cached = avatar is not None
        if avatar is None:
            with self.manager.use("dwpose") as detector:
                # A stream without `len`: one decoding pass, no counting pass first.
                poses = detector.detect_video(
                    iter(video), progress=_phase(progress, 0.0, 0.2), total=video.info.estimated_frames
                )
            with self.manager.use("lipsync") as models:
                avatar = LipSyncPipeline(models).prepare_avatar(
                    video, video.fps, poses, settings, progress=_phase(progress, 0.2, 0.4)
                )
            self._avatars.put(key, avatar)
        # The same bytes (same key) may have come from another path: read this one.
        avatar = replace(avatar, frames=video)
        try:
            with self.manager.use("lipsync") as models:
                frames, report = LipSyncPipeline(models)(avatar, audio, settings, progress=_phase(progress, 0.4, 1.0))
                report.avatar_cached = cached
                write_video(out_path, frames, fps=avatar.fps, audio_path=audio_path)
        finally:
            video.close()
        elapsed = time.perf_counter() - started
        manifest_path = out_path.with_suffix(".json")
        manifest = {
            "output": out_path.name,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "kind": "lipsync",
            "settings": asdict(settings),
            "inputs": {
                "video": {"path": str(video_path), "sha256": video_hash},
                "audio": {"path": str(audio_path), "sha256": file_sha256(audio_path)},
            },
            "report": {**asdict(report), "summary": report.summary()},
            "models": {repo: list(files) for repo, files in weights.LIPSYNC_WEIGHTS.items()},
            "device": self.device,
            "versions": package_versions(),
            "elapsed_s": round(elapsed, 3),
        }
        write_manifest(out_path, manifest_path, manifest)
        return LipSyncResult(out_path, manifest_path, report, elapsed)

    # ------------------------------------------------------------ reference tools
    def _variant_for(self, settings: GenerateSettings) -> str | None:
        if settings.mask_mode is None:
            weights.variant_repo(settings.variant)
            return settings.variant
        expected = variant_for(settings.mask_mode)
        if settings.variant not in (None, expected):
            raise ValueError(
                f"mask mode {settings.mask_mode!r} goes with variant {expected!r}, not {settings.variant!r}: "
                "leave the variant unset and it is picked for you."
            )
        return expected

    def _segmenter_name(self) -> str:
        if not self.manager.is_registered("sam." + self.sam_kind):
            register_segmenter(self.manager, self.sam_kind, weights_dir=self.weights_dir)
        return "sam." + self.sam_kind

    def _captioner_name(self) -> str:
        if not self.manager.is_registered("captioner"):
            from .caption import Captioner

            self.manager.register(
                "captioner",
                lambda: Captioner.from_pretrained(self.caption_model, weights_dir=self.weights_dir, device="cpu"),
            )
        return "captioner"

    def reference_pose(self, reference: np.ndarray):
        with self.manager.use("dwpose") as detector:
            pose = detector(reference)
        if not pose.people:
            raise ValueError("No person found in the reference image: masks start from the person DWPose finds.")
        return pose

    def mask_reference(
        self,
        reference: np.ndarray,
        mode: str,
        pose=None,
        points: list[tuple[float, float, int]] | None = None,
        dilate_px: int = 0,
    ) -> "MaskedReference":
        """Blacks out the background or the clothing of a reference (already at the target
        size). Without points the mask starts from the DWPose person box; with points
        (x, y, 1 = include / 0 = exclude) they mark the person (background mode) or the
        clothing (clothing mode) for SAM, and the mask follows from them."""
        variant_for(mode)
        self.check_models(mask=True)
        pose = pose if pose is not None else self.reference_pose(reference)
        with self.manager.use(self._segmenter_name()) as segmenter:
            if points:
                result = segmenter.predict(reference, points=points)
                mask = ~result.mask if mode == "background" else result.mask
            else:
                mask = segmenter.mask_for(mode, reference, pose)
        mask = clean_mask(mask, dilate_px=dilate_px)
        return MaskedReference(mask=mask, masked=apply_mask(reference, mask), mode=mode)

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
    ) -> "MaskedReference":
        """`mask_reference` on an image file, cropped to the target size first (what the model sees)."""
        from .pose.sequence import cover_crop

        check_size(width, height)
        check_outputs(out_path, mask_path)
        reference = cover_crop(load_image(image_path, self.limits), width, height)
        result = self.mask_reference(reference, mode, points=points, dilate_px=dilate_px)
        with NewFiles(out_path, mask_path):  # both images or neither
            if out_path is not None:
                save_image_atomic(out_path, result.masked)
            if mask_path is not None:
                save_image_atomic(mask_path, result.mask.astype(np.uint8) * 255)
        return result

    # ------------------------------------------------------------ models on disk
    def models_needed(
        self,
        settings: "GenerateSettings | None" = None,
        driving_video: bool = False,
        lipsync: bool = False,
        caption: bool = False,
        mask: bool = False,
    ) -> list[str]:
        """Catalog names (`dynamictrl/catalog.py`) of the models a job needs: a generation
        with `settings` (from a driving video: poses are extracted first), pose extraction
        (`driving_video`), lip-sync, an auto caption, a mask. Models already registered in
        the manager (tiny mode, tests) are not listed."""
        from . import catalog

        names = []
        if settings is not None:
            if str(self.model) == weights.BASE_REPO:  # a folder or another repo is the caller's own
                names.append("base")
            variant = self._variant_for(settings)
            if variant is not None:
                names.append(catalog.variant_model(variant))
            mask = mask or bool(settings.mask_mode)
            caption = caption or not settings.prompt.strip()
        if mask or driving_video:  # masks start from the DWPose person box
            names.append("dwpose")
        if mask and not self.manager.is_registered("sam." + self.sam_kind):
            names.append(catalog.sam_model(self.sam_kind))
        if caption and not self.manager.is_registered("captioner"):
            names.append(catalog.caption_model(self.caption_model))
        if lipsync:
            names.extend(catalog.GROUPS["lipsync"])
        return names

    def missing_models(self, settings: "GenerateSettings | None" = None, **job) -> list:
        """`catalog.ModelStatus` of every model the job needs (arguments as `models_needed`)
        that is not on disk; reads the disk only, so it works offline."""
        from . import catalog

        needed = self.models_needed(settings, **job)
        return [s for s in catalog.statuses(self.weights_dir, needed) if s.state != catalog.ON_DISK]

    def check_models(self, settings: "GenerateSettings | None" = None, **job) -> None:
        """Raises one `catalog.MissingModelsError` listing every missing model of the job when
        they will not be downloaded on the way (offline, or `auto_download` off)."""
        from . import catalog

        offline = weights._offline()
        if self.auto_download and not offline:
            return
        missing = self.missing_models(settings, **job)
        if missing:
            raise catalog.MissingModelsError(missing, "offline mode is on" if offline else "")

    def system_status(self) -> dict:
        """What a system panel shows: the device, its memory and what each model holds."""
        import torch

        status = {"device": self.device, "models": self.manager.status(), "process_ram_gb": _process_ram_gb()}
        if self.device.startswith("cuda") and torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info(torch.device(self.device))
            status.update(
                gpu=torch.cuda.get_device_name(torch.device(self.device)),
                vram_free_gb=round(free / 1e9, 2),
                vram_total_gb=round(total / 1e9, 2),
                vram_allocated_gb=round(torch.cuda.memory_allocated(torch.device(self.device)) / 1e9, 2),
            )
        return status

    def t5_tokenizer(self):
        """DynamiCtrl's T5 tokenizer (small; captions are fitted to its 226 tokens)."""
        if self._t5_tokenizer is None:
            from transformers import T5Tokenizer

            # Only the tokenizer files: a caption or a prompt check never pulls the 22 GB repo.
            folder = weights.resolve_tokenizer(self.model, self.weights_dir)
            self._t5_tokenizer = T5Tokenizer.from_pretrained(folder, subfolder="tokenizer")
        return self._t5_tokenizer

    def caption(self, image, mask_mode: str | None = None):
        """Qwen2-VL caption of a reference (path, PIL or array), fitted to T5's 226 tokens;
        with a mask mode, of the visible part plus a placeholder for the masked region."""
        self.check_models(caption=True)
        tokenizer = self.t5_tokenizer()
        with self.manager.use(self._captioner_name()) as captioner:
            if mask_mode:
                return captioner.caption_masked(image, mask_mode, t5_tokenizer=tokenizer)
            return captioner.caption(image, t5_tokenizer=tokenizer)

    def generate(
        self,
        image_path: str | Path,
        out_path: str | Path,
        settings: GenerateSettings,
        pose_video_path: str | Path | None = None,
        driving_video_path: str | Path | None = None,
        pose_settings: PoseSettings | None = None,
        progress: ProgressCallback | None = None,
        pose_provenance: dict | None = None,
        preview: Callable | None = None,
        preview_every: int = 5,
        return_frames: bool = False,
    ) -> GenerateResult:
        """Animates the reference image; writes the mp4 and, beside it, `<name>.json` with
        every setting and input hash.

        The motion comes from `pose_video_path` (an already rendered pose video, frame 0 =
        the reference's pose; `pose_provenance` says how it was made, for the manifest) or
        from `driving_video_path` (a raw video: poses are extracted first with
        `pose_settings`, whose size and frame count follow `settings`). A job that fails or
        is cancelled leaves nothing beside `out_path` (no pose video, no masked reference).

        `preview(p)`: live previews (`dynamictrl.preview.Preview`: small frames of the video
        as it forms, from the scheduler's x0 estimate through a linear latent->RGB
        projection, never the VAE) every `preview_every` denoising steps and at the last.
        A callback may raise `Cancelled` to stop the job, like `progress`.

        Streamed end to end: poses are drawn (or decoded from the pose video) one window at
        a time and finished frames go to the mp4 writer as each window is decoded, so the
        host holds about one window plus its overlap whatever the clip's length. The
        frames are not kept unless `return_frames=True` (then `result.frames` holds them).
        """
        out_path = Path(out_path)
        with NewFiles(*(out_path.with_name(out_path.stem + suffix) for suffix in SIDE_OUTPUTS)):
            return self._generate(
                image_path,
                out_path,
                settings,
                pose_video_path,
                driving_video_path,
                pose_settings,
                progress,
                pose_provenance,
                preview,
                preview_every,
                return_frames,
            )

    def generate_variations(
        self,
        image_path: str | Path,
        out_path: str | Path,
        settings: GenerateSettings,
        seeds: list[int],
        pose_video_path: str | Path | None = None,
        driving_video_path: str | Path | None = None,
        pose_settings: PoseSettings | None = None,
        progress: ProgressCallback | None = None,
        on_result: Callable[[GenerateResult], None] | None = None,
        preview: Callable | None = None,
        preview_every: int = 5,
    ) -> list[GenerateResult]:
        """The same job with each of `seeds` (1 to 8), one after another: `<stem>_seed<N>.mp4`
        (+ manifest) per seed, `on_result` called as each finishes. Poses are extracted and
        the prompt captioned once, for the first seed, and reused by the others.
        `progress` covers all of them; `preview` previews are of the seed running."""
        out_path = Path(out_path)
        seeds = check_seeds(seeds)
        results: list[GenerateResult] = []
        pose_provenance = None
        for index, seed in enumerate(seeds):
            path = variation_path(out_path, seed)
            phase = _phase(progress, index / len(seeds), (index + 1) / len(seeds))
            if phase is not None:
                phase(0.0, f"seed {seed} ({index + 1} of {len(seeds)})")
            result = self.generate(
                image_path,
                path,
                replace(settings, seed=seed),
                pose_video_path=pose_video_path,
                driving_video_path=driving_video_path,
                pose_settings=pose_settings,
                progress=phase,
                pose_provenance=pose_provenance,
                preview=preview,
                preview_every=preview_every,
            )
            results.append(result)
            if on_result is not None:
                on_result(result)
            if index == 0:
                manifest = json.loads(result.manifest_path.read_text())
                # The later seeds reuse the first one's poses and (auto) prompt.
                settings = replace(settings, prompt=manifest["prompt_used"])
                if result.pose is not None:
                    pose_video_path, driving_video_path = result.pose.pose_video_path, None
                    pose_provenance = manifest["inputs"]["pose_extraction"]
        return results

    def _generate(
        self,
        image_path,
        out_path: Path,
        settings: GenerateSettings,
        pose_video_path,
        driving_video_path,
        pose_settings,
        progress,
        pose_provenance,
        preview=None,
        preview_every: int = 5,
        return_frames: bool = False,
    ) -> GenerateResult:
        import torch

        from .pose.sequence import cover_crop

        started = time.perf_counter()
        out_path = Path(out_path)
        if (pose_video_path is None) == (driving_video_path is None):
            raise ValueError("Give exactly one of a pose video (already rendered) or a driving video.")
        check_outputs(
            out_path,
            out_path.with_suffix(".json"),
            *(out_path.with_name(out_path.stem + suffix) for suffix in SIDE_OUTPUTS),
            suffix=".mp4",
        )
        check_generate_settings(settings, self.limits)
        variant = self._variant_for(settings)
        resolve_dtype(settings.dtype, self.device)
        # Imported after the output and settings checks: the attention module brings in
        # diffusers (and torchao's import-time warnings), a refused job prints its one line.
        from .models.attention import resolve_attention_kernel
        from .parallel import ParallelLayout

        resolve_attention_kernel(settings.attention, self.device)
        if preview is not None and preview_every < 1:
            raise ValueError(f"preview_every must be >= 1 (denoising steps between previews), got {preview_every}.")
        self.check_models(settings, driving_video=driving_video_path is not None)
        if settings.prompt.strip():
            check_no_placeholder(settings.prompt)
        # T5 reads 226 tokens and would drop the rest silently (auto captions are fitted to it).
        for text, what in ((settings.prompt, "prompt"), (settings.negative_prompt, "negative prompt")):
            if text.strip():
                check_prompt_tokens(text.strip(), self.t5_tokenizer(), what=what)

        pose_result = None
        if driving_video_path is not None:
            pose_settings = replace(
                pose_settings or PoseSettings(),
                num_frames=settings.num_frames,
                width=settings.width,
                height=settings.height,
                fps=settings.fps,  # driving frames at the output fps keep the motion's real speed
            )
            pose_path = out_path.with_name(out_path.stem + SIDE_OUTPUTS[0])
            pose_result = self.extract_poses(
                image_path,
                driving_video_path,
                pose_settings,
                out_path=pose_path if self.writes_outputs else None,
                progress=progress,
            )
            reference = pose_result.sequence.reference_pil()
            pose_frames = pose_result.sequence.pose_frames  # drawn window by window by the sampler
        else:
            image = load_image(image_path, self.limits)
            # Decoded window by window by the sampler (a window's frames kept, no more).
            pose_frames = VideoFrames(
                pose_video_path, keep=settings.window_frames, max_frames=settings.num_frames, limits=self.limits
            )
            if len(pose_frames) < settings.num_frames:
                usable = (len(pose_frames) - 1) // 4 * 4 + 1
                raise ValueError(
                    f"The pose video has {len(pose_frames)} frames, fewer than the {settings.num_frames} asked for: "
                    f"use --frames {usable} or a longer pose video."
                )
            # The same cover-resize + centre-crop the pose stage applies, so image and poses agree.
            reference = Image.fromarray(cover_crop(image, settings.width, settings.height))

        masked = None
        if settings.mask_mode:
            reference_pose = pose_result.sequence.reference_pose if pose_result else None
            masked = self.mask_reference(
                np.asarray(reference), settings.mask_mode, pose=reference_pose, points=settings.mask_points
            )
            reference = Image.fromarray(masked.masked)
            if self.writes_outputs:
                save_image_atomic(out_path.with_name(out_path.stem + SIDE_OUTPUTS[1]), masked.masked)
        prompt, caption = settings.prompt.strip(), None
        if not prompt:
            if self.writes_outputs:  # with --parallel rank 0 captions, the others take its text
                caption = self.caption(np.asarray(reference), settings.mask_mode)
                prompt = fill_placeholder(caption.text, settings.mask_fill, settings.mask_mode)
            if self.parallel is not None:
                from .parallel import broadcast_text

                prompt = broadcast_text(prompt, self.parallel)
            if progress is not None:
                progress(0.0, f"auto caption: {prompt}")

        models = self.dynamictrl(settings.dtype)
        options = settings.memory

        previews = None  # made inside the job: the projection is fitted to the pipeline's VAE

        def on_step(pipeline, step, timestep, tensors):
            if progress is not None:
                progress((step + 1) / settings.steps, f"denoising step {step + 1}/{settings.steps}")
            if previews is not None:
                previews(pipeline, step, timestep, tensors)
            return {}

        used = {}

        def generate_in(tier: str):
            nonlocal previews
            from .parallel import apply_parallel

            # The writer is opened per attempt: a failed attempt (out of memory) leaves no
            # file. Only the writing rank of a --parallel job opens one.
            kept = [] if return_frames else None
            count = [0]

            def take(frames: np.ndarray) -> None:  # (1, n, H, W, 3) uint8, in clip order
                count[0] += len(frames[0])
                if writer is not None:
                    writer.write(frames[0])
                if kept is not None:
                    kept.append(frames[0].copy())

            with contextlib.ExitStack() as stack:
                writer = stack.enter_context(VideoWriter(out_path, fps=settings.fps)) if self.writes_outputs else None
                pipe = stack.enter_context(models.use(variant, options, tier))
                used.update(tier=tier, dtype=str(pipe.transformer.dtype).replace("torch.", ""))
                pipe.transformer.set_attention_kernel(settings.attention)
                apply_parallel(pipe.transformer, self.parallel)
                if preview is not None:
                    from .preview import PreviewMaker, projection_for

                    previews = PreviewMaker(
                        projection_for(pipe.vae, self.cache_dir),
                        preview,
                        preview_every,
                        settings.steps,
                        (settings.num_frames - 1) // 4 + 1,
                    )
                pipe(
                    image=reference,
                    pose_video=pose_frames,
                    prompt=prompt,
                    negative_prompt=settings.negative_prompt,
                    height=settings.height,
                    width=settings.width,
                    num_frames=settings.num_frames,
                    num_inference_steps=settings.steps,
                    guidance_scale=settings.guidance,
                    generator=torch.Generator().manual_seed(settings.seed),
                    # With --parallel every rank holds the same latents; only rank 0 decodes.
                    output_type="uint8" if self.writes_outputs else "latent",
                    callback_on_step_end=on_step,
                    callback_on_step_end_tensor_inputs=["latents", "pred_original_sample"],
                    window_frames=settings.window_frames,
                    overlap_frames=settings.overlap,
                    color_match=settings.color_match,
                    pose_strength=settings.pose_strength,
                    frame_sink=take if self.writes_outputs else None,
                )
            return count[0], (np.concatenate(kept) if kept else None)

        # GPU memory follows the window, not the whole clip.
        window = min(settings.num_frames, settings.window_frames)
        first_tier = models.tier_for(options, window, settings.height, settings.width)
        describe = f"generation at {settings.width}x{settings.height}, {settings.num_frames} frames"
        if self.parallel is None:
            frames_written, frames = self.manager.run_with_oom_retry(generate_in, first_tier, describe=describe)
        else:  # a retry on one rank alone would leave the others waiting in a collective
            frames_written, frames = generate_in(first_tier)
        if not self.writes_outputs:  # another rank of a --parallel job: rank 0 writes
            return GenerateResult(
                out_path,
                out_path.with_suffix(".json"),
                frames,
                time.perf_counter() - started,
                pose_result,
                written=False,
                num_frames=frames_written,
            )
        elapsed = time.perf_counter() - started

        inputs = {
            "image": {"path": str(image_path), "sha256": file_sha256(image_path), "size_wh": list(reference.size)}
        }
        # (pose_extraction below: settings of the pose stage, for either motion source)
        if pose_result is not None:
            inputs["driving_video"] = {"path": str(driving_video_path), "sha256": file_sha256(driving_video_path)}
            inputs["pose_extraction"] = {
                "settings": asdict(pose_settings),
                "pose_video": pose_result.pose_video_path.name,
                "filled_frames": pose_result.filled_frames,
                "retarget": pose_result.sequence.retarget_info,
            }
        else:
            inputs["pose_video"] = {"path": str(pose_video_path), "sha256": file_sha256(pose_video_path)}
            if pose_provenance:
                # A pose video made earlier by `extract_poses` (e.g. the app's Motion step).
                inputs["pose_extraction"] = pose_provenance
        manifest_path = out_path.with_suffix(".json")
        manifest = {
            "output": out_path.name,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "settings": asdict(settings),
            "prompt_used": prompt,
            "auto_caption": caption.text if caption else None,
            "mask": {"mode": settings.mask_mode, "masked_fraction": round(float(masked.mask.mean()), 4)}
            if masked
            else None,
            "models": {
                "base": str(self.model),
                "transformer": weights.variant_repo(variant) or f"{self.model} (transformer/)",
            },
            "inputs": inputs,
            "device": self.device,
            "torch_dtype": used["dtype"],
            "memory_tier": used["tier"],
            "parallel": (self.parallel.layout if self.parallel is not None else ParallelLayout()).as_dict(),
            "versions": package_versions(),
            "elapsed_s": round(elapsed, 3),
        }
        write_manifest(out_path, manifest_path, manifest)
        return GenerateResult(out_path, manifest_path, frames, elapsed, pose_result, num_frames=frames_written)
