"""Pairs predicted and ground-truth videos by name, runs the protocol, writes the table.

    from dynamictrl.eval import EvalProtocol, evaluate
    result = evaluate("out/pred", "data/gt", metrics="all")
    print(result.metrics["fvd"])

A side is a video file, a folder of frames, or a folder of those (matched by name; names
that are numbers match by value, so `335.mp4` pairs with `00335/`). A frame folder may keep
its frames in an `images/` subfolder (the TikTok dataset's layout).
"""

import json
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import numpy as np
from PIL import Image

from ..images import openable_formats
from .frames import FRAME_METRICS, LPIPS_SCALINGS, LpipsMetric, frame_metrics, prepare_frames
from .fvd import VIDEO_METRICS, VideoBackbone, distance_between, fid_vid_backbone, fvd_backbone

ALL_METRICS = FRAME_METRICS + VIDEO_METRICS
METRIC_GROUPS = {"all": ALL_METRICS, "frame": FRAME_METRICS, "video": VIDEO_METRICS}
VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv", ".gif", ".avi", ".m4v")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# Column order, headers and formatting of the paper's Table 2.
COLUMNS = (
    ("l1", "L1 (E-04) ↓", lambda v: f"{v * 1e4:.2f}"),
    ("ssim", "SSIM ↑", lambda v: f"{v:.3f}"),
    ("psnr", "PSNR ↑", lambda v: f"{v:.2f}"),
    ("psnr*", "PSNR* ↑", lambda v: f"{v:.2f}"),
    ("lpips", "LPIPS ↓", lambda v: f"{v:.3f}"),
    ("fid-vid", "FID-VID ↓", lambda v: f"{v:.2f}"),
    ("fvd", "FVD ↓", lambda v: f"{v:.2f}"),
)

ProgressCallback = Callable[[str], None]


class EvalInputError(ValueError):
    """Inputs that cannot be evaluated as given; the message names the file and the fix."""


@dataclass
class EvalProtocol:
    """How frames are compared; the defaults are DisCo's TikTok protocol (see docs/evaluation.md)."""

    size: int = 256  # frames are compared at size x size (L1 depends on it)
    crop: str = "center"  # center: the centred square, as DisCo; resize: squash the whole frame
    skip_first_frame: bool = True  # frame 0 re-draws the reference image: not a prediction
    clip_length: int = 16  # frames per FID-VID/FVD sample (DisCo's 16-frame GIFs)
    clip_stride: int = 1  # a clip starts at every frame, as DisCo's GIFs do
    lpips_scaling: str = "disco"  # disco: [0, 1] inputs as DisCo's script; standard: [-1, 1]
    trim: bool = False  # compare the first min(T_pred, T_gt) frames instead of refusing

    def check(self) -> "EvalProtocol":
        if self.size < 16:
            raise ValueError(f"The comparison size must be at least 16 px, got {self.size}.")
        if self.crop not in ("center", "resize"):
            raise ValueError(f"crop must be 'center' or 'resize', got {self.crop!r}.")
        if self.clip_length < 1 or self.clip_stride < 1:
            raise ValueError("clip length and clip stride must be >= 1.")
        if self.lpips_scaling not in LPIPS_SCALINGS:
            raise ValueError(f"LPIPS scaling must be one of {LPIPS_SCALINGS}, got {self.lpips_scaling!r}.")
        return self


def parse_metrics(spec: str | Iterable[str]) -> tuple[str, ...]:
    """'all' | 'frame' | 'video' | a comma list of l1, ssim, psnr, psnr*, lpips, fid-vid, fvd."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    chosen = []
    for item in (part.strip().lower() for part in items):
        if not item:
            continue
        names = METRIC_GROUPS.get(item, (item,))
        for name in names:
            if name not in ALL_METRICS:
                raise ValueError(f"Unknown metric {item!r}: use all, frame, video or any of {', '.join(ALL_METRICS)}.")
            if name not in chosen:
                chosen.append(name)
    if not chosen:
        raise ValueError("No metric asked for: use --metrics all, or a list such as l1,ssim,lpips.")
    return tuple(name for name in ALL_METRICS if name in chosen)


# ---------------------------------------------------------------------------------------
# Inputs


def _natural_key(path: Path):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        (
            p
            for p in folder.iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        ),
        key=_natural_key,
    )


def _frame_folder(folder: Path) -> Path | None:
    """The folder holding a video's frames: itself, or its `images/` subfolder."""
    if (folder / "images").is_dir() and _images_in(folder / "images"):
        return folder / "images"
    return folder if _images_in(folder) else None


@dataclass
class Source:
    """One video on one side: a video file or a folder of frames."""

    name: str
    path: Path

    @property
    def is_video_file(self) -> bool:
        return self.path.is_file()

    def probe(self) -> tuple[int, tuple[int, int]]:
        """(frame count, (height, width)) without decoding every frame."""
        if not self.is_video_file:
            images = _images_in(self.path)
            try:
                with Image.open(images[0], formats=openable_formats()) as first:
                    width, height = first.size
            except OSError as error:
                raise EvalInputError(f"Cannot read {images[0]}: {error}. Replace or re-export that frame.") from error
            return len(images), (height, width)
        from ..video import VideoError, count_frames, iter_frames, probe_video

        try:
            # The one safe probe of every media input (dynamictrl.probe), then the packets counted.
            info = probe_video(self.path)
            meta, frames = iter_frames(self.path, info=info)
            frames.close()
            count = count_frames(info)
        except VideoError as error:
            raise EvalInputError(f"Cannot read the video {self.path}: {error}") from error
        width, height = meta["size"]
        return int(count), (int(height), int(width))

    def load(self, max_frames: int | None = None) -> np.ndarray:
        """(T, H, W, 3) uint8 RGB."""
        from ..video import VideoError, read_video

        if self.is_video_file:
            try:
                return read_video(self.path, max_frames=max_frames).frames
            except VideoError as error:
                raise EvalInputError(f"{self.path}: {error}") from error
        frames = []
        size = None
        for image_path in _images_in(self.path)[:max_frames]:
            try:
                with Image.open(image_path, formats=openable_formats()) as image:  # PIL's allow-list (no EPS)
                    frame = np.asarray(image.convert("RGB"))
            except OSError as error:
                raise EvalInputError(f"Cannot read {image_path}: {error}. Replace or re-export that frame.") from error
            if size is not None and frame.shape != size:
                raise EvalInputError(
                    f"{image_path} is {frame.shape[1]}x{frame.shape[0]} but the frames before it in {self.path} are "
                    f"{size[1]}x{size[0]}: every frame of a video must have one size."
                )
            size = frame.shape
            frames.append(frame)
        return np.stack(frames)


def find_sources(path: str | Path, side: str) -> dict[str, Source]:
    """Videos under `path` by name: a video file, a frame folder, or a folder of those."""
    path = Path(path)
    if not path.exists():
        raise EvalInputError(f"The {side} path {path} does not exist.")
    if path.is_file():
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            raise EvalInputError(f"{path} is not a video ({', '.join(VIDEO_SUFFIXES)}) or a folder of frames.")
        return {path.stem: Source(path.stem, path)}
    frames = _frame_folder(path)
    children = sorted((p for p in path.iterdir() if not p.name.startswith(".")), key=_natural_key)
    videos = [p for p in children if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES]
    folders = [(p, _frame_folder(p)) for p in children if p.is_dir() and p.name != "images"]
    folders = [(p, f) for p, f in folders if f is not None]
    if frames is not None and not videos and not folders:
        return {path.name: Source(path.name, frames)}
    sources: dict[str, Source] = {}
    for video in videos:
        sources[video.stem] = Source(video.stem, video)
    for folder, frame_folder in folders:
        if folder.name in sources:
            raise EvalInputError(
                f"{path} holds both {sources[folder.name].path.name} and a frame folder {folder.name}/: "
                "keep one of them so each video has one source."
            )
        sources[folder.name] = Source(folder.name, frame_folder)
    if not sources:
        raise EvalInputError(
            f"No videos or frame folders found in the {side} folder {path}: expected video files "
            f"({', '.join(VIDEO_SUFFIXES)}), folders of frames ({', '.join(IMAGE_SUFFIXES)}), or frames directly."
        )
    return sources


def _match_key(name: str):
    return int(name) if name.isdigit() else name


def pair_sources(pred: str | Path, gt: str | Path) -> list[tuple[str, Source, Source]]:
    """[(name, prediction, ground truth)], every video on both sides, in name order."""
    pred_sources, gt_sources = find_sources(pred, "prediction"), find_sources(gt, "ground-truth")
    if len(pred_sources) == 1 and len(gt_sources) == 1:
        (name, p), (_, g) = next(iter(pred_sources.items())), next(iter(gt_sources.items()))
        return [(name, p, g)]  # one video each side: pair them whatever their names
    pred_keys = {_match_key(name): source for name, source in pred_sources.items()}
    gt_keys = {_match_key(name): source for name, source in gt_sources.items()}
    only_pred = sorted(str(pred_keys[k].name) for k in pred_keys.keys() - gt_keys.keys())
    only_gt = sorted(str(gt_keys[k].name) for k in gt_keys.keys() - pred_keys.keys())
    if only_pred or only_gt:
        parts = []
        if only_gt:
            parts.append(f"no prediction in {pred} for {', '.join(only_gt)}")
        if only_pred:
            parts.append(f"no ground truth in {gt} for {', '.join(only_pred)}")
        raise EvalInputError(
            "Predictions and ground truth do not pair up: "
            + "; ".join(parts)
            + ". Each prediction must have the name of its ground-truth video (e.g. pred/00335.mp4 and gt/00335/)."
        )
    keys = sorted(gt_keys, key=lambda k: (isinstance(k, str), k))
    return [(gt_keys[k].name, pred_keys[k], gt_keys[k]) for k in keys]


def check_pairs(pairs: list[tuple[str, Source, Source]], protocol: EvalProtocol, metrics) -> None:
    """Refuses mismatched sizes, counts and too-short videos before any network runs."""
    for _name, pred, gt in pairs:
        pred_count, pred_size = pred.probe()
        gt_count, gt_size = gt.probe()
        if pred_size != gt_size:
            raise EvalInputError(
                f"{pred.path} is {pred_size[1]}x{pred_size[0]} but {gt.path} is {gt_size[1]}x{gt_size[0]}: "
                "both must show the same framing at the same size (crop/resize the ground truth the way the "
                "prediction was made, e.g. the reference's cover-crop to the generation size)."
            )
        if pred_count != gt_count and not protocol.trim:
            raise EvalInputError(
                f"{pred.path} has {pred_count} frames but {gt.path} has {gt_count}: pass --trim to compare the "
                f"first {min(pred_count, gt_count)}, or cut the longer one."
            )
        _check_length(min(pred_count, gt_count), protocol, metrics, f"{pred.path} / {gt.path}")


def _check_length(count: int, protocol: EvalProtocol, metrics, label: str) -> None:
    usable = count - (1 if protocol.skip_first_frame else 0)
    if usable < 1:
        raise EvalInputError(f"{label}: {count} frame(s), none left once the reference frame 0 is dropped.")
    if any(m in VIDEO_METRICS for m in metrics) and usable < protocol.clip_length:
        raise EvalInputError(
            f"{label}: {usable} frames to compare{' after dropping frame 0' if protocol.skip_first_frame else ''}, "
            f"fewer than one {protocol.clip_length}-frame clip for FID-VID/FVD. Use longer videos, or "
            f"--metrics frame (no video metrics), or a shorter --clip-length (not comparable to published numbers)."
        )


# ---------------------------------------------------------------------------------------
# Networks


@dataclass
class EvalModels:
    """The networks a run needs; tests inject random or tiny ones here."""

    lpips: LpipsMetric | None = None
    fid_vid: VideoBackbone | None = None
    fvd: VideoBackbone | None = None

    @classmethod
    def load(
        cls,
        metrics,
        weights_dir=None,
        device: str = "cpu",
        lpips_scaling: str = "disco",
        local_files_only: bool = False,
    ) -> "EvalModels":
        """Loads (downloading into weights/ unless offline) only what `metrics` need."""
        return cls(
            lpips=LpipsMetric.from_pretrained(weights_dir, device, lpips_scaling, local_files_only)
            if "lpips" in metrics
            else None,
            fid_vid=fid_vid_backbone(weights_dir, device, local_files_only) if "fid-vid" in metrics else None,
            fvd=fvd_backbone(weights_dir, device, local_files_only) if "fvd" in metrics else None,
        )

    @staticmethod
    def download(weights_dir=None) -> dict:
        """Fetches every evaluation weight file into weights/ ahead of time (for a
        `download --eval` command); returns {metric: path}."""
        from .frames import resolve_vgg16
        from .fvd import I3D_WEIGHTS, RESNET3D_WEIGHTS, resolve_weight_file

        return {
            "lpips": resolve_vgg16(weights_dir),
            "fid-vid": resolve_weight_file(RESNET3D_WEIGHTS, weights_dir),
            "fvd": resolve_weight_file(I3D_WEIGHTS, weights_dir),
        }

    def require(self, metrics) -> None:
        missing = [
            m
            for m, have in (("lpips", self.lpips), ("fid-vid", self.fid_vid), ("fvd", self.fvd))
            if m in metrics and have is None
        ]
        if missing:
            raise ValueError(f"No network given for {', '.join(missing)}.")

    def describe(self) -> dict:
        info = {}
        if self.lpips is not None:
            info["lpips"] = {
                "net": "vgg",
                "version": "0.1",
                "scaling": self.lpips.scaling,
                **(self.lpips.weights or {}),
            }
        for backbone in (self.fid_vid, self.fvd):
            if backbone is not None:
                info[backbone.metric] = {
                    "network": type(backbone.network).__name__,
                    "size": backbone.size,
                    "scaling": backbone.scaling,
                    **backbone.weights,
                }
        return info


# ---------------------------------------------------------------------------------------
# Evaluation


@dataclass
class EvalResult:
    metrics: dict  # metric -> value over all frames (frame metrics) or all clips (video metrics)
    per_video: dict  # name -> {"frames": n, "clips": n, metric: mean over its frames}
    counts: dict  # videos, frames, clips
    protocol: EvalProtocol
    models: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)  # caveats on these numbers (e.g. too few clips)

    def to_dict(self) -> dict:
        versions = {}
        for package in ("torch", "torchvision", "numpy", "scipy", "scikit-image", "lpips", "opencv-python-headless"):
            try:
                versions[package] = metadata.version(package)
            except metadata.PackageNotFoundError:
                continue
        return {
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "metrics": self.metrics,
            "per_video": self.per_video,
            "counts": self.counts,
            "protocol": asdict(self.protocol),
            "models": self.models,
            "notes": self.notes,
            "versions": versions,
        }


def evaluate_frames(
    videos: Iterable[tuple[str, np.ndarray, np.ndarray]],
    metrics=ALL_METRICS,
    protocol: EvalProtocol | None = None,
    models: EvalModels | None = None,
    progress: ProgressCallback | None = None,
) -> EvalResult:
    """The core: `videos` yields (name, prediction frames, ground-truth frames), uint8
    (T, H, W, 3) each, one video at a time (only one is held in memory)."""
    protocol = (protocol or EvalProtocol()).check()
    metrics = parse_metrics(metrics)
    models = models or EvalModels()
    models.require(metrics)
    frame_names = [m for m in metrics if m in FRAME_METRICS]
    backbones = {m: getattr(models, m.replace("-", "_")) for m in metrics if m in VIDEO_METRICS}
    values = {m: [] for m in frame_names}
    features = {m: ([], []) for m in backbones}
    per_video, total_frames, total_clips = {}, 0, 0
    for name, pred, gt in videos:
        pred, gt = np.asarray(pred), np.asarray(gt)
        if pred.shape[1:] != gt.shape[1:]:
            raise EvalInputError(f"{name}: prediction frames are {pred.shape[1:]}, ground truth {gt.shape[1:]}.")
        if len(pred) != len(gt):
            if not protocol.trim:
                raise EvalInputError(
                    f"{name}: {len(pred)} predicted frames, {len(gt)} ground-truth frames; use --trim."
                )
            count = min(len(pred), len(gt))
            pred, gt = pred[:count], gt[:count]
        _check_length(len(pred), protocol, metrics, name)
        start = 1 if protocol.skip_first_frame else 0
        pred = prepare_frames(pred[start:], protocol.size, protocol.crop)
        gt = prepare_frames(gt[start:], protocol.size, protocol.crop)
        row = {"frames": int(len(pred))}
        for metric, per_frame in frame_metrics(pred, gt, frame_names, models.lpips).items():
            values[metric].append(per_frame)
            row[metric] = float(per_frame.mean())
        for metric, backbone in backbones.items():
            pred_features = backbone.features(pred, protocol.clip_length, protocol.clip_stride)
            gt_features = backbone.features(gt, protocol.clip_length, protocol.clip_stride)
            features[metric][0].append(pred_features)
            features[metric][1].append(gt_features)
            row["clips"] = int(len(pred_features))
        per_video[name] = row
        total_frames += row["frames"]
        total_clips += row.get("clips", 0)
        if progress is not None:
            progress(f"{name}: {row['frames']} frames" + (f", {row['clips']} clips" if "clips" in row else ""))
    if not per_video:
        raise EvalInputError("Nothing to evaluate: no videos were given.")
    results = {m: float(np.concatenate(values[m]).mean()) for m in frame_names}
    notes = []
    for metric, (pred_features, gt_features) in features.items():
        if total_clips < 2:
            raise EvalInputError(
                f"{metric.upper()} needs at least 2 clips per side to fit a covariance; these videos give "
                f"{total_clips}. Use more or longer videos, or a smaller --clip-stride."
            )
        results[metric] = distance_between(pred_features, gt_features)
        dimension = next(f.shape[1] for f in pred_features if len(f))
        if total_clips <= dimension:
            notes.append(
                f"{metric.upper()}: {total_clips} clips for {dimension}-d features, so the covariances are singular "
                "and the value is only a rough estimate."
            )
    counts = {"videos": len(per_video), "frames": total_frames}
    if backbones:
        counts["clips"] = total_clips
    ordered = {m: results[m] for m in metrics}
    return EvalResult(ordered, per_video, counts, protocol, models.describe(), notes)


def evaluate(
    pred: str | Path,
    gt: str | Path,
    metrics="all",
    protocol: EvalProtocol | None = None,
    models: EvalModels | None = None,
    weights_dir=None,
    device: str | None = None,
    progress: ProgressCallback | None = None,
) -> EvalResult:
    """Evaluates every prediction under `pred` against its namesake under `gt`.

    Inputs are checked (pairing, sizes, frame counts, clip length) before any network is
    loaded; networks not given in `models` are loaded from `weights_dir`."""
    protocol = (protocol or EvalProtocol()).check()
    metrics = parse_metrics(metrics)
    pairs = pair_sources(pred, gt)
    check_pairs(pairs, protocol, metrics)
    if models is None:
        device = device or _default_device()
        models = EvalModels.load(metrics, weights_dir=weights_dir, device=device, lpips_scaling=protocol.lpips_scaling)

    def videos() -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        for name, pred_source, gt_source in pairs:
            yield name, pred_source.load(), gt_source.load()

    return evaluate_frames(videos(), metrics, protocol, models, progress)


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------------------------------
# Output


def _cell(metric: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return dict((key, fmt) for key, _, fmt in COLUMNS)[metric](value)


def markdown_table(
    result: EvalResult, reference_rows: dict | None = None, label: str = "Ours (this run)", reference_note: str = ""
) -> str:
    """Paper-style table: published rows (values as printed, L1 already x1e4), then ours;
    below it the per-video breakdown and the protocol."""
    shown = [c for c in COLUMNS if c[0] in result.metrics or reference_rows]
    lines = ["| Method | " + " | ".join(header for _, header, _ in shown) + " |", "|---|" + "---|" * len(shown)]
    for method, row in (reference_rows or {}).items():
        cells = [
            "-" if row.get(key) is None else (f"{row[key]:.2f}" if key == "l1" else _cell(key, row[key]))
            for key, _, _ in shown
        ]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines.append(f"| **{label}** | " + " | ".join(_cell(key, result.metrics.get(key)) for key, _, _ in shown) + " |")
    out = ["\n".join(lines), ""]
    if reference_note:
        out += [reference_note, ""]
    frame_keys = [key for key, _, _ in COLUMNS if key in result.metrics and key in FRAME_METRICS]
    if frame_keys:
        headers = {key: header for key, header, _ in COLUMNS}
        rows = [
            "| Video | Frames | " + " | ".join(headers[k] for k in frame_keys) + " |",
            "|---|---|" + "---|" * len(frame_keys),
        ]
        for name, row in result.per_video.items():
            rows.append(f"| {name} | {row['frames']} | " + " | ".join(_cell(k, row.get(k)) for k in frame_keys) + " |")
        out += ["Per video (frame metrics):", "", "\n".join(rows), ""]
    out.append(protocol_text(result))
    return "\n".join(out) + "\n"


def protocol_text(result: EvalResult) -> str:
    p = result.protocol
    counts = result.counts
    text = (
        f"Protocol: {counts['videos']} video(s), {counts['frames']} frame pairs"
        + (f", {counts['clips']} clips of {p.clip_length} frames (stride {p.clip_stride})" if "clips" in counts else "")
        + f"; frames {'centre-cropped to a square and ' if p.crop == 'center' else ''}resized to {p.size}x{p.size} RGB; "
        + ("frame 0 (the reference) excluded" if p.skip_first_frame else "frame 0 included")
        + f"; LPIPS inputs {'[0, 1] as DisCo' if p.lpips_scaling == 'disco' else '[-1, 1]'}."
        + " PSNR is DisCo's uint8 (overflowing) formula, PSNR* the float one."
    )
    weights = [
        f"{name}: {info.get('file') or info.get('trunk')} (sha256 {info.get('sha256') or info.get('trunk_sha256') or 'n/a'})"
        for name, info in result.models.items()
    ]
    if weights:
        text += " Weights: " + "; ".join(weights) + "."
    for note in result.notes:
        text += f"\n\nNote: {note}"
    return text


def write_outputs(
    result: EvalResult,
    table_path=None,
    json_path=None,
    reference_rows=None,
    label="Ours (this run)",
    reference_note: str = "",
) -> None:
    if table_path is not None:
        Path(table_path).parent.mkdir(parents=True, exist_ok=True)
        Path(table_path).write_text(markdown_table(result, reference_rows, label, reference_note))
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(result.to_dict(), indent=2))
