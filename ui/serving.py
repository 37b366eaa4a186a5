"""What the app's web server answers beyond gradio's own rules (docs/app-security.md).

- `ServedFiles`: `/gradio_api/file=<path>` serves only files in gradio's upload cache (the
  visitors' uploads and gradio's copies of everything the app returns) whose type is inert
  media or a manifest (the table below); every one goes out as an attachment with its
  type from that table, `X-Content-Type-Options: nosniff` and a sandboxing
  Content-Security-Policy. HTML, SVG, scripts, playlists, text, URLs to fetch, the
  outputs folder itself: refused. Gradio would serve an upload inline with the type its
  name suggests once its folder is in `allowed_paths` (how an uploaded .html ran on the
  app's origin); this rule does not depend on `allowed_paths`.
- `QueueFullMessage`: gradio answers a full queue with HTTP 503, which the page shows as
  "This application is currently busy"; the app answers 429 with how many jobs are
  waiting and when to try again, which the page shows as it is.

Both are plain ASGI middleware, installed through `launch(app_kwargs={"middleware": ...})`.
"""

import json
import os
import re
from pathlib import Path

# Inert types only: media a browser plays or shows and never runs, and the JSON manifests.
# Images/videos/audio the app accepts are here too: the page shows an upload back from its URL.
SERVED_TYPES = {
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".mov": "video/quicktime",
    ".mkv": "video/x-matroska",
    ".webm": "video/webm",
    ".avi": "video/x-msvideo",
    ".gif": "image/gif",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".bmp": "image/bmp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".heic": "image/heic",
    ".heif": "image/heif",
    ".wav": "audio/wav",
    ".mp3": "audio/mpeg",
    ".flac": "audio/flac",
    ".ogg": "audio/ogg",
    ".oga": "audio/ogg",
    ".opus": "audio/ogg",
    ".m4a": "audio/mp4",
    ".aac": "audio/aac",
    ".json": "application/json",
}
# gradio's file routes (the old `/file=` spelling too) and its proxy to other gradio apps,
# which this app never uses.
FILE_ROUTE = re.compile(r"^(?:/gradio_api)?/file[=/](?P<target>.+)$")
PROXY_ROUTE = re.compile(r"^(?:/gradio_api)?/proxy=")
# Even if a browser ended up rendering a served file as a document, nothing in it may run.
SANDBOX_POLICY = b"sandbox; default-src 'none'; media-src 'self'; img-src 'self'"
REPLACED_HEADERS = {b"content-type", b"content-disposition", b"x-content-type-options", b"content-security-policy"}


def _is_within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


class ServedFiles:
    """The file-serving rule above, in front of gradio's routes."""

    def __init__(self, app, upload_dir: str | Path):
        self.app = app
        # realpath on both sides: a symlink inside the cache pointing elsewhere is refused.
        self.upload_dir = os.path.realpath(upload_dir)

    def refusal(self, target: str) -> str | None:
        """Why `target` (the path or URL after `file=`) is not served; None when it is."""
        if "://" in target or target.startswith("//"):
            return "the app does not fetch URLs"
        path = os.path.realpath(target)
        if not _is_within(path, self.upload_dir):
            return "not a file of this app"
        if Path(path).suffix.lower() not in SERVED_TYPES:
            return "the app serves only video, image and audio files and JSON manifests"
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if PROXY_ROUTE.match(path):
            await _refuse(send, 403, "The app does not proxy other apps.")
            return
        match = FILE_ROUTE.match(path)
        if match is None:
            await self.app(scope, receive, send)
            return
        target = match["target"]
        reason = self.refusal(target)
        if reason is not None:
            await _refuse(send, 403, f"Not served: {reason}.")
            return
        name = Path(target).name
        media_type = SERVED_TYPES[Path(target).suffix.lower()]

        async def send_as_attachment(message):
            if message["type"] == "http.response.start":
                headers = [
                    (key, value) for key, value in message.get("headers", []) if key.lower() not in REPLACED_HEADERS
                ]
                headers.append((b"x-content-type-options", b"nosniff"))
                if message["status"] < 400:
                    headers += [
                        (b"content-type", media_type.encode()),
                        (b"content-disposition", _attachment(name)),
                        (b"content-security-policy", SANDBOX_POLICY),
                    ]
                else:
                    headers.append((b"content-type", b"text/plain; charset=utf-8"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_as_attachment)


def _attachment(name: str) -> bytes:
    """`attachment; filename=...` with the name reduced to safe ASCII (uploads keep their own names)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:120] or "file"
    return f'attachment; filename="{safe}"'.encode()


async def _refuse(send, status: int, text: str) -> None:
    body = text.encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"x-content-type-options", b"nosniff"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def queue_full_message(waiting: int) -> str:
    jobs = "job is" if waiting == 1 else "jobs are"
    return f"The queue is full: {waiting} {jobs} waiting. Try again in a minute."


class QueueFullMessage:
    """gradio's 503 "Queue is full" on joining the queue becomes a 429 the page shows as it is."""

    RETRY_AFTER_S = 60

    def __init__(self, app, queue_size: int):
        self.app = app
        self.queue_size = queue_size  # full means this many are waiting

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope.get("path", "").endswith("/queue/join"):
            await self.app(scope, receive, send)
            return
        held_start = None
        held_body = []

        async def rewrite_full_queue(message):
            nonlocal held_start
            if message["type"] == "http.response.start" and message["status"] == 503:
                held_start = message  # decided once the body (gradio's reason) is complete
                return
            if held_start is None:
                await send(message)
                return
            held_body.append(message.get("body", b""))
            if message.get("more_body"):
                return
            body = b"".join(held_body)
            if b"Queue is full" not in body:  # another 503 (the queue is stopped): as gradio sent it
                await send(held_start)
                await send({"type": "http.response.body", "body": body})
                return
            detail = json.dumps({"detail": queue_full_message(self.queue_size)}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 429,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(detail)).encode()),
                        (b"retry-after", str(self.RETRY_AFTER_S).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": detail})

        await self.app(scope, receive, rewrite_full_queue)
