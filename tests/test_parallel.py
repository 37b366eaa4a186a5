"""Context parallelism (Ulysses, ring) and CFG parallelism on the CPU with gloo: N processes
started by torchrun give the single-process video, and a failing rank ends the job."""

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0
from PIL import Image

from dynamictrl import parallel
from dynamictrl.models.attention import DynamiCtrlAttnProcessor, resolve_attention_kernel
from dynamictrl.video import read_video, write_video
from tests import background, parallel_worker

ROOT = Path(__file__).resolve().parents[1]


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b.astype(np.float64)))


def start_torchrun(nproc: int, *args: str) -> background.Run:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]
    return background.Run(command, cwd=ROOT, env=env)


def launch_folder(getfixturevalue, name: str) -> Path:
    """A folder of the session's temporary root, the same for the start and the test."""
    return getfixturevalue("tmp_path_factory").getbasetemp() / name


# ------------------------------------------------------------------ layouts
def test_layout_syntax_any_subset_and_clear_errors():
    assert parallel.ParallelLayout.parse("ulysses=2,ring=1,cfg=2") == parallel.ParallelLayout(2, 1, 2)
    assert parallel.ParallelLayout.parse("cfg=2").as_dict() == {"ulysses": 1, "ring": 1, "cfg": 2}
    assert parallel.ParallelLayout.parse(" ring=4 ").world_size == 4
    assert parallel.ParallelLayout.parse("").world_size == 1
    for bad, message in [
        ("ulysses2", "name=N"),
        ("tp=2", "name=N"),
        ("cfg=3", "cfg is 1 or 2"),
        ("ring=0", ">= 1"),
        ("ring=x", "whole number"),
        ("cfg=2,cfg=2", "twice"),
    ]:
        with pytest.raises(ValueError, match=message):
            parallel.ParallelLayout.parse(bad)


def test_a_layout_without_torchrun_names_the_command(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ValueError, match="torchrun --nproc-per-node 4"):
        parallel.setup("ulysses=2,cfg=2", "cpu")
    assert parallel.setup(None, "cpu") is None and parallel.setup("cfg=1", "cpu") is None


def test_chunk_sizes_are_those_of_tensor_split():
    for total, parts in [(18, 4), (12, 4), (7, 2), (20400, 8), (5, 5)]:
        sizes = parallel.chunk_sizes(total, parts)
        assert sizes == [len(c) for c in torch.arange(total).tensor_split(parts)]


# ------------------------------------------------------------------ attention through the dispatcher
def test_processor_is_bitwise_the_cogvideox_processor(tiny_pipe):
    attn = tiny_pipe.transformer.transformer_blocks[0].attn1
    assert isinstance(attn.processor, DynamiCtrlAttnProcessor)
    generator = torch.Generator().manual_seed(0)
    video = torch.randn(2, 24, attn.inner_dim, generator=generator)
    text = torch.randn(2, 7, attn.inner_dim, generator=generator)
    rope = (torch.randn(24, attn.inner_dim // attn.heads, generator=generator),) * 2
    ours = DynamiCtrlAttnProcessor()(attn, video, text, image_rotary_emb=rope)
    theirs = CogVideoXAttnProcessor2_0()(attn, video, text, image_rotary_emb=rope)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)
    # The reference math kernel computes the same attention (within float noise).
    math_kernel = DynamiCtrlAttnProcessor(resolve_attention_kernel("math", "cpu"))(
        attn, video, text, image_rotary_emb=rope
    )
    torch.testing.assert_close(math_kernel[0], ours[0], rtol=1e-5, atol=1e-5)


def test_unusable_kernels_are_clear_errors():
    with pytest.raises(ValueError, match="Unknown attention kernel 'fa2'"):
        resolve_attention_kernel("fa2", "cpu")
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        resolve_attention_kernel("flash", "cpu")
    # Asked for on a GPU where the package is missing (none of them is installed here).
    with pytest.raises(ValueError, match="install sageattention"):
        resolve_attention_kernel("sage", "cuda")
    with pytest.raises(ValueError, match="install flash-attn"):
        resolve_attention_kernel("flash", "cuda")


def test_studio_refuses_an_unusable_kernel_before_any_work(tiny_weights, tmp_path):
    from dynamictrl.studio import GenerateSettings, Studio

    studio = Studio(weights_dir=tiny_weights, device="cpu")
    settings = GenerateSettings(prompt="a person", num_frames=9, width=48, height=48, attention="flash")
    with pytest.raises(ValueError, match="'flash' attention kernel needs a CUDA GPU"):
        studio.generate(tmp_path / "ref.png", tmp_path / "out.mp4", settings, pose_video_path=tmp_path / "pose.mp4")
    assert not list(tmp_path.iterdir())


def test_fused_qkv_keeps_our_processor(tiny_weights):
    from dynamictrl.models import DynamiCtrlTransformerModel

    model = DynamiCtrlTransformerModel.from_pretrained(tiny_weights / "DynamiCtrl", subfolder="transformer")
    generator = torch.Generator().manual_seed(1)
    inputs = dict(
        hidden_states=torch.randn(1, 2, 8, 6, 4, generator=generator),
        encoder_hidden_states=torch.randn(1, 5, 32, generator=generator),
        timestep=torch.tensor([500]),
        pose_latents=torch.randn(1, 2, 4, 6, 4, generator=generator),
        ofs=torch.tensor([2.0]),
    )
    before = model(**inputs).sample
    model.fuse_qkv_projections()
    assert all(
        isinstance(b.attn1.processor, DynamiCtrlAttnProcessor) and b.attn1.fused_projections
        for b in model.transformer_blocks
    )
    torch.testing.assert_close(model(**inputs).sample, before, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ several processes
@pytest.fixture(scope="module")
def single_process_frames(tiny_pipe):
    """One process's frames per clip, for the tiny transformer (None) and for the 4-head
    one (`heads4`); offload variants must reproduce the plain frames."""
    frames = {None: {clip: parallel_worker.generate(tiny_pipe, clip) for clip in parallel_worker.CLIPS}}
    undo = parallel_worker.apply_variant(tiny_pipe, "heads4")
    try:
        frames["heads4"] = {
            clip: parallel_worker.generate(tiny_pipe, clip) for clip in parallel_worker.clips_for("heads4")
        }
    finally:
        undo()
    return frames


TWO_PROCESS_LAYOUTS = ["ulysses=2", "ring=2", "cfg=2", "ulysses=2+offload=model", "ulysses=2+offload=group"]
# ulysses=4 splits 4 heads: the 4-head transformer (the tiny one has 2).
FOUR_PROCESS_LAYOUTS = ["ulysses=2,ring=2", "cfg=2,ulysses=2", "cfg=2,ring=2", "ulysses=4+heads4"]


def start_two_process_launch(getfixturevalue):
    """One torchrun launch of 2 processes: every 2-process layout (and the memory tiers'
    offload hooks around Ulysses), then a job in which rank 1 fails (processes start in
    ~10 s on 2 cores: one launch serves two tests). Started early (tests/background.py)."""
    weights, out = getfixturevalue("tiny_weights"), launch_folder(getfixturevalue, "two_process_launch")
    out.mkdir()
    layouts = ";".join(TWO_PROCESS_LAYOUTS)
    command = ["--weights", str(weights), "--layouts", layouts, "--out", str(out), "--fail-rank", "1"]
    return lambda: start_torchrun(2, "tests/parallel_worker.py", *command, "--fail-stamp", str(out / "failed_at"))


@pytest.fixture(scope="module")
def two_process_launch(request):
    run = background.result("torchrun 2", request.getfixturevalue)
    return run.wait(), run.ended_at, launch_folder(request.getfixturevalue, "two_process_launch")


def start_four_process_launch(getfixturevalue):
    weights, out = getfixturevalue("tiny_weights"), launch_folder(getfixturevalue, "four_process_launch")
    out.mkdir()
    layouts = ";".join(FOUR_PROCESS_LAYOUTS)
    return lambda: start_torchrun(
        4, "tests/parallel_worker.py", "--weights", str(weights), "--layouts", layouts, "--out", str(out)
    )


def check_frames(out: Path, layouts: list[str], single_process_frames) -> None:
    for text in layouts:
        _layout, variant, name = parallel_worker.parse_entry(text)
        reference = single_process_frames["heads4" if variant == "heads4" else None]
        for clip in parallel_worker.clips_for(variant):
            expected = reference[clip]
            frames = np.load(out / f"{name}-{clip}.npy")
            assert frames.shape == expected.shape
            assert rel_l2(frames, expected) < 1e-5, (text, clip)


@pytest.mark.slow  # starts 2 processes
def test_two_processes_reproduce_the_single_process_video(two_process_launch, single_process_frames):
    result, _ended, out = two_process_launch
    assert "RuntimeError: injected failure on rank 1" in result.stderr, result.stderr[-3000:]  # only the last job
    check_frames(out, TWO_PROCESS_LAYOUTS, single_process_frames)


@pytest.mark.slow  # starts 4 processes
def test_four_processes_reproduce_the_single_process_video(request, single_process_frames):
    result = background.result("torchrun 4", request.getfixturevalue).wait()
    assert result.returncode == 0, result.stderr[-3000:]
    check_frames(
        launch_folder(request.getfixturevalue, "four_process_launch"), FOUR_PROCESS_LAYOUTS, single_process_frames
    )


@pytest.mark.slow  # starts 2 processes
def test_a_failing_rank_ends_every_rank_with_one_clear_error(two_process_launch):
    result, ended, out = two_process_launch
    assert result.returncode != 0
    # Rank 0 was waiting for rank 1 in an all-to-all: torchrun ended it when rank 1 exited,
    # long before the collective's 600 s timeout would have (the bound leaves room for the
    # launch's lowest priority on a busy machine: tests/background.py).
    assert ended - float((out / "failed_at").read_text()) < 180
    assert "RuntimeError: injected failure on rank 1" in result.stderr
    assert not list(out.glob("failed-*.npy"))  # nothing written for the failed job
    # No process of the job is left (its command lines name its output folder).
    time.sleep(0.5)
    stray = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(out) in (proc / "cmdline").read_bytes().decode(errors="ignore"):
                stray.append(proc.name)
        except OSError:
            continue
    assert not stray


# ------------------------------------------------------------------ the command line
def cli_arguments(folder: Path, weights: Path) -> list[str]:
    return [
        "--image",
        str(folder / "ref.png"),
        "--pose-video",
        str(folder / "pose.mp4"),
        "--prompt",
        "a person dancing",
        "--frames",
        "9",
        "--width",
        "48",
        "--height",
        "48",
        "--steps",
        "2",
        "--seed",
        "5",
        "--dtype",
        "fp32",
        "--device",
        "cpu",
        "--weights-dir",
        str(weights),
    ]


# The Studio and the CLI do the same whatever the layout (the layouts' numerics are the
# tests above): one launch of the CLI, with ulysses=2, stands for them all.
CLI_LAYOUT = "ulysses=2"


def start_cli_launch(getfixturevalue):
    """`torchrun -m dynamictrl generate --parallel ulysses=2` (started early: tests/background.py)."""
    weights, folder = getfixturevalue("tiny_weights"), launch_folder(getfixturevalue, "cli_launch")
    folder.mkdir()
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(folder / "ref.png")
    write_video(folder / "pose.mp4", rng.integers(0, 255, (9, 48, 48, 3), dtype=np.uint8))
    out = str(folder / "many" / "clip.mp4")
    command = ["-m", "dynamictrl", "generate", *cli_arguments(folder, weights), "--out", out, "--parallel", CLI_LAYOUT]
    return lambda: start_torchrun(2, *command)


@pytest.mark.slow
def test_torchrun_generate_writes_the_single_process_video_once(request, tiny_weights):
    from dynamictrl import cli

    result = background.result("torchrun cli", request.getfixturevalue).wait()
    folder = launch_folder(request.getfixturevalue, "cli_launch")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("Wrote") == 1  # rank 0 reports, once
    assert sorted(p.name for p in (folder / "many").iterdir()) == ["clip.json", "clip.mp4"]
    manifest = json.loads((folder / "many" / "clip.json").read_text())
    assert manifest["parallel"] == parallel.ParallelLayout.parse(CLI_LAYOUT).as_dict()
    # The one-process clip: `dynamictrl.cli.main`, the code `python -m dynamictrl` runs, here.
    one = folder / "one" / "clip.mp4"
    assert cli.main(["generate", *cli_arguments(folder, tiny_weights), "--out", str(one)]) == 0
    assert json.loads(one.with_suffix(".json").read_text())["parallel"] == {"ulysses": 1, "ring": 1, "cfg": 1}
    ours = read_video(folder / "many" / "clip.mp4").frames.astype(int)
    reference = read_video(one).frames.astype(int)
    # Context parallelism gave the same bits here; float noise (CFG parallelism gave ~3e-7)
    # may flip a few uint8 values by one, which H.264 can spread to a few neighbouring levels.
    difference = np.abs(ours - reference)
    assert difference.mean() < 0.05 and difference.max() <= 4


background.early(
    "torchrun 2",
    start_two_process_launch,
    __file__,
    (
        "test_two_processes_reproduce_the_single_process_video",
        "test_a_failing_rank_ends_every_rank_with_one_clear_error",
    ),
)
background.early(
    "torchrun 4", start_four_process_launch, __file__, ("test_four_processes_reproduce_the_single_process_video",)
)
background.early(
    "torchrun cli", start_cli_launch, __file__, ("test_torchrun_generate_writes_the_single_process_video_once",)
)
