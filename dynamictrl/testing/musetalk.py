"""Tiny, randomly initialised MuseTalk 1.5 weights in the real file layouts.

`save_tiny_musetalk(root)` writes
    root/MuseTalk/musetalkV15/{musetalk.json, unet.pth}       (TMElyralab/MuseTalk)
    root/sd-vae-ft-mse/{config.json, diffusion_pytorch_model.safetensors}
    root/whisper-tiny/{config.json, model.safetensors, preprocessor_config.json}
    root/face-parsing-bisenet/79999_iter.pth
with MuseTalk's channel layout (UNet in 8 = masked + reference latents, out 4, cross
attention 384 = whisper-tiny's width, 8 heads; a VAE that downsamples 256 -> 32), so the
real loading code and every tensor shape of the 5B-free lip-sync path are exercised.
"""

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from .face_parser import save_tiny_face_parser
from .whisper import save_tiny_whisper

UNET_CONFIG = dict(
    act_fn="silu",
    attention_head_dim=8,
    block_out_channels=[32, 32, 64, 64],
    center_input_sample=False,
    cross_attention_dim=384,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    downsample_padding=1,
    flip_sin_to_cos=True,
    freq_shift=0,
    in_channels=8,
    layers_per_block=1,
    mid_block_scale_factor=1,
    norm_eps=1e-05,
    norm_num_groups=32,
    out_channels=4,
    sample_size=64,
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
)

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[16, 16, 32, 32],
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=16,
    sample_size=256,
)


def save_tiny_unet(folder: Path, seed: int = 0) -> Path:
    """`musetalk.json` as MuseTalk ships it (a diffusers config with `_class_name`) and
    `unet.pth`, a bare `torch.save` state dict."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"_class_name": "UNet2DConditionModel", "_diffusers_version": "0.6.0.dev0", **UNET_CONFIG}
    (folder / "musetalk.json").write_text(json.dumps(config, indent=2))
    torch.save(unet.state_dict(), folder / "unet.pth")
    return folder


def save_tiny_vae(folder: Path, seed: int = 1) -> Path:
    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE_CONFIG)
    vae.save_pretrained(folder, safe_serialization=True)
    config = json.loads((folder / "config.json").read_text())
    config.pop("scaling_factor", None)  # sd-vae-ft-mse's config has none; MuseTalk hard-codes 0.18215
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def save_tiny_musetalk(root: str | Path) -> Path:
    root = Path(root)
    save_tiny_unet(root / "MuseTalk" / "musetalkV15")
    save_tiny_vae(root / "sd-vae-ft-mse")
    save_tiny_whisper(root / "whisper-tiny")
    save_tiny_face_parser(root / "face-parsing-bisenet" / "79999_iter.pth")
    return root
