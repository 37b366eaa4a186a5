"""The app's API through `gradio_client`, against `app.py --tiny`: the same endpoints the
page uses, and the messages a user gets for bad input (never a stack trace)."""

import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dynamictrl.video import write_video

pytestmark = pytest.mark.slow  # drives app.py --tiny in a subprocess through gradio_client

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "assets" / "reference_figure.png"
CLIP = ROOT / "assets" / "dance_figure.mp4"
TINY = "tiny 64x80"


@pytest.fixture(scope="module")
def client(tiny_app):
    from gradio_client import Client

    return Client(tiny_app.url, verbose=False)


def motion(video, frames=9):
    """The Motion step's API parameters, by name (the page's widget names)."""
    from gradio_client import handle_file

    return dict(
        reference=handle_file(str(REFERENCE)),
        driving=handle_file(str(video)),
        is_pose_video=False,
        size_preset=TINY,
        width=768,
        height=1360,
        start=0,
        frames=frames,
        fps=16,
        retarget="global",
    )


def character(image=REFERENCE):
    """The Character step's API parameters: the reference and the target size."""
    from gradio_client import handle_file

    return dict(reference=handle_file(str(image)), size_preset=TINY, width=768, height=1360)


def generate_args(video=CLIP, prompt="a person dancing", mask_mode="none"):
    return dict(
        motion(video),
        mask_mode=mask_mode,
        prompt=prompt,
        negative_prompt="",
        steps=2,
        guidance=3.0,
        seed=7,
        speed="tiny (2 steps)",
        offload="auto",
    )


def test_the_flow_through_the_api(client, tiny_app):

    crop, info = client.predict(**character(), api_name="/crop_preview")
    assert Image.open(crop).size == (64, 80) and "64x80" in info
    # the 384x640 photo is taller than 64x80: the full width, the middle of the height
    assert "the full width and the middle 75% of the height of the 384x640 photo" in info

    # Person: a check of SAM's person, nothing blacked out; Background: the person kept. Both
    # only preview: the mask Generate uses is its own parameter (mask_mode)
    person_view, unmasked, note = client.predict(**character(), api_name="/mask_person")
    assert "Person check" in note and Image.open(unmasked).size == (64, 80)
    background_view, masked, note = client.predict(**character(), api_name="/mask_background")
    assert "Use this mask" in note and Image.open(masked).size == (64, 80)
    # The person view tints exactly what the background view tints and blacks out: the person
    # (the unmasked crop is the reference), the background
    crop_pixels = np.asarray(Image.open(unmasked).convert("RGB"))
    person_tinted = (np.asarray(Image.open(person_view).convert("RGB")) != crop_pixels).any(axis=2)
    background_tinted = (np.asarray(Image.open(background_view).convert("RGB")) != crop_pixels).any(axis=2)
    assert person_tinted.any() and background_tinted.any()
    assert np.array_equal(person_tinted, ~background_tinted)
    not_black = (crop_pixels != 0).any(axis=2)
    blacked = (np.asarray(Image.open(masked).convert("RGB")) == 0).all(axis=2)
    assert np.array_equal(background_tinted & not_black, blacked & not_black)
    _view, _masked, note = client.predict(**character(), api_name="/mask_clothing")
    assert "Clothing preview" in note

    pose_video, overlay, pose_info = client.predict(**motion(CLIP), api_name="/extract_poses")
    assert Path(pose_video).stat().st_size > 0 and Path(overlay).stat().st_size > 0 and "9 pose frames" in pose_info

    caption, _hint = client.predict(**character(), mask_mode="none", api_name="/auto_caption")
    assert caption.strip()

    video, manifest, files, missing = client.predict(**generate_args(mask_mode="background"), api_name="/generate")
    assert not missing["visible"]  # the tiny models are all on disk: no missing-models message
    assert Path(video).stat().st_size > 0
    assert manifest["settings"]["seed"] == 7 and manifest["settings"]["num_frames"] == 9
    assert manifest["models"]["transformer"] == "gulucaptain/Dynamictrl-Mask_B01"
    # Whether the poses of the Motion step were reused or extracted again, how they were
    # made is in the manifest.
    assert manifest["inputs"]["pose_extraction"]["settings"]["retarget"] == "global"
    # The page's copy names files; where the server keeps them stays on the server.
    shown = json.dumps(manifest)
    assert "dynamictrl-app-" not in shown and str(tiny_app.outputs) not in shown and '"path"' not in shown
    # Results go to the session's own folder under the outputs root (History lists only that one).
    from ui.handlers import session_folder_name

    assert (tiny_app.outputs / session_folder_name(client.session_hash) / manifest["output"]).is_file()
    assert sorted(Path(f).suffix for f in files) == [".json", ".mp4"]

    gallery, table, _manifest = client.predict(api_name="/history")
    assert manifest["output"] in [row[-1] for row in table["data"]] and len(gallery) >= 1

    # Reuse settings gives back the form values the result was made with
    reused = client.predict(history_manifest=manifest, api_name="/reuse_settings")
    (
        preset,
        _width,
        _height,
        frames,
        fps,
        mode,
        mask_status,
        prompt,
        _negative,
        steps,
        speed,
        guidance,
        seed,
        offload,
        reference,
        pose_video,
        is_pose_video,
    ) = reused
    # The inputs come back too, from beside the result: the reference and its pose video
    assert Image.open(reference).size == (384, 640) and is_pose_video
    assert Path(pose_video).stat().st_size > 0 and "Mask_B01" in mask_status
    assert (preset, frames, mode, prompt, steps, seed, offload) == (
        TINY,
        9,
        "background",
        "a person dancing",
        2,
        7,
        "auto",
    )
    assert speed == "tiny (2 steps)"  # the preset with these steps and this cache, else "custom"
    assert "Pick a result" in app_error(client, None, api_name="/reuse_settings")

    info, models, _choices = client.predict(api_name="/system_status")
    assert "cpu" in info and any(row[0] == "dynamictrl.shared" and row[1] == "yes" for row in models["data"])
    _info, models, _choices = client.predict(api_name="/unload_all")
    assert all(row[1] == "no" for row in models["data"])


def app_error(client, *args, api_name, **kwargs):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as error:
        client.predict(*args, api_name=api_name, **kwargs)
    message = str(error.value)
    assert "Traceback" not in message
    return message


def test_bad_input_gets_a_message_that_says_what_to_do(client, tmp_path):
    from gradio_client import handle_file

    # generate before uploading anything
    args = generate_args()
    args["reference"] = None
    assert "Upload a reference image" in app_error(client, **args, api_name="/generate")
    # absurd size
    message = app_error(
        client,
        reference=handle_file(str(REFERENCE)),
        size_preset="custom",
        width=8000,
        height=100,
        api_name="/crop_preview",
    )
    # the widget's maximum is the settings' (widget_spec), so gradio refuses it before the handler
    assert message == "Value 8000 is greater than maximum value 2048."
    # frame count that is not 4k+1
    assert "4k+1" in app_error(client, **motion(CLIP, frames=10), api_name="/extract_poses")
    # not an image: the upload widget hands it over unopened and our reader names it, with
    # neither gradio's "Could not preprocess ..." nor the server's temp path
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    message = app_error(client, **character(text), api_name="/crop_preview")
    assert "Could not read the image notes.png" in message
    assert "preprocess" not in message and "/tmp/" not in message and "dynamictrl-app-" not in message
    # a text file as the driving video reaches our video probe, which names it and says how to fix it
    message = app_error(client, **motion(text), api_name="/extract_poses")
    assert "notes.png is not a video file" in message and "/tmp/" not in message
    # a video with nobody in it (the tiny detector sees people only when the top-left pixel is red)
    empty = write_video(tmp_path / "empty.mp4", np.full((20, 64, 48, 3), (0, 0, 255), np.uint8), fps=16)
    assert "person" in app_error(client, **motion(empty), api_name="/extract_poses").lower()
    # a placeholder left in the prompt
    assert "placeholder" in app_error(
        client, **generate_args(prompt="A man. [Describe the new background here.]"), api_name="/generate"
    )


def test_server_serves_only_its_own_folders(tiny_app):
    for path in ("/etc/passwd", str(ROOT / "README.md"), str(ROOT / "app.py")):
        url = f"{tiny_app.url}gradio_api/file={path}"
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(url, timeout=10)
        assert error.value.code in (403, 404)


def test_whole_clip_sets_the_longest_frame_count(client):
    from gradio_client import handle_file

    from dynamictrl.video import longest_pose_clip

    frames, info = client.predict(driving=handle_file(str(CLIP)), start=0, fps=16, api_name="/whole_clip")
    assert frames == longest_pose_clip(CLIP, fps=16) and (frames - 1) % 4 == 0 and frames > 37
    assert "overlapping windows" in info


def test_lipsync_through_the_api(client, tiny_app, tmp_path):
    from gradio_client import handle_file
    from scipy.io import wavfile

    frames = np.random.default_rng(5).integers(0, 255, (6, 120, 160, 3), dtype=np.uint8)
    frames[:, :16, :16] = (255, 0, 0)  # the tiny DWPose finds people (dynamictrl/testing/onnx.py)
    talk = write_video(tmp_path / "talk.mp4", frames, fps=25)
    t = np.arange(8000) / 16000
    wavfile.write(tmp_path / "speech.wav", 16000, (8000 * np.sin(2 * np.pi * 150 * t)).astype(np.int16))
    settings = dict(bbox_shift=0, extra_margin=10, parsing_mode="jaw", left_cheek=90, right_cheek=90)
    video, report, files = client.predict(
        lipsync_video=handle_file(str(talk)),
        speech=handle_file(str(tmp_path / "speech.wav")),
        **settings,
        api_name="/lipsync",
    )
    assert Path(video).stat().st_size > 0 and "12 frames at 25 fps" in report
    assert sorted(Path(f).suffix for f in files) == [".json", ".mp4"]
    _gallery, table, _manifest = client.predict(api_name="/history")
    assert any(row[2].startswith("lip-sync to") for row in table["data"])
    manifest = json.loads(next(Path(f) for f in files if f.endswith(".json")).read_text())
    assert "lip-sync result" in app_error(client, history_manifest=manifest, api_name="/reuse_settings")

    wavfile.write(tmp_path / "silence.wav", 16000, np.zeros(8000, np.int16))
    message = app_error(
        client,
        lipsync_video=handle_file(str(talk)),
        speech=handle_file(str(tmp_path / "silence.wav")),
        **settings,
        api_name="/lipsync",
    )
    assert "silent" in message
    assert "Upload or record the speech" in app_error(
        client, lipsync_video=handle_file(str(talk)), speech=None, **settings, api_name="/lipsync"
    )
