"""Long videos: windows of one clip's length, fused at every denoising step.

DynamiCtrl was trained on 37-frame clips (10 latent frames) whose latent slot 0 holds the
reference image and whose pose frame 0 is the reference's own pose. A clip of any length
is therefore sampled as overlapping *windows*, each built exactly like a normal clip:

    window = [reference frame] + K driving frames        (window_frames = K + 1 = 4k + 1)

Latent frames of the whole clip (only latents of the whole clip are ever held; the
transformer and the VAE only see one window at a time):

    [front padding (if a window's latent count is odd)] [slot 0] [driving latent 0 .. N-1]
    \\_________________ "head": shared by every window ________/

Window w reads the head plus driving latents [start_w, stop_w). At every denoising step
each window is run through the transformer, its model output on the driving latents is
fused into the clip with linear-ramp weights (summing to 1 on every latent frame), the
head's outputs are averaged over the windows, and one scheduler step is taken on the
whole clip. Because the DPM step is affine in the model output, fusing the outputs is the
same as fusing the windows' stepped latents (progressive latent fusion, MimicMotion), and
the scheduler's state and its generator draws stay those of one clip.

After sampling, every window is decoded on its own ([slot 0] + its driving latents, so the
causal VAE sees the layout it expects), its decoded slot-0 frame is dropped (except the
first window's, which is output frame 0), its colours are matched to the first window
(mean/std per channel in LAB) and overlapping frames are cross-faded with the same ramp.

This module holds the plain math (layout, weights, colour, cross-fade, noise
re-initialisation); `DynamiCtrlPipeline._sample` is the one denoising loop, for a clip
of many windows and, as its one-window case, for a clip that fits one.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor

from .validation import check_frames, check_window

DEFAULT_OVERLAP_LATENTS = 2  # latent frames shared by neighbouring windows (= 8 pixel frames)


@dataclass(frozen=True)
class Window:
    index: int
    start: int  # first driving latent (0-based, slot 0 not counted)
    stop: int  # one past the last driving latent

    @property
    def frames(self) -> range:
        """Output pixel frames of this window's driving latents (frame 0 = reference)."""
        return range(1 + 4 * self.start, 1 + 4 * self.stop)


@dataclass(frozen=True)
class WindowPlan:
    num_frames: int  # pixel frames of the whole clip, 4k + 1, frame 0 = reference pose
    window_frames: int  # pixel frames of one window, 4k + 1, frame 0 = reference pose
    overlap: int  # latent frames shared by neighbouring windows (the last pair may share more)
    driving_latents: int  # N: latent frames of the clip after slot 0
    window_latents: int  # K / 4: driving latent frames per window
    windows: tuple[Window, ...]

    @property
    def num_windows(self) -> int:
        return len(self.windows)

    def overlaps(self) -> list[int]:
        """Latent frames shared by each pair of neighbouring windows."""
        return [a.stop - b.start for a, b in zip(self.windows, self.windows[1:])]

    def pixel_frames(self, window: Window) -> np.ndarray:
        """Clip frame indices a decoded window covers, its slot-0 frame (0) first."""
        return np.array([0, *window.frames])


def plan_windows(num_frames: int, window_frames: int, overlap: int, temporal_compression: int = 4) -> WindowPlan:
    """Windows of `window_frames` covering `num_frames` (both 4k+1, frame 0 = reference pose).

    Windows advance by `window_latents - overlap` latent frames. When the clip does not
    divide evenly, the last window is shifted back to end at the clip's end (it then
    overlaps its neighbour by more than `overlap`), so every window has the trained
    length and the model never sees a short clip. A clip that fits one window gets one.
    """
    k = temporal_compression
    check_frames(num_frames, k=k)
    check_window(window_frames, overlap, "overlap_frames", k)
    driving = (num_frames - 1) // k
    per_window = (window_frames - 1) // k
    if driving <= per_window:
        return WindowPlan(num_frames, window_frames, overlap, driving, driving, (Window(0, 0, driving),))
    stride = per_window - overlap
    count = math.ceil((driving - per_window) / stride) + 1
    starts = [i * stride for i in range(count - 1)] + [driving - per_window]
    windows = tuple(Window(i, s, s + per_window) for i, s in enumerate(starts))
    return WindowPlan(num_frames, window_frames, overlap, driving, per_window, windows)


def single_window_plan(num_frames: int, temporal_compression: int = 4) -> WindowPlan:
    """The plan of a clip sampled as one window of its own length (any 4k+1, even 1)."""
    k = temporal_compression
    check_frames(num_frames, k=k)
    driving = (num_frames - 1) // k
    return WindowPlan(num_frames, num_frames, 0, driving, driving, (Window(0, 0, driving),))


def ramp_weights(ranges: list[tuple[int, int]], length: int) -> list[np.ndarray]:
    """Per-range weights (one array per range, over its positions) that sum to 1 at every
    position of [0, length) covered by the ranges.

    Each range ramps up linearly across its overlap with the previous range and down
    across its overlap with the next one ((j + 1) / (o + 1) on o shared positions), so two
    neighbours' weights add up to 1 by construction; the sum is then normalised, which
    also covers positions shared by three ranges. Ranges must be sorted by start.
    """
    raw = []
    for i, (start, stop) in enumerate(ranges):
        n = stop - start
        w = np.ones(n, dtype=np.float64)
        left = ranges[i - 1][1] - start if i > 0 else 0
        right = stop - ranges[i + 1][0] if i + 1 < len(ranges) else 0
        left, right = max(0, min(left, n)), max(0, min(right, n))
        if left:
            w[:left] *= np.arange(1, left + 1) / (left + 1)
        if right:
            w[n - right :] *= np.arange(right, 0, -1) / (right + 1)
        raw.append(w)
    total = np.zeros(length, dtype=np.float64)
    for (start, stop), w in zip(ranges, raw):
        total[start:stop] += w
    if (total[min(s for s, _ in ranges) : max(e for _, e in ranges)] <= 0).any():
        raise ValueError("The ranges leave a gap: every position between them must be covered.")
    return [w / total[start:stop] for (start, stop), w in zip(ranges, raw)]


def latent_fusion_weights(plan: WindowPlan) -> list[np.ndarray]:
    """Weights of each window's driving latents; they sum to 1 on every driving latent."""
    return ramp_weights([(w.start, w.stop) for w in plan.windows], plan.driving_latents)


def pixel_fusion_weights(plan: WindowPlan, temporal_compression: int = 4) -> list[np.ndarray]:
    """Cross-fade weights of each window's decoded driving frames (its slot-0 frame excluded)."""
    k = temporal_compression
    return ramp_weights([(k * w.start, k * w.stop) for w in plan.windows], k * plan.driving_latents)


# ------------------------------------------------------------------ colour
def _to_lab(frames: np.ndarray) -> np.ndarray:
    """(..., H, W, 3) RGB float in [0, 1] -> LAB float32 (L 0..100, a/b about -127..127)."""
    flat = np.ascontiguousarray(frames, dtype=np.float32).reshape(-1, frames.shape[-2], 3)
    return cv2.cvtColor(flat, cv2.COLOR_RGB2LAB).reshape(frames.shape)


def _from_lab(lab: np.ndarray) -> np.ndarray:
    flat = np.ascontiguousarray(lab, dtype=np.float32).reshape(-1, lab.shape[-2], 3)
    return cv2.cvtColor(flat, cv2.COLOR_LAB2RGB).reshape(lab.shape)


def lab_statistics(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation per LAB channel of RGB frames (T, H, W, 3) in [0, 1]."""
    lab = _to_lab(frames).reshape(-1, 3).astype(np.float64)
    return lab.mean(axis=0), lab.std(axis=0)


def match_color(frames: np.ndarray, target_mean: np.ndarray, target_std: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Moves the LAB mean/std of `frames` (T, H, W, 3) RGB in [0, 1] to the target's:
    one affine map per LAB channel for the whole window (no per-frame flicker).
    Returns float32 RGB clipped to [0, 1]."""
    lab = _to_lab(frames)
    mean = lab.reshape(-1, 3).mean(axis=0, dtype=np.float64)
    std = lab.reshape(-1, 3).std(axis=0, dtype=np.float64)
    scale = np.where(std > eps, target_std / np.maximum(std, eps), 1.0)
    # Frame by frame, written back into `lab`: the map is per pixel (so the bits are those
    # of mapping the whole window at once), and its float64 temporaries stay one frame
    # big instead of twice the window.
    for t in range(len(lab)):
        lab[t] = np.clip(_from_lab(((lab[t] - mean) * scale + target_mean).astype(np.float32)), 0.0, 1.0)
    return lab


# ------------------------------------------------------------------ stitching decoded windows
def frames_to_uint8(frames: np.ndarray, out: np.ndarray | None = None, overwrite_input: bool = False) -> np.ndarray:
    """RGB float frames in [0, 1] -> uint8, `round(clip(x, 0, 1) * 255)` (round half to even).

    Every uint8 output goes through these operations (`pipeline.frames_to_uint8_tensor` is
    their torch twin), so a uint8 video equals converting the float video afterwards, bit
    for bit. `out`: a uint8 array to write into; `overwrite_input`: use `frames` as the
    workspace, so the conversion allocates no float memory of its own."""
    work = np.clip(frames, 0, 1, out=frames if overwrite_input else None)
    work *= 255
    np.round(work, out=work)
    if out is None:
        return work.astype(np.uint8)
    np.copyto(out, work, casting="unsafe")
    return out


class FrameStitcher:
    """Accumulates decoded windows into the clip: window 0's slot-0 frame becomes frame 0,
    every window's driving frames are colour-matched to window 0 (optional) and
    cross-faded with `pixel_fusion_weights`.

    `frames` is the clip on the host, (B, T, H, W, 3) RGB, allocated once: float32 in
    [0, 1] by default, or uint8 (`frames_to_uint8`) with `dtype=np.uint8`, a quarter of
    the memory for a long clip. Windows must be added in order. A frame is written to
    `frames` as soon as no later window covers it; only the frames the next window still
    blends into (its overlap with the windows added so far) wait in `pending`, float32,
    so float memory is bounded by one window whatever the clip's length.

    With `sink`, `frames` is None and each run of finished frames is handed to
    `sink(start, frames)` instead ((B, n, H, W, 3) in `dtype`, clip frames [start,
    start + n), in order): the clip itself is never held."""

    def __init__(
        self,
        plan: WindowPlan,
        batch: int,
        height: int,
        width: int,
        color_match: bool = True,
        dtype: np.dtype | type = np.float32,
        sink: Callable[[int, np.ndarray], None] | None = None,
    ):
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.uint8):
            raise ValueError(f"FrameStitcher stores float32 or uint8 frames, not {dtype}.")
        self.plan = plan
        self.color_match = color_match
        self.weights = pixel_fusion_weights(plan)
        self.dtype = dtype
        self.sink = sink
        # With a sink the clip is never held: finished frames go to it instead.
        self.frames = None if sink is not None else np.zeros((batch, plan.num_frames, height, width, 3), dtype=dtype)
        self.reference_stats: list[tuple[np.ndarray, np.ndarray]] | None = None
        # Weighted sums of the frames [pending_start, pending_start + len(pending)) so far.
        self.pending: np.ndarray | None = None
        self.pending_start = 1
        self.added = 0

    @property
    def done(self) -> bool:
        return self.added == self.plan.num_windows

    def _store(self, start: int, frames: np.ndarray) -> None:
        """Writes finished frames; `frames` is scratch of `add` and may be overwritten."""
        stop = start + frames.shape[1]
        if self.sink is not None:
            self.sink(start, frames_to_uint8(frames, overwrite_input=True) if self.dtype == np.uint8 else frames.copy())
        elif self.dtype == np.uint8:
            frames_to_uint8(frames, out=self.frames[:, start:stop], overwrite_input=True)
        else:
            self.frames[:, start:stop] = frames

    def add(self, window: Window, frames: np.ndarray) -> None:
        """`frames`: (B, window_frames, H, W, 3) RGB float32 in [0, 1], frame 0 = the slot-0
        frame (not modified)."""
        expected = 1 + len(window.frames)
        if frames.shape[1] != expected:
            raise ValueError(f"window {window.index} has {frames.shape[1]} frames, expected {expected}.")
        if window.index != self.added:
            raise ValueError(f"windows must be added in order: got window {window.index}, expected {self.added}.")
        frames = np.asarray(frames, dtype=np.float32)
        if self.color_match and self.reference_stats is None:
            self.reference_stats = [lab_statistics(clip) for clip in frames]
        if window.index == 0:
            self._store(0, frames[:, :1].copy())  # a copy: `_store` may work in place
        weight = self.weights[window.index].astype(np.float32)[:, None, None, None]
        # One clip of the batch at a time, so colour matching holds one clip's copy at most.
        blended = np.empty((frames.shape[0], len(window.frames), *frames.shape[2:]), dtype=np.float32)
        for b, clip in enumerate(frames):
            if self.color_match and window.index > 0:
                clip = match_color(clip, *self.reference_stats[b])
            np.multiply(weight, clip[1:], out=blended[b])
        start = window.frames.start
        if self.pending is not None:
            # Windows start in order and all have one length, so what is pending begins at
            # this window's first frame and ends inside it. Float addition commutes, so
            # adding this window to the earlier windows' sum gives the bits that
            # accumulating the windows in order into a zeroed clip gave.
            if self.pending_start != start:
                raise ValueError(
                    f"window {window.index} starts at frame {start}, the pending frames at "
                    f"{self.pending_start}: the plan's windows are not in order."
                )
            blended[:, : self.pending.shape[1]] += self.pending
        self.added += 1
        final = self.plan.windows[self.added].frames.start if not self.done else window.frames.stop
        # A copy (taken before `_store` may overwrite its scratch), so the rest of this
        # window's float frames can be freed now.
        self.pending = blended[:, final - start :].copy() if not self.done else None
        self.pending_start = final
        self._store(start, blended[:, : final - start])


# ------------------------------------------------------------------ noise re-initialisation
def gaussian_low_pass(shape: tuple[int, int, int], d_s: float = 0.25, d_t: float = 0.25) -> torch.Tensor:
    """FreeInit's Gaussian low-pass mask over (F, H, W) of a centred (fftshift-ed) spectrum."""
    frames, height, width = shape
    if d_s == 0 or d_t == 0:
        return torch.zeros(shape)
    t = (d_s / d_t) * (2 * torch.arange(frames) / frames - 1)
    h = 2 * torch.arange(height) / height - 1
    w = 2 * torch.arange(width) / width - 1
    d2 = t[:, None, None] ** 2 + h[None, :, None] ** 2 + w[None, None, :] ** 2
    return torch.exp(-d2 / (2 * d_s**2))


def freq_mix(low_source: torch.Tensor, high_source: torch.Tensor, low_pass: torch.Tensor) -> torch.Tensor:
    """Low frequencies of `low_source` + high frequencies of `high_source`, over the
    frame, height and width axes of (B, F, C, H, W) latents (each channel on its own)."""
    dims = (1, 3, 4)
    mask = low_pass.to(low_source.device)[None, :, None, :, :]
    low = torch.fft.fftshift(torch.fft.fftn(low_source.float(), dim=dims), dim=dims) * mask
    high = torch.fft.fftshift(torch.fft.fftn(high_source.float(), dim=dims), dim=dims) * (1 - mask)
    return torch.fft.ifftn(torch.fft.ifftshift(low + high, dim=dims), dim=dims).real


def reinit_noise(
    noise: torch.Tensor,
    image_latents: torch.Tensor,
    scheduler,
    generator: torch.Generator | list[torch.Generator] | None,
    d_s: float = 0.25,
    d_t: float = 0.25,
) -> torch.Tensor:
    """FreeInit-style initial noise (the official `--re_init_noise_latent`).

    The reference latent (slot 0, zeros elsewhere) is noised to a random training
    timestep with `noise`; the low frequencies of that (over frames, height, width) are
    kept and the high frequencies are replaced by fresh Gaussian noise. This lends the
    start of sampling the reference's coarse layout and colour.

    Differences from the official code, on purpose: the timestep and the fresh noise are
    drawn from the call's generator (the official draws the timestep from the global
    RNG, so a seed did not reproduce); the FFT runs over frames/height/width (the official
    ran it over channels/height/width by mistaking the latent layout, and fixed the frame
    count at 10); and one video is sampled from the new noise (the official sampled twice,
    from the new and the original noise, and returned both videos one after the other).
    """
    gen = generator[0] if isinstance(generator, list) else generator
    gen_device = gen.device if gen is not None else torch.device("cpu")
    batch = noise.shape[0]
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=gen, device=gen_device).to(
        noise.device
    )
    noisy_reference = scheduler.add_noise(image_latents.to(noise.dtype), noise, timesteps)
    fresh = randn_tensor(noise.shape, generator=generator, device=noise.device, dtype=noise.dtype)
    mask = gaussian_low_pass((noise.shape[1], noise.shape[3], noise.shape[4]), d_s, d_t)
    return freq_mix(noisy_reference, fresh, mask).to(noise.dtype)
