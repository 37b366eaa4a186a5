"""Started under torchrun by tests/test_parallel.py (one launch per world size).

Generates the tiny clips of `CLIPS` under every layout given, on the gloo backend, and has
rank 0 save the frames as .npy for the test to compare with one process. The other ranks
stop at the latents (as the Studio does: every rank holds the same latents, rank 0 decodes).
`--fail-rank k`: after the layouts, one more job under the first layout in which rank k
raises in its first denoising step (the failure test: it must end every rank, and rank 0
must write nothing for it).

A layout may name a variant after "+" (`VARIANTS`): `ulysses=4+heads4` swaps in a
transformer with 4 attention heads (the tiny one has 2; Ulysses splits heads), and
`ulysses=2+offload=group` / `+offload=model` installs that memory tier's offload hooks
(diffusers group offloading, accelerate's model offload) with the CPU as both devices:
the only devices a CPU test has, so the weights do not move, but every forward goes
through the hooks the tier installs on a GPU, around the parallel hooks.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import torch.distributed as dist

from dynamictrl import parallel, weights
from dynamictrl.pipeline import DynamiCtrlPipeline

# 48x48 px -> 9 video tokens per pair of latent frames: 18 per window of 9 frames (split
# 5/5/4/4 on 4 processes: uneven on purpose).
COMMON = dict(
    prompt="a person dancing",
    negative_prompt="blurry",
    height=48,
    width=48,
    num_inference_steps=2,
    guidance_scale=3.0,
    use_dynamic_cfg=True,
    output_type="np",
)
CLIPS = {
    "one_window": dict(num_frames=9),
    # Colour matching is off here: it matches LAB statistics of the random tiny VAE's
    # nearly flat frames, which amplifies float noise ~80x (the latents agree to 3e-7).
    "three_windows": dict(num_frames=17, window_frames=9, overlap_frames=1, color_match=False),
}


VARIANTS = ("heads4", "offload=group", "offload=model")


def four_head_transformer():
    """The tiny transformer's shape with 4 heads of 16 (random weights, the same on every
    process: the seed is fixed)."""
    from dynamictrl.models import DynamiCtrlTransformerModel
    from dynamictrl.testing.models import TRANSFORMER_CONFIG

    torch.manual_seed(11)
    return DynamiCtrlTransformerModel(**{**TRANSFORMER_CONFIG, "num_attention_heads": 4}).eval()


def apply_variant(pipe, variant: str | None):
    """Sets `variant` up on `pipe`; returns what undoes it."""
    from dynamictrl.manager import clear_placement

    if variant is None:
        return lambda: None
    if variant == "heads4":
        original = pipe.transformer
        pipe.register_modules(transformer=four_head_transformer())
        return lambda: pipe.register_modules(transformer=original)
    cpu = torch.device("cpu")
    if variant == "offload=group":
        pipe.enable_group_offload(
            onload_device=cpu, offload_device=cpu, offload_type="block_level", num_blocks_per_group=1
        )
        hook = getattr(pipe.transformer.transformer_blocks[0], "_diffusers_hook", None)
        if hook is None or hook.get_hook("group_offloading") is None:
            raise AssertionError("group offloading hooks were not installed on the transformer blocks")
    elif variant == "offload=model":
        pipe.enable_model_cpu_offload(device=cpu)
        if getattr(pipe.transformer, "_hf_hook", None) is None:
            raise AssertionError("model offload hooks were not installed on the transformer")
    else:
        raise ValueError(f"unknown variant {variant!r}; use one of {VARIANTS}")
    return lambda: clear_placement(pipe)


def clips_for(variant: str | None) -> list[str]:
    """A variant checks one thing on top of a layout the plain entries cover with both
    clips: the one-window clip is enough (and keeps the launch short)."""
    return list(CLIPS) if variant is None else ["one_window"]


def parse_entry(text: str):
    """`layout[+variant]` -> (ParallelLayout, variant or None, the name the .npy files get)."""
    layout, _, variant = text.partition("+")
    layout = parallel.ParallelLayout.parse(layout)
    return layout, variant or None, f"{layout}+{variant}" if variant else str(layout)


def clip_inputs(num_frames: int):
    generator = torch.Generator().manual_seed(5)
    image = (torch.rand(48, 48, 3, generator=generator) * 255).to(torch.uint8).numpy()
    pose = torch.rand(num_frames, 3, 48, 48, generator=generator) * 2 - 1
    return PIL.Image.fromarray(image), pose


def generate(pipe, clip: str, callback=None, output_type: str = "np") -> np.ndarray:
    options = {**COMMON, **CLIPS[clip], "output_type": output_type}
    image, pose = clip_inputs(options["num_frames"])
    frames = pipe(
        image=image,
        pose_video=pose,
        generator=torch.Generator().manual_seed(0),
        callback_on_step_end=callback,
        **options,
    ).frames
    return frames.numpy() if isinstance(frames, torch.Tensor) else frames


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights", required=True)
    parser.add_argument("--layouts", required=True, help="';'-separated layouts of the same world size")
    parser.add_argument("--out", required=True)
    parser.add_argument("--fail-rank", type=int, default=-1, help="then a job in which this rank fails")
    parser.add_argument("--fail-stamp", default=None, help="where the failing rank writes the time it raised")
    args = parser.parse_args()
    torch.set_num_threads(1)  # several processes share the test machine's cores

    entries = [parse_entry(text) for text in args.layouts.split(";")]
    device = parallel.init_process_group(entries[0][0], "cpu")
    pipe = DynamiCtrlPipeline.from_pretrained(weights.BASE_REPO, weights_dir=args.weights)
    pipe.set_progress_bar_config(disable=True)
    rank = dist.get_rank()

    def fail(pipe, step, timestep, tensors):
        Path(args.fail_stamp).write_text(str(time.time()))
        raise RuntimeError(f"injected failure on rank {rank}")

    for layout, variant, name in entries:
        mesh = parallel.build_mesh(layout, device)
        undo = apply_variant(pipe, variant)
        parallel.apply_parallel(pipe.transformer, mesh)
        # Rank 0's auto caption reaches every rank (UTF-8 included).
        caption = parallel.broadcast_text("une personne qui danse, été" if mesh.is_main else "", mesh)
        if caption != "une personne qui danse, été":
            raise AssertionError(f"rank {rank} received the caption {caption!r}")
        for clip in clips_for(variant):
            frames = generate(pipe, clip, output_type="np" if mesh.is_main else "latent")
            if mesh.is_main:
                np.save(Path(args.out) / f"{name}-{clip}.npy", frames)
        parallel.apply_parallel(pipe.transformer, None)
        undo()
    if args.fail_rank >= 0:
        layout, _variant, name = entries[0]
        parallel.apply_parallel(pipe.transformer, parallel.build_mesh(layout, device))
        frames = generate(pipe, "one_window", callback=fail if rank == args.fail_rank else None)
        np.save(Path(args.out) / f"failed-{name}.npy", frames)  # never reached: the test checks
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
