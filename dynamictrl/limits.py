"""How large an input the product accepts, in one place, checked before anything large
is decoded: an 8K or two-hour video, a two-hour audio file, a decompression-bomb image or
a 10,000-character prompt is refused in milliseconds, with the limit and how to raise it.

    from dynamictrl.limits import Limits
    studio = Studio(limits=Limits(max_video_seconds=1200))   # or DYNAMICTRL_MAX_VIDEO_SECONDS=1200

Every field can be set through the environment (`DYNAMICTRL_` + the field name in capitals,
e.g. `DYNAMICTRL_MAX_IMAGE_PIXELS=80000000`); `Limits.from_env()` reads them, and a
`Studio` built without `limits=` uses it. A limit is lifted by setting it very large.

Where each is enforced: videos in `dynamictrl.video` (from the stream data of the safe
probe, `dynamictrl.probe`, before frames are decoded), images in `dynamictrl.images`
(after the header is read, before pixels are), audio in `dynamictrl.lipsync.audio` (the
same probe, then the decoder stops at the limit),
prompts here (`check_prompt`), frames per job and every other setting's rule in
`dynamictrl.validation` (called by `Studio` before any model or file is touched).
`max_upload_mb` is the web server's.
"""

import math
import numbers
import os
from dataclasses import dataclass, fields

ENV_PREFIX = "DYNAMICTRL_"


class LimitError(ValueError):
    """An input is larger than a configured limit; the message names the input, the limit,
    the setting that raises it, and how to make the input smaller."""


@dataclass(frozen=True)
class Limits:
    # The web app refuses larger uploads outright (gradio's max_file_size); a 30 s 1080p
    # dance clip is ~50 MB.
    max_upload_mb: float = 200.0
    # Input videos (driving, pose and lip-sync videos), judged from the container header.
    max_video_seconds: float = 600.0
    # 4K (3840x2160, also DCI 4096x2160) passes; 8K is refused. Generation uses at most
    # 2048 px, so larger sources only cost decoding time and memory.
    max_video_side: int = 4096
    max_video_pixels: int = 4096 * 2160
    # Frames a video file may hold (header duration x fps): 10 min at 60 fps. Bounds the
    # decoding work of a short clip with an absurd frame rate too.
    max_video_frames: int = 36_000
    # Frames one job may ask for (generation, pose extraction): 2 min 8 s at 16 fps, about
    # 2 h of 768x1360 sampling on one H20, inside the service's 3 h job deadline.
    max_frames: int = 2049
    # Reference images: a 48 MP phone photo (8064x6048) passes; a PNG that declares
    # gigapixels in a few KB is refused before its pixels are inflated. PIL's own
    # decompression-bomb threshold is set to the same number (see `apply_pil_limit`).
    max_image_pixels: int = 50_000_000
    # Speech for lip-sync.
    max_audio_seconds: float = 600.0
    # The text encoder (T5) reads 226 tokens, about 1000 characters of English; a prompt
    # this long is refused before tokenizing. `check_prompt_tokens` checks the exact count.
    max_prompt_chars: int = 2000

    def __post_init__(self):
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0 or math.isnan(value):
                raise ValueError(f"Limits.{item.name} must be a positive number, got {value!r}.")

    @classmethod
    def from_env(cls, environ=None, **overrides) -> "Limits":
        """The defaults, overridden by `DYNAMICTRL_<FIELD>` variables, then by `overrides`."""
        environ = os.environ if environ is None else environ
        values = {}
        for item in fields(cls):
            text = environ.get(env_name(item.name))
            if text is None or not text.strip():
                continue
            kind = int if item.type in (int, "int") else float
            try:
                values[item.name] = kind(text.strip())
            except ValueError:
                raise ValueError(
                    f"{env_name(item.name)}={text!r} is not a{'n integer' if kind is int else ' number'}: "
                    f"set it to e.g. {getattr(cls, item.name)!r} or unset it."
                ) from None
        values.update(overrides)
        return cls(**values)


def env_name(field_name: str) -> str:
    """The environment variable that sets a `Limits` field."""
    return ENV_PREFIX + field_name.upper()


def how_to_raise(field_name: str) -> str:
    """The clause every limit message ends with: which setting raises the limit."""
    return f"the limit is {env_name(field_name)} (or Studio(limits=Limits({field_name}=...)))"


def default_limits() -> Limits:
    """`Limits.from_env()`, read at each call so a changed environment takes effect."""
    return Limits.from_env()


def apply_pil_limit(limits: Limits) -> None:
    """Sets PIL's process-wide decompression-bomb threshold to `limits.max_image_pixels`, so
    PIL refuses the same images everywhere in the process (the web framework's own image
    uploads too): it warns above the threshold and refuses above twice it, and
    `dynamictrl.images` turns both into a `LimitError`."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = int(limits.max_image_pixels)


# ---------------------------------------------------------------------------- prompts
def check_prompt(text, limits: Limits, what: str = "prompt") -> None:
    """A prompt must be text that UTF-8 can encode, at most `limits.max_prompt_chars` long."""
    if isinstance(text, (bytes, bytearray)):
        raise ValueError(
            f"The {what} is bytes, not text: decode it first, e.g. {what}.decode('utf-8') "
            "(or .decode('latin-1') for older files)."
        )
    if not isinstance(text, str):
        raise ValueError(f"The {what} must be text (str), got {type(text).__name__}.")
    if len(text) > limits.max_prompt_chars:
        raise LimitError(
            f"The {what} is {len(text):,} characters, more than the {limits.max_prompt_chars:,} allowed; the text "
            f"encoder reads only its first 226 tokens (about 1000 characters) anyway. Shorten it to the essentials "
            f"(who, clothing, setting, motion); {how_to_raise('max_prompt_chars')}."
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(
            f"The {what} holds bytes that are not valid UTF-8 text (character {error.start}, {text[error.start]!r}): "
            "it was probably read with the wrong encoding. Save the text as UTF-8 and try again."
        ) from None


def check_prompt_tokens(text: str, tokenizer, max_tokens: int = 226, what: str = "prompt") -> int:
    """The T5 token count of `text` (</s> included); a ValueError when it exceeds the
    window the text encoder reads, which would otherwise cut the prompt silently."""
    ids = tokenizer(text, add_special_tokens=True).input_ids
    if len(ids) > max_tokens:
        kept = tokenizer.decode(ids[: max_tokens - 1], skip_special_tokens=True)
        tail = kept[-60:].lstrip()
        raise ValueError(
            f"The {what} is {len(ids)} T5 tokens; the text encoder reads only {max_tokens}, so everything after "
            f'"…{tail}" would be ignored. Shorten it (about {len(ids) - max_tokens} tokens too many).'
        )
    return len(ids)
