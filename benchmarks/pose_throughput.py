"""Pose-extraction throughput on the CPU, per stage: decode, detect, pose, render.

    python benchmarks/pose_throughput.py [--seconds 10] [--detect-every 4] [--batch-size 8] [--threads N]

A synthetic clip (default 10 s of 1280x720 at 16 fps, made with numpy) is encoded to
H.264 and decoded back with `dynamictrl.video`, then pose-extracted three ways:

1. plain per-frame loop, one pose-model call per person crop (what the official code does);
2. `detect_video(batch_size=B)`: person crops of several frames in one pose-model call;
3. `detect_video(detect_every=N, batch_size=B)`: the detector only on every N-th frame.

Uses the real DWPose ONNX files if `weights/DWPose/` holds them, else the tiny test
models of `tests/tiny_onnx.py` (then the numbers measure our pre/post-processing and
onnxruntime overhead, not the networks). The synthetic frames contain no real person:
with the real models, pass `--video some_dance.mp4` to measure the pose stage too.
It prints numbers; it is not a test.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dynamictrl import weights  # noqa: E402
from dynamictrl.pose.detector import DWPoseDetector  # noqa: E402


def synthetic_clip(count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Moving colour gradients plus a little noise; the top-left 16x16 block is pure red,
    which makes the tiny test detector report its two people (the real one ignores it)."""
    rng = np.random.default_rng(seed)
    ys = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    xs = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    frames = np.empty((count, height, width, 3), dtype=np.uint8)
    noise = rng.integers(0, 24, (height, width, 3), dtype=np.uint8)
    for t in range(count):
        phase = t / max(count, 1)
        frames[t, ..., 0] = (127 + 120 * np.sin(6.28 * (xs + phase))) * np.ones_like(ys)
        frames[t, ..., 1] = (127 + 120 * np.cos(6.28 * (ys - phase))) * np.ones_like(xs)
        frames[t, ..., 2] = 255 * (xs * ys)
        frames[t] += noise
        frames[t, :16, :16] = (255, 0, 0)
    return frames


def load_detector(args, tmp: Path) -> tuple[DWPoseDetector, str]:
    folder = weights.local_dir_for(weights.DWPOSE_REPO, args.weights_dir)
    if all((folder / name).is_file() for name in weights.DWPOSE_FILES):
        detector = DWPoseDetector.from_pretrained(args.weights_dir, local_files_only=True, num_threads=args.threads)
        return detector, f"REAL DWPose ONNX files from {folder}"
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_onnx import save_tiny_dwpose

    tiny = save_tiny_dwpose(tmp / "DWPose")
    detector = DWPoseDetector(tiny / "yolox_l.onnx", tiny / "dw-ll_ucoco_384.onnx", num_threads=args.threads)
    return detector, (
        f"TINY test ONNX models (no real files in {folder}): the numbers measure pre/post-processing "
        "and onnxruntime overhead, not the YOLOX-L / RTMPose networks"
    )


def find_renderer():
    try:
        from dynamictrl.pose.render import draw_pose
    except ImportError as error:
        return None, f"skipped: dynamictrl.pose.render is not available ({error})"
    return draw_pose, None


def render_all(draw_pose, poses, height, width):
    from dynamictrl.pose.types import pose_to_dict

    for pose in poses:
        try:
            draw_pose(pose, height, width)
        except (TypeError, AttributeError, KeyError):  # a renderer that takes the official dict
            draw_pose(pose_to_dict(pose), height, width)


def timed_mode(detector: DWPoseDetector, name: str, run) -> dict:
    detector.stats.reset()
    start = time.perf_counter()
    poses = run()
    wall = time.perf_counter() - start
    s = detector.stats
    return dict(
        name=name,
        wall=wall,
        detect=s.detect_seconds,
        pose=s.pose_seconds,
        detector_runs=s.detector_runs,
        pose_runs=s.pose_runs,
        crops=s.crops,
        poses=poses,
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the synthetic clip")
    parser.add_argument("--fps", type=float, default=16.0)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--detect-every", type=int, default=4, help="N for the detect-every-N mode")
    parser.add_argument("--batch-size", type=int, default=8, help="person crops per pose-model call")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: all)")
    parser.add_argument("--weights-dir", default=None, help="folder holding DWPose/ (default: weights/)")
    parser.add_argument("--video", default=None, help="use this clip instead of the synthetic one")
    args = parser.parse_args(argv)

    from dynamictrl.video import read_video, write_video

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.video:
            clip = Path(args.video)
            source = f"{clip} (given)"
        else:
            count = max(1, round(args.seconds * args.fps))
            frames = synthetic_clip(count, args.height, args.width)
            clip = write_video(tmp / "synthetic.mp4", frames, fps=args.fps)
            source = f"synthetic {count} frames {args.width}x{args.height} @ {args.fps:g} fps (H.264)"
            del frames

        start = time.perf_counter()
        video = read_video(clip)
        decode = time.perf_counter() - start
        frames = list(video.frames)
        n = len(frames)
        height, width = video.size

        detector, models = load_detector(args, tmp)
        threads = args.threads or "default"
        print(f"clip     : {source}")
        print(f"models   : {models}")
        print(f"providers: {', '.join(detector.providers)}; threads: {threads}; pose batch "
              f"{'dynamic' if detector.pose_batch is None else f'fixed at {detector.pose_batch}'}")

        detector(frames[0])  # warm-up (session initialisation, first-call allocations)
        every = max(1, args.detect_every)
        batch = max(1, args.batch_size)
        modes = [
            timed_mode(detector, "per-frame loop, 1 crop/call",
                       lambda: [detector.detect_video([f], batch_size=1)[0] for f in frames]),
            timed_mode(detector, f"batched crops (B={batch})", lambda: detector.detect_video(frames, batch_size=batch)),
            timed_mode(detector, f"batched + detect every {every}",
                       lambda: detector.detect_video(frames, detect_every=every, batch_size=batch)),
        ]
        people = sum(len(p.people) for p in modes[0]["poses"]) / n

        draw_pose, skipped = find_renderer()
        if draw_pose is not None:
            start = time.perf_counter()
            render_all(draw_pose, modes[0]["poses"], height, width)
            render = time.perf_counter() - start
        else:
            render = None

    print(f"frames   : {n} ({people:.2f} people/frame found)")
    print()
    print(f"decode   : {decode:8.2f} s  {n / decode:8.1f} frames/s  (dynamictrl.video.read_video)")
    if render is None:
        print(f"render   : {skipped}")
    else:
        print(f"render   : {render:8.2f} s  {n / render:8.1f} frames/s  (dynamictrl.pose.render.draw_pose)")
    print()
    header = f"{'mode':34s} {'frames/s':>9s} {'ms/frame':>9s} {'detect ms':>10s} {'pose ms':>8s} {'det runs':>9s} {'pose calls':>11s} {'speedup':>8s}"
    print(header)
    print("-" * len(header))
    base = modes[0]["wall"]
    for m in modes:
        print(
            f"{m['name']:34s} {n / m['wall']:9.1f} {1000 * m['wall'] / n:9.2f} {1000 * m['detect'] / n:10.2f} "
            f"{1000 * m['pose'] / n:8.2f} {m['detector_runs']:9d} {m['pose_runs']:11d} {base / m['wall']:7.2f}x"
        )
    print()
    print("detect ms / pose ms: per frame (letterbox + detector + decode; crops + pose model + decode).")
    if detector.pose_batch == 1:
        print("note: this pose model has a fixed batch of 1, so 'batched crops' still makes one call per crop.")


if __name__ == "__main__":
    main()
