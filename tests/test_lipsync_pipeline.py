import numpy as np
import pytest
import torch

from dynamictrl.lipsync.audio import positional_encoding
from dynamictrl.lipsync.models import MuseTalkModels
from dynamictrl.lipsync.pipeline import LATENT_SCALE, LipSyncPipeline, NoFaceError, pingpong_index
from dynamictrl.lipsync.settings import LipSyncSettings
from dynamictrl.pose.types import FramePose
from tests.test_lipsync_face import face_points, person_with_face

W, H = 160, 128


@pytest.fixture(scope="module")
def pipe(lipsync_weights):
    return LipSyncPipeline(MuseTalkModels.from_pretrained(lipsync_weights, local_files_only=True))


def video(num_frames: int, no_face=()) -> tuple[np.ndarray, list[FramePose]]:
    frames = np.random.default_rng(1).integers(0, 255, (num_frames, H, W, 3), dtype=np.uint8)
    poses = [
        FramePose([] if i in no_face else [person_with_face(face_points(40 + 2 * i, 30, 60), W, H)], H, W)
        for i in range(num_frames)
    ]
    return frames, poses


def speech(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)


@pytest.fixture(scope="module")
def avatar(pipe):
    frames, poses = video(6, no_face={4})
    return pipe.prepare_avatar(frames, 25.0, poses, LipSyncSettings(batch_size=4))


def test_pingpong_plays_forward_then_backward():
    assert [pingpong_index(i, 3) for i in range(9)] == [0, 1, 2, 2, 1, 0, 0, 1, 2]
    assert [pingpong_index(i, 1) for i in range(3)] == [0, 0, 0]


@pytest.mark.slow  # tiny MuseTalk end to end
def test_avatar_holds_latents_masks_and_boxes(avatar):
    assert avatar.frames_without_face == [4]
    assert avatar.latents.shape == (5, 8, 32, 32) and avatar.latents.device.type == "cpu"
    assert avatar.latent_rows == [0, 1, 2, 3, None, 4]
    for box, mask, crop_box in zip(avatar.boxes, avatar.masks, avatar.crop_boxes):
        if box is None:
            assert mask is None and crop_box is None
            continue
        x_s, y_s, x_e, y_e = crop_box
        assert mask.shape == (y_e - y_s, x_e - x_s) and mask.dtype == np.uint8


def test_latents_are_masked_then_reference_of_the_frame(pipe, avatar):
    from dynamictrl.lipsync.face import crop_face, unet_inputs

    crop = crop_face(avatar.frames[1], avatar.boxes[1])
    masked, reference = unet_inputs(crop[None])
    with torch.no_grad():
        expected_ref = pipe.models.vae.encode(torch.from_numpy(reference)).latent_dist.mean * LATENT_SCALE
        expected_masked = pipe.models.vae.encode(torch.from_numpy(masked)).latent_dist.mean * LATENT_SCALE
    torch.testing.assert_close(avatar.latents[1, :4], expected_masked[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(avatar.latents[1, 4:], expected_ref[0], atol=1e-5, rtol=1e-4)


def test_audio_prompts_have_one_window_per_frame_plus_pe(pipe):
    audio = speech(1.0)
    prompts = pipe.audio_prompts(audio, 25.0)
    assert prompts.shape == (25, 50, 384)
    features = pipe.models.audio.encode(audio)
    # Frame 3's window starts 4 whisper frames before 2*3 and is flattened time-major (5 states each).
    expected = features[2:12].reshape(50, 384) + positional_encoding(50, 384)
    torch.testing.assert_close(prompts[3], expected)
    with pytest.raises(ValueError, match="shorter than one video frame"):
        pipe.audio_prompts(audio[:300], 25.0)


@pytest.mark.slow  # tiny MuseTalk end to end
def test_longer_audio_loops_the_video_and_keeps_faceless_frames(pipe, avatar):
    frames, report = pipe(avatar, speech(0.6), LipSyncSettings(batch_size=4))
    frames = list(frames)
    assert len(frames) == report.output_frames == 15
    assert report.looped and not report.trimmed and report.frames_without_face == [4]
    assert "forward and backward" in report.summary()
    for i, frame in enumerate(frames):
        source = pingpong_index(i, avatar.num_frames)
        original = avatar.frames[source]
        if source == 4:
            assert np.array_equal(frame, original)  # no face: untouched
            continue
        x_s, y_s, x_e, y_e = avatar.crop_boxes[source]
        outside = np.ones(original.shape[:2], bool)
        outside[max(y_s, 0) : y_e, max(x_s, 0) : x_e] = False
        assert np.array_equal(frame[outside], original[outside])  # only the face region is repainted
        assert not np.array_equal(frame, original)


def test_shorter_audio_cuts_the_video(pipe, avatar):
    frames, report = pipe(avatar, speech(0.13), LipSyncSettings())
    assert len(list(frames)) == 3 and report.trimmed and report.frames_without_face == []
    assert "cut to the audio" in report.summary()


@pytest.mark.slow  # tiny MuseTalk end to end
def test_batch_size_does_not_change_the_result(pipe, avatar):
    audio = speech(0.3)
    one = list(pipe(avatar, audio, LipSyncSettings(batch_size=1))[0])
    many = list(pipe(avatar, audio, LipSyncSettings(batch_size=7))[0])
    assert max(int(np.abs(a.astype(int) - b).max()) for a, b in zip(one, many)) <= 1


def test_no_face_anywhere_is_a_clear_error(pipe):
    frames, poses = video(3, no_face={0, 1, 2})
    with pytest.raises(NoFaceError, match="No face found in any of the 3 frames"):
        pipe.prepare_avatar(frames, 25.0, poses, LipSyncSettings())


def test_bad_inputs(pipe):
    frames, poses = video(2)
    with pytest.raises(ValueError, match="no frames"):
        pipe.prepare_avatar(np.zeros((0, H, W, 3), np.uint8), 25.0, [], LipSyncSettings())
    with pytest.raises(ValueError, match="1 pose records for 2 frames"):
        pipe.prepare_avatar(frames, 25.0, poses[:1], LipSyncSettings())
    with pytest.raises(ValueError, match="parsing_mode"):
        LipSyncSettings(parsing_mode="lips")
    with pytest.raises(ValueError, match="batch_size"):
        LipSyncSettings(batch_size=0)
