"""GPU measurement kit: seconds per denoising step and peak VRAM of the real-size model.

    python benchmarks/gpu_kit.py [--sizes 576x1024x37,768x1360x37] [--steps 2]
                                 [--tiers none,model,group] [--kernels native,flash,...]
                                 [--gpus 2,4,8] [--peak-tflops 989] [--out benchmarks/gpu_kit.md]

Nothing is downloaded: the DynamiCtrl transformer (5.8B, the released config.json), the
CogVideoX-1.5 VAE and the T5 v1.1 XXL encoder are built with random bf16 weights. Per size,
memory tier (none / model / group offload, fp8 weights off/on) and installed attention
kernel it times denoising steps (the CFG batch of 2, as the pipeline runs them) after
one warm-up step, and records the peak VRAM of the whole job (T5 encode, the steps, the
tiled VAE decode of the clip). With 2+ GPUs it reruns the steps under `torchrun` with
context parallelism (ulysses=N) and CFG parallelism (cfg=2,ulysses=N/2) and reports the
speedup. Every row also gives the ratio of the measured time to the FLOP floor: the
transformer's FLOPs per step (printed; `transformer_flops`, unit-tested against torch's
FLOP counter) divided by the GPU's dense bf16 peak.

It writes a Markdown table (to --out) meant to replace the estimated VRAM table of the docs.
On a machine without a CUDA GPU it refuses with a message and exit status 2. The whole
default run takes about 8 minutes on one H100/H200.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

try:  # the kit measures the installed package
    import dynamictrl  # noqa: F401
except ModuleNotFoundError:
    raise SystemExit(
        "gpu_kit.py needs the dynamictrl package: run `pip install -e .` in the repository root "
        "(or prefix the command with PYTHONPATH=.)"
    ) from None

# The released DynamiCtrl transformer config (gulucaptain/DynamiCtrl transformer/config.json).
TRANSFORMER_CONFIG = dict(
    num_attention_heads=48,
    attention_head_dim=64,
    in_channels=32,
    out_channels=16,
    time_embed_dim=512,
    ofs_embed_dim=512,
    text_embed_dim=4096,
    num_layers=42,
    patch_size=2,
    patch_size_t=2,
    patch_bias=False,
    sample_frames=81,
    sample_height=300,
    sample_width=300,
    use_rotary_positional_embeddings=True,
    use_learned_positional_embeddings=False,
    max_text_seq_length=226,
)
# CogVideoX-1.5 VAE (diffusers' defaults for the architecture + the released scaling).
VAE_CONFIG = dict(
    latent_channels=16, scaling_factor=0.7, invert_scale_latents=True, use_quant_conv=False, use_post_quant_conv=False
)
# T5 v1.1 XXL encoder (google/t5-v1_1-xxl).
T5_CONFIG = dict(
    vocab_size=32128,
    d_model=4096,
    d_kv=64,
    d_ff=10240,
    num_layers=24,
    num_heads=64,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    layer_norm_epsilon=1e-6,
    feed_forward_proj="gated-gelu",
    is_encoder_decoder=False,
)
TEXT_TOKENS = 226
DEFAULT_SIZES = "576x1024x37,768x1360x37"

# Dense bf16 tensor-core peaks (TFLOP/s, without sparsity) by device name.
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,
    "H800": 989.0,
    "H20": 148.0,
    "A100": 312.0,
    "A800": 312.0,
    "L40S": 362.0,
    "L40": 181.0,
    "L4": 121.0,
    "4090": 165.0,
    "A10": 125.0,
    "B200": 2250.0,
}


# ------------------------------------------------------------------ FLOPs
def video_tokens(config: dict, num_frames: int, height: int, width: int) -> int:
    """Video tokens of one clip: latent frames (padded to patch_size_t) x latent patches."""
    p, p_t = config["patch_size"], config["patch_size_t"]
    latent_frames = (num_frames - 1) // 4 + 1
    latent_frames += (-latent_frames) % p_t
    return (latent_frames // p_t) * (height // 8 // p) * (width // 8 // p)


def transformer_flops(config: dict, batch: int, text_tokens: int, video_tokens: int, ofs_batch: int = 1) -> dict:
    """FLOPs (multiply-add = 2) of one DynamiCtrl transformer forward, per part.

    Counts every matrix product: patch embedding of the video and of the pose stream (each
    also projects the text), timestep/ofs embeddings, per block the adaLN/PadaLN
    modulations, Q/K/V/out projections, attention (QK^T and AV over text + video tokens)
    and the 4x feed-forward, then the output head. Norms, RoPE and activations are left
    out (elementwise, a fraction of a percent). `ofs_batch`: the pipeline passes one ofs
    value for the whole batch."""
    if config.get("patch_size_t") is None:
        raise ValueError("transformer_flops covers CogVideoX-1.5 (patch_size_t set).")
    d = config["num_attention_heads"] * config["attention_head_dim"]
    e, o = config["time_embed_dim"], config.get("ofs_embed_dim") or 0
    p, p_t = config["patch_size"], config["patch_size_t"]
    B, T, V = batch, text_tokens, video_tokens
    N = T + V
    patch_in = config["in_channels"] * p * p * p_t
    patch_out = config["out_channels"] * p * p * p_t
    return {
        "embeddings": 2 * 2 * B * (T * config["text_embed_dim"] * d + V * patch_in * d)
        + 2 * B * (d * e + e * e)
        + 2 * ofs_batch * 2 * o * o,
        "projections": config["num_layers"] * 2 * B * N * d * d * 4,
        "attention": config["num_layers"] * 4 * B * N * N * d,
        "feed_forward": config["num_layers"] * 2 * B * N * d * 4 * d * 2,
        "modulation": config["num_layers"] * 2 * B * e * (6 * d + 6 * d + 3 * d),
        "head": 2 * B * e * 2 * d + 2 * B * V * d * patch_out,
    }


def step_flops(num_frames: int, height: int, width: int, config: dict = TRANSFORMER_CONFIG) -> int:
    """FLOPs of one denoising step at a size: one forward of the CFG batch of 2."""
    return sum(transformer_flops(config, 2, TEXT_TOKENS, video_tokens(config, num_frames, height, width)).values())


def peak_tflops(device_name: str, override: float | None) -> float | None:
    if override:
        return override
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in device_name:
            return value
    return None


def parse_size(text: str) -> tuple[int, int, int]:
    try:
        height, width, frames = (int(x) for x in text.lower().split("x"))
    except ValueError as error:
        raise SystemExit(f"A size is HEIGHTxWIDTHxFRAMES, e.g. 768x1360x37 (got {text!r}).") from error
    return height, width, frames


# ------------------------------------------------------------------ building
def build_models(device: str, text_encoder: bool = True):
    """Random bf16 transformer, VAE and T5 in the released configs (built on the GPU, fast)."""
    import torch
    from diffusers import AutoencoderKLCogVideoX
    from transformers import T5Config, T5EncoderModel

    from dynamictrl.models import DynamiCtrlTransformerModel

    torch.manual_seed(0)
    with torch.device(device):
        transformer = DynamiCtrlTransformerModel(**TRANSFORMER_CONFIG).to(torch.bfloat16).eval()
        text_encoder = T5EncoderModel(T5Config(**T5_CONFIG)).to(torch.bfloat16).eval() if text_encoder else None
        vae = AutoencoderKLCogVideoX(**VAE_CONFIG).to(torch.bfloat16).eval()
    return transformer, text_encoder, vae


def build_pipeline(device: str, text_encoder: bool = True):
    from diffusers import CogVideoXDPMScheduler

    from dynamictrl.pipeline import DynamiCtrlPipeline

    transformer, text_encoder, vae = build_models(device, text_encoder)
    pipe = DynamiCtrlPipeline(
        tokenizer=None, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=CogVideoXDPMScheduler()
    )
    pipe.vae.enable_slicing()
    pipe.vae.enable_tiling()
    return pipe


def step_inputs(pipe, height: int, width: int, num_frames: int, device: str):
    import torch

    from dynamictrl.pipeline import latent_layout

    layout = latent_layout(num_frames, 4, TRANSFORMER_CONFIG["patch_size_t"])
    shape = (2, layout.padded_latent_frames, 16, height // 8, width // 8)
    generator = torch.Generator(device).manual_seed(0)
    latents = torch.randn((1, *shape[1:]), generator=generator, device=device, dtype=torch.bfloat16)
    rotary = pipe._prepare_rotary_positional_embeddings(height, width, layout.padded_latent_frames, device)
    return dict(
        hidden_states=torch.randn(
            (2, shape[1], 32, *shape[3:]), generator=generator, device=device, dtype=torch.bfloat16
        ),
        pose_latents=torch.randn(shape, generator=generator, device=device, dtype=torch.bfloat16),
        timestep=torch.full((2,), 500, device=device),
        ofs=torch.full((1,), 2.0, device=device, dtype=torch.bfloat16),
        image_rotary_emb=rotary,
    ), latents


def time_steps(pipe, inputs: dict, text, steps: int, device: str) -> float:
    """Mean seconds per transformer forward of the CFG batch, after one warm-up forward."""
    import torch

    times = []
    for i in range(steps + 1):
        torch.cuda.synchronize(device)
        started = time.perf_counter()
        with torch.no_grad():
            pipe.transformer(encoder_hidden_states=text, return_dict=False, **inputs)
        torch.cuda.synchronize(device)
        if i > 0:
            times.append(time.perf_counter() - started)
    return sum(times) / len(times)


def measure_tier(pipe, tier: str, fp8: bool, kernel: str, size, steps: int, device: str, decode: bool) -> dict:
    """One row: the job of one clip in a memory tier (T5 encode, steps, decode)."""
    import torch

    from dynamictrl.manager import place_pipeline

    height, width, num_frames = size
    place_pipeline(pipe, tier, device)
    pipe.transformer.set_attention_kernel(kernel)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    ids = torch.randint(0, T5_CONFIG["vocab_size"], (2, TEXT_TOKENS), device=device)
    with torch.no_grad():
        text = pipe.text_encoder(ids)[0].to(torch.bfloat16)
    inputs, latents = step_inputs(pipe, height, width, num_frames, device)
    seconds = time_steps(pipe, inputs, text, steps, device)
    if decode:
        with torch.no_grad():
            pipe.decode_latents(latents.to(pipe.vae.dtype))
    torch.cuda.synchronize(device)
    return {"s_per_step": seconds, "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30}


# ------------------------------------------------------------------ several GPUs (a torchrun worker)
def parallel_worker(args) -> int:
    """Under torchrun: transformer steps with `--worker-parallel` layout; rank 0 prints JSON."""
    import torch

    from dynamictrl import parallel

    layout = parallel.ParallelLayout.parse(args.worker_parallel)
    mesh = parallel.setup(layout, "cuda")
    height, width, num_frames = parse_size(args.worker_size)
    pipe = build_pipeline(mesh.device, text_encoder=False)
    parallel.apply_parallel(pipe.transformer, mesh)
    inputs, _ = step_inputs(pipe, height, width, num_frames, mesh.device)
    text = torch.randn(2, TEXT_TOKENS, T5_CONFIG["d_model"], device=mesh.device, dtype=torch.bfloat16)
    seconds = time_steps(pipe, inputs, text, args.steps, mesh.device)
    peak = torch.cuda.max_memory_allocated(mesh.device) / 2**30
    if mesh.is_main:
        print("GPU_KIT_RESULT " + json.dumps({"layout": str(layout), "s_per_step": seconds, "peak_gib": peak}))
    torch.distributed.destroy_process_group()
    return 0


def run_parallel(layout: str, size: str, steps: int) -> dict:
    gpus = parse_layout_world(layout)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={gpus}",
        str(Path(__file__).resolve()),
        "--worker-parallel",
        layout,
        "--worker-size",
        size,
        "--steps",
        str(steps),
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=600
    )
    for line in result.stdout.splitlines():
        if line.startswith("GPU_KIT_RESULT "):
            return json.loads(line.split(" ", 1)[1])
    raise RuntimeError(f"torchrun {layout} failed:\n{result.stderr[-2000:]}")


def parse_layout_world(layout: str) -> int:
    from dynamictrl.parallel import ParallelLayout

    return ParallelLayout.parse(layout).world_size


# ------------------------------------------------------------------ main
def installed_kernels(requested: str | None) -> list[str]:
    from dynamictrl.models.attention import ATTENTION_KERNELS, resolve_attention_kernel

    names = requested.split(",") if requested else ["native", "flash", "flash3", "sage", "xformers"]
    usable = []
    for name in names:
        if name not in ATTENTION_KERNELS:
            raise SystemExit(f"Unknown kernel {name!r}; choose from {', '.join(ATTENTION_KERNELS)}.")
        try:
            resolve_attention_kernel(name, "cuda")
            usable.append(name)
        except ValueError as error:
            print(f"skipping kernel {name}: {error}")
    return usable


def markdown(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="HEIGHTxWIDTHxFRAMES, comma-separated")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per row (after one warm-up step)")
    parser.add_argument("--tiers", default="none,model,group")
    parser.add_argument("--no-fp8", action="store_true", help="skip the fp8-weight rows")
    parser.add_argument("--kernels", default=None, help="attention kernels (default: every installed one)")
    parser.add_argument("--gpus", default="2,4,8", help="GPU counts for the parallel rows (those present)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak, if the GPU is not known")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "gpu_kit.md"))
    parser.add_argument("--worker-parallel", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-size", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print(
            "gpu_kit.py measures NVIDIA GPUs, and no CUDA device is visible here: run it on a GPU machine "
            "(it downloads nothing; see docs/parallel.md).",
            file=sys.stderr,
        )
        return 2
    if args.worker_parallel:
        return parallel_worker(args)

    device = "cuda:0"
    name = torch.cuda.get_device_name(0)
    peak = peak_tflops(name, args.peak_tflops)
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    tiers = args.tiers.split(",")
    kernels = installed_kernels(args.kernels)
    print(f"GPU: {name} x{torch.cuda.device_count()}; dense bf16 peak: {peak or 'unknown (use --peak-tflops)'} TFLOP/s")
    for height, width, frames in sizes:
        print(
            f"FLOPs per step (CFG batch 2) at {height}x{width}x{frames}: "
            f"{step_flops(frames, height, width) / 1e12:.1f} TFLOP "
            f"({video_tokens(TRANSFORMER_CONFIG, frames, height, width)} video + {TEXT_TOKENS} text tokens)"
        )

    def floor_ratio(seconds: float, size) -> str:
        if not peak:
            return "n/a"
        floor = step_flops(size[2], size[0], size[1]) / (peak * 1e12)
        return f"{seconds / floor:.2f}"

    started = time.perf_counter()
    pipe = build_pipeline(device)
    rows = []
    for fp8 in [False] if args.no_fp8 else [False, True]:
        if fp8:
            from dynamictrl.manager import PipelineOptions, apply_speed_options

            apply_speed_options(pipe, PipelineOptions(fp8=True))
        for size in sizes:
            for tier in tiers:
                for kernel in kernels:
                    # Only the native kernel's rows decode (the VAE's peak does not depend on the kernel).
                    row = measure_tier(pipe, tier, fp8, kernel, size, args.steps, device, decode=kernel == "native")
                    label = "x".join(str(v) for v in size)
                    rows.append(
                        [
                            label,
                            tier,
                            "on" if fp8 else "off",
                            kernel,
                            1,
                            f"{row['s_per_step']:.2f}",
                            f"{row['peak_gib']:.1f}" + ("" if kernel == "native" else " (no decode)"),
                            floor_ratio(row["s_per_step"], size),
                        ]
                    )
                    print(rows[-1], flush=True)
    del pipe
    torch.cuda.empty_cache()

    single = {r[0]: float(r[5]) for r in rows if r[1] == "none" and r[2] == "off" and r[3] == "native"}
    count = torch.cuda.device_count()
    for gpus in (int(g) for g in args.gpus.split(",") if g):
        if gpus > count:
            continue
        for layout in (f"ulysses={gpus}", f"cfg=2,ulysses={gpus // 2}" if gpus > 2 else "cfg=2"):
            for size in sizes:
                label = "x".join(str(v) for v in size)
                result = run_parallel(layout, label, args.steps)
                speedup = single.get(label, float("nan")) / result["s_per_step"]
                rows.append(
                    [
                        label,
                        "none",
                        "off",
                        "native",
                        f"{gpus} ({layout}, x{speedup:.2f})",
                        f"{result['s_per_step']:.2f}",
                        f"{result['peak_gib']:.1f} (transformer only)",
                        floor_ratio(result["s_per_step"] * gpus, size),
                    ]
                )
                print(rows[-1], flush=True)

    header = [
        "size (HxWxT)",
        "memory tier",
        "fp8",
        "attention",
        "GPUs",
        "s/step",
        "peak VRAM (GiB)",
        "time / FLOP floor",
    ]
    table = markdown(header, rows)
    flops = "; ".join(f"{h}x{w}x{f}: {step_flops(f, h, w) / 1e12:.1f} TFLOP/step" for h, w, f in sizes)
    text = (
        f"# GPU measurements ({name} x{count}, torch {torch.__version__})\n\n"
        f"Random bf16 weights in the released configs; a step is one transformer forward of the CFG batch. "
        f"FLOP floor = FLOPs / {peak or '?'} TFLOP/s ({flops}); the parallel rows compare GPU-seconds. "
        f"Run took {time.perf_counter() - started:.0f} s.\n\n{table}\n"
    )
    Path(args.out).write_text(text)
    print(text)
    print(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
