"""Pose-extraction throughput on one CPU core, per stage: decode, detect, pose, render.

    python benchmarks/pose_throughput.py [--seconds 10] [--fps 30] [--bitrate 5M] [--repeats 3]
        [--detect-every 4] [--batch-size 8] [--threads 1] [--cpu N | --no-pin]
        [--pose-frames N] [--video clip.mp4] [--no-results]

The clip (unless `--video` gives one) is synthetic but built to decode like a phone clip
of a dance: 10 s of 1280x720 at 30 fps, two dancers (limbs as thick anti-aliased strokes,
moving every frame) in a room with a textured wall and a wooden floor, a slow camera pan
and mild sensor noise, encoded to H.264 High profile at a phone-like 5 Mbit/s (the
measured bitrate is reported). The dancers' joint positions are known, so their true
poses (body, hands, face) are rendered too: the render workload of real people.

Stages, each in CPU seconds (not wall: other processes sharing the core would count
too) and the best of `--repeats` runs:

- decode: `dynamictrl.video.read_video` (ffmpeg with `-threads T` -> RGB frames; ffmpeg's
  CPU time included), and per pose frame with `pick_frames` at the studio's 16 fps, which
  still decodes every source frame;
- detect / pose: `DWPoseDetector.detect_video`, split into the ONNX model calls
  (`session.run`, timed by wrapping the sessions) and everything around them
  (letterbox, box decode + NMS; crops, SimCC decode, OpenPose conversion; the loop);
- render: `dynamictrl.pose.render.draw_pose` at the clip size (and at the studio's
  default pose-video size 768x1360).

"One core": the process (and the ffmpeg it starts) is pinned to one CPU (`--cpu`,
default the first allowed; `--no-pin` to leave it free) and every library runs T
threads (`--threads`, default 1): ffmpeg's decoder, OpenCV, onnxruntime's intra-op pool
and torch. The target of the pose-stage issue is the non-model stages (decode, pre- and
post-processing, render) under 15 ms per frame at 720p on one core.

Detection runs three ways: a plain per-frame loop (one pose-model call per person
crop, as the official code does), `detect_video(batch_size=B)` (the product default,
used for the stage table), and `detect_video(detect_every=N, batch_size=B)`.

Uses the real DWPose ONNX files if `weights/DWPose/` holds them, else the tiny test
models of `dynamictrl/testing/onnx.py` (then the model rows measure onnxruntime on stand-ins,
not YOLOX-L / RTMPose, and the 'detected' poses are fixed stand-ins: two people whose
keypoints are spread over their boxes). With the real models the pose stage runs on the
first `--pose-frames` frames only (default 32: the real networks are slow on one core).
Appends a section to `benchmarks/RESULTS.md` unless `--no-results`. Not a test.
"""

import argparse
import math
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import MIB, PeakMemory, append_results, environment, markdown_table, print_environment, text_table

from dynamictrl import weights
from dynamictrl.pose.detector import DWPoseDetector
from dynamictrl.pose.types import NUM_FACE, NUM_HAND, FramePose, PersonPose

ROOT = Path(__file__).resolve().parent.parent
TARGET_MS = 15.0  # non-model stages per 720p frame on one core (pose-stage issue)
STUDIO_POSE_SIZE = (1360, 768)  # (height, width): PoseSettings' default pose-video size
STUDIO_FPS = 16.0  # PoseSettings' default: driving frames are picked at this rate


# ------------------------------------------------------------------ synthetic clip
def _limb(start, length, angle):
    return start[0] + length * math.sin(angle), start[1] + length * math.cos(angle)


def _dancer(t: float, height: int, width: int, x: float, phase: float) -> dict:
    """Joint positions (pixels) of one dancer at time t: OpenPose-18 body, plus the hand
    and head centres used for the hand and face points."""
    h = height * 0.78
    cx = width * x + 0.05 * width * math.sin(t * 1.1 + phase)
    hip = (cx, height * 0.92 - 0.47 * h + 0.01 * h * math.sin(t * 6 + phase))
    neck = (hip[0] + 0.013 * h * math.sin(t * 3), hip[1] - 0.32 * h)
    head = (neck[0], neck[1] - 0.09 * h)
    a = t * 4 + phase
    shoulders = [(neck[0] - 0.09 * h, neck[1] + 0.01 * h), (neck[0] + 0.09 * h, neck[1] + 0.01 * h)]
    hips = [(hip[0] - 0.06 * h, hip[1]), (hip[0] + 0.06 * h, hip[1])]
    r_elbow = _limb(shoulders[0], 0.16 * h, -2.2 - 0.8 * math.sin(a + 0.5))
    r_wrist = _limb(r_elbow, 0.14 * h, -2.6 - 1.2 * math.sin(a + 2))
    l_elbow = _limb(shoulders[1], 0.16 * h, 2.2 + 0.8 * math.sin(a))
    l_wrist = _limb(l_elbow, 0.14 * h, 2.6 + 1.2 * math.sin(a + 1))
    r_knee = _limb(hips[0], 0.24 * h, -0.25 + 0.3 * math.sin(a + 3))
    r_ankle = _limb(r_knee, 0.23 * h, -0.05 + 0.3 * math.sin(a + 3.7))
    l_knee = _limb(hips[1], 0.24 * h, 0.25 + 0.3 * math.sin(a))
    l_ankle = _limb(l_knee, 0.23 * h, 0.05 + 0.3 * math.sin(a + 0.7))
    e, y = 0.018 * h, head[1] - 0.01 * h
    body = [head, neck, shoulders[0], r_elbow, r_wrist, shoulders[1], l_elbow, l_wrist, hips[0], r_knee, r_ankle,
            hips[1], l_knee, l_ankle, (head[0] - e, y), (head[0] + e, y), (head[0] - 2.2 * e, y), (head[0] + 2.2 * e, y)]  # fmt: skip
    return dict(body=body, head=head, size=h, hands=(l_wrist, r_wrist), elbows=(l_elbow, r_elbow))


def _true_pose(dancers: list[dict], height: int, width: int) -> FramePose:
    """The dancers' poses as the detector would report them (normalised, scores ~0.9)."""
    size = np.array([width, height], dtype=np.float64)
    people = []
    for d in dancers:
        h = d["size"]
        angles = np.linspace(0, 2 * math.pi, NUM_FACE, endpoint=False)
        face = np.stack([d["head"][0] + 0.04 * h * np.cos(angles), d["head"][1] + 0.05 * h * np.sin(angles)], 1)
        hands = []
        for wrist, elbow in zip(d["hands"], d["elbows"]):
            direction = math.atan2(wrist[1] - elbow[1], wrist[0] - elbow[0])
            fan = direction + np.repeat(np.linspace(-0.8, 0.8, 5), 4)
            reach = np.tile(np.arange(1, 5), 5) * 0.012 * h
            fingers = np.stack([wrist[0] + reach * np.cos(fan), wrist[1] + reach * np.sin(fan)], 1)
            hands.append(np.concatenate([[wrist], fingers]))
        people.append(
            PersonPose(
                body=np.asarray(d["body"]) / size,
                body_scores=np.full(18, 0.9),
                face=face / size,
                face_scores=np.full(NUM_FACE, 0.8),
                left_hand=hands[0] / size,
                left_hand_scores=np.full(NUM_HAND, 0.7),
                right_hand=hands[1] / size,
                right_hand_scores=np.full(NUM_HAND, 0.7),
            )
        )
    return FramePose(people, height=height, width=width)


def synthetic_dance(count: int, height: int, width: int, fps: float, seed: int = 0):
    """`count` RGB frames of two dancers in a room (see the module docstring) and their
    true poses. Yields (frame, FramePose)."""
    import cv2

    rng = np.random.default_rng(seed)
    pan_x, pan_y = max(16, width // 5), max(8, height // 11)
    bh, bw = height + 2 * pan_y, width + 2 * pan_x
    ys, xs = np.mgrid[0:bh, 0:bw].astype(np.float32)
    wall = np.stack([150 + 30 * np.sin(xs / 180), 140 + 25 * np.cos(ys / 150), 120 + 20 * np.sin((xs + ys) / 260)], -1)
    wall += cv2.GaussianBlur(rng.normal(0, 18, (bh, bw)).astype(np.float32), (0, 0), 1.5)[..., None]  # plaster
    floor = int(bh * 0.72)
    grain = 12 * np.sin(xs / 7 + 3 * np.sin(ys / 40))
    wall[floor:] = np.stack([110 + grain, 80 + grain * 0.8, 55 + grain * 0.6], -1)[floor:]  # wooden floor
    background = np.clip(wall, 0, 255).astype(np.uint8)
    for _ in range(5):  # posters, furniture
        x0, y0 = int(rng.integers(0, bw - bw // 6)), int(rng.integers(0, max(1, floor - bh // 4)))
        x1, y1 = x0 + int(rng.integers(bw // 16, bw // 6)), y0 + int(rng.integers(bh // 9, bh // 4))
        cv2.rectangle(background, (x0, y0), (x1, y1), tuple(int(v) for v in rng.integers(30, 230, 3)), -1, cv2.LINE_AA)
    looks = [dict(x=0.36, phase=0.0, top=(200, 40, 60), legs=(30, 40, 90)),
             dict(x=0.66, phase=1.3, top=(40, 150, 200), legs=(60, 50, 40))]  # fmt: skip
    skin, hair = (205, 160, 130), (40, 25, 20)

    def p(q):  # 4 fractional bits, for smooth sub-pixel motion
        return int(q[0] * 16), int(q[1] * 16)

    for index in range(count):
        t = index / fps
        ox = int(pan_x + (pan_x - 2) * math.sin(t * 0.4))
        oy = int(pan_y + (pan_y - 2) * math.sin(t * 0.3))
        frame = background[oy : oy + height, ox : ox + width].copy()
        dancers = [_dancer(t, height, width, look["x"], look["phase"]) for look in looks]
        for d, look in zip(dancers, looks):
            b, s = d["body"], d["size"]
            w = lambda f, s=s: max(1, int(f * s))  # noqa: E731
            for a_, b_, f in [(8, 9, 0.044), (9, 10, 0.036), (11, 12, 0.044), (12, 13, 0.036)]:
                cv2.line(frame, p(b[a_]), p(b[b_]), look["legs"], w(f), cv2.LINE_AA, 4)
            middle_hip = ((b[8][0] + b[11][0]) / 2, b[8][1])
            cv2.line(frame, p(b[1]), p(middle_hip), look["top"], w(0.17), cv2.LINE_AA, 4)
            for a_, b_, f in [(2, 3, 0.03), (3, 4, 0.024), (5, 6, 0.03), (6, 7, 0.024)]:
                cv2.line(frame, p(b[a_]), p(b[b_]), skin, w(f), cv2.LINE_AA, 4)
            cv2.circle(frame, p(d["head"]), int(0.055 * s * 16), skin, -1, cv2.LINE_AA, 4)
            cv2.circle(frame, p((d["head"][0], d["head"][1] - 0.03 * s)), int(0.05 * s * 16), hair, -1, cv2.LINE_AA, 4)
        frame = cv2.add(frame, rng.integers(0, 6, frame.shape, dtype=np.uint8))  # sensor noise
        yield frame, _true_pose(dancers, height, width)


def encode_h264(path: Path, frames, size: tuple[int, int], fps: float, bitrate: str) -> Path:
    """H.264 High profile at a fixed average bitrate, as a phone's encoder writes it."""
    import imageio_ffmpeg

    writer = imageio_ffmpeg.write_frames(
        str(path), size, fps=fps, codec="libx264", pix_fmt_out="yuv420p", quality=None, macro_block_size=1,
        output_params=["-b:v", bitrate, "-maxrate", bitrate, "-bufsize", bitrate, "-profile:v", "high", "-preset", "veryfast"],
    )  # fmt: skip
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    return path


# ------------------------------------------------------------------ models
def load_detector(args, tmp: Path) -> tuple[DWPoseDetector, str, bool]:
    folder = weights.local_dir_for(weights.DWPOSE_REPO, args.weights_dir)
    if all((folder / name).is_file() for name in weights.DWPOSE_FILES):
        detector = DWPoseDetector.from_pretrained(
            args.weights_dir, local_files_only=True, device="cpu", num_threads=args.threads
        )
        return detector, f"REAL DWPose ONNX files from {folder}", True
    from dynamictrl.testing.onnx import save_tiny_dwpose

    tiny = save_tiny_dwpose(tmp / "DWPose")
    detector = DWPoseDetector(
        tiny / "yolox_l.onnx", tiny / "dw-ll_ucoco_384.onnx", device="cpu", num_threads=args.threads
    )
    return (
        detector,
        (
            f"TINY test ONNX models (no real files in {folder}): model rows measure onnxruntime on stand-ins, "
            "not YOLOX-L / RTMPose; pre/post-processing, decode and render are the real code"
        ),
        False,
    )


# ------------------------------------------------------------------ timing
# Stages are timed in CPU seconds, not wall seconds: pinned to one core that other
# processes may share, wall time also counts their time slices; CPU time counts the work.
thread_cpu = time.thread_time  # every library runs in the calling thread (one thread each)


def process_cpu() -> float:
    """CPU seconds (user + system) of this process and of its finished (reaped) children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def best_of(repeats: int, run, clock=thread_cpu) -> tuple[float, float, object]:
    """(clock seconds, wall seconds, result) of the run with the fewest clock seconds."""
    best = None
    for _ in range(max(1, repeats)):
        wall, start = time.perf_counter(), clock()
        result = run()
        seconds, wall = clock() - start, time.perf_counter() - wall
        if best is None or seconds < best[0]:
            best = (seconds, wall, result)
    return best


class TimedSession:
    """An onnxruntime session whose `run` calls (the network) are timed in CPU seconds."""

    def __init__(self, session):
        self.session = session
        self.seconds = 0.0

    def run(self, *args, **kwargs):
        start = thread_cpu()
        try:
            return self.session.run(*args, **kwargs)
        finally:
            self.seconds += thread_cpu() - start

    def __getattr__(self, name):
        return getattr(self.session, name)


# The detector module's pre/post-processing functions, which `detect_video` looks up in
# its module at call time, and the stage they belong to.
PRE_POST = {
    "letterbox": "detect",
    "decode_detections": "detect",
    "crop_person": "pose",
    "decode_simcc": "pose",
    "keypoints_to_frame": "pose",
    "wholebody_to_openpose": "pose",
    "frame_pose_from_keypoints": "pose",
}


class PrePostTimer:
    """CPU seconds spent in each function of `PRE_POST` (wrapped in place)."""

    def __init__(self):
        import dynamictrl.pose.detector as module

        self.module, self.originals = module, {}
        self.reset()
        for name in PRE_POST:
            self.originals[name] = function = getattr(module, name)
            setattr(module, name, self._timed(function, name))

    def _timed(self, function, name):
        def timed(*args, **kwargs):
            start = thread_cpu()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[name] += thread_cpu() - start
                self.calls[name] += 1

        return timed

    def reset(self):
        self.seconds, self.calls = dict.fromkeys(PRE_POST, 0.0), dict.fromkeys(PRE_POST, 0)

    def stage(self, stage: str) -> float:
        return sum(seconds for name, seconds in self.seconds.items() if PRE_POST[name] == stage)

    def restore(self):
        for name, function in self.originals.items():
            setattr(self.module, name, function)


def timed_mode(detector: DWPoseDetector, timer: PrePostTimer, name: str, run, repeats: int) -> dict:
    def once():
        detector.stats.reset()
        timer.reset()
        detector._det.seconds = detector._pose.seconds = 0.0
        poses = run()
        s = detector.stats
        return dict(
            det_model=detector._det.seconds, pose_model=detector._pose.seconds, det_pre_post=timer.stage("detect"),
            pose_pre_post=timer.stage("pose"), functions={k: (v, timer.calls[k]) for k, v in timer.seconds.items()},
            detector_runs=s.detector_runs, pose_runs=s.pose_runs, poses=poses,
        )  # fmt: skip

    cpu, wall, result = best_of(repeats, once)
    result["rest"] = cpu - result["det_model"] - result["pose_model"] - result["det_pre_post"] - result["pose_pre_post"]
    return dict(name=name, cpu=cpu, wall=wall, **result)


def pin_to_one_core(cpu: int | None) -> str:
    allowed = sorted(os.sched_getaffinity(0))
    cpu = allowed[0] if cpu is None else cpu
    os.sched_setaffinity(0, {cpu})
    return f"pinned to CPU {cpu} (of {len(allowed)} allowed; ffmpeg inherits it)"


def set_threads(threads: int) -> None:
    import cv2
    import torch

    cv2.setNumThreads(threads)
    torch.set_num_threads(threads)


# ------------------------------------------------------------------ main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the synthetic clip")
    parser.add_argument("--fps", type=float, default=30.0, help="frame rate of the synthetic clip (phones: 30)")
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--bitrate", default="5M", help="H.264 bitrate of the synthetic clip (ffmpeg -b:v)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per stage; the best is kept")
    parser.add_argument("--detect-every", type=int, default=4, help="N for the detect-every-N mode")
    parser.add_argument("--batch-size", type=int, default=8, help="person crops per pose-model call")
    parser.add_argument(
        "--threads", type=int, default=1, help="threads of ffmpeg's decoder, OpenCV, onnxruntime, torch"
    )
    parser.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: the first allowed)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the process to one CPU")
    parser.add_argument("--pose-frames", type=int, default=None,
                        help="frames for the detection modes (default: all with tiny models, 32 with real ones)")  # fmt: skip
    parser.add_argument("--weights-dir", default=None, help="folder holding DWPose/ (default: weights/)")
    parser.add_argument("--video", default=None, help="use this clip instead of the synthetic one")
    parser.add_argument("--no-results", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args(argv)

    from dynamictrl.pose.render import draw_pose
    from dynamictrl.video import pick_frames, read_video

    threads = max(1, args.threads)
    env = environment("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        truth = None
        if args.video:
            clip = Path(args.video)
            source = f"{clip.name} (given)"
        else:
            count = max(1, round(args.seconds * args.fps))
            print(f"making a {count}-frame synthetic clip ...", flush=True)
            truth = []

            def frames_and_truth():
                for frame, pose in synthetic_dance(count, args.height, args.width, args.fps):
                    truth.append(pose)
                    yield frame

            clip = encode_h264(tmp / "dance.mp4", frames_and_truth(), (args.width, args.height), args.fps, args.bitrate)
            mbps = clip.stat().st_size * 8 / (count / args.fps) / 1e6
            source = (
                f"synthetic dance clip, {count} frames {args.width}x{args.height} @ {args.fps:g} fps, H.264 High "
                f"(x264 veryfast, -b:v {args.bitrate}): {mbps:.2f} Mbit/s measured"
            )

        # Everything measured from here on runs on one core with one thread per library.
        pinned = "not pinned" if args.no_pin else pin_to_one_core(args.cpu)
        set_threads(threads)
        env["device"] = f"cpu, {pinned}; {threads} thread(s) each: ffmpeg decoder, OpenCV, onnxruntime, torch"

        def decode_once():
            python, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
            video = read_video(clip, threads=threads)
            python_after, children_after = (
                resource.getrusage(resource.RUSAGE_SELF),
                resource.getrusage(resource.RUSAGE_CHILDREN),
            )
            ffmpeg = children_after.ru_utime + children_after.ru_stime - children.ru_utime - children.ru_stime
            return video, ffmpeg, python_after.ru_utime + python_after.ru_stime - python.ru_utime - python.ru_stime

        with PeakMemory("cpu") as decode_memory:
            frame_bytes = read_video(clip, threads=threads).frames.nbytes
        decode, decode_wall, (video, decode_ffmpeg_cpu, decode_python_cpu) = best_of(
            args.repeats, decode_once, process_cpu
        )
        frames = list(video.frames)
        n = len(frames)
        height, width = video.size
        # What the studio decodes per pose frame: every source frame, keeping those at its fps.
        picked = int((n - 1) * STUDIO_FPS / video.fps + 1e-6) + 1 if video.fps > STUDIO_FPS else n
        pick, _, _ = best_of(
            args.repeats,
            lambda: pick_frames(clip, picked, fps=min(STUDIO_FPS, video.fps), threads=threads),
            process_cpu,
        )

        detector, models, real = load_detector(args, tmp)
        detector._det, detector._pose = TimedSession(detector._det), TimedSession(detector._pose)
        pose_frames = args.pose_frames or (32 if real else n)
        work = frames[: max(1, min(n, pose_frames))]
        m = len(work)
        print_environment(env)
        print(f"clip     : {source}")
        print(f"models   : {models}")
        print(f"providers: {', '.join(detector.providers)}; pose batch "
              f"{'dynamic' if detector.pose_batch is None else f'fixed at {detector.pose_batch}'}", flush=True)  # fmt: skip

        detector(work[0])  # warm-up (session initialisation, first-call allocations)
        every, batch = max(1, args.detect_every), max(1, args.batch_size)
        timer = PrePostTimer()
        try:
            modes = [
                timed_mode(detector, timer, "per-frame loop, 1 crop/call",
                           lambda: [detector.detect_video([f], batch_size=1)[0] for f in work], args.repeats),
                timed_mode(detector, timer, f"batched crops (B={batch}), product default",
                           lambda: detector.detect_video(work, batch_size=batch), args.repeats),
                timed_mode(detector, timer, f"batched + detect every {every}",
                           lambda: detector.detect_video(work, detect_every=every, batch_size=batch), args.repeats),
            ]  # fmt: skip
        finally:
            timer.restore()
        product = modes[1]
        people = sum(len(p.people) for p in product["poses"]) / m

        renders = []
        sizes = [(height, width, "clip size")]
        if (height, width) != STUDIO_POSE_SIZE:
            sizes.append((*STUDIO_POSE_SIZE, "studio pose-video size"))
        for what, poses in ([("true poses of the dancers", truth[:n])] if truth else []) + [
            ("detector's poses" + ("" if real else " (tiny stand-ins)"), product["poses"])
        ]:
            for h, w, label in sizes:
                cpu, wall, _ = best_of(
                    args.repeats, lambda h=h, w=w, poses=poses: [draw_pose(pose, h, w) for pose in poses]
                )
                renders.append((f"{w}x{h} ({label}), {what}", 1000 * cpu / len(poses), 1000 * wall / len(poses)))

    # ------------------------------------------------------------ report
    ms = lambda seconds, frames: 1000 * seconds / frames  # noqa: E731
    decode_ms = ms(decode, n)
    det_pre_post, pose_pre_post = ms(product["det_pre_post"], m), ms(product["pose_pre_post"], m)
    rest, render_ms = ms(product["rest"], m), renders[0][1]
    non_model = decode_ms + det_pre_post + pose_pre_post + rest + render_ms
    pick_ms = ms(pick, picked)
    per_pose_frame = non_model - decode_ms + pick_ms
    tiny = "" if real else " (tiny)"
    rows = [
        ["decode", f"read_video: ffmpeg (-threads {threads}) -> RGB frames in one array", decode_ms, "no"],
        ["detect: pre/post", "letterbox, YOLOX box decode + NMS", det_pre_post, "no"],
        ["detect: model", f"detector session.run{tiny}", ms(product["det_model"], m), "yes"],
        ["pose: pre/post", "crops, SimCC decode, keypoints to frame, OpenPose conversion", pose_pre_post, "no"],
        ["pose: model", f"pose session.run{tiny}", ms(product["pose_model"], m), "yes"],
        ["detect_video rest", "frame checks, crop batching (np.stack), bookkeeping", rest, "no"],
        ["render", renders[0][0], render_ms, "no"],
    ]
    worst = max((r for r in rows if r[3] == "no"), key=lambda r: r[2])
    rows = [
        [stage, what, f"{value:.2f}", f"{1000 / value:.0f}" if value > 0 else "", model]
        for stage, what, value, model in rows
    ]
    rows.append(
        [
            "**non-model total**",
            "decode + pre/post + rest + render",
            f"**{non_model:.2f}**",
            f"{1000 / non_model:.1f}",
            "",
        ]
    )
    header = ["stage", "what", "CPU ms/frame", "frames/s", "model"]
    mode_header = ["mode", "CPU ms/frame", "wall ms/frame", "model CPU ms", "non-model CPU ms", "det runs", "pose calls",
                   "speedup (CPU)"]  # fmt: skip
    base = modes[0]["cpu"]
    mode_rows = [
        [x["name"], f"{ms(x['cpu'], m):.2f}", f"{ms(x['wall'], m):.2f}", f"{ms(x['det_model'] + x['pose_model'], m):.2f}",
         f"{ms(x['cpu'] - x['det_model'] - x['pose_model'], m):.2f}", x["detector_runs"], x["pose_runs"],
         f"{base / x['cpu']:.2f}x"]
        for x in modes
    ]  # fmt: skip
    function_header = ["pre/post function (product default mode)", "stage", "calls", "CPU ms/frame", "CPU ms/call"]
    function_rows = [
        [f"`{name}`", PRE_POST[name], calls, f"{ms(seconds, m):.3f}", f"{1000 * seconds / calls:.3f}" if calls else ""]
        for name, (seconds, calls) in product["functions"].items()
    ]
    render_header = ["render", "CPU ms/frame", "wall ms/frame"]
    render_rows = [[name, f"{cpu:.2f}", f"{wall:.2f}"] for name, cpu, wall in renders]
    verdict = "PASS" if non_model < TARGET_MS else "FAIL"
    notes = [
        f"- clip: {source}",
        f"- models: {models}",
        "- times: CPU seconds of the work (this process's thread; for decode also ffmpeg's CPU time), best of "
        f"{args.repeats} runs per stage; the wall times beside them include other processes' share of the core.",
        f"- decode: {n} frames, {decode:.2f} s CPU ({decode_ffmpeg_cpu:.2f} s ffmpeg + {decode_python_cpu:.2f} s Python), "
        f"{decode_wall:.2f} s wall; peak memory {decode_memory.peak / MIB:.0f} MiB for {frame_bytes / MIB:.0f} MiB of "
        f"frames ({decode_memory.kind}).",
        f"- per pose frame at the studio's {STUDIO_FPS:g} fps (`pick_frames`, {picked} of the {n} frames kept): decode "
        f"{pick_ms:.2f} ms, so non-model stages {per_pose_frame:.2f} ms per pose frame (detect, pose and render "
        "run only on the kept frames).",
        f"- detection: {m} frames, {people:.2f} people/frame found. The stage table uses the product default "
        "(batched crops, detector on every frame).",
        "- render: every frame's pose drawn on the 2160-px canvas and resized (`draw_pose`); the stage table uses the "
        "first render row.",
    ]
    verdict_line = (
        f"**Non-model stages at {width}x{height} on one core = {non_model:.2f} ms per decoded frame -> {verdict}** "
        f"(target < {TARGET_MS:g} ms); largest: {worst[0]} {worst[2]:.2f} ms."
    )
    if picked < n:
        verdict_line += (
            f" Per pose frame at {STUDIO_FPS:g} fps from this {video.fps:g} fps clip: {per_pose_frame:.2f} ms -> "
            f"{'PASS' if per_pose_frame < TARGET_MS else 'FAIL'} ({n / picked:.2f} source frames decoded per pose frame)."
        )

    print()
    print(text_table(header, [[c.replace("**", "") for c in r] for r in rows]))
    print()
    print(text_table(mode_header, mode_rows))
    print()
    print(text_table(function_header, function_rows))
    print()
    print(text_table(render_header, render_rows))
    print()
    for line in notes:
        print(line)
    print(verdict_line.replace("**", ""))

    if not args.no_results:
        body = "\n\n".join(
            [
                "\n".join(notes),
                markdown_table(header, rows),
                "Detection modes (per frame; model = session.run):\n\n" + markdown_table(mode_header, mode_rows),
                "Pre/post-processing by function:\n\n" + markdown_table(function_header, function_rows),
                "Render:\n\n" + markdown_table(render_header, render_rows),
                verdict_line,
            ]
        )
        title = f"pose_throughput ({'real' if real else 'tiny'} models, {width}x{height}, {threads} thread(s))"
        path = append_results(title, env, body)
        print(f"appended to {path}")


if __name__ == "__main__":
    main()
