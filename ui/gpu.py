"""GPU jobs on Hugging Face Spaces: `spaces.GPU(duration=...)` when the `spaces`
package is importable (ZeroGPU hardware), a no-op decorator everywhere else."""

import math

from dynamictrl import presets
from dynamictrl.manager import video_tokens
from dynamictrl.studio import GenerateSettings

# Published cost on one H20: the official size and length (768x1360, 37 frames) at 25 steps
# took 3 min 50 s (docs/memory-and-speed.md).
REFERENCE_SECONDS = 230.0
_OFFICIAL = presets.size_preset("portrait")
REFERENCE_TOKENS = video_tokens(GenerateSettings.num_frames, _OFFICIAL.height, _OFFICIAL.width)
MODEL_LOAD_SECONDS = 60.0  # moving ~22 GB of weights onto the GPU on first use


def estimate_generation_seconds(steps: int, num_frames: int, width: int, height: int) -> int:
    """A generous GPU-time estimate for one generation (ZeroGPU kills jobs that overrun)."""
    scale = video_tokens(num_frames, height, width) / REFERENCE_TOKENS
    denoise = REFERENCE_SECONDS * scale * max(steps, 1) / 25
    return int(min(max(math.ceil(1.5 * denoise + MODEL_LOAD_SECONDS), 60), 1800))


def gpu_job(duration):
    """Decorator: `spaces.GPU(duration=duration)` if `spaces` is installed, else identity.
    `duration` is seconds or a function of the wrapped function's arguments."""
    try:
        import spaces
    except ImportError:
        return lambda function: function
    return spaces.GPU(duration=duration)
