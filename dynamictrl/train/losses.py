"""The diffusion objective of CogVideoX / DynamiCtrl training.

The transformer predicts v (the scheduler's `prediction_type` is "v_prediction"). As in
the CogVideoX training code, the prediction is turned into x0 with the scheduler's
`alphas_cumprod` and compared with the clean latents under the weight 1 / (1 - alpha_bar):

    x0_hat = sqrt(a) x_t - sqrt(1 - a) v_hat,   loss = mean(1 / (1 - a) * (x0_hat - x0)^2)

Since x0_hat - x0 = sqrt(1 - a) (v - v_hat), this is exactly the plain v-MSE; the x0 form
is kept because it is the official one, and it is evaluated in float32 so that the large
weights near t = 0 (1 / (1 - a) ~ 1.2e3) do not amplify bf16 rounding.
"""

import torch


def alphas_cumprod_at(scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    return scheduler.alphas_cumprod.to(device=timesteps.device, dtype=torch.float32)[timesteps]


def add_noise(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(a) x0 + sqrt(1 - a) noise, per sample (the scheduler's forward process)."""
    a = alphas_cumprod_at(scheduler, timesteps).view(-1, *([1] * (latents.ndim - 1)))
    noisy = a.sqrt() * latents.float() + (1 - a).sqrt() * noise.float()
    return noisy.to(latents.dtype)


def v_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """v = sqrt(a) noise - sqrt(1 - a) x0."""
    a = alphas_cumprod_at(scheduler, timesteps).view(-1, *([1] * (latents.ndim - 1)))
    return a.sqrt() * noise.float() - (1 - a).sqrt() * latents.float()


def v_prediction_loss(
    scheduler,
    model_output: torch.Tensor,
    noisy_latents: torch.Tensor,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
) -> torch.Tensor:
    """Per-sample loss (B,): mean over all other dims of 1/(1-a) * (x0_hat - x0)^2."""
    a = alphas_cumprod_at(scheduler, timesteps).view(-1, *([1] * (latents.ndim - 1)))
    x0_hat = a.sqrt() * noisy_latents.float() - (1 - a).sqrt() * model_output.float()
    weights = 1.0 / (1.0 - a)
    return (weights * (x0_hat - latents.float()) ** 2).flatten(1).mean(dim=1)
