"""Long videos: time and peak memory against length (1, 2, 4, 8 windows).

    python benchmarks/long_video.py [--size 128] [--steps 4] [--windows 1 2 4 8] [--model mid|tiny]

Builds the mid-size random DynamiCtrl checkpoint of `pipeline_overhead.py` (8 blocks x 512
wide, the tiny T5 and VAE; `--model tiny` uses `dynamictrl/testing/models.py`), then calls the
pipeline the way the studio does (PIL image, list of uint8 pose frames, CFG on,
output_type="uint8"; `--output-type np` gives the float32 clip instead) with
`window_frames` (37 by default) and `overlap_frames` (2 latent frames) for clips of 1, 2,
4 and 8 windows: T = 1 + 4 * (9 + 7 * (n - 1)) frames.

Expected: time grows linearly with the number of windows (each step runs every window
once; each window is VAE-encoded and decoded once), and the memory the sampling needs
stays flat (activations are per window). What does grow with the clip is the host
memory of the clip itself: the pose video given as input (stacked as uint8, 1 byte per
value) and the output frames (1 byte per value for "uint8", 4 for "np"; "output MiB" is
the returned array's size). On the CPU the table gives the peak RSS of the call, those
clip buffers, and the difference (the working memory: with "uint8" it holds one window
in float32 at most); on a GPU, torch's peak allocated memory (clip buffers stay on the
host there). Prints numbers; not a test.
"""

import argparse
import tempfile
import time
from pathlib import Path

from _common import (
    MIB,
    PeakMemory,
    Stopwatch,
    append_results,
    environment,
    markdown_table,
    patch_method,
    pick_device,
    print_environment,
    text_table,
)


def frames_for(windows: int, window_frames: int, overlap: int) -> int:
    per_window = (window_frames - 1) // 4
    return 1 + 4 * (per_window + (per_window - overlap) * (windows - 1))


def build(model: str, size: int, window_frames: int, tmp: Path):
    import torch

    from dynamictrl import weights
    from dynamictrl.pipeline import DynamiCtrlPipeline

    if model == "tiny":
        from dynamictrl.testing.models import save_tiny_checkpoints

        root = save_tiny_checkpoints(tmp)
        pipe = DynamiCtrlPipeline.from_pretrained(weights.BASE_REPO, weights_dir=root, torch_dtype=torch.float32)
        return pipe, "tiny random pipeline of `dynamictrl/testing/models.py`"
    from pipeline_overhead import mid_transformer_config, save_checkpoint

    config = mid_transformer_config(size, window_frames, layers=8, heads=8, head_dim=64)
    base = save_checkpoint(tmp, config)
    pipe = DynamiCtrlPipeline.from_pretrained(str(base), torch_dtype=torch.float32)
    params = sum(p.numel() for p in pipe.transformer.parameters())
    return pipe, (
        f"mid-size random pipeline: transformer 8 blocks x 512 wide ({params / 1e6:.1f} M params), "
        "tiny T5 (d_model 32) and tiny VAE of `dynamictrl/testing/models.py`"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mid", choices=("mid", "tiny"))
    parser.add_argument("--size", type=int, default=128, help="height = width (multiple of 16)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--window-frames", type=int, default=37)
    parser.add_argument("--overlap", type=int, default=2, help="latent frames shared by neighbouring windows")
    parser.add_argument("--windows", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--repeats", type=int, default=3, help="calls per length; the best time is reported")
    parser.add_argument(
        "--output-type",
        default="uint8",
        choices=("uint8", "np"),
        help="uint8: what the studio asks for; np: the float32 clip, for comparison",
    )
    parser.add_argument("--device", default=None)
    parser.add_argument("--no-results", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args(argv)

    import numpy as np
    import PIL.Image
    import torch

    from dynamictrl.longvideo import plan_windows

    device = pick_device(args.device)
    env = environment(device)
    print_environment(env)
    with tempfile.TemporaryDirectory() as tmp:
        pipe, description = build(args.model, args.size, args.window_frames, Path(tmp))
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    transformer_time, vae_time = Stopwatch(device), Stopwatch(device)
    transformer_time.hook_module(pipe.transformer)
    patch_method(pipe.vae, "encode", vae_time)
    patch_method(pipe.vae, "decode", vae_time)

    rng = np.random.default_rng(0)
    size = args.size
    image = PIL.Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    longest = frames_for(max(args.windows), args.window_frames, args.overlap)
    all_poses = [rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(longest)]

    def call(frames: int, steps: int):
        return pipe(
            image=image,
            pose_video=all_poses[:frames],
            prompt="a woman in a red dress dancing in a park",
            height=size,
            width=size,
            num_frames=frames,
            num_inference_steps=steps,
            guidance_scale=args.guidance,
            generator=torch.Generator().manual_seed(42),
            output_type=args.output_type,
            window_frames=args.window_frames,
            overlap_frames=args.overlap,
            callback_on_step_end=lambda p, i, t, tensors: {},
        ).frames

    call(frames_for(2, args.window_frames, args.overlap), 1)  # warm-up: both code paths' first calls
    rows, base = [], None
    for windows in args.windows:
        frames = frames_for(windows, args.window_frames, args.overlap)
        plan = plan_windows(frames, args.window_frames, args.overlap)
        assert plan.num_windows == windows, (windows, plan)
        walls, peak, best, output_bytes = [], 0, None, 0
        for _ in range(args.repeats):
            transformer_time.reset()
            vae_time.reset()
            with PeakMemory(device) as memory:
                start = time.perf_counter()
                video = call(frames, args.steps)
                wall = time.perf_counter() - start
            assert video.shape == (1, frames, size, size, 3), video.shape
            output_bytes = video.nbytes
            del video
            walls.append(wall)
            peak = max(peak, memory.peak)
            if best is None or wall < best[0]:
                best = (wall, transformer_time.seconds, transformer_time.calls, vae_time.seconds, vae_time.calls)
        wall = best[0]
        clip_buffers = frames * size * size * 3 + output_bytes  # uint8 pose input + output frames
        working = peak - (0 if device.startswith("cuda") else clip_buffers)
        base = base or (wall, working)
        rows.append(
            [
                windows,
                frames,
                f"{frames / 16:.1f}",
                f"{wall:.2f}",
                f"{sorted(walls)[len(walls) // 2]:.2f}",
                f"{wall / windows:.2f}",
                f"{wall / base[0]:.2f}x",
                f"{best[1]:.2f} ({best[2]})",
                f"{best[3]:.2f} ({best[4]})",
                f"{peak / MIB:.0f}",
                f"{output_bytes / MIB:.1f}",
                "-" if device.startswith("cuda") else f"{clip_buffers / MIB:.0f}",
                f"{working / MIB:.0f}",
                f"{working / base[1]:.2f}x",
            ]
        )
        print(f"{windows} windows, {frames} frames: best {wall:.2f} s of {len(walls)}, peak {peak / MIB:.0f} MiB")

    header = [
        "windows",
        "frames",
        "s at 16 fps",
        "best s",
        "median s",
        "best s / window",
        "time vs 1",
        "transformer s (calls)",
        "VAE s (calls)",
        "peak MiB",
        "output MiB",
        "clip buffers MiB",
        "working MiB",
        "working vs 1",
    ]
    run = (
        f"{size}x{size}, window {args.window_frames} frames, overlap {args.overlap} latent frames, "
        f"{args.steps} steps, CFG on (guidance {args.guidance:g}), float32, colour matching on, "
        f"output_type {args.output_type}"
    )
    print(f"\n{description}\nrun: {run}; peak memory: {memory.kind}\n")
    print(text_table(header, rows))
    if not args.no_results:
        body = "\n".join(
            [
                (
                    f"{description[0].upper() + description[1:]}. Run: {run}; one warm-up call first, then "
                    f"{args.repeats} calls per length (best and median time; transformer/VAE times of the best call; "
                    "peak over all calls). Peak memory: "
                    f"{memory.kind}. 'clip buffers' = the uint8 pose video given as input + the output frames "
                    f"({args.output_type}) "
                    "(host memory that grows with the clip by design); 'working' = peak - clip buffers on the CPU, the peak "
                    "itself on a GPU."
                ),
                "",
                markdown_table(header, rows),
            ]
        )
        path = append_results("long_video", env, body)
        print(f"\nappended to {path}")


if __name__ == "__main__":
    main()
