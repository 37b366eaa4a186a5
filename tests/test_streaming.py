"""Streaming gives the bits of the materialising computation, for every stage.

Each test runs the streamed path (frames decoded, drawn and written one at a time or one
window at a time) and the way the stage was computed before it streamed (whole arrays:
the decoded clip, `np.stack` of the pose video, the whole-frame overlay blend, a
pose-video tensor, the "uint8" output array) on the same inputs and compares them
exactly. Memory bounds themselves are measured in test_stream_memory.py.
"""

import numpy as np
import pytest
import torch

from dynamictrl.pose.render import draw_pose, draw_pose_video, overlay_pose, side_by_side
from dynamictrl.pose.sequence import PoseFrames, build_pose_sequence
from dynamictrl.video import PickedFrames, VideoFrames, VideoWriter, pick_frames, read_video, write_video
from tests.test_lipsync_pipeline import speech
from tests.test_lipsync_pipeline import video as talking_poses
from tests.test_pipeline import make_image, make_pose, run

WIDTH, HEIGHT = 48, 64


def dancer_video(path, count=24, fps=16):
    """Frames the tiny DWPose finds people in (red top-left gates them, green moves them)."""
    frames = np.zeros((count, 120, 160, 3), dtype=np.uint8)
    frames[..., 2] = np.linspace(30, 220, 160, dtype=np.uint8)[None, None, :]
    for k in range(count):
        frames[k, :16, :16] = (255, (8 * k) % 256, 0)
    frames[5, :16, :16] = 0  # a frame without a person: filled from the previous one
    return write_video(path, frames, fps=fps)


def whole_frame_overlay(image, pose, alpha=0.6):
    """The overlay as it was computed before: the blend over the whole frame, then kept
    where the skeleton is drawn."""
    skeleton = draw_pose(pose, image.shape[0], image.shape[1])
    drawn = skeleton.any(axis=2, keepdims=True)
    blended = image.astype(np.float32) * (1.0 - alpha) + skeleton.astype(np.float32) * alpha
    return np.where(drawn, np.clip(np.rint(blended), 0, 255).astype(np.uint8), image)


# ------------------------------------------------------------------ decoding
@pytest.mark.parametrize(
    "fps,start_s,loop,count", [(None, 0.0, False, 20), (10.0, 0.2, False, 12), (24.0, 0.5, True, 70)]
)
def test_picked_frames_stream_the_frames_pick_frames_returns(tmp_path, fps, start_s, loop, count):
    path = dancer_video(tmp_path / "d.mp4")
    picked = PickedFrames(path, count, fps=fps, start_s=start_s, loop=loop)
    streamed = np.stack(list(picked))
    np.testing.assert_array_equal(streamed, pick_frames(path, count, fps=fps, start_s=start_s, loop=loop).frames)
    np.testing.assert_array_equal(np.stack(list(picked)), streamed)  # a second pass decodes the same frames


def test_picked_frames_too_short_is_the_same_clear_error(tmp_path):
    from dynamictrl.video import VideoTooShortError

    path = dancer_video(tmp_path / "d.mp4", count=10)
    with pytest.raises(VideoTooShortError, match="gives 10 frames but 30 are needed") as caught:
        list(PickedFrames(path, 30))
    assert caught.value.available_frames == 10


def test_video_frames_read_in_any_order_keep_a_bounded_number(tmp_path):
    path = dancer_video(tmp_path / "d.mp4", count=30)
    decoded = read_video(path).frames
    frames = VideoFrames(path, keep=4)
    assert len(frames) == 30 and frames.shape == decoded.shape
    order = [0, 1, 2, 3, 10, 9, 8, 29, 28, 0, 5, 5, 27, 3]
    for index in order:
        np.testing.assert_array_equal(frames[index], decoded[index])
        assert len(frames._kept) <= frames.keep + 1  # the last `keep` and frame 0
    np.testing.assert_array_equal(frames[[0, 12, 13, 14]], decoded[[0, 12, 13, 14]])
    np.testing.assert_array_equal(np.stack(list(frames)), decoded)
    assert VideoFrames(path, max_frames=7).shape[0] == 7


def test_video_writer_writes_what_write_video_writes_and_nothing_on_failure(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, (9, 32, 48, 3), dtype=np.uint8)
    write_video(tmp_path / "whole.mp4", frames)
    with VideoWriter(tmp_path / "runs.mp4") as writer:
        writer.write(frames[:4])
        writer.write(frames[4])
        writer.write(frames[5:])
    assert writer.frames_written == 9
    assert (tmp_path / "runs.mp4").read_bytes() == (tmp_path / "whole.mp4").read_bytes()
    with pytest.raises(RuntimeError, match="stopped"):
        with VideoWriter(tmp_path / "cut.mp4") as writer:
            writer.write(frames[:3])
            raise RuntimeError("stopped")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs.mp4", "whole.mp4"]


# ------------------------------------------------------------------ poses
def test_pose_stage_streams_the_bits_of_the_materialising_pose_stage(detector, tmp_path):
    path = dancer_video(tmp_path / "d.mp4")
    reference = np.zeros((90, 70, 3), dtype=np.uint8)
    reference[:8, :8] = (255, 0, 0)
    driving = PickedFrames(path, 16, fps=12)
    streamed = build_pose_sequence(reference, driving, detector, WIDTH, HEIGHT, detect_every=2)
    clip = pick_frames(path, 16, fps=12).frames  # the decoded clip, as the stage held it before
    whole = build_pose_sequence(reference, clip, detector, WIDTH, HEIGHT, detect_every=2)

    assert [p.to_json() for p in streamed.poses] == [p.to_json() for p in whole.poses]
    assert streamed.filled_frames == whole.filled_frames > 0
    assert isinstance(streamed.pose_frames, PoseFrames) and len(streamed.pose_frames) == 17
    old_pose_video = draw_pose_video(whole.poses, HEIGHT, WIDTH)
    np.testing.assert_array_equal(streamed.pose_frames[:], old_pose_video)
    np.testing.assert_array_equal(np.stack(list(streamed.pose_frames)), old_pose_video)
    np.testing.assert_array_equal(streamed.pose_frames[[0, 7, 3]], old_pose_video[[0, 7, 3]])
    np.testing.assert_array_equal(streamed.pose_frames[16], old_pose_video[16])

    old_overlay = np.stack([whole_frame_overlay(whole.reference_image, pose) for pose in whole.poses])
    np.testing.assert_array_equal(streamed.overlay_frames(), old_overlay)
    old_preview = side_by_side(old_overlay, np.concatenate([clip[:1], clip]))
    np.testing.assert_array_equal(np.stack(list(streamed.iter_preview(driving))), old_preview)


def test_overlay_blends_only_skeleton_pixels_with_the_whole_frame_arithmetic(detector):
    image = np.random.default_rng(2).integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    image[:8, :8] = (255, 0, 0)
    pose = detector(image)
    assert pose.people
    for alpha in (0.6, 0.25, 1.0):
        np.testing.assert_array_equal(overlay_pose(image, pose, alpha), whole_frame_overlay(image, pose, alpha))


def test_extract_poses_writes_the_files_the_arrays_gave(lipsync_weights, tmp_path):
    from PIL import Image

    from dynamictrl.studio import PoseSettings, Studio

    studio = Studio(weights_dir=lipsync_weights, device="cpu")
    path = dancer_video(tmp_path / "d.mp4")
    reference = np.zeros((90, 70, 3), dtype=np.uint8)
    reference[:8, :8] = (255, 0, 0)
    Image.fromarray(reference).save(tmp_path / "ref.png")
    settings = PoseSettings(num_frames=17, width=WIDTH, height=HEIGHT, fps=12)
    result = studio.extract_poses(
        tmp_path / "ref.png", path, settings, out_path=tmp_path / "pose.mp4", preview_path=tmp_path / "preview.mp4"
    )
    clip = pick_frames(path, 16, fps=12).frames
    with studio.manager.use("dwpose") as detector:
        whole = build_pose_sequence(reference, clip, detector, WIDTH, HEIGHT)
    write_video(tmp_path / "old_pose.mp4", draw_pose_video(whole.poses, HEIGHT, WIDTH), fps=12)
    old_overlay = np.stack([whole_frame_overlay(whole.reference_image, pose) for pose in whole.poses])
    write_video(tmp_path / "old_preview.mp4", side_by_side(old_overlay, np.concatenate([clip[:1], clip])), fps=12)
    assert result.pose_video_path.read_bytes() == (tmp_path / "old_pose.mp4").read_bytes()
    assert result.preview_path.read_bytes() == (tmp_path / "old_preview.mp4").read_bytes()


# ------------------------------------------------------------------ sampling
@pytest.mark.parametrize("window_frames", [None, 9])
def test_lazy_pose_frames_and_the_frame_sink_give_the_uint8_video(tiny_pipe, tmp_path, window_frames):
    """Windowed (13 frames in 9-frame windows) and plain: a lazy pose source (a decoded
    pose video) gives the bits of the same frames as a tensor, and the frames handed to
    `frame_sink` are the "uint8" output, run by run."""
    pose = (make_pose(13, 32, 32).permute(0, 2, 3, 1).numpy() * 127.5 + 127.5).round().astype(np.uint8)
    path = write_video(tmp_path / "pose.mp4", pose)
    lazy = VideoFrames(path, keep=9)
    as_tensor = torch.from_numpy(read_video(path).frames).permute(0, 3, 1, 2).float() / 127.5 - 1
    kwargs = dict(
        frames=13,
        height=32,
        width=32,
        window_frames=window_frames,
        overlap_frames=1,
        output_type="uint8",
        image=make_image(32, 32),
    )
    expected = run(tiny_pipe, pose_video=as_tensor, **kwargs)
    np.testing.assert_array_equal(run(tiny_pipe, pose_video=lazy, **kwargs), expected)
    runs = []
    assert run(tiny_pipe, pose_video=lazy, frame_sink=runs.append, **kwargs) is None
    assert all(r.dtype == np.uint8 and r.shape[0] == 1 for r in runs)
    # Plain: the clip at once. Windows: frame 0, then each window's frames once final.
    assert [r.shape[1] for r in runs] == ([13] if window_frames is None else [1, 4, 8])
    np.testing.assert_array_equal(np.concatenate(runs, axis=1), expected)
    with pytest.raises(ValueError, match="frame_sink receives uint8 frames"):
        run(tiny_pipe, pose_video=lazy, frame_sink=runs.append, **{**kwargs, "output_type": "np"})


@pytest.mark.slow  # end-to-end jobs on the tiny models, 10-20 s
def test_generate_streams_to_the_mp4_the_frames_it_returns(lipsync_weights, tmp_path):
    """From a raw driving video in three windows: the mp4 written while sampling is the mp4
    of the returned frames, and those are the pipeline's "uint8" video of the drawn poses."""
    from PIL import Image

    from dynamictrl.studio import GenerateSettings, Studio

    studio = Studio(weights_dir=lipsync_weights, device="cpu")
    driving = dancer_video(tmp_path / "d.mp4", count=40)
    reference = np.zeros((90, 70, 3), dtype=np.uint8)
    reference[:8, :8] = (255, 0, 0)
    Image.fromarray(reference).save(tmp_path / "ref.png")
    settings = GenerateSettings(
        prompt="a dancer", num_frames=17, width=WIDTH, height=HEIGHT, steps=2, seed=4, window_frames=9, overlap=1
    )
    result = studio.generate(
        tmp_path / "ref.png", tmp_path / "out.mp4", settings, driving_video_path=driving, return_frames=True
    )
    assert result.num_frames == 17 and result.frames.shape == (17, HEIGHT, WIDTH, 3)
    write_video(tmp_path / "again.mp4", result.frames, fps=settings.fps)
    assert (tmp_path / "out.mp4").read_bytes() == (tmp_path / "again.mp4").read_bytes()

    poses = np.stack(list(result.pose.sequence.pose_frames))
    with studio.dynamictrl("auto").use(None, studio_options(), "none") as pipe:
        expected = pipe(
            image=result.pose.sequence.reference_pil(),
            pose_video=list(poses),
            prompt="a dancer",
            height=HEIGHT,
            width=WIDTH,
            num_frames=17,
            num_inference_steps=2,
            generator=torch.Generator().manual_seed(4),
            output_type="uint8",
            window_frames=9,
            overlap_frames=1,
        ).frames[0]
    np.testing.assert_array_equal(result.frames, expected)
    streamed_only = studio.generate(tmp_path / "ref.png", tmp_path / "lean.mp4", settings, driving_video_path=driving)
    assert streamed_only.frames is None and streamed_only.num_frames == 17
    assert (tmp_path / "lean.mp4").read_bytes() == (tmp_path / "out.mp4").read_bytes()


def studio_options():
    from dynamictrl.manager import PipelineOptions

    return PipelineOptions()


# ------------------------------------------------------------------ lip-sync
@pytest.mark.slow  # end-to-end jobs on the tiny models, 10-20 s
def test_lipsync_streams_the_bits_of_the_decoded_video(lipsync_weights, tmp_path):
    """Preparation and blending from a `VideoFrames` that keeps 3 frames give the avatar and
    the frames of the whole decoded video, including playing it backwards (ping-pong)."""
    from dynamictrl.lipsync.models import MuseTalkModels
    from dynamictrl.lipsync.pipeline import LipSyncPipeline
    from dynamictrl.lipsync.settings import LipSyncSettings

    pipe = LipSyncPipeline(MuseTalkModels.from_pretrained(lipsync_weights, local_files_only=True))
    frames, poses = talking_poses(7, no_face={4})
    path = write_video(tmp_path / "talk.mp4", frames, fps=25)
    decoded = read_video(path).frames
    settings = LipSyncSettings(batch_size=4)
    whole = pipe.prepare_avatar(decoded, 25.0, poses, settings)
    stream = VideoFrames(path, keep=3)
    streamed = pipe.prepare_avatar(stream, 25.0, poses, settings)
    assert torch.equal(streamed.latents, whole.latents) and streamed.boxes == whole.boxes
    assert streamed.crop_boxes == whole.crop_boxes and streamed.latent_rows == whole.latent_rows
    for a, b in zip(streamed.masks, whole.masks):
        assert (a is None and b is None) or np.array_equal(a, b)

    audio = speech(1.0)  # 25 output frames from 7: forward, backward, forward, backward
    expected, report = pipe(whole, audio, settings)
    expected = np.stack(list(expected))
    got, _ = pipe(streamed, audio, settings)
    got = np.stack(list(got))
    assert report.looped and len(got) == 25
    np.testing.assert_array_equal(got, expected)
    assert stream.passes > 2  # playing backwards re-decoded, 3 frames at a time


def test_extract_poses_leaves_no_pose_video_when_a_later_output_fails(lipsync_weights, tmp_path, monkeypatch):
    from PIL import Image

    from dynamictrl.studio import PoseSettings, Studio

    studio = Studio(weights_dir=lipsync_weights, device="cpu")
    path = dancer_video(tmp_path / "d.mp4", count=8)
    reference = np.zeros((90, 70, 3), dtype=np.uint8)
    reference[:8, :8] = (255, 0, 0)  # the tiny detector's person
    Image.fromarray(reference).save(tmp_path / "ref.png")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("dynamictrl.pose.types.write_atomic", disk_full)  # the JSON comes last
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(OSError, match="No space"):
        studio.extract_poses(
            tmp_path / "ref.png",
            path,
            PoseSettings(num_frames=5, width=WIDTH, height=HEIGHT, fps=12),
            out_path=out / "pose.mp4",
            preview_path=out / "preview.mp4",
            json_path=out / "pose.json",
        )
    assert list(out.iterdir()) == []
