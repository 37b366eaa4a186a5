"""Cost of starting ffmpeg from a process that holds a model: `dynamictrl.video` lets
imageio-ffmpeg start it by vfork (IMAGEIO_FFMPEG_NO_PREVENT_SIGINT=1) instead of its default
fork (a `preexec_fn`), which copies the page tables of the whole process and then, page by
page, whatever the process writes afterwards.

    python benchmarks/ffmpeg_spawn.py [--resident-gib 4] [--clips 20]

For each way, a fresh process imports the pipeline's libraries, holds `--resident-gib` of
touched tensors (as loaded weights are), then writes and reads back `--clips` small mp4s
through `dynamictrl.video`, running a full garbage collection after each (the collector
writes to every object, which is what a fork makes expensive afterwards). Prints the time
per clip and the process's page faults. It prints numbers; it is not a test.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import GIB, ROOT, append_results, environment, markdown_table, print_environment, text_table

WAYS = {"vfork (dynamictrl.video)": "1", "fork (imageio-ffmpeg's default)": "0"}


def worker(resident_gib: float, clips: int) -> dict:
    import gc

    import numpy as np
    import torch

    import dynamictrl.pipeline  # noqa: F401  (the libraries a running app has imported)
    from dynamictrl.video import read_video, write_video

    held = torch.ones(int(resident_gib * GIB) // 4)  # touched: resident, like loaded weights
    frames = np.random.default_rng(0).integers(0, 255, (9, 64, 48, 3), dtype=np.uint8)
    faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        for index in range(clips):
            path = write_video(Path(folder) / f"clip{index}.mp4", frames, fps=8)
            assert read_video(path).num_frames == len(frames)
            gc.collect()
        seconds = time.perf_counter() - started
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before
    del held
    return {"ms_per_clip": 1000 * seconds / clips, "faults_per_clip": faults / clips}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resident-gib", type=float, default=4.0, help="memory the process holds (a model)")
    parser.add_argument("--clips", type=int, default=20, help="mp4s written and read back per way")
    parser.add_argument("--worker", choices=sorted(WAYS.values()), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args.resident_gib, args.clips)))
        return

    env = environment("cpu")
    print_environment(env)
    rows = []
    for way, value in WAYS.items():
        command = [sys.executable, __file__, "--worker", value, "--resident-gib", str(args.resident_gib)]
        command += ["--clips", str(args.clips)]
        child_env = {**os.environ, "IMAGEIO_FFMPEG_NO_PREVENT_SIGINT": value, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(command, env=child_env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"the {way} worker failed:\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append([way, f"{result['ms_per_clip']:.0f}", f"{result['faults_per_clip']:.0f}"])
    header = ["ffmpeg started by", "ms per clip (write + read + gc)", "page faults per clip"]
    print(text_table(header, rows))
    body = f"{args.resident_gib:g} GiB resident, {args.clips} clips of 9 frames 48x64.\n\n" + markdown_table(
        header, rows
    )
    print(f"\nappended to {append_results('ffmpeg spawn', env, body)}")


if __name__ == "__main__":
    main()
