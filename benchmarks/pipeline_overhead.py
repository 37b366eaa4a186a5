"""Pipeline overhead: wall time of one `DynamiCtrlPipeline.__call__` against the time spent
inside the networks (transformer, VAE encode + decode, T5 encoder), in the same call.

    python benchmarks/pipeline_overhead.py [--size 256] [--frames 33] [--steps 4] [--profile]

Builds a mid-size random DynamiCtrl checkpoint in a temp folder (the tiny test tokenizer,
T5 and VAE of `dynamictrl/testing/models.py`, and a transformer with 8 blocks of width 512 =
8 heads x 64), saves it with `save_pretrained` in the `gulucaptain/DynamiCtrl` layout,
loads it with `DynamiCtrlPipeline.from_pretrained` and calls it the way the studio does
(PIL image, list of uint8 pose frames, CFG on, output_type="np").

overhead ratio = wall / (transformer + VAE + text encoder); target <= 1.10. Everything
outside the three networks (tokenizer, pre/post-processing, scheduler, concatenations,
RoPE, hooks) is the overhead. With `--profile` (or when the target is missed) the call is
run again under cProfile and the largest costs outside the networks are listed.
It prints numbers; it is not a test.
"""

import argparse
import cProfile
import io
import pstats
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

TARGET = 1.10


def mid_transformer_config(size: int, frames: int, layers: int, heads: int, head_dim: int) -> dict:
    from dynamictrl.testing.models import TRANSFORMER_CONFIG

    latent = size // 8  # the tiny VAE compresses 8x spatially
    return dict(
        TRANSFORMER_CONFIG,
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        num_layers=layers,
        time_embed_dim=512,
        ofs_embed_dim=512,  # added to the time embedding: must equal time_embed_dim
        text_embed_dim=32,  # the tiny T5's d_model
        sample_width=max(latent, 8),
        sample_height=max(latent, 8),
        sample_frames=max(frames, 13),
    )


def save_checkpoint(root: Path, config: dict, seed: int = 0) -> Path:
    """The tiny tokenizer/T5/VAE/scheduler + a bigger transformer, hub layout."""
    from dynamictrl.models import DynamiCtrlTransformerModel
    from dynamictrl.testing.models import save_shared_parts

    base = save_shared_parts(root / "DynamiCtrl", seed)
    DynamiCtrlTransformerModel(**config).eval().save_pretrained(base / "transformer")
    return base


def inputs(size: int, frames: int, seed: int = 0):
    import numpy as np
    import PIL.Image

    rng = np.random.default_rng(seed)
    image = PIL.Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    pose = [rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(frames)]
    return image, pose


def call(pipe, image, pose, size, frames, steps, guidance, seed=42):
    import torch

    return pipe(
        image=image,
        pose_video=pose,
        prompt="a woman in a red dress dancing in a park",
        negative_prompt="",
        height=size,
        width=size,
        num_frames=frames,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
        callback_on_step_end=lambda p, i, t, tensors: {},  # the studio passes a progress callback
    ).frames


def instrument(pipe, device):
    """Stopwatches around the networks and around the pipeline's non-network stages."""
    nets = {name: Stopwatch(device) for name in ("transformer", "vae", "text_encoder")}
    nets["transformer"].hook_module(pipe.transformer)
    nets["text_encoder"].hook_module(pipe.text_encoder)
    patch_method(pipe.vae, "encode", nets["vae"])
    patch_method(pipe.vae, "decode", nets["vae"])
    # Stages outside the networks (each includes any network time it calls, subtracted below).
    stages = {
        "encode_prompt (tokenizer + T5)": (pipe, "encode_prompt"),
        "pose_video_to_tensor": (pipe, "pose_video_to_tensor"),
        "image preprocess": (pipe.video_processor, "preprocess"),
        "encode_condition_latents (VAE enc)": (pipe, "encode_condition_latents"),
        "rotary embeddings": (pipe, "_prepare_rotary_positional_embeddings"),
        "scheduler.step": (pipe.scheduler, "step"),
        "scheduler.scale_model_input": (pipe.scheduler, "scale_model_input"),
        "decode_latents (VAE dec)": (pipe, "decode_latents"),
        "postprocess_video": (pipe.video_processor, "postprocess_video"),
        "maybe_free_model_hooks": (pipe, "maybe_free_model_hooks"),
    }
    stage_watches = {}
    for label, (obj, name) in stages.items():
        stage_watches[label] = Stopwatch(device)
        patch_method(obj, name, stage_watches[label])
    return nets, stage_watches


def top_non_model_costs(profile: cProfile.Profile, limit: int = 25) -> str:
    """cProfile rows sorted by own time, leaving out torch ops / modules (the networks)."""
    stats = pstats.Stats(profile)
    rows = []
    for (filename, line, func), (_cc, nc, tottime, cumtime, _callers) in stats.stats.items():
        rows.append((tottime, cumtime, nc, f"{Path(filename).name}:{line}({func})", filename))
    rows.sort(reverse=True)
    out = [f"{'own s':>8s} {'cum s':>8s} {'calls':>7s}  function"]
    for tottime, cumtime, nc, name, filename in rows[:limit]:
        out.append(f"{tottime:8.3f} {cumtime:8.3f} {nc:7d}  {name}   [{filename}]")
    buffer = io.StringIO()
    stats.stream = buffer
    stats.sort_stats("cumulative").print_callees(r"dynamictrl/pipeline\.py.*\(__call__\)")
    return "\n".join(out) + "\n\ncallees of __call__ (cumulative):\n" + buffer.getvalue()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="height = width (multiple of 16)")
    parser.add_argument("--frames", type=int, default=33)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--guidance", type=float, default=3.0, help="> 1 turns CFG on")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "fp32", "bf16"),
        help="auto: bf16 on CUDA, fp32 on the CPU (as the studio)",
    )
    parser.add_argument("--profile", action="store_true", help="also run under cProfile")
    parser.add_argument(
        "--compare-tiling",
        action="store_true",
        help="run once more with VAE tiling off and report the VAE time difference",
    )
    parser.add_argument("--no-results", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args(argv)

    import torch

    from dynamictrl.pipeline import DynamiCtrlPipeline

    device = pick_device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}.get(
        args.dtype, torch.bfloat16 if device.startswith("cuda") else torch.float32
    )
    env = environment(device)
    print_environment(env)

    with tempfile.TemporaryDirectory() as tmp:
        config = mid_transformer_config(args.size, args.frames, args.layers, args.heads, args.head_dim)
        base = save_checkpoint(Path(tmp), config)
        start = time.perf_counter()
        pipe = DynamiCtrlPipeline.from_pretrained(str(base), torch_dtype=dtype)
        load_seconds = time.perf_counter() - start
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    params = sum(p.numel() for p in pipe.transformer.parameters())
    image, pose = inputs(args.size, args.frames)
    print(
        f"transformer: {args.layers} blocks x {args.heads * args.head_dim} wide ({args.heads} heads x "
        f"{args.head_dim}), {params / 1e6:.1f} M params, {dtype}; load {load_seconds:.2f} s"
    )

    nets, stages = instrument(pipe, device)
    # Warm-up at a small size: first-call allocations, lazy imports, kernel selection.
    start = time.perf_counter()
    warm_image, warm_pose = inputs(64, 9)
    call(pipe, warm_image, warm_pose, 64, 9, 1, args.guidance)
    warm_wall = time.perf_counter() - start
    warm_model = sum(w.seconds for w in nets.values())
    print(
        f"warm-up call (64x64, 9 frames, 1 step): wall {warm_wall:.2f} s, networks {warm_model:.2f} s "
        f"(ratio {warm_wall / warm_model:.2f}; first call, not the measurement)"
    )
    for watch in [*nets.values(), *stages.values()]:
        watch.reset()
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        frames = call(pipe, image, pose, args.size, args.frames, args.steps, args.guidance)
        torch.cuda.synchronize() if device.startswith("cuda") else None
        wall = time.perf_counter() - start
    assert frames.shape == (1, args.frames, args.size, args.size, 3), frames.shape

    model = sum(w.seconds for w in nets.values())
    ratio = wall / model
    verdict = "PASS" if ratio <= TARGET else "FAIL"
    run = (
        f"{args.size}x{args.size}, {args.frames} frames, {args.steps} steps, "
        f"CFG {'on' if args.guidance > 1 else 'off'} (guidance {args.guidance:g}), {dtype}"
    )
    print(f"\nrun: {run}")
    rows = [[name, f"{w.seconds:.3f}", w.calls, f"{100 * w.seconds / wall:.1f}%"] for name, w in nets.items()]
    rows.append(["networks total", f"{model:.3f}", "", f"{100 * model / wall:.1f}%"])
    rows.append(["outside the networks", f"{wall - model:.3f}", "", f"{100 * (wall - model) / wall:.1f}%"])
    rows.append(["wall (whole call)", f"{wall:.3f}", 1, "100.0%"])
    header = ["part", "seconds", "calls", "of wall"]
    print(text_table(header, rows))
    stage_rows = [[name, f"{w.seconds:.4f}", w.calls] for name, w in stages.items()]
    stage_header = ["stage (incl. any network time inside)", "seconds", "calls"]
    print()
    print(text_table(stage_header, stage_rows))
    print(f"\npeak memory during the call: {memory.peak / MIB:.0f} MiB ({memory.kind})")
    print(
        f"overhead ratio = wall / (transformer + vae + text encoder) = {wall:.3f} / {model:.3f} = "
        f"{ratio:.3f}  -> {verdict} (target <= {TARGET:.2f})"
    )

    tiling_text = None
    if args.compare_tiling:
        vae_tiled = nets["vae"].seconds
        pipe.vae.disable_tiling()
        for watch in [*nets.values(), *stages.values()]:
            watch.reset()
        start = time.perf_counter()
        call(pipe, image, pose, args.size, args.frames, args.steps, args.guidance)
        untiled_wall = time.perf_counter() - start
        pipe.vae.enable_tiling()
        tiling_text = (
            f"VAE tiling (on by default in from_pretrained / DynamiCtrlModels.pipeline): VAE encode+decode "
            f"{vae_tiled:.2f} s tiled vs {nets['vae'].seconds:.2f} s untiled at {args.size}x{args.size}; "
            f"whole call {wall:.2f} s vs {untiled_wall:.2f} s."
        )
        print("\n" + tiling_text)

    profile_text = None
    if args.profile or ratio > TARGET:
        profile = cProfile.Profile()
        profile.enable()
        call(pipe, image, pose, args.size, args.frames, args.steps, args.guidance)
        profile.disable()
        profile_text = top_non_model_costs(profile)
        print("\ncProfile of a second call (own time, all functions):")
        print(profile_text)

    if not args.no_results:
        body = [
            (
                f"Mid-size random pipeline: transformer {args.layers} blocks x {args.heads * args.head_dim} wide "
                f"({params / 1e6:.1f} M params), tiny T5 (d_model 32) and tiny VAE of `dynamictrl/testing/models.py`; "
                f"loaded with `DynamiCtrlPipeline.from_pretrained`. Run: {run}, output_type np."
            ),
            "",
            markdown_table(header, rows),
            "",
            markdown_table(stage_header, stage_rows),
            "",
            f"Peak memory during the call: {memory.peak / MIB:.0f} MiB ({memory.kind}).",
            "",
            f"**Overhead ratio = {ratio:.3f} -> {verdict}** (target <= {TARGET:.2f}).",
        ]
        if tiling_text:
            body += ["", tiling_text]
        if profile_text:
            body += [
                "",
                "cProfile of a second call (own time):",
                "",
                "```",
                profile_text.split("\n\ncallees")[0],
                "```",
            ]
        path = append_results("pipeline_overhead", env, "\n".join(body))
        print(f"\nappended to {path}")


if __name__ == "__main__":
    main()
