"""Time and peak memory per memory tier and per speed option on the device at hand.

    python benchmarks/tiers.py [--size 64] [--frames 17] [--steps 6] [--repeats 3] [--model tiny|mid]

Uses a small random pipeline (the tiny test checkpoints of `dynamictrl/testing/models.py`, or with
`--model mid` the 8-block x 512 transformer of `pipeline_overhead.py`), loaded through the
manager (`DynamiCtrlModels(...).pipeline(None, options)`), placed with `place_pipeline`
and sped up with `apply_speed_options`, exactly as the studio does.

Rows: every memory tier with no speed option, then every speed option in tier `none`:
First Block Cache (threshold 0.05), Pyramid Attention Broadcast, fp8 layerwise casting.
On CUDA all four tiers run. On the CPU `place_pipeline` treats every tier as plain
placement (there is no VRAM to save), so only `none` is a product path; the `group` row
calls `enable_group_offload(onload_device="cpu", offload_device="cpu")` directly so the
group-offload hooks run: CPU timings show hook overhead only, not transfer costs.
"max abs diff" is the largest difference of the output frames from the plain run of the
same dtype: 0 means the option changed nothing (e.g. a cache that never skipped).
It prints numbers; it is not a test.
"""

import argparse
import statistics
import tempfile
import time
import traceback
from pathlib import Path

from _common import (
    MIB,
    PeakMemory,
    append_results,
    environment,
    markdown_table,
    pick_device,
    print_environment,
    sync,
    text_table,
)


def save_weights(root: Path, model: str, size: int, frames: int) -> Path:
    if model == "tiny":
        from dynamictrl.testing.models import save_tiny_checkpoints

        return save_tiny_checkpoints(root)
    from pipeline_overhead import mid_transformer_config, save_checkpoint

    save_checkpoint(root, mid_transformer_config(size, frames, 8, 8, 64))
    return root


def make_inputs(size: int, frames: int):
    import numpy as np
    import PIL.Image

    rng = np.random.default_rng(0)
    image = PIL.Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    pose = [rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(frames)]
    return image, pose


def generate(pipe, image, pose, args):
    import torch

    return pipe(
        image=image,
        pose_video=pose,
        prompt="a woman in a red dress dancing",
        height=args.size,
        width=args.size,
        num_frames=args.frames,
        num_inference_steps=args.steps,
        guidance_scale=3.0,
        generator=torch.Generator().manual_seed(42),
        output_type="np",
    ).frames


def build(weights, device, torch_dtype, tier, options):
    """A fresh manager + pipeline per row, so no hook or fp8 state leaks between rows."""
    from dynamictrl.manager import DynamiCtrlModels, ModelManager, place_pipeline

    models = DynamiCtrlModels(
        ModelManager(device=device), "gulucaptain/DynamiCtrl", weights_dir=weights, torch_dtype=torch_dtype
    )
    pipe = models.pipeline(None, options)
    if device == "cpu" and tier == "group":
        # place_pipeline would do a plain .to("cpu") here; run the group-offload hooks anyway.
        pipe.enable_group_offload(
            onload_device="cpu",
            offload_device="cpu",
            offload_type="block_level",
            num_blocks_per_group=1,
            use_stream=False,
        )
    else:
        place_pipeline(pipe, tier, device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_row(label, weights, device, dtype, tier, options, inputs, args, baselines):
    import numpy as np
    import torch

    row = {"label": label, "tier": tier, "dtype": str(dtype).replace("torch.", "")}
    try:
        pipe = build(weights, device, dtype, tier, options)
        generate(pipe, *inputs, args)  # warm-up
        times = []
        for _ in range(args.repeats):
            sync(device)
            start = time.perf_counter()
            frames = generate(pipe, *inputs, args)
            sync(device)
            times.append(time.perf_counter() - start)
        with PeakMemory(device) as memory:
            generate(pipe, *inputs, args)
        if args.verbose:
            print(f"    {label} / {tier}: " + " ".join(f"{t:.3f}" for t in times))
        row.update(median=statistics.median(times), best=min(times), peak=memory.peak, kind=memory.kind)
        key = row["dtype"]
        if label == "none" and tier == "none":
            baselines[key] = frames
        if key in baselines:
            row["diff"] = float(np.abs(frames.astype(np.float64) - baselines[key]).max())
        del pipe
    except Exception as error:  # noqa: BLE001 - a row that fails is reported, the others still run
        row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
        if args.verbose:
            traceback.print_exc()
    finally:
        if str(device).startswith("cuda"):
            torch.cuda.empty_cache()
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64, help="height = width")
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per row (median reported)")
    parser.add_argument("--model", default="tiny", choices=("tiny", "mid"))
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--verbose", action="store_true", help="print tracebacks of failing rows")
    parser.add_argument("--no-results", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args(argv)

    import torch

    from dynamictrl.manager import TIERS, PipelineOptions

    device = pick_device(args.device)
    cuda = device.startswith("cuda")
    env = environment(device)
    print_environment(env)
    # The studio's dtype "auto": bf16 on CUDA, fp32 on the CPU.
    dtype = torch.bfloat16 if cuda else torch.float32
    tiers = TIERS if cuda else ("none", "group")
    options = [
        ("first_block_cache 0.05", PipelineOptions(first_block_cache=0.05)),
        ("pyramid_attention_broadcast", PipelineOptions(pyramid_attention_broadcast=True)),
        ("fp8 layerwise casting", PipelineOptions(fp8=True)),
    ]

    rows, baselines = [], {}
    inputs = make_inputs(args.size, args.frames)
    with tempfile.TemporaryDirectory() as tmp:
        weights = save_weights(Path(tmp), args.model, args.size, args.frames)
        # One throwaway pipeline call first: process-wide first-call costs stay out of row 1.
        generate(build(weights, device, dtype, "none", PipelineOptions()), *inputs, args)
        plan = [("none", tier, dtype, PipelineOptions()) for tier in tiers]
        plan += [(label, "none", dtype, opts) for label, opts in options]
        for label, tier, row_dtype, opts in plan:
            rows.append(run_row(label, weights, device, row_dtype, tier, opts, inputs, args, baselines))
            print(f"  {tier:10s} {label:28s} {'failed' if 'error' in rows[-1] else 'done'}", flush=True)
        if not cuda and "error" in rows[-1]:
            # The studio's CPU default (fp32) failed with fp8: try the `--dtype bf16` path.
            for label, opts in (("none", PipelineOptions()), ("fp8 layerwise casting", PipelineOptions(fp8=True))):
                rows.append(run_row(label, weights, device, torch.bfloat16, "none", opts, inputs, args, baselines))
                print(f"  {'none':10s} {label + ' (bf16 model)':28s} {'failed' if 'error' in rows[-1] else 'done'}")

    header = ["tier", "speed option", "dtype", "median s", "best s", "vs none", "peak MiB", "max abs diff"]
    table, errors = [], []
    base_time = {
        r["dtype"]: r["median"] for r in rows if r["label"] == "none" and r["tier"] == "none" and "median" in r
    }
    for r in rows:
        if "error" in r:
            table.append([r["tier"], r["label"], r["dtype"], "error", "", "", "", ""])
            errors.append(f"{r['tier']} / {r['label']} / {r['dtype']}: {r['error']}")
            continue
        ref = base_time.get(r["dtype"])
        table.append(
            [
                r["tier"],
                r["label"],
                r["dtype"],
                f"{r['median']:.3f}",
                f"{r['best']:.3f}",
                f"{ref / r['median']:.2f}x" if ref else "",
                f"{max(r['peak'], 0) / MIB:.0f}",
                f"{r['diff']:.2e}" if "diff" in r else "",
            ]
        )
    kind = next((r["kind"] for r in rows if "kind" in r), "")
    setup = (
        f"{args.model} random pipeline, {args.size}x{args.size}, {args.frames} frames, {args.steps} steps, "
        f"CFG on, output_type np; median of {args.repeats} calls after one warm-up call per row; peak memory: {kind}."
    )
    notes = []
    if not cuda:
        notes.append(
            "CPU: place_pipeline makes every tier a plain .to('cpu'), so 'model' and 'sequential' are not "
            "run; the 'group' row runs diffusers' group-offload hooks with onload = offload = cpu, so its "
            "timing is hook overhead only (no transfers). Tier timings on the CPU say nothing about VRAM "
            "or PCIe costs."
        )
    fp8_rows = [r for r in rows if r["label"].startswith("fp8")]
    if fp8_rows:
        status = "; ".join(f"{r['dtype']} model: {'error' if 'error' in r else 'runs'}" for r in fp8_rows)
        notes.append(f"fp8 layerwise casting on {device}: {status}.")
    print()
    print(setup)
    print(text_table(header, table))
    for line in errors:
        print("error: " + line)
    for line in notes:
        print("note: " + line)

    if not args.no_results:
        body = [setup, "", markdown_table(header, table)]
        body += [""] + [f"- error: {line}" for line in errors] if errors else []
        body += [""] + [f"- note: {line}" for line in notes] if notes else []
        path = append_results("tiers", env, "\n".join(body))
        print(f"\nappended to {path}")


if __name__ == "__main__":
    main()
