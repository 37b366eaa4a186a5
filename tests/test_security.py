"""Security rules that hold for the whole source tree and the running app."""

import ast
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [
    *ROOT.glob("dynamictrl/**/*.py"),
    *ROOT.glob("ui/**/*.py"),
    *ROOT.glob("benchmarks/**/*.py"),
    ROOT / "app.py",
]


def calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def keyword(node: ast.Call, name: str):
    return next((kw.value for kw in node.keywords if kw.arg == name), None)


def test_no_unsafe_deserialisation_anywhere():
    """Pickle runs code on load: `torch.load` only with weights_only=True, no pickle or
    numpy pickles at all (checkpoints are safetensors or plain tensor dicts)."""
    problems = []
    for path in SOURCES:
        for node, name in calls(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if name == "torch.load" or name.endswith(".torch.load"):
                value = keyword(node, "weights_only")
                if not (isinstance(value, ast.Constant) and value.value is True):
                    problems.append(f"{where} torch.load without weights_only=True")
            if name in ("pickle.load", "pickle.loads", "cPickle.load", "dill.load", "joblib.load"):
                problems.append(f"{where} {name}")
            if name.endswith("np.load") or name.endswith("numpy.load"):
                value = keyword(node, "allow_pickle")
                if value is not None and not (isinstance(value, ast.Constant) and value.value is False):
                    problems.append(f"{where} np.load with allow_pickle")
        for node in ast.walk(ast.parse(path.read_text())):
            # `from torch import load` would hide calls from the scan above.
            if isinstance(node, ast.ImportFrom) and node.module in ("torch", "pickle", "dill", "joblib"):
                if any(alias.name in ("load", "loads") for alias in node.names):
                    problems.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {node.module}.load")
    assert not problems, problems


def test_the_scan_finds_what_it_looks_for(tmp_path):
    load = "torch." + "load"  # spelled in two parts so text-level scans of this repo don't flag the test itself
    bad = f"import torch, pickle\n{load}('x')\npickle.load(open('y', 'rb'))\n{load}('z', weights_only=False)\n"
    found = [name for _node, name in calls(ast.parse(bad)) if name in ("torch.load", "pickle.load")]
    assert found == ["torch.load", "pickle.load", "torch.load"]


def test_share_is_off_by_default_and_warns_when_on(capsys):
    import app

    assert app.parse_args([]).share is False
    args = app.parse_args(["--share"])
    assert app.launch_warnings(args) and "public" in app.launch_warnings(args)[0]
    assert app.launch_warnings(app.parse_args([])) == []


def test_basic_auth_flag(monkeypatch):
    import app

    assert app.auth_pairs(app.parse_args([])) is None
    assert app.auth_pairs(app.parse_args(["--auth", "ana:s3cret:with:colons"])) == [("ana", "s3cret:with:colons")]
    monkeypatch.setenv("DYNAMICTRL_AUTH", "bo:pw")
    assert app.auth_pairs(app.parse_args([])) == [("bo", "pw")]
    with pytest.raises(SystemExit):
        app.auth_pairs(app.parse_args(["--auth", "no-colon"]))


def fetch_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def upload(app_url: str, name: str, data: bytes) -> str:
    """A file uploaded the way the page uploads it; its path on the server."""
    import httpx

    response = httpx.post(f"{app_url}gradio_api/upload", files={"files": (name, data)}, timeout=30)
    response.raise_for_status()
    return response.json()[0]


@pytest.mark.slow  # starts the tiny app server
def test_no_file_outside_the_upload_cache_is_served(tiny_app, tmp_path):
    """Only gradio's cache (uploads, and gradio's copies of the app's results) is served: not
    the outputs folder itself, not a symlink out of it, not a URL to fetch."""
    outputs = tiny_app.outputs
    outputs.mkdir(parents=True, exist_ok=True)
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the web")
    link = outputs / "link_to_secret.txt"
    link.symlink_to(secret)
    result = outputs / "served.json"
    result.write_text("{}")
    base = f"{tiny_app.url}gradio_api/file="
    cached = upload(tiny_app.url, "photo.png", (ROOT / "assets" / "reference_figure.png").read_bytes())
    try:
        assert fetch_status(base + cached) == 200  # the checks below are not just "everything fails"
        for path in (
            str(secret),
            str(link),
            str(result),
            f"{outputs}/../{secret.name}",
            f"{outputs}/../../../etc/passwd",
            "../../etc/passwd",
            str(ROOT / "weights" / "README.md"),
            "https://example.com/photo.png",
            f"{cached}/../../../../etc/passwd",
        ):
            assert fetch_status(base + path) in (403, 404), path
        assert fetch_status(f"{tiny_app.url}gradio_api/proxy=https://example.com/") == 403
    finally:
        link.unlink()
        result.unlink()


@pytest.mark.slow  # starts the tiny app server
def test_served_files_are_attachments_with_their_media_type(tiny_app):
    import httpx

    video = upload(tiny_app.url, "dance.MP4", (ROOT / "assets" / "dance_figure.mp4").read_bytes())
    response = httpx.get(f"{tiny_app.url}gradio_api/file={video}", headers={"Range": "bytes=0-99"}, timeout=30)
    # A ranged request (how a <video> element reads) too: gradio builds those headers itself.
    assert response.status_code == 206 and len(response.content) == 100
    assert response.headers["content-type"] == "video/mp4"
    assert response.headers["content-disposition"] == 'attachment; filename="dance.MP4"'
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-security-policy"].startswith("sandbox")
    for name in ("page.html", "image.svg", "code.js", "notes.txt", "list.m3u8", "page.htm", "noext"):
        path = upload(tiny_app.url, name, b"<script>alert(1)</script>")
        refused = httpx.get(f"{tiny_app.url}gradio_api/file={path}", timeout=30)
        assert refused.status_code == 403 and refused.headers["x-content-type-options"] == "nosniff", name
        assert refused.headers["content-type"].startswith("text/plain") and b"<script" not in refused.content


def test_serving_rule_decides_by_cache_folder_and_type(tmp_path):
    from ui.serving import ServedFiles

    cache = tmp_path / "cache"
    (cache / "abc").mkdir(parents=True)
    (cache / "abc" / "clip.mp4").write_bytes(b"")
    (tmp_path / "outside.mp4").write_bytes(b"")
    (cache / "abc" / "escape.mp4").symlink_to(tmp_path / "outside.mp4")
    rule = ServedFiles(app=None, upload_dir=cache)
    assert rule.refusal(str(cache / "abc" / "clip.mp4")) is None
    assert "URL" in rule.refusal("http://169.254.169.254/latest.mp4")
    assert "not a file of this app" in rule.refusal(str(tmp_path / "outside.mp4"))
    assert "not a file of this app" in rule.refusal(str(cache / "abc" / "escape.mp4"))  # a symlink out
    assert "not a file of this app" in rule.refusal(str(cache) + "-other/x.mp4")  # a sibling with the same prefix
    assert "only video, image and audio" in rule.refusal(str(cache / "abc" / "page.HTML"))


def test_a_full_queue_says_how_many_wait_and_when_to_retry():
    """A real gradio queue (max 1 waiting, one job at a time, the job held open) behind the
    app's middleware: the join that finds it full gets 429, the count and a minute."""
    import threading

    import gradio as gr
    import httpx
    from starlette.middleware import Middleware

    from tests.app_server import free_port
    from ui.serving import QueueFullMessage, queue_full_message

    release = threading.Event()
    with gr.Blocks() as demo:
        button = gr.Button()
        text = gr.Textbox()
        button.click(lambda: release.wait(30) and "done", None, text, api_name="hold", concurrency_limit=1)
    demo.queue(max_size=1)
    port = free_port()
    demo.launch(
        server_port=port,
        prevent_thread_lock=True,
        quiet=True,
        ssr_mode=False,
        app_kwargs={"middleware": [Middleware(QueueFullMessage, queue_size=1)]},
    )
    try:
        answers = []
        for index in range(4):
            response = httpx.post(
                f"http://127.0.0.1:{port}/gradio_api/queue/join",
                json={
                    "data": [],
                    "fn_index": 0,
                    "session_hash": f"visitor{index}",
                    "event_data": None,
                    "trigger_id": button._id,
                },
                timeout=10,
            )
            answers.append(response)
            if response.status_code != 200:
                break
        full = answers[-1]
        assert full.status_code == 429, [answer.status_code for answer in answers]
        assert full.json() == {"detail": queue_full_message(1)}
        assert full.json()["detail"] == "The queue is full: 1 job is waiting. Try again in a minute."
        assert full.headers["retry-after"] == "60"
    finally:
        release.set()
        demo.close()
    assert queue_full_message(16) == "The queue is full: 16 jobs are waiting. Try again in a minute."


def test_admin_actions_need_a_login_on_a_reachable_server(monkeypatch):
    import app

    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.delenv("DYNAMICTRL_AUTH", raising=False)
    allowed = app.admin_actions_allowed
    assert allowed(app.parse_args([]))  # loopback only: the person at this machine
    assert not allowed(app.parse_args(["--host", "0.0.0.0"]))
    assert not allowed(app.parse_args(["--share"]))
    assert allowed(app.parse_args(["--host", "0.0.0.0", "--auth", "ana:pw"]))
    monkeypatch.setenv("SPACE_ID", "someone/dynamictrl")  # a Hugging Face Space, whatever the host
    assert not allowed(app.parse_args([]))


def built_page(tmp_path, admin_actions: bool):
    """The page built in-process around a studio that is never called (wiring only)."""
    from types import SimpleNamespace

    from ui.handlers import AppConfig
    from ui.layout import build_app

    studio = SimpleNamespace(
        extract_poses=None,
        mask=None,
        caption=None,
        lipsync=None,
        limits=None,
        manager=SimpleNamespace(unload_all=lambda: None, unload=lambda name: None),
    )
    config = AppConfig(outputs_dir=tmp_path / "out", work_dir=tmp_path / "work", admin_actions=admin_actions)
    return build_app(studio, config), config, studio


def test_without_admin_actions_the_unload_buttons_and_endpoints_do_not_exist(tmp_path):
    import gradio as gr

    def buttons_and_endpoints(page):
        buttons = {block.value for block in page.blocks.values() if isinstance(block, gr.Button)}
        endpoints = {fn.api_name for fn in page.fns.values() if fn.api_name}
        return buttons, endpoints

    buttons, endpoints = buttons_and_endpoints(built_page(tmp_path / "admin", admin_actions=True)[0])
    assert {"Unload", "Unload all"} <= buttons and "unload_all" in endpoints
    page, _config, _studio = built_page(tmp_path / "public", admin_actions=False)
    buttons, endpoints = buttons_and_endpoints(page)
    assert not {"Unload", "Unload all"} & buttons and "unload_all" not in endpoints
    assert "system_status" in endpoints  # the rest of the System tab stays


def test_unload_handlers_refuse_without_admin_actions(tmp_path):
    import gradio as gr

    from ui.handlers import Handlers

    _page, config, studio = built_page(tmp_path, admin_actions=False)
    handlers = Handlers(studio, config)
    with pytest.raises(gr.Error, match="admin action"):
        handlers.unload_all()
    with pytest.raises(gr.Error, match="admin action"):
        handlers.unload("dynamictrl.shared")


def test_error_messages_show_private_files_by_name_only(tmp_path):
    import gradio as gr

    from ui.handlers import AppConfig, Handlers, without_private_paths

    cache = tmp_path / "app" / "gradio"
    message = f"Could not decode {cache}/9f3e/my dance.mp4: bad data; see {cache}/9f3e/x.json or /etc/hosts"
    assert without_private_paths(message, [tmp_path / "app"]) == (
        "Could not decode my dance.mp4: bad data; see x.json or /etc/hosts"
    )

    class FailingStudio:
        extract_poses = mask = caption = lipsync = None
        limits = None

    config = AppConfig(
        outputs_dir=tmp_path / "out", work_dir=tmp_path / "app" / "jobs", private_dirs=(tmp_path / "app",)
    )
    handlers = Handlers(FailingStudio(), config)
    image = cache / "ab" / "photo.png"
    image.parent.mkdir(parents=True)
    image.write_text("not an image")
    with pytest.raises(gr.Error) as raised:  # dynamictrl.images' OSError text holds the full path
        handlers.crop_preview(str(image), next(iter(config.size_presets)), None, None)
    assert "photo.png" in raised.value.message and str(tmp_path) not in raised.value.message


def test_upload_widgets_hand_over_the_file_unopened(tmp_path):
    import gradio as gr
    from gradio.data_classes import FileData, ImageData

    from ui.uploads import AudioUpload, ImageUpload, VideoUpload

    not_an_image = tmp_path / "holiday.heic"
    not_an_image.write_bytes(b"\x00" * 64)  # gradio's PIL would fail on it ("Could not preprocess ...")
    assert ImageUpload().preprocess(ImageData(path=str(not_an_image))) == str(not_an_image)
    assert VideoUpload().preprocess(FileData(path=str(not_an_image))) == str(not_an_image)
    assert AudioUpload().preprocess(FileData(path=str(not_an_image))) == str(not_an_image)
    assert ImageUpload().preprocess(None) is None
    # drawn by gradio's own image/video/audio widgets in the page, with every setting sent to it
    assert [widget().get_block_name() for widget in (ImageUpload, VideoUpload, AudioUpload)] == [
        "image",
        "video",
        "audio",
    ]
    for widget, plain in ((ImageUpload, gr.Image), (VideoUpload, gr.Video), (AudioUpload, gr.Audio)):
        settings = widget(label="x", elem_id="y").get_config()
        assert settings["label"] == "x" and settings["elem_id"] == "y" and set(settings) == set(plain().get_config())
    with pytest.raises(gr.Error, match="as a file upload"):
        ImageUpload().preprocess(ImageData(url="data:image/png;base64,AAAA"))
    with pytest.raises(gr.Error, match="gone from the server") as raised:
        VideoUpload().preprocess(FileData(path=str(tmp_path / "cache" / "dance.mp4"), orig_name="dance.mp4"))
    assert str(tmp_path) not in raised.value.message


def test_messages_speak_of_the_page_not_of_cli_flags():
    from ui.handlers import in_app_terms

    api = (
        "dance.mp4 is 0.5 s long (8 frames at 16 fps); from 0 s at 16 fps it gives 8 frames but 12 are needed. "
        "Lower the frame count, lower the fps, start earlier, or loop the video. With this video use --frames 9 "
        "or --loop."
    )
    assert in_app_terms(api) == (
        "dance.mp4 is 0.5 s long (8 frames at 16 fps); from 0 s at 16 fps it gives 8 frames "
        "but 12 are needed. Lower the frame count, lower the fps or start earlier. With this "
        "video set Frames to 9."
    )
    assert in_app_terms(
        "The pose video has 1 frames, fewer than the 9 asked for: use --frames 1 or a longer pose video."
    ).endswith("set Frames to 1 or use a longer pose video.")
