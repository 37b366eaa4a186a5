"""Training data from a folder of videos: cropped clips, their rendered poses, prompts, masks.

    OUT/manifest.json       what the training loader reads (see `prepare_dataset`)
    OUT/videos/<id>.mp4     RGB frames cover-cropped to W x H (as `cover_crop`), resampled to F fps
    OUT/poses/<id>.mp4      DWPose skeletons drawn by the training renderer, frame i = video frame i
    OUT/poses/<id>.json     the pose records (`save_poses`), to inspect or edit
    OUT/masks/<id>.png      optional: white = the region blacked out in the first frame (SAM)

Every model is the studio's, held by its model manager, so one `Studio` can prepare data
and generate in the same process without loading anything twice. The poses are of the
video's own person: nothing is retargeted.
"""

import itertools
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..pose.render import draw_pose
from ..pose.sequence import cover_crop
from ..pose.tracking import fill_missing_people, track_people
from ..pose.types import FramePose, save_poses
from ..settings import MASK_MODES
from ..validation import check_size
from ..video import VideoError, iter_frames, write_video

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
MIN_FRAMES = 5  # the shortest clip the model's 4k+1 frame counts allow beyond a still image
VIDEO_EXTENSIONS = (".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v", ".gif")
# Frames decoded, cropped and detected together; also how many are read before the
# too-short check, which must therefore fit in the first chunk.
DETECT_CHUNK = 16
# Dataset-wide settings: a resumed run must use the same ones, or the items would differ.
DATASET_KEYS = ("width", "height", "fps", "caption", "mask_mode")
ITEM_KEYS = {"id", "video", "pose", "pose_json", "mask", "source"}

ProgressCallback = Callable[[float, str], None]


@dataclass
class PrepareSettings:
    width: int = 768
    height: int = 1360
    fps: float = 16.0  # every clip is resampled to this, so the manifest has one fps
    max_frames: int | None = None  # cap per video (after resampling); None: the whole video
    mask: str | None = None  # None | background | clothing
    caption: bool = True  # False: prompts are "" (and the manifest's "caption" is false)

    def check(self) -> None:
        check_size(self.width, self.height)
        if not self.fps or self.fps <= 0:
            raise ValueError(f"fps must be positive (every clip is resampled to it), got {self.fps}.")
        if self.max_frames is not None and self.max_frames < MIN_FRAMES:
            raise ValueError(f"max_frames must be at least {MIN_FRAMES} (None: whole videos), got {self.max_frames}.")
        if self.mask not in (None, *MASK_MODES):
            raise ValueError(f"mask must be None, 'background' or 'clothing', got {self.mask!r}.")


@dataclass
class PrepareReport:
    out_dir: Path
    manifest_path: Path
    prepared: list[str] = field(default_factory=list)  # ids made in this run
    already_done: list[str] = field(default_factory=list)  # ids a previous run completed
    skipped: list[dict] = field(default_factory=list)  # {"video", "reason"} of this run
    dropped: list[str] = field(default_factory=list)  # manifest items whose files had gone
    filled_frames: int = 0  # frames without a person that reuse the previous pose, this run
    elapsed_s: float = 0.0

    def summary(self) -> str:
        counts = (
            f"{len(self.prepared)} videos prepared, {len(self.already_done)} already done, "
            f"{len(self.skipped)} skipped in {self.elapsed_s:.1f} s; dataset: {self.manifest_path}"
        )
        lines = [counts]
        if self.filled_frames:
            lines.append(f"{self.filled_frames} frames had no person and reuse the previous pose.")
        if self.dropped:
            lines.append(f"Redone or dropped (files missing): {', '.join(self.dropped)}.")
        lines += [f"  skipped {entry['video']}: {entry['reason']}" for entry in self.skipped]
        return "\n".join(lines)


class SkipVideo(Exception):
    """This video cannot become an item; the message is the reason listed in the manifest."""


# ------------------------------------------------------------------ manifest
def _dataset_settings(settings: PrepareSettings) -> dict:
    return {
        "width": settings.width,
        "height": settings.height,
        "fps": float(settings.fps),
        "caption": settings.caption,
        "mask_mode": settings.mask,
    }


def load_manifest(out_dir: Path, settings: PrepareSettings) -> dict:
    """The manifest of an earlier run in `out_dir` (refused if made with other dataset
    settings), or a new empty one."""
    path = out_dir / MANIFEST_NAME
    wanted = _dataset_settings(settings)
    if not path.is_file():
        return {"version": MANIFEST_VERSION, **wanted, "items": [], "skipped": []}
    try:
        manifest = json.loads(path.read_text())
        items, skipped = list(manifest["items"]), list(manifest["skipped"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{path} is not a readable dataset manifest ({error}); move it away or pick another --out."
        ) from error
    if not all(isinstance(item, dict) and ITEM_KEYS <= item.keys() for item in items):
        keys = ", ".join(sorted(ITEM_KEYS))
        raise ValueError(f"{path} has items without {keys}; move it away or pick another --out.")
    if manifest.get("version") != MANIFEST_VERSION:
        raise ValueError(
            f"{path} has version {manifest.get('version')!r}; this tool writes version {MANIFEST_VERSION}."
        )
    earlier = {key: manifest.get(key) for key in DATASET_KEYS}
    if earlier != wanted:
        differ = ", ".join(
            f"{key} {earlier[key]!r} (now {wanted[key]!r})" for key in DATASET_KEYS if earlier[key] != wanted[key]
        )
        raise ValueError(
            f"{out_dir} was prepared with other settings: {differ}. Resume with the same settings, or pick a new --out."
        )
    return {**manifest, "items": items, "skipped": skipped}


def write_manifest(out_dir: Path, manifest: dict) -> Path:
    """Rewrites manifest.json atomically: a crash leaves the previous complete version."""
    manifest["items"] = sorted(manifest["items"], key=lambda item: item["id"])
    manifest["skipped"] = sorted(manifest["skipped"], key=lambda entry: entry["video"])
    path = out_dir / MANIFEST_NAME
    partial = out_dir / f".{MANIFEST_NAME}.partial"
    partial.write_text(json.dumps(manifest, indent=2))
    os.replace(partial, path)
    return path


def item_files(item: dict) -> list[str]:
    """The files of an item, relative to the dataset folder."""
    return [item["video"], item["pose"], item["pose_json"]] + ([item["mask"]] if item["mask"] else [])


def is_complete(out_dir: Path, item: dict) -> bool:
    return all((out_dir / name).is_file() for name in item_files(item))


# ------------------------------------------------------------------ sources and ids
def list_videos(videos_dir: Path) -> list[Path]:
    """Video files directly in `videos_dir`, by name (hidden files left out)."""
    if not videos_dir.is_dir():
        raise ValueError(f"--videos must be a folder of videos; {videos_dir} is not a folder.")
    return sorted(
        path
        for path in videos_dir.iterdir()
        if path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS and not path.name.startswith(".")
    )


def assign_ids(sources: list[Path], known: dict[str, str], reserved: set[str] = frozenset()) -> dict[str, str]:
    """Source file name -> item id: the file stem, made unique by `_2`, `_3`, ...

    `known` (file name -> id from the manifest) keeps its ids, so adding a video with a
    clashing stem later never renames an item already made; `reserved` ids are in use
    too. New files are numbered in name order, and a bare stem that some file has is
    never given to another file.
    """
    ids = dict(known)
    taken = set(known.values()) | set(reserved)
    stems = {path.stem for path in sources}
    for path in sources:
        if path.name in ids:
            continue
        candidate, number = path.stem, 2
        while candidate in taken or (candidate != path.stem and candidate in stems):
            candidate, number = f"{path.stem}_{number}", number + 1
        ids[path.name] = candidate
        taken.add(candidate)
    return ids


# ------------------------------------------------------------------ frames
def source_indices(source_fps: float, target_fps: float) -> Iterator[int]:
    """Source frame index of each output frame, without end: the rounding of
    `video.sample_indices`, so a clip here and a driving video there resample alike."""
    step = source_fps / target_fps
    return (math.floor(k * step + 1e-6) for k in itertools.count())


def resampled_frames(path: Path, settings: PrepareSettings) -> Iterator[np.ndarray]:
    """The clip's frames at `settings.fps`, cover-cropped to the target size, streamed:
    a long video never sits in memory whole. Decoding problems raise `VideoError`."""
    meta, frames = iter_frames(path)
    source_fps = float(meta.get("fps") or 0.0) or 16.0  # as read_video when the fps is unknown
    wanted = source_indices(source_fps, settings.fps)
    target, count = next(wanted), 0
    try:
        for index, frame in enumerate(frames):
            if index < target:
                continue
            cropped = cover_crop(frame, settings.width, settings.height)
            while index == target:  # a frame repeats when the target fps is higher
                yield cropped
                count += 1
                if settings.max_frames is not None and count >= settings.max_frames:
                    return
                target = next(wanted)
    finally:
        frames.close()  # stops ffmpeg when the clip is capped or a step fails


def chunks(frames: Iterator[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    while chunk := list(itertools.islice(frames, size)):
        yield chunk


@dataclass
class DetectedClip:
    detections: list[FramePose] = field(default_factory=list)  # one per frame, as detected
    first_frame: np.ndarray | None = None

    @property
    def num_frames(self) -> int:
        return len(self.detections)


def write_clip_and_detect(source: Path, video_path: Path, detector, settings: PrepareSettings) -> DetectedClip:
    """Writes the cropped clip while the detector runs on it chunk by chunk (one decode,
    bounded memory). A clip shorter than MIN_FRAMES is refused before any detection."""
    clip = DetectedClip()

    def frames_with_detection():
        for chunk in chunks(resampled_frames(source, settings), DETECT_CHUNK):
            if clip.first_frame is None:
                if len(chunk) < MIN_FRAMES:
                    raise SkipVideo(
                        f"too short: {len(chunk)} frames at {settings.fps:g} fps, at least {MIN_FRAMES} needed"
                    )
                clip.first_frame = chunk[0]
            clip.detections.extend(detector.detect_video(chunk))
            yield from chunk
        if clip.first_frame is None:
            raise SkipVideo("too short: it decodes to no frames")

    try:
        write_video(video_path, frames_with_detection(), fps=settings.fps)
    except VideoError as error:
        raise SkipVideo(f"unreadable: {error}") from error
    return clip


def fill_poses(detections: list[FramePose]) -> tuple[list[FramePose], int]:
    """Tracked poses with personless frames filled from the previous one (the pose stage's
    rule for driving videos); SkipVideo if no frame has a person."""
    if not any(frame.people for frame in detections):
        raise SkipVideo(f"no person detected in any of its {len(detections)} frames")
    return fill_missing_people(track_people(detections))


# ------------------------------------------------------------------ one video
def item_paths(item_id: str, mask: str | None) -> dict[str, str]:
    return {
        "video": f"videos/{item_id}.mp4",
        "pose": f"poses/{item_id}.mp4",
        "pose_json": f"poses/{item_id}.json",
        "mask": f"masks/{item_id}.png" if mask else None,
    }


def save_mask(studio, out_path: Path, first_frame: np.ndarray, pose: FramePose, mode: str) -> None:
    # The first frame's own (filled) pose starts SAM, as for a reference image.
    result = studio.mask_reference(first_frame, mode, pose=pose)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(result.mask.astype(np.uint8) * 255).save(out_path)


def caption_first_frame(studio, first_frame: np.ndarray) -> str:
    # The unmasked frame: the prompt describes the clip the model must produce, and the
    # clip shows the region a mask hides from the reference.
    return studio.caption(first_frame).text


def prepare_video(studio, source: Path, item_id: str, out_dir: Path, settings: PrepareSettings) -> dict:
    """Makes every file of one item and returns its manifest entry; SkipVideo if the video
    cannot be one. On any failure the item's files are removed again."""
    paths = item_paths(item_id, settings.mask)
    try:
        with studio.manager.use("dwpose") as detector:
            clip = write_clip_and_detect(source, out_dir / paths["video"], detector, settings)
        poses, filled = fill_poses(clip.detections)
        write_video(
            out_dir / paths["pose"],
            (draw_pose(pose, settings.height, settings.width) for pose in poses),
            fps=settings.fps,
        )
        save_poses(
            out_dir / paths["pose_json"],
            poses,
            source=source.name,
            width=settings.width,
            height=settings.height,
            fps=float(settings.fps),
            filled_frames=filled,
            filled=[i for i, frame in enumerate(clip.detections) if not frame.people],
        )
        if settings.mask:
            save_mask(studio, out_dir / paths["mask"], clip.first_frame, poses[0], settings.mask)
        prompt = caption_first_frame(studio, clip.first_frame) if settings.caption else ""
    except BaseException:
        remove_files(out_dir, [name for name in paths.values() if name])
        raise
    return {
        "id": item_id,
        **paths,
        "prompt": prompt,
        "num_frames": clip.num_frames,
        "filled_frames": filled,
        "source": source.name,
    }


def remove_files(out_dir: Path, names: list[str]) -> None:
    for name in names:
        (out_dir / name).unlink(missing_ok=True)


# ------------------------------------------------------------------ the folder
def _drop_incomplete(out_dir: Path, manifest: dict, report: PrepareReport) -> None:
    """Items whose files were deleted leave the manifest (their videos are made again)."""
    complete = [item for item in manifest["items"] if is_complete(out_dir, item)]
    report.dropped = sorted(item["id"] for item in manifest["items"] if item not in complete)
    manifest["items"] = complete


def prepare_dataset(
    studio, videos_dir, out_dir, settings: PrepareSettings | None = None, progress: ProgressCallback | None = None
) -> PrepareReport:
    """Prepares every video in `videos_dir` into the dataset at `out_dir`; see the module
    docstring for the layout. `manifest.json` is rewritten atomically after each video, so
    an interrupted run keeps what it finished and a new run resumes: items whose files all
    exist are not made again; videos skipped before (unreadable, too short, no person)
    are tried again. `progress(fraction, message)` is called once per video."""
    settings = settings or PrepareSettings()
    settings.check()
    started = time.perf_counter()
    videos_dir, out_dir = Path(videos_dir), Path(out_dir)
    sources = list_videos(videos_dir)
    if not sources:
        raise ValueError(f"No videos in {videos_dir} (looked for {', '.join(VIDEO_EXTENSIONS)}).")
    if videos_dir.resolve() == (out_dir / "videos").resolve():
        raise ValueError("--videos is this dataset's own videos/ folder: point it at the source videos.")
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(out_dir, settings)
    report = PrepareReport(out_dir=out_dir, manifest_path=out_dir / MANIFEST_NAME)
    _drop_incomplete(out_dir, manifest, report)
    done = {item["source"]: item for item in manifest["items"] if item.get("source")}
    ids = assign_ids(
        sources, {name: item["id"] for name, item in done.items()}, reserved={item["id"] for item in manifest["items"]}
    )

    for position, source in enumerate(sources):
        if progress is not None:
            progress(position / len(sources), f"{source.name} ({position + 1}/{len(sources)})")
        if source.name in done:
            report.already_done.append(done[source.name]["id"])
            continue
        manifest["skipped"] = [entry for entry in manifest["skipped"] if entry["video"] != source.name]
        try:
            item = prepare_video(studio, source, ids[source.name], out_dir, settings)
        except SkipVideo as reason:
            entry = {"video": source.name, "reason": str(reason)}
            manifest["skipped"].append(entry)
            report.skipped.append(entry)
        else:
            manifest["items"].append(item)
            report.prepared.append(item["id"])
            report.filled_frames += item["filled_frames"]
        write_manifest(out_dir, manifest)

    write_manifest(out_dir, manifest)  # also when nothing was left to do (dropped items)
    if progress is not None:
        progress(1.0, "done")
    report.elapsed_s = time.perf_counter() - started
    return report
