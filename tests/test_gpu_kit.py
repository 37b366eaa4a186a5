"""The GPU measurement kit: its FLOP formula against torch's FLOP counter, and its refusal on
a machine without a GPU (the measurements themselves need a GPU)."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dynamictrl.models import DynamiCtrlTransformerModel
from dynamictrl.testing.models import TRANSFORMER_CONFIG

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_kit", ROOT / "benchmarks" / "gpu_kit.py")
gpu_kit = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_kit)


@pytest.mark.parametrize("batch,text_tokens,frames,height,width", [(2, 7, 9, 48, 32), (1, 12, 17, 32, 64)])
def test_flop_formula_equals_torch_flop_counter(batch, text_tokens, frames, height, width):
    config = dict(TRANSFORMER_CONFIG, num_layers=3)
    model = DynamiCtrlTransformerModel(**config).eval()
    # torch's reference attention is made of matmuls the counter sees (the fused CPU kernel
    # is not counted).
    model.set_attention_kernel("math")
    latent_frames = (frames - 1) // 4 + 1
    latent_frames += latent_frames % 2
    generator = torch.Generator().manual_seed(0)
    latent_shape = (batch, latent_frames, config["out_channels"], height // 8, width // 8)
    inputs = dict(
        hidden_states=torch.randn(
            batch, latent_frames, config["in_channels"], height // 8, width // 8, generator=generator
        ),
        pose_latents=torch.randn(latent_shape, generator=generator),
        encoder_hidden_states=torch.randn(batch, text_tokens, config["text_embed_dim"], generator=generator),
        timestep=torch.full((batch,), 500),
        ofs=torch.full((1,), 2.0),
    )
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(**inputs)
    tokens = gpu_kit.video_tokens(config, frames, height, width)
    assert tokens == latent_frames // 2 * (height // 16) * (width // 16)
    assert sum(gpu_kit.transformer_flops(config, batch, text_tokens, tokens).values()) == counter.get_total_flops()


def test_real_size_step_flops_and_the_attention_share():
    flops = gpu_kit.transformer_flops(gpu_kit.TRANSFORMER_CONFIG, 2, 226, 20400)
    assert gpu_kit.video_tokens(gpu_kit.TRANSFORMER_CONFIG, 37, 768, 1360) == 20400
    # About half of a 768x1360x37 step is attention (~20.6k tokens).
    assert 0.5 < flops["attention"] / sum(flops.values()) < 0.56
    assert gpu_kit.step_flops(37, 768, 1360) == sum(flops.values())
    assert 8.0e14 < gpu_kit.step_flops(37, 768, 1360) < 8.6e14


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_refuses_clearly_without_a_gpu():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_kit.py")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert result.returncode == 2
    assert "no CUDA device is visible" in result.stderr and "Traceback" not in result.stderr
