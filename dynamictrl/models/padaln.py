"""Pose-adaptive LayerNorm (PadaLN), the paper's Eq. 2-4.

The pose tokens are normalised and modulated by the timestep embedding, exactly like
adaLN does for the video tokens, so that they match the statistics of the noisy
latents they are added to. Parameter names (`linear`, `norm`) are those of the released
checkpoints (`transformer_blocks.{i}.control_norm1.*`).
"""

import torch
from torch import nn


class PoseAdaptiveLayerNorm(nn.Module):
    def __init__(self, conditioning_dim: int, embedding_dim: int, elementwise_affine: bool = True, eps: float = 1e-5):
        super().__init__()
        self.silu = nn.SiLU()
        self.linear = nn.Linear(conditioning_dim, 3 * embedding_dim, bias=True)
        self.norm = nn.LayerNorm(embedding_dim, eps=eps, elementwise_affine=elementwise_affine)

    def forward(self, pose_tokens: torch.Tensor, temb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the modulated pose tokens `n` (Eq. 3) and the gate `delta` (Eq. 4)."""
        shift, scale, gate = self.linear(self.silu(temb)).chunk(3, dim=1)
        modulated = self.norm(pose_tokens) * (1 + scale[:, None, :]) + shift[:, None, :]
        return modulated, gate[:, None, :]
