"""Lip-sync audio path (dynamictrl/lipsync/audio.py): file loading like librosa.load(sr=16000),
whisper hidden states like MuseTalk's AudioProcessor, per-frame windows and the PE."""

import math
import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from scipy.io import wavfile

from dynamictrl.lipsync.audio import (
    SILENCE_DBFS,
    AudioError,
    WhisperAudioEncoder,
    audio_prompts,
    frame_windows,
    load_audio,
    num_video_frames,
    positional_encoding,
)
from dynamictrl.testing.whisper import ENCODER_SHAPE, save_tiny_whisper

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
HIDDEN = ENCODER_SHAPE["encoder_layers"] + 1  # 5, as whisper-tiny
D_MODEL = ENCODER_SHAPE["d_model"]


def ffmpeg(*args: str) -> None:
    subprocess.run([FFMPEG, "-v", "error", "-nostdin", "-y", *args], check=True, capture_output=True)


def sine(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * freq * np.arange(round(seconds * rate)) / rate)


def dominant_frequency(audio: np.ndarray, rate: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.argmax(spectrum)) * rate / len(audio)


@pytest.fixture(scope="module")
def encoders() -> str:
    return subprocess.run([FFMPEG, "-hide_banner", "-encoders"], check=True, capture_output=True, text=True).stdout


def need_encoder(encoders: str, name: str) -> None:
    if f" {name} " not in encoders:
        pytest.skip(f"the bundled ffmpeg has no {name} encoder")


# ---------------------------------------------------------------------------- load_audio


def test_wav_int16_at_16k_is_returned_unchanged(tmp_path):
    data = (sine(440, 1.3, 16000) * 32767).astype(np.int16)
    wavfile.write(tmp_path / "a.wav", 16000, data)
    audio = load_audio(tmp_path / "a.wav")
    assert audio.dtype == np.float32 and audio.ndim == 1
    np.testing.assert_array_equal(audio, data.astype(np.float32) / 32768)


def test_wav_float_keeps_every_bit(tmp_path):
    data = sine(440, 0.7, 16000).astype(np.float32) + np.float32(1e-7)
    wavfile.write(tmp_path / "a.wav", 16000, data)
    np.testing.assert_array_equal(load_audio(str(tmp_path / "a.wav")), data)


@pytest.mark.parametrize("channels", [2, 3])
def test_channels_are_averaged(tmp_path, channels):
    rng = np.random.default_rng(channels)
    data = (rng.uniform(-0.5, 0.5, size=(8000, channels))).astype(np.float32)
    wavfile.write(tmp_path / "multi.wav", 16000, data)
    audio = load_audio(tmp_path / "multi.wav")
    np.testing.assert_array_equal(audio, np.mean(data.T, axis=0))  # librosa.to_mono
    assert not np.array_equal(audio, data[:, 0])


@pytest.mark.parametrize("rate", [22050, 44100, 48000])
def test_other_rates_are_resampled_to_16k(tmp_path, rate):
    data = (sine(440, 1.3, rate) * 32767).astype(np.int16)
    wavfile.write(tmp_path / "a.wav", rate, data)
    audio = load_audio(tmp_path / "a.wav")
    assert audio.dtype == np.float32
    assert len(audio) == math.ceil(len(data) * 16000 / rate) == 20800  # librosa's fix_length
    # soxr HQ is a linear-phase band-limited resampler: the interior equals the ideal 16 kHz sine.
    expected = sine(440, 1.3, 16000)
    np.testing.assert_allclose(audio[400:-400], expected[400:-400], atol=2e-3)


def test_resampled_length_is_rounded_up_like_librosa(tmp_path):
    # soxr gives round(88203 * 16000 / 44100) = 32001 samples; librosa zero-pads to the ceil.
    data = (sine(440, 88203 / 44100, 44100) * 32767).astype(np.int16)
    assert len(data) == 88203
    wavfile.write(tmp_path / "odd.wav", 44100, data)
    audio = load_audio(tmp_path / "odd.wav")
    assert len(audio) == 32002 and audio[-1] == 0.0


def test_load_audio_at_another_rate(tmp_path):
    wavfile.write(tmp_path / "a.wav", 16000, sine(440, 1.0, 16000).astype(np.float32))
    audio = load_audio(tmp_path / "a.wav", sample_rate=8000)
    assert len(audio) == 8000
    assert dominant_frequency(audio, 8000) == pytest.approx(440, abs=2)


@pytest.fixture(scope="module")
def stereo_source(tmp_path_factory) -> Path:
    """1.3 s of 44.1 kHz stereo, 440 Hz left and right (different levels), as int16 wav."""
    path = tmp_path_factory.mktemp("src") / "source.wav"
    left, right = sine(440, 1.3, 44100, 0.6), sine(440, 1.3, 44100, 0.2)
    wavfile.write(path, 44100, (np.stack([left, right], axis=1) * 32767).astype(np.int16))
    return path


@pytest.mark.parametrize(
    "name, codec, extra",
    [
        ("a.flac", "flac", []),
        ("a.mp3", "libmp3lame", ["-b:a", "128k"]),
        ("a.ogg", "libvorbis", []),
        ("a.opus", "libopus", ["-ar", "48000"]),
        ("a.m4a", "aac", []),
    ],
)
def test_compressed_formats(tmp_path, stereo_source, encoders, name, codec, extra):
    need_encoder(encoders, codec)
    ffmpeg("-i", str(stereo_source), "-c:a", codec, *extra, str(tmp_path / name))
    audio = load_audio(tmp_path / name)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - 20800) <= 320  # codec priming is trimmed: within 20 ms of 1.3 s
    assert dominant_frequency(audio) == pytest.approx(440, abs=2)
    # The channel mean of 0.6 and 0.2 amplitude: 0.4, i.e. an RMS of 0.283 (one channel: 0.42 or
    # 0.14; lossy stereo coding moves it a few %).
    assert np.sqrt(np.mean(audio[1600:-1600] ** 2)) == pytest.approx(0.4 / np.sqrt(2), rel=0.1)
    if codec == "flac":  # lossless: the very same samples as the wav
        np.testing.assert_array_equal(audio, load_audio(stereo_source))


@pytest.mark.parametrize("name, video_codec", [("clip.mp4", "libx264"), ("clip.mov", "mpeg4")])
def test_audio_track_of_a_video(tmp_path, stereo_source, encoders, name, video_codec):
    need_encoder(encoders, video_codec)
    need_encoder(encoders, "aac")
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=64x64:rate=25:duration=1.3",
        "-i",
        str(stereo_source),
        "-c:v",
        video_codec,
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        str(tmp_path / name),
    )
    audio = load_audio(tmp_path / name)
    assert abs(len(audio) - 20800) <= 320
    assert dominant_frequency(audio) == pytest.approx(440, abs=2)


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match="not found") as error:
        load_audio(tmp_path / "nowhere.wav")
    assert "nowhere.wav" in str(error.value)


def test_text_file_named_wav(tmp_path):
    (tmp_path / "notes.wav").write_text("this is not audio\n" * 20)
    with pytest.raises(AudioError) as error:
        load_audio(tmp_path / "notes.wav")
    message = str(error.value)
    assert "notes.wav" in message and "unsupported or the file is corrupt" in message
    assert "mp3" in message and "m4a" in message  # the accepted formats
    assert "ffmpeg said:" in message and "0x" not in message


def test_video_without_audio(tmp_path, encoders):
    need_encoder(encoders, "libx264")
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=64x64:rate=25:duration=0.5",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        str(tmp_path / "mute.mp4"),
    )
    with pytest.raises(AudioError, match="mute.mp4 has no audio stream"):
        load_audio(tmp_path / "mute.mp4")


def test_empty_wav(tmp_path):
    wavfile.write(tmp_path / "empty.wav", 16000, np.zeros(0, np.int16))
    with pytest.raises(AudioError, match="empty.wav contains no audio samples"):
        load_audio(tmp_path / "empty.wav")


def test_non_finite_samples(tmp_path):
    data = sine(440, 0.5, 16000).astype(np.float32)
    data[100] = np.nan
    wavfile.write(tmp_path / "nan.wav", 16000, data)
    with pytest.raises(AudioError, match="NaN or infinite"):
        load_audio(tmp_path / "nan.wav")


@pytest.mark.parametrize("level_db", [None, -70.0])
def test_silence_is_refused(tmp_path, level_db):
    data = np.zeros(16000, np.float32) if level_db is None else sine(440, 1.0, 16000, 10 ** (level_db / 20))
    wavfile.write(tmp_path / "quiet.wav", 16000, data.astype(np.float32))
    with pytest.raises(AudioError) as error:
        load_audio(tmp_path / "quiet.wav")
    message = str(error.value)
    assert "quiet.wav" in message and "silent" in message and "use a clip with speech" in message


def test_quiet_speech_above_the_threshold_is_kept(tmp_path):
    assert SILENCE_DBFS == -60.0
    data = sine(440, 1.0, 16000, 10 ** (-50 / 20)).astype(np.float32)
    wavfile.write(tmp_path / "soft.wav", 16000, data)
    np.testing.assert_array_equal(load_audio(tmp_path / "soft.wav"), data)


# ---------------------------------------------------------------------------- whisper encoder


@pytest.fixture(scope="module")
def whisper_folder(tmp_path_factory) -> Path:
    return save_tiny_whisper(tmp_path_factory.mktemp("whisper-tiny"))


@pytest.fixture(scope="module")
def encoder(whisper_folder) -> WhisperAudioEncoder:
    return WhisperAudioEncoder.from_pretrained(whisper_folder)


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(round(seconds * 16000))).astype(np.float32)


def test_loads_the_checkpoint_encoder_only(encoder, whisper_folder):
    saved = load_file(whisper_folder / "model.safetensors")
    state = encoder.encoder.state_dict()
    expected = {k[len("model.encoder.") :]: v for k, v in saved.items() if k.startswith("model.encoder.")}
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(state[key], value), key
    assert type(encoder.encoder).__name__ == "WhisperEncoder" and not encoder.encoder.training
    assert encoder.num_hidden_states == HIDDEN and encoder.dtype == torch.float32
    assert encoder.feature_extractor.sampling_rate == 16000


def test_missing_whisper_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="openai/whisper-tiny"):
        WhisperAudioEncoder.from_pretrained(tmp_path / "nothing")


@pytest.mark.parametrize("samples", [20800, 16000 + 319])
def test_encode_shape_is_trimmed_to_50_hz(encoder, samples):
    features = encoder.encode(noise(samples / 16000)[:samples])
    assert features.shape == (math.floor(samples / 16000 * 50), HIDDEN, D_MODEL)
    assert features.dtype == torch.float32 and features.device.type == "cpu"


def test_hidden_state_order(encoder):
    """0 = conv stem + positions, 1..3 = layer outputs, 4 = last layer after the final LayerNorm."""
    audio = noise(1.3, seed=1)
    features = encoder.encode(audio)
    mel = encoder.feature_extractor(audio, sampling_rate=16000, return_tensors="pt").input_features
    whisper = encoder.encoder
    with torch.no_grad():
        x = torch.nn.functional.gelu(whisper.conv1(mel))
        x = torch.nn.functional.gelu(whisper.conv2(x)).permute(0, 2, 1)
        x = x + whisper.embed_positions.weight
        expected = [x]
        for layer in whisper.layers:
            x = layer(x, None)
            expected.append(x)
        pre_norm = expected[-1]
        expected[-1] = whisper.layer_norm(pre_norm)
    assert len(expected) == HIDDEN
    for index, state in enumerate(expected):
        torch.testing.assert_close(features[:, index], state[0, :65], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(features[:, -1], pre_norm[0, :65], atol=1e-3)


def test_last_state_is_post_layernorm_whatever_the_config(whisper_folder, encoder):
    """transformers 5 replaces hidden_states[-1] by last_hidden_state only while the config's
    tie_last_hidden_states allows it; MuseTalk's features need the post-LayerNorm state anyway."""
    untied = WhisperAudioEncoder.from_pretrained(whisper_folder)
    untied.encoder.config.tie_last_hidden_states = False
    audio = noise(0.4, seed=4)
    torch.testing.assert_close(untied.encode(audio), encoder.encode(audio), atol=0, rtol=0)


@pytest.mark.slow  # whisper over long audio
def test_long_audio_is_encoded_in_independent_30s_segments(encoder):
    audio = noise(31.0, seed=2)
    features = encoder.encode(audio)
    assert features.shape == (1550, HIDDEN, D_MODEL)
    torch.testing.assert_close(features[:1500], encoder.encode(audio[:480000]), atol=0, rtol=0)
    torch.testing.assert_close(features[1500:], encoder.encode(audio[480000:]), atol=0, rtol=0)


@pytest.mark.slow  # whisper over long audio
def test_encode_in_half_precision(whisper_folder, encoder):
    audio = noise(0.5, seed=3)
    half = WhisperAudioEncoder.from_pretrained(whisper_folder, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    features = half.encode(audio)  # the mel features are cast too, or conv1 would refuse them
    assert features.dtype == torch.bfloat16 and features.shape == (25, HIDDEN, D_MODEL)
    torch.testing.assert_close(features.float(), encoder.encode(audio), atol=0.15, rtol=0.05)


@pytest.mark.parametrize("bad", [np.zeros(0, np.float32), np.zeros((2, 100), np.float32)])
def test_encode_rejects_non_mono_or_empty(encoder, bad):
    with pytest.raises(ValueError, match="1-D mono audio"):
        encoder.encode(bad)


# ---------------------------------------------------------------------------- frames and windows


@pytest.mark.parametrize(
    "samples, fps, frames",
    [
        (20800, 25, 32),
        (16000, 25, 25),
        (32000, 29.97, 59),
        (15999, 25, 24),
        (0, 25, 0),
        (20800, 50, 65),
    ],
)
def test_num_video_frames(samples, fps, frames):
    assert num_video_frames(samples, fps) == frames


def coded_features(length: int) -> torch.Tensor:
    """features[t, h, :] = 100*(t+1) + h: every value says where it came from; 0 is padding."""
    t = torch.arange(length, dtype=torch.float32)[:, None, None]
    h = torch.arange(HIDDEN, dtype=torch.float32)[None, :, None]
    return (100 * (t + 1) + h).expand(length, HIDDEN, 8).clone()


def expected_window(features: torch.Tensor, first: int) -> torch.Tensor:
    """Whisper frames first..first+9 (zeros outside the audio), token = HIDDEN*t + layer."""
    tokens = []
    for t in range(10):
        for h in range(HIDDEN):
            src = first + t
            inside = 0 <= src < len(features)
            tokens.append(features[src, h] if inside else torch.zeros(features.shape[-1]))
    return torch.stack(tokens)


def upstream_windows(features: torch.Tensor, num_samples: int, fps: int) -> torch.Tensor:
    """MuseTalk's AudioProcessor.get_whisper_chunk after the encoder (commit 0a89dec), batch 1."""
    whisper_feature = features[None]
    whisper_idx_multiplier = 50 / fps
    num_frames = math.floor((num_samples / 16000) * fps)
    padding_nums = math.ceil(whisper_idx_multiplier)
    whisper_feature = torch.cat(
        [
            torch.zeros_like(whisper_feature[:, : padding_nums * 2]),
            whisper_feature,
            torch.zeros_like(whisper_feature[:, : padding_nums * 3 * 2]),
        ],
        1,
    )
    prompts = []
    for frame_index in range(num_frames):
        audio_index = math.floor(frame_index * whisper_idx_multiplier)
        clip = whisper_feature[:, audio_index : audio_index + 10]
        assert clip.shape[1] == 10
        prompts.append(clip)
    prompts = torch.cat(prompts, dim=0)
    return prompts.reshape(prompts.shape[0], -1, prompts.shape[-1])  # 'b c h w -> b (c h) w'


def test_windows_at_25fps_cover_frames_2i_minus_4_to_2i_plus_5():
    samples = 20800  # 1.3 s: 65 whisper frames, 32 video frames
    features = coded_features(num_video_frames(samples, 50))
    windows = frame_windows(features, num_video_frames(samples, 25), 25)
    assert windows.shape == (32, 10 * HIDDEN, 8)
    for i in range(32):
        torch.testing.assert_close(windows[i], expected_window(features, 2 * i - 4), atol=0, rtol=0)
    assert windows[0, : 4 * HIDDEN].abs().sum() == 0  # left edge: 4 zero frames
    assert windows[0, 4 * HIDDEN, 0] == 100  # then whisper frame 0, layer 0
    assert windows[0, 4 * HIDDEN + 1, 0] == 101  # time-major: layer 1 of the same frame next
    assert windows[-1, -1, 0] == 0  # right edge: frame 2*31+5 = 67 is past the 65 frames


# Upstream pads with zeros_like(features[:, :n]), so clips under 12 whisper frames (0.24 s) get
# short pads there (and crash); those lengths are covered by test_last_window_is_in_range_at_any_fps.
@pytest.mark.parametrize("samples", [20800, 16000 * 3 + 123, 3840])
def test_windows_equal_upstream_at_25fps(samples):
    features = torch.randn(num_video_frames(samples, 50), HIDDEN, 8)
    ours = frame_windows(features, num_video_frames(samples, 25), 25)
    torch.testing.assert_close(ours, upstream_windows(features, samples, 25), atol=0, rtol=0)


def test_windows_at_16fps_keep_the_trained_alignment():
    samples = 16000 * 2 + 500
    features = coded_features(num_video_frames(samples, 50))
    frames = num_video_frames(samples, 16)
    windows = frame_windows(features, frames, 16)
    assert windows.shape == (frames, 10 * HIDDEN, 8) and frames == 32
    for i in range(frames):
        first = math.floor(i * 50 / 16) - 4  # 80 ms before the frame starts
        torch.testing.assert_close(windows[i], expected_window(features, first), atol=0, rtol=0)
    # Upstream's left pad of 2*ceil(50/16) = 8 frames starts every window 80 ms later.
    upstream = upstream_windows(features, samples, 16)
    torch.testing.assert_close(upstream[5], expected_window(features, math.floor(5 * 50 / 16) - 8), atol=0, rtol=0)
    assert not torch.equal(upstream[5], windows[5])


@pytest.mark.parametrize("fps", [12, 16, 24, 25, 29.97, 30, 50, 60])
@pytest.mark.parametrize("samples", [1400, 16000 * 2 + 77, 16000 * 5 - 1])
def test_last_window_is_in_range_at_any_fps(fps, samples):
    features = coded_features(num_video_frames(samples, 50))
    frames = num_video_frames(samples, fps)
    windows = frame_windows(features, frames, fps)
    assert windows.shape == (frames, 10 * HIDDEN, 8)
    last = frames - 1
    torch.testing.assert_close(
        windows[last], expected_window(features, math.floor(last * 50 / fps) - 4), atol=0, rtol=0
    )


def test_no_frames_gives_an_empty_batch():
    assert frame_windows(coded_features(3), 0, 25).shape == (0, 10 * HIDDEN, 8)


# ---------------------------------------------------------------------------- positional encoding


def test_positional_encoding_formula():
    pe = positional_encoding(50, D_MODEL)
    assert pe.shape == (50, D_MODEL) and pe.dtype == torch.float32
    for pos in (0, 1, 7, 49):
        for k in (0, 1, 5, 100, D_MODEL // 2 - 1):
            angle = pos * 10000 ** (-2 * k / D_MODEL)
            assert pe[pos, 2 * k].item() == pytest.approx(math.sin(angle), abs=2e-5)
            assert pe[pos, 2 * k + 1].item() == pytest.approx(math.cos(angle), abs=2e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_positional_encoding_dtype(dtype):
    pe = positional_encoding(50, D_MODEL, dtype)
    assert pe.dtype == dtype
    assert torch.equal(pe, positional_encoding(50, D_MODEL).to(dtype))


@pytest.mark.parametrize("dtype", [None, torch.float16])
def test_audio_prompts_add_the_pe_in_the_model_dtype(dtype):
    windows = torch.randn(3, 50, D_MODEL)
    prompts = audio_prompts(windows, dtype)
    out_dtype = dtype or torch.float32
    assert prompts.shape == (3, 50, D_MODEL) and prompts.dtype == out_dtype
    expected = windows.to(out_dtype) + positional_encoding(50, D_MODEL).to(out_dtype)
    assert torch.equal(prompts, expected)
    assert not torch.equal(prompts, windows.to(out_dtype))
