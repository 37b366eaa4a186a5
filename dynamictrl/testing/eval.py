"""Small stand-ins for the evaluation networks and synthetic videos for the eval tests.

- `tiny_backbone(metric)`: a two-layer random 3D-conv feature network wrapped in the same
  `VideoBackbone` the real FID-VID/FVD networks use, so features, statistics and the
  Fréchet distance run the product code on CPU in milliseconds.
- `random_lpips()`: the real LPIPS-VGG with a random trunk (built once per process: the
  VGG-16 constructor takes seconds).
- `moving_square_video(...)`: frames with a textured background and a square that moves
  one step per frame, so neighbouring frames differ and a one-frame shift is visible.
"""

from functools import cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..eval import EvalModels, LpipsMetric, VideoBackbone


class TinyVideoNet(nn.Module):
    def __init__(self, dim: int = 8, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv3d(3, 6, kernel_size=3, stride=(1, 2, 2), padding=1)
        self.conv2 = nn.Conv3d(6, dim, kernel_size=3, stride=2, padding=1)
        with torch.no_grad():
            for conv in (self.conv1, self.conv2):
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.2)
                conv.bias.zero_()

    def forward(self, x):
        x = torch.tanh(self.conv2(torch.relu(self.conv1(x))))
        return x.mean(dim=(2, 3, 4))


def tiny_backbone(metric: str = "fvd", size: int = 16, dim: int = 8, seed: int = 0) -> VideoBackbone:
    scaling = "kinetics_mean" if metric == "fid-vid" else "signed"
    return VideoBackbone(metric, TinyVideoNet(dim, seed), size, scaling, weights={"file": "tiny random network"})


@cache
def random_lpips(scaling: str = "disco") -> LpipsMetric:
    return LpipsMetric.random(scaling=scaling)


def tiny_models(lpips: bool = True) -> EvalModels:
    return EvalModels(
        lpips=random_lpips() if lpips else None,
        fid_vid=tiny_backbone("fid-vid", seed=1),
        fvd=tiny_backbone("fvd", seed=2),
    )


def moving_square_video(
    frames: int = 12,
    height: int = 64,
    width: int = 48,
    seed: int = 0,
    background=None,
    square=(30, 90, 220),
    start_row: int = 24,
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.empty((height, width, 3), dtype=np.uint8)
    if background is None:
        base[:] = rng.integers(60, 200, (height, width, 3), dtype=np.uint8)
    else:
        base[:] = background
    out = np.repeat(base[None], frames, axis=0)
    for t in range(frames):
        top = start_row + (t % 6)
        left = 4 + 3 * t % (width - 14)
        out[t, top : top + 10, left : left + 10] = square
    return out


def save_frames(folder: Path, frames: np.ndarray, start: int = 1) -> Path:
    """PNG frames named 0001.png... (the TikTok dataset's numbering)."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{index + start:04d}.png")
    return folder


def tiktok_dataset(root: Path, ids, frames: int = 12, height: int = 64, width: int = 48) -> Path:
    """`root/00335/images/0001.png ...`, the released layout. The top-left 16x16 block is
    red so the tiny DWPose finds its people in every frame; the square moves below it."""
    for video_id in ids:
        video = moving_square_video(frames, height, width, seed=video_id, background=(255, 0, 0))
        video[:, :16, :16] = (255, 0, 0)
        save_frames(root / f"{video_id:05d}" / "images", video)
    return root
