"""Audio side of MuseTalk 1.5: file -> 16 kHz mono -> whisper-tiny hidden states -> one
[50, 384] window per video frame (+ sinusoidal PE), the UNet's `encoder_hidden_states`.

`load_audio` reproduces `librosa.load(path, sr=16000)` (librosa 0.11 defaults: channels
averaged, soxr "HQ" resampling, float32) without librosa and its numba/llvmlite stack:
the ffmpeg binary of `imageio-ffmpeg` decodes any common container to float32 PCM at the
native rate, and `soxr` resamples exactly as librosa's `res_type="soxr_hq"` does. The file
is probed first (`dynamictrl.probe`: a regular local file in an allowed container, its
length from the stream data) and ffmpeg decodes it with the same allow-lists.
"""

import math
import os
import re
import subprocess
import tempfile
import warnings
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import soxr
import torch
from scipy.io import wavfile
from transformers import WhisperFeatureExtractor, WhisperModel

from .. import probe as media
from ..limits import LimitError, default_limits, how_to_raise

SAMPLE_RATE = 16000  # whisper's input rate
WHISPER_FPS = 50  # whisper encoder frames per second (20 ms each)

# A peak below -60 dBFS (0.1 % of full scale) is silence or a muted track, not speech.
SILENCE_DBFS = -60.0
SILENCE_PEAK = 10.0 ** (SILENCE_DBFS / 20.0)

ACCEPTED_FORMATS = media.AUDIO.accepted

# Each video frame sees 10 whisper frames (200 ms): 4 before the frame's start (80 ms),
# the frame's own 2 at 25 fps, and 4 after. MuseTalk was trained with exactly this window.
WINDOW_FRAMES = 10
LEFT_PAD_FRAMES = 4


class AudioError(media.MediaError):
    """An audio file could not be used; the message names the file, the problem and the fix."""


class AudioTooLongError(AudioError, LimitError):
    """The audio lasts longer than `Limits.max_audio_seconds`."""


PROBE_TIMEOUT_S = media.PROBE_TIMEOUT_S


# ---------------------------------------------------------------------------- loading


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE, max_seconds: float | None = None) -> np.ndarray:
    """The audio of `path` as float32 mono at `sample_rate`, equal to
    `librosa.load(path, sr=sample_rate)[0]` (librosa 0.11 defaults).

    The containers of `dynamictrl.probe.AUDIO` work, including the audio track of a
    video. Raises `AudioError` for a missing, refused (playlist, device, URL...),
    undecodable, audio-less, empty or silent file, and `AudioTooLongError` for one longer
    than `max_seconds` (default `Limits.max_audio_seconds`; `math.inf` for none): judged
    from the stream data before decoding, and the decoder stops just past the limit for
    files that do not say how long they are.
    """
    path = Path(path)
    if not isinstance(sample_rate, int) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}.")
    if max_seconds is None:
        max_seconds = default_limits().max_audio_seconds
    probed = probe_audio(path)
    declared = probed.audio_duration_s or probed.duration_s
    if declared > max_seconds:
        raise _too_long(path, f"lasts {_clock(declared)}", max_seconds)
    samples, native_rate = _decode(path, max_seconds, probed)
    if samples.shape[0] > max_seconds * native_rate:
        raise _too_long(path, f"lasts more than {_clock(max_seconds)} (its header did not say how long)", max_seconds)
    if samples.shape[0] == 0:
        raise AudioError(f"{path.name} contains no audio samples (0 s long): use a clip with speech.")
    # librosa.to_mono: mean over the channel axis of the (channels, samples) view, in float32.
    mono = np.mean(samples.T, axis=0) if samples.ndim == 2 else samples
    if not np.all(np.isfinite(mono)):
        raise AudioError(f"{path.name} contains NaN or infinite samples: re-export the audio (e.g. as 16-bit wav).")
    audio = _resample(mono, native_rate, sample_rate)

    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak < SILENCE_PEAK:
        level = "-inf" if peak == 0.0 else f"{20.0 * math.log10(peak):.1f}"
        raise AudioError(
            f"The audio of {path.name} is silent (peak {level} dBFS, below {SILENCE_DBFS:g} dBFS): a lip-sync of "
            f"silence would keep the mouth closed; use a clip with speech."
        )
    return audio


def _clock(seconds: float) -> str:
    if seconds >= 3600:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
    if seconds >= 60:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{seconds:.1f} s"


def _too_long(path: Path, how_long: str, max_seconds: float) -> AudioTooLongError:
    return AudioTooLongError(
        f"{path.name} {how_long}; lip-sync takes at most {_clock(max_seconds)} of speech. Trim it first, e.g. "
        f"`ffmpeg -i {path.name} -t 60 speech.wav`, or split it into parts; {how_to_raise('max_audio_seconds')}."
    )


def _unreadable(name: str, detail: str) -> AudioError:
    return AudioError(
        f"{name} could not be decoded: the format looks unsupported or the file is corrupt. "
        f"Accepted: {ACCEPTED_FORMATS}. ffmpeg said: {detail}"
    )


def probe_audio(path: str | Path) -> media.MediaProbe:
    """The file's streams (`dynamictrl.probe` with the audio allow-list); an AudioError
    for a refused or unreadable file and for one without an audio stream."""
    probed = media.probe(path, media.AUDIO, AudioError, unreadable=_unreadable)
    if not probed.has_audio:
        name = Path(os.fspath(path)).name
        raise AudioError(
            f"{name} has no audio stream (e.g. a silent video). Use a file with speech: {ACCEPTED_FORMATS}."
        )
    return probed


def _decode(
    path: Path, max_seconds: float = math.inf, probed: media.MediaProbe | None = None
) -> tuple[np.ndarray, int]:
    """All channels of the default audio stream as float32, (samples,) or (samples, channels),
    at the native rate. ffmpeg picks the stream the same way librosa's audioread fallback does.
    With a finite `max_seconds` the decoder stops one second past it (enough to tell that
    the audio is too long, without decoding hours of it). `probed`: the file's probe
    (made here if not given), whose allow-lists hold ffmpeg."""
    probed = probed or probe_audio(path)
    limit = ["-t", f"{max_seconds + 1:.3f}"] if math.isfinite(max_seconds) else []
    with tempfile.TemporaryDirectory(prefix="dynamictrl-audio-") as folder:
        target = Path(folder) / "decoded.wav"
        command = [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-nostdin",
            "-hide_banner",
            "-nostats",
            *probed.ffmpeg_input_options(),
            "-i",
            str(probed.path),
            *limit,
            "-vn",
            "-sn",
            "-dn",
            # No metadata chunk in the wav (scipy warns about chunks it does not know).
            "-map_metadata",
            "-1",
            "-fflags",
            "+bitexact",
            "-flags:a",
            "+bitexact",
            # 32-bit float keeps every decoded bit; rf64 lifts the 4 GiB wav limit for long clips.
            "-c:a",
            "pcm_f32le",
            "-rf64",
            "auto",
            "-f",
            "wav",
            "-y",
            str(target),
        ]
        result = subprocess.run(command, check=False, capture_output=True, text=True, errors="replace")
        if result.returncode != 0 or not target.is_file():
            raise _ffmpeg_error(path, result.stderr)
        with warnings.catch_warnings():
            # ffmpeg's rf64 placeholder (a JUNK chunk) is harmless; scipy would warn about it.
            warnings.simplefilter("ignore", wavfile.WavFileWarning)
            try:
                native_rate, samples = wavfile.read(target)
            except ValueError as error:
                raise AudioError(
                    f"{path.name}: ffmpeg decoded it but the result could not be read ({error}). "
                    f"Re-export the audio as a 16-bit wav and try again."
                ) from error
    return np.asarray(samples, dtype=np.float32), int(native_rate)


def _ffmpeg_error(path: Path, stderr: str) -> AudioError:
    # "[in#0 @ 0x55d1...] " prefixes only add noise to a message meant for a user.
    lines = [re.sub(r"^\[[^\]]* @ 0x[0-9a-f]+\]\s*", "", line.strip()) for line in stderr.splitlines() if line.strip()]
    tail = " | ".join(lines[-4:]) or "no message"
    opened = any(line.startswith("Input #0") for line in lines)
    has_audio = any(re.search(r"Stream #\d+:\d+.*: Audio:", line) for line in lines)
    if opened and not has_audio:
        return AudioError(
            f"{path.name} has no audio stream (e.g. a silent video). Use a file with speech: {ACCEPTED_FORMATS}."
        )
    if opened:
        return AudioError(
            f"The audio stream of {path.name} could not be decoded; the file may be truncated or corrupt. "
            f"Re-export it (e.g. as wav or mp3). ffmpeg said: {tail}"
        )
    return AudioError(
        f"{path.name} could not be decoded: the format looks unsupported or the file is corrupt. "
        f"Accepted: {ACCEPTED_FORMATS}. ffmpeg said: {tail}"
    )


def _resample(audio: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """librosa.resample(res_type="soxr_hq", fix=True): soxr HQ, then the length is forced to
    ceil(n * target / orig) (zero-padded or cut) and the input dtype restored."""
    if orig_rate == target_rate:
        return audio
    ratio = float(target_rate) / orig_rate
    length = int(np.ceil(audio.shape[-1] * ratio))
    resampled = soxr.resample(audio, orig_rate, target_rate, quality="soxr_hq")
    if resampled.shape[-1] > length:
        resampled = resampled[:length]
    elif resampled.shape[-1] < length:
        resampled = np.pad(resampled, (0, length - resampled.shape[-1]))
    return np.asarray(resampled, dtype=audio.dtype)


# ---------------------------------------------------------------------------- whisper


class WhisperAudioEncoder:
    """whisper-tiny's feature extractor and encoder (the decoder is dropped after loading).

    `encode` returns every hidden state of the encoder per 20 ms frame, as MuseTalk's
    audio processor does.
    """

    def __init__(self, feature_extractor: WhisperFeatureExtractor, encoder: torch.nn.Module):
        self.feature_extractor = feature_extractor
        self.encoder = encoder.eval().requires_grad_(False)

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> "WhisperAudioEncoder":
        """Loads a local `openai/whisper-tiny` folder (config.json, weights, preprocessor_config.json)."""
        folder = Path(folder)
        if not (folder / "config.json").is_file() or not (folder / "preprocessor_config.json").is_file():
            raise FileNotFoundError(
                f"{folder} is not a whisper checkpoint folder (config.json and preprocessor_config.json are "
                f"needed): download openai/whisper-tiny into it."
            )
        feature_extractor = WhisperFeatureExtractor.from_pretrained(folder)
        model = WhisperModel.from_pretrained(folder, dtype=dtype)
        encoder = model.get_encoder()
        del model  # frees the decoder: MuseTalk only reads the encoder's hidden states
        return cls(feature_extractor, encoder).to(device)

    def to(self, device: str | torch.device) -> "WhisperAudioEncoder":
        self.encoder.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.encoder.parameters()).dtype

    @property
    def num_hidden_states(self) -> int:
        """Embedding output + one per layer: 5 for whisper-tiny."""
        return self.encoder.config.encoder_layers + 1

    @torch.inference_mode()
    def encode(self, audio: np.ndarray) -> torch.Tensor:
        """16 kHz mono audio (L samples) -> [floor(L/16000*50), num_hidden_states, d_model] on the CPU,
        in the encoder's dtype.

        Hidden-state order: 0 is the embedding output (conv stem + positions), the last is the
        final layer's output after the encoder's LayerNorm. The audio is cut into
        consecutive 30 s segments encoded independently (no context across a boundary),
        as upstream does; each is zero-padded to 30 s by the feature extractor.
        """
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 1 or audio.size == 0:
            raise ValueError(f"encode needs 1-D mono audio with at least one sample, got shape {audio.shape}.")
        segment = self.feature_extractor.n_samples  # 30 s at 16 kHz
        features = []
        for start in range(0, audio.size, segment):
            mel = self.feature_extractor(
                audio[start : start + segment], sampling_rate=SAMPLE_RATE, return_tensors="pt"
            ).input_features
            output = self.encoder(mel.to(self.device, self.dtype), output_hidden_states=True)
            states = list(output.hidden_states)
            if len(states) != self.num_hidden_states:
                raise RuntimeError(
                    f"The whisper encoder returned {len(states)} hidden states, expected "
                    f"{self.num_hidden_states} (embedding output + {self.encoder.config.encoder_layers} layers)."
                )
            # MuseTalk was trained on transformers 4.x, whose last hidden state is the post-LayerNorm
            # output; pin that here instead of relying on the library's tie_last_hidden_states default.
            states[-1] = output.last_hidden_state
            features.append(torch.stack(states, dim=2)[0].cpu())
        return torch.cat(features, dim=0)[: num_video_frames(audio.size, WHISPER_FPS)]


# ---------------------------------------------------------------------------- per-frame windows


def num_video_frames(num_samples: int, fps: float, sample_rate: int = SAMPLE_RATE) -> int:
    """floor(duration * fps): the number of frames `num_samples` of audio last (upstream's formula)."""
    return math.floor(num_samples / sample_rate * fps)


def frame_windows(features: torch.Tensor, num_frames: int, fps: float) -> torch.Tensor:
    """[L50, H, d] whisper features -> [num_frames, 10*H, d] windows, one per video frame.

    Frame i sees whisper frames floor(i*50/fps)-4 .. floor(i*50/fps)+5, zeros outside the
    audio. Tokens are time-major (token = H*t + layer), as the UNet was trained.
    """
    if features.ndim != 3:
        raise ValueError(f"features must be [frames, hidden_states, d_model], got shape {tuple(features.shape)}.")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}.")
    if num_frames < 0:
        raise ValueError(f"num_frames must be >= 0, got {num_frames}.")
    length, states, width = features.shape
    if num_frames == 0:
        return features.new_zeros(0, WINDOW_FRAMES * states, width)
    # i*50 is an exact integer in float64 and the division is correctly rounded, so the floor
    # is exact for integer fps (upstream multiplies by a rounded 50/fps; same at 25 fps).
    starts = torch.floor(torch.arange(num_frames, dtype=torch.float64) * WHISPER_FPS / fps).long()
    # Upstream pads 2*ceil(50/fps) frames on the left, which equals 4 only at 25 fps and shifts
    # the window late at lower fps (a known lip-offset bug). We keep the trained alignment,
    # 4 whisper frames (80 ms) before the frame start, at every fps.
    right_pad = max(0, int(starts[-1]) + WINDOW_FRAMES - (LEFT_PAD_FRAMES + length))
    padded = torch.cat(
        [
            features.new_zeros(LEFT_PAD_FRAMES, states, width),
            features,
            features.new_zeros(right_pad, states, width),
        ]
    )
    index = starts[:, None] + torch.arange(WINDOW_FRAMES)[None, :]
    return padded[index].reshape(num_frames, WINDOW_FRAMES * states, width)


def positional_encoding(
    length: int, d_model: int, dtype: torch.dtype = torch.float32, device: str | torch.device | None = None
) -> torch.Tensor:
    """[length, d_model] sinusoidal PE: pe[p, 2k] = sin(p * 10000^(-2k/d)), pe[p, 2k+1] = cos(same).

    Computed in float32 with upstream's exact operations, then cast, so the fp16 table is
    bit-identical to upstream's `PositionalEncoding(...).half()`.
    """
    if d_model % 2:
        raise ValueError(f"d_model must be even for the sin/cos pairs, got {d_model}.")
    position = torch.arange(0, length, dtype=torch.float).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d_model, 2).float() * (-math.log(10000.0) / d_model))
    pe = torch.zeros(length, d_model)
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)
    return pe.to(device=device, dtype=dtype)


def audio_prompts(windows: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Windows [..., tokens, d_model] + PE over the tokens: the UNet's `encoder_hidden_states`.

    A plain addition in `dtype` (default: the windows' dtype), as upstream's inference scripts
    do (upstream training never adds it; the released weights are used with it).
    """
    dtype = dtype or windows.dtype
    windows = windows.to(dtype)
    return windows + positional_encoding(windows.shape[-2], windows.shape[-1], dtype, windows.device)
