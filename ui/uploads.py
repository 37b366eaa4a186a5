"""Upload widgets that hand the handler the uploaded file as it is.

gradio's own preprocessing opens an upload before the app sees it (PIL for images, ffmpeg
through pydub when an audio format is set) and reports a failure as "Could not preprocess
input component ... " with the server's temp path and a Python type name. Here the
preprocessing only checks that the upload is a file gradio stored, and returns its path:
`dynamictrl` probes and reads every input itself (limits, formats, playlists refused) and
its errors name the file and the fix. A payload that cannot be taken as a file (a data URL
from an API client) gets the app's own one-line message.
"""

from pathlib import Path

import gradio as gr


def _uploaded_path(payload, what: str, formats: str) -> str | None:
    if payload is None:
        return None
    url = getattr(payload, "url", None) or ""
    path = getattr(payload, "path", None)
    if url.startswith("data:") or not path:
        raise gr.Error(f"Send the {what} as a file upload ({formats}), not as inline data.", title="Upload")
    if not Path(path).is_file():
        name = Path(getattr(payload, "orig_name", None) or path).name
        raise gr.Error(
            f"The upload {name} is gone from the server (expired or removed): upload the {what} again.", title="Upload"
        )
    return str(path)


# No __init__ of their own: gradio sends a widget's settings to the page from the parameters
# of its class's __init__. The handlers get a path whatever `type` says.


class ImageUpload(gr.Image):
    """`gr.Image` whose input is the uploaded file's path, the file unopened."""

    is_template = True  # gradio's mark for a subclass drawn by its parent's frontend component

    def preprocess(self, payload):
        return _uploaded_path(payload, "image", "PNG, JPEG, WebP, HEIC, ...")


class VideoUpload(gr.Video):
    """`gr.Video` whose input is the uploaded file's path, never converted."""

    is_template = True

    def preprocess(self, payload):
        return _uploaded_path(payload, "video", "MP4, MOV, WebM, MKV, ...")


class AudioUpload(gr.Audio):
    """`gr.Audio` whose input is the uploaded or recorded file's path, never converted."""

    is_template = True

    def preprocess(self, payload):
        return _uploaded_path(payload, "speech", "WAV, MP3, FLAC, OGG, M4A, ...")
