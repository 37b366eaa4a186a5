"""Peak memory of the streamed stages against clip length, on tiny models (CPU).

Each stage runs in a fresh process (this script, `--worker`): the models are loaded and
warmed up on a short clip first, then the kernel's peak-RSS mark is reset and the stage
runs on each clip length in turn, reporting the peak RSS above the warm level and
tracemalloc's peak (numpy and Python allocations) for each:

- pose: `Studio.extract_poses` of a 1280x720 synthetic driving video (pose video, preview
  and JSON written), target 768x1360 by default;
- generate: `Studio.generate` from a raw 1280x720 driving video in 5-frame windows (one
  latent each, no overlap: N windows = 4N + 1 frames), written to mp4;
- lipsync: `Studio.lipsync` of a 1280x720 talking video, audio as long as the video.

    python benchmarks/stream_memory.py                       # all stages, default lengths
    python benchmarks/stream_memory.py --stage pose --lengths 65 513
    python benchmarks/stream_memory.py --record              # also append to RESULTS.md

`tests/test_stream_memory.py` runs the workers with small lengths and asserts the growth
per frame; the numbers here are the same measurement at benchmark lengths.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024**2
STAGES = ("pose", "generate", "lipsync")
DEFAULT_LENGTHS = {"pose": [65, 257, 513], "generate": [2, 8, 16], "lipsync": [50, 200, 400]}
DRIVING_SIZE = (1280, 720)  # width, height of the synthetic driving and talking videos


# ------------------------------------------------------------------ inputs
def dancer_frames(count: int, width: int, height: int):
    """Smooth synthetic frames the tiny DWPose finds a person in (a red top-left block
    gates people on, its green channel moves them), one at a time."""
    base = np.zeros((height, width, 3), dtype=np.uint8)
    base[..., 2] = np.linspace(40, 200, width, dtype=np.uint8)[None, :]
    for k in range(count):
        frame = base.copy()
        frame[:16, :16] = (255, (8 * k) % 256, 0)
        yield frame


def write_clip(path: Path, count: int, fps: float = 16.0) -> Path:
    from dynamictrl.video import write_video

    return write_video(path, dancer_frames(count, *DRIVING_SIZE), fps=fps)


def write_tone(path: Path, seconds: float) -> Path:
    from scipy.io import wavfile

    t = np.arange(int(seconds * 16000)) / 16000
    wavfile.write(path, 16000, (0.3 * np.sin(2 * np.pi * 200 * t) * 32767).astype(np.int16))
    return path


# ------------------------------------------------------------------ memory
def reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def peak_rss() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no VmHWM")


def current_rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ------------------------------------------------------------------ stages
def run_pose(studio, folder: Path, length: int, width: int, height: int, preview: bool = True):
    from dynamictrl.studio import PoseSettings

    driving = folder / f"driving_{length}.mp4"
    if not driving.exists():
        write_clip(driving, length - 1)
    settings = PoseSettings(num_frames=length, width=width, height=height, fps=None)
    out = folder / f"pose_{length}"
    return lambda: studio.extract_poses(
        folder / "ref.png",
        driving,
        settings,
        out_path=out.with_suffix(".mp4"),
        preview_path=out.with_name(out.name + "_preview.mp4") if preview else None,
        json_path=out.with_suffix(".json"),
    )


def run_generate(studio, folder: Path, windows: int, width: int, height: int):
    from dynamictrl.studio import GenerateSettings

    frames = 4 * windows + 1
    driving = folder / f"driving_{frames}.mp4"
    if not driving.exists():
        write_clip(driving, frames - 1)
    settings = GenerateSettings(
        prompt="a person dancing",
        num_frames=frames,
        width=width,
        height=height,
        steps=2,
        seed=1,
        window_frames=5,
        overlap=0,
    )
    return lambda: studio.generate(
        folder / "ref.png", folder / f"gen_{windows}.mp4", settings, driving_video_path=driving
    )


def run_lipsync(studio, folder: Path, length: int, width: int, height: int, batch_size: int | None = None):
    from dynamictrl.lipsync.settings import LipSyncSettings

    video = folder / f"talk_{length}.mp4"
    if not video.exists():
        write_clip(video, length, fps=25.0)
    audio = write_tone(folder / f"tone_{length}.wav", length / 25.0)
    settings = LipSyncSettings() if batch_size is None else LipSyncSettings(batch_size=batch_size)
    return lambda: studio.lipsync(video, audio, folder / f"lip_{length}.mp4", settings)


RUNNERS = {"pose": run_pose, "generate": run_generate, "lipsync": run_lipsync}


def worker(
    stage: str,
    lengths: list[int],
    weights: Path,
    width: int,
    height: int,
    warm: int,
    frame_budget_mb: float | None = None,
    lipsync_batch_size: int | None = None,
) -> list[dict]:
    """In this process: warm up on `warm`, then measure each length (see the module doc)."""
    from functools import partial

    from PIL import Image

    from dynamictrl.studio import Studio

    folder = Path(tempfile.mkdtemp(prefix=f"stream_{stage}_"))
    reference = np.zeros((height, width, 3), dtype=np.uint8)
    reference[:16, :16] = (255, 0, 0)
    Image.fromarray(reference).save(folder / "ref.png")
    studio = Studio(weights_dir=weights, device="cpu", cache_dir=folder / "cache")
    if frame_budget_mb is not None:
        studio.lipsync_frame_budget_bytes = int(frame_budget_mb * MIB)
    runner = RUNNERS[stage]
    if lipsync_batch_size is not None:
        runner = partial(run_lipsync, batch_size=lipsync_batch_size)
    runner(studio, folder, warm, width, height)()  # loads the models, fills the caches
    rows = []
    for length in lengths:
        run = runner(studio, folder, length, width, height)  # inputs are written before measuring
        level = current_rss()
        reset_peak_rss()
        tracemalloc.start()
        started = time.perf_counter()
        run()
        seconds = time.perf_counter() - started
        _, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rows.append(
            {
                "length": length,
                "peak_rss": peak_rss(),
                "rss_before": level,
                "traced_peak": traced_peak,
                "seconds": round(seconds, 2),
            }
        )
    return rows


def measure(stage: str, *args, **kwargs) -> list[dict]:
    """Runs `worker` in a fresh process; returns its rows (arguments: `worker_command`'s)."""
    done = subprocess.run(
        worker_command(stage, *args, **kwargs), capture_output=True, text=True, env=worker_env(), cwd=ROOT
    )
    return worker_rows(stage, done)


def worker_command(
    stage: str,
    lengths: list[int],
    weights: Path,
    width: int,
    height: int,
    warm: int | None = None,
    frame_budget_mb: float | None = None,
    lipsync_batch_size: int | None = None,
) -> list[str]:
    """The command line of one measuring process (several may run at once: each process's
    peak RSS and tracemalloc peak are its own; only the seconds suffer)."""
    warm = warm if warm is not None else {"pose": 5, "generate": 1, "lipsync": 4}[stage]
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        stage,
        "--weights",
        str(weights),
        "--width",
        str(width),
        "--height",
        str(height),
        "--warm",
        str(warm),
        "--lengths",
        *map(str, lengths),
    ]
    if frame_budget_mb is not None:
        command += ["--frame-budget-mb", str(frame_budget_mb)]
    if lipsync_batch_size is not None:
        command += ["--lipsync-batch-size", str(lipsync_batch_size)]
    return command


def worker_env() -> dict[str, str]:
    # A fixed mmap threshold: glibc otherwise raises it after each large free, so later
    # frame-sized buffers come from the heap, stay in RSS as fragments, and the peak RSS
    # then drifts by tens of MiB between runs of the same code (measured: +81 MiB once
    # between 17 and 41 lip-sync frames whose traced peak differed by 0.2 MiB).
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
        "MALLOC_MMAP_THRESHOLD_": "131072",
    }


def worker_rows(stage: str, done: subprocess.CompletedProcess) -> list[dict]:
    """The rows a finished measuring process printed (its error if it failed)."""
    if done.returncode != 0:
        raise RuntimeError(f"{stage} worker failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def growth_per_frame(rows: list[dict], key: str, unit: int) -> float:
    """Bytes of `key` added per frame (or window: `unit` frames per length step) between
    the shortest and the longest run."""
    first, last = rows[0], rows[-1]
    return (last[key] - first[key]) / ((last["length"] - first["length"]) * unit)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=STAGES, action="append", help="(repeatable) default: all")
    parser.add_argument("--lengths", type=int, nargs="+", help="frames (pose, lipsync) or windows (generate)")
    parser.add_argument("--weights", type=Path, help="tiny weights folder (made if missing)")
    parser.add_argument("--width", type=int)
    parser.add_argument("--height", type=int)
    parser.add_argument("--warm", type=int)
    parser.add_argument("--frame-budget-mb", type=float, help="lip-sync: decoded frames kept (Studio default: 256)")
    parser.add_argument("--lipsync-batch-size", type=int, help="lip-sync: frames per UNet/VAE call (default: 8)")
    parser.add_argument("--worker", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--record", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = parser.parse_args()
    if args.worker:
        print(
            json.dumps(
                worker(
                    args.worker,
                    args.lengths,
                    args.weights,
                    args.width,
                    args.height,
                    args.warm,
                    args.frame_budget_mb,
                    args.lipsync_batch_size,
                )
            )
        )
        return

    from _common import append_results, environment  # this script's folder is on the path

    from dynamictrl.tiny import save_tiny_weights

    weights = save_tiny_weights(args.weights or Path(tempfile.gettempdir()) / "dynamictrl_tiny_weights")
    sizes = {"pose": (768, 1360), "generate": (64, 80), "lipsync": DRIVING_SIZE}
    lines = ["| stage | length | peak RSS above warm (MiB) | tracemalloc peak (MiB) | s |", "|---|---|---|---|---|"]
    for stage in args.stage or STAGES:
        width, height = args.width or sizes[stage][0], args.height or sizes[stage][1]
        rows = measure(
            stage,
            args.lengths or DEFAULT_LENGTHS[stage],
            weights,
            width,
            height,
            args.warm,
            args.frame_budget_mb,
            args.lipsync_batch_size,
        )
        unit = "windows" if stage == "generate" else "frames"
        for row in rows:
            line = (
                f"| {stage} ({width}x{height}) | {row['length']} {unit} | "
                f"{(row['peak_rss'] - row['rss_before']) / MIB:.1f} | {row['traced_peak'] / MIB:.1f} | "
                f"{row['seconds']} |"
            )
            lines.append(line)
            print(line, flush=True)
        per = 4 if stage == "generate" else 1
        print(
            f"{stage}: peak RSS {growth_per_frame(rows, 'peak_rss', per) / MIB:+.3f} MiB per frame, "
            f"tracemalloc peak {growth_per_frame(rows, 'traced_peak', per) / 1024:+.1f} KiB per frame",
            flush=True,
        )
    if args.record:
        append_results("Streaming stages: peak memory against clip length", environment("cpu"), "\n".join(lines))


if __name__ == "__main__":
    main()
