"""The TikTok benchmark as the paper runs it: test videos 335-340, our pose stage, our
pipeline, the DisCo metrics, and the paper's Table 2 beside our row.

    from dynamictrl.eval.tiktok import run_tiktok
    result = run_tiktok(Studio(), "TikTok_dataset", "runs/tiktok")   # writes runs/tiktok/table.md

Per test video (the split of DisCo, followed by the paper: train 1-334, test 335-340):
frame 0 is the reference image (DisCo: "we only use the 1st frame of each TikTok video
as the reference image"); frames 1..T-1 are the driving video, whose DWPose poses (not
retargeted: it is the same person) make pose frames 1..T-1 after the reference's own pose,
so generated frame k is compared with ground-truth frame k. The ground truth gets the
reference's cover-crop to the generation size, then both go through the protocol
(centre square, 256x256, frame 0 excluded).
"""

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from .core import (
    EvalInputError,
    EvalModels,
    EvalProtocol,
    EvalResult,
    Source,
    evaluate_frames,
    find_sources,
    parse_metrics,
    write_outputs,
)
from .frames import prepare_frames

TIKTOK_TEST_VIDEOS = tuple(range(335, 341))
TIKTOK_FPS = 30.0  # the dataset's frame rate; every frame is used, none resampled

PAPER_SOURCE = (
    "Published rows: DynamiCtrl paper, Table 2, the TikTok value of each 'TikTok / Unseen100' pair "
    "(they quote the other methods' own papers; '-' = not reported)."
)
# metric -> value as printed in the paper (L1 in units of 1e-4); None where the paper has "-".
PAPER_TIKTOK = {
    "MagicAnimate": {
        "l1": 3.13,
        "ssim": 0.714,
        "psnr": 29.16,
        "psnr*": None,
        "lpips": 0.239,
        "fid-vid": 21.75,
        "fvd": 179.07,
    },
    "Animate Anyone": {
        "l1": None,
        "ssim": 0.718,
        "psnr": 29.56,
        "psnr*": None,
        "lpips": 0.285,
        "fid-vid": None,
        "fvd": 171.90,
    },
    "Champ": {"l1": 2.94, "ssim": 0.802, "psnr": 29.91, "psnr*": None, "lpips": 0.231, "fid-vid": 21.07, "fvd": 160.82},
    "UniAnimate": {
        "l1": 2.66,
        "ssim": 0.811,
        "psnr": 30.77,
        "psnr*": 20.58,
        "lpips": 0.231,
        "fid-vid": None,
        "fvd": 148.06,
    },
    "MimicMotion": {
        "l1": 5.85,
        "ssim": 0.601,
        "psnr": None,
        "psnr*": 14.44,
        "lpips": 0.414,
        "fid-vid": None,
        "fvd": 232.95,
    },
    "ControlNext": {
        "l1": 6.20,
        "ssim": 0.615,
        "psnr": None,
        "psnr*": 13.83,
        "lpips": 0.416,
        "fid-vid": None,
        "fvd": 326.57,
    },
    "StableAnimator": {
        "l1": 2.87,
        "ssim": 0.801,
        "psnr": 30.81,
        "psnr*": 20.66,
        "lpips": 0.232,
        "fid-vid": None,
        "fvd": 140.62,
    },
    "Animate-X": {
        "l1": 2.70,
        "ssim": 0.806,
        "psnr": 30.78,
        "psnr*": 20.77,
        "lpips": 0.232,
        "fid-vid": None,
        "fvd": 139.01,
    },
    "Baseline-2B": {
        "l1": 7.22,
        "ssim": 0.756,
        "psnr": 28.43,
        "psnr*": 18.60,
        "lpips": 0.223,
        "fid-vid": 18.99,
        "fvd": 176.47,
    },
    "DynamiCtrl-2B": {
        "l1": 5.57,
        "ssim": 0.773,
        "psnr": 29.91,
        "psnr*": 19.30,
        "lpips": 0.201,
        "fid-vid": 17.90,
        "fvd": 172.31,
    },
    "Baseline-5B": {
        "l1": 4.41,
        "ssim": 0.745,
        "psnr": 29.31,
        "psnr*": 19.54,
        "lpips": 0.192,
        "fid-vid": 14.73,
        "fvd": 163.45,
    },
    "DynamiCtrl-5B (paper)": {
        "l1": 2.34,
        "ssim": 0.766,
        "psnr": 30.22,
        "psnr*": 20.41,
        "lpips": 0.166,
        "fid-vid": 13.77,
        "fvd": 152.31,
    },
}


@dataclass
class TikTokSettings:
    videos: tuple[int, ...] = TIKTOK_TEST_VIDEOS
    max_frames: int | None = None  # None: each whole video (its longest 4k+1 prefix)
    fps: float = TIKTOK_FPS
    resume: bool = True  # keep a video's frames from an earlier run with the same settings


@dataclass
class TikTokResult:
    result: EvalResult
    table_path: Path
    json_path: Path
    generated: list = field(default_factory=list)  # video ids generated in this run (the rest resumed)


def find_tiktok_videos(dataset_dir: str | Path, ids=TIKTOK_TEST_VIDEOS) -> dict[int, Source]:
    """{video id: source} for the test ids in a TikTok dataset folder (`00335/images/*.png`
    as released, `00335/*.png`, or `00335.mp4`; any zero padding)."""
    sources = find_sources(dataset_dir, "TikTok dataset")
    by_id = {int(name): source for name, source in sources.items() if name.isdigit()}
    found = {video_id: by_id[video_id] for video_id in ids if video_id in by_id}
    missing = [video_id for video_id in ids if video_id not in by_id]
    if missing:
        raise EvalInputError(
            f"{dataset_dir} lacks TikTok test video(s) {', '.join(f'{i:05d}' for i in missing)} (expected folders such "
            "as 00335/images/0001.png or files such as 00335.mp4). Point at the dataset root, or name the ones "
            "present with --tiktok-videos (a subset is not comparable to the paper)."
        )
    return found


def _four_k_plus_one(count: int) -> int:
    return (count - 1) // 4 * 4 + 1


def _save_frames(folder: Path, frames: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.png"):
        stale.unlink()
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{index:04d}.png")


def _frame_count(folder: Path) -> int:
    return len(list(folder.glob("*.png"))) if folder.is_dir() else 0


def _load_frames(folder: Path) -> np.ndarray:
    frames = []
    for path in sorted(folder.glob("*.png")):
        with Image.open(path) as image:
            frames.append(np.asarray(image.convert("RGB")))
    return np.stack(frames)


def run_tiktok(
    studio,
    dataset_dir: str | Path,
    out_dir: str | Path,
    generate_settings=None,
    settings: TikTokSettings | None = None,
    protocol: EvalProtocol | None = None,
    metrics="all",
    models: EvalModels | None = None,
    progress: Callable[[str], None] | None = None,
) -> TikTokResult:
    """Generates every test video with `studio` and evaluates it; writes `table.md`,
    `results.json`, the generated mp4s (`pred/`) and the compared frames at protocol size
    (`frames/pred/<id>/`, `frames/gt/<id>/`; `evaluate --pred frames/pred --gt frames/gt`
    reproduces the numbers). `generate_settings` is a `GenerateSettings` template: its
    frame count and fps are set per video; an empty prompt means the auto caption."""
    from ..pose.sequence import cover_crop
    from ..studio import GenerateSettings, PoseSettings
    from ..video import write_video

    settings = settings or TikTokSettings()
    protocol = (protocol or EvalProtocol()).check()
    metrics = parse_metrics(metrics)
    template = generate_settings or GenerateSettings(prompt="")
    say = progress or (lambda message: None)
    sources = find_tiktok_videos(dataset_dir, settings.videos)
    out_dir = Path(out_dir)

    # Frame counts first, so a too-short video fails before hours of generation.
    plan = {}
    for video_id, source in sources.items():
        available, _ = source.probe()
        count = available if settings.max_frames is None else min(available, settings.max_frames)
        frames = _four_k_plus_one(count)
        if frames < 5:
            raise EvalInputError(f"{source.path} has {available} frame(s); a TikTok run needs at least 5 per video.")
        plan[video_id] = frames
        if any(m in ("fid-vid", "fvd") for m in metrics) and frames - 1 < protocol.clip_length:
            raise EvalInputError(
                f"{source.path}: {frames - 1} frames to compare after the reference, fewer than one "
                f"{protocol.clip_length}-frame clip. Raise --frames, or drop FID-VID/FVD with --metrics frame."
            )
    if models is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        models = EvalModels.load(
            metrics, weights_dir=studio.weights_dir, device=device, lpips_scaling=protocol.lpips_scaling
        )
    models.require(metrics)

    generated, names = [], []
    for video_id, source in sources.items():
        name = f"{video_id:05d}"
        num_frames = plan[video_id]
        video_settings = replace(template, num_frames=num_frames, fps=settings.fps)
        work = out_dir / "work" / name
        pred_path = out_dir / "pred" / f"{name}.mp4"
        pred_frames_dir, gt_frames_dir = out_dir / "frames" / "pred" / name, out_dir / "frames" / "gt" / name
        stamp_path = work / "settings.json"
        # JSON round trip so tuples compare equal to the lists read back.
        stamp = json.loads(
            json.dumps({"generate": asdict(video_settings), "size": protocol.size, "crop": protocol.crop})
        )
        if settings.resume and stamp_path.is_file() and json.loads(stamp_path.read_text()) == stamp:
            if _frame_count(pred_frames_dir) == _frame_count(gt_frames_dir) == num_frames:
                say(f"{name}: kept from an earlier run ({num_frames} frames)")
                names.append(name)
                continue
        frames = source.load(max_frames=num_frames)
        work.mkdir(parents=True, exist_ok=True)
        reference_path = work / "reference.png"
        Image.fromarray(frames[0]).save(reference_path)
        # Frames 1.. drive the poses, so pose frame k (k >= 1) is ground-truth frame k.
        driving_path = write_video(work / "driving.mp4", frames[1:num_frames], fps=settings.fps)
        say(f"{name}: generating {num_frames} frames at {video_settings.width}x{video_settings.height}")
        result = studio.generate(
            reference_path,
            pred_path,
            video_settings,
            driving_video_path=driving_path,
            pose_settings=PoseSettings(retarget="none", fps=settings.fps),
            return_frames=True,  # the metrics compare the frames themselves, not the mp4
        )
        gt = np.stack([cover_crop(frame, video_settings.width, video_settings.height) for frame in frames[:num_frames]])
        pred = result.frames
        if pred.shape != gt.shape:
            raise EvalInputError(f"{name}: generated {pred.shape}, ground truth {gt.shape}; they must match.")
        # Stored at protocol size, losslessly: what the metrics compare, small enough to keep.
        pred = prepare_frames(pred, protocol.size, protocol.crop)
        gt = prepare_frames(gt, protocol.size, protocol.crop)
        _save_frames(pred_frames_dir, pred)
        _save_frames(gt_frames_dir, gt)
        stamp_path.write_text(json.dumps(stamp, indent=2))
        generated.append(video_id)
        names.append(name)

    def videos():
        # Read back from the saved PNGs: one video in memory at a time, and exactly the
        # frames that `evaluate --pred frames/pred --gt frames/gt` would see.
        for name in names:
            yield name, _load_frames(out_dir / "frames" / "pred" / name), _load_frames(out_dir / "frames" / "gt" / name)

    say("evaluating")
    result = evaluate_frames(videos(), metrics, protocol, models, progress)
    table_path, json_path = out_dir / "table.md", out_dir / "results.json"
    complete = set(sources) == set(TIKTOK_TEST_VIDEOS)
    note = PAPER_SOURCE + (
        ""
        if complete
        else f" This run covers only video(s) {', '.join(str(i) for i in sorted(sources))}: "
        "not comparable to the published rows."
    )
    write_outputs(result, table_path, json_path, reference_rows=PAPER_TIKTOK, reference_note=note)
    summary = json.loads(json_path.read_text())
    summary["tiktok"] = {
        "videos": sorted(sources),
        "complete_test_split": complete,
        "frames_per_video": {f"{i:05d}": plan[i] for i in sorted(plan)},
        "generate_settings": asdict(template),
        "paper_rows": PAPER_TIKTOK,
        "paper_source": PAPER_SOURCE,
    }
    json_path.write_text(json.dumps(summary, indent=2))
    return TikTokResult(result, table_path, json_path, generated)
