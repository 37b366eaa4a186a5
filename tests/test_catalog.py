"""The models catalog: status from the disk, and downloads against a tiny local "hub".

The hub here is a real HTTP server on localhost speaking the two endpoints the download
uses (`/api/models/<repo>` with file metadata, `/<repo>/resolve/<sha>/<file>` with HTTP
Range), so listing, progress, cancel, resume and the SHA-256 check run their real code.
"""

import hashlib
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dynamictrl import catalog, weights

SHA = "0123456789abcdef0123456789abcdef01234567"


class TinyHub:
    """Serves repos {repo_id: {filename: bytes}}; records the Range header of each file GET."""

    def __init__(self, repos: dict[str, dict[str, bytes]]):
        self.repos = repos
        self.ranges: list[tuple[str, str | None]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                path = self.path.split("?")[0]
                if path.startswith("/api/models/"):
                    repo = path[len("/api/models/") :]
                    if repo not in hub.repos:
                        return self.send_error(404)
                    siblings = [
                        {
                            "rfilename": name,
                            "size": len(data),
                            "lfs": {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "pointerSize": 130},
                        }
                        for name, data in hub.repos[repo].items()
                    ]
                    body = json.dumps({"id": repo, "sha": SHA, "siblings": siblings}).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    return self.wfile.write(body)
                repo, _, rest = path[1:].partition("/resolve/")
                revision, _, filename = rest.partition("/")
                data = hub.repos.get(repo, {}).get(filename)
                if data is None or revision != SHA:
                    return self.send_error(404)
                hub.ranges.append((filename, self.headers.get("Range")))
                start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                self.wfile.write(data[start:])

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def online(monkeypatch):
    """The test session is offline (conftest); these tests talk to localhost only."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


MASK_B = weights.VARIANTS["mask_background"]


def variant_repo_files(size: int = 300_000) -> dict[str, bytes]:
    return {
        "config.json": json.dumps({"_class_name": "DynamiCtrlTransformerModel"}).encode(),
        "diffusion_pytorch_model.safetensors": bytes(range(256)) * (size // 256),
    }


def test_status_of_the_tiny_weights_folder(tiny_weights, tmp_path):
    rows = {s.spec.name: s for s in catalog.statuses(tiny_weights)}
    for name in ("base", "mask_background", "mask_clothing", "dwpose"):
        assert rows[name].state == catalog.ON_DISK, name
        assert rows[name].bytes_on_disk > 0 and rows[name].bytes_to_download == 0
    assert rows["sam_vit_b"].state == catalog.MISSING
    assert rows["sam_vit_b"].bytes_to_download == weights.SAM_CHECKPOINTS["vit_b"].size
    assert rows["base"].path == tiny_weights / "DynamiCtrl"
    assert all(row.spec.licence_url.startswith("https://") for row in rows.values())


def test_a_folder_missing_a_shard_or_with_a_part_file_is_partial(tmp_path):
    folder = tmp_path / "Dynamictrl-Mask_B01"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "model-00001-of-00002.safetensors").write_bytes(b"x" * 10)
    assert catalog.status("mask_background", tmp_path).state == catalog.PARTIAL
    (folder / "model-00002-of-00002.safetensors").write_bytes(b"x" * 10)
    assert catalog.status("mask_background", tmp_path).state == catalog.ON_DISK
    (folder / "extra.safetensors.part").write_bytes(b"x")
    assert catalog.status("mask_background", tmp_path).state == catalog.PARTIAL
    sam = tmp_path / "sam" / "sam_vit_b_01ec64.pth.part"
    sam.parent.mkdir()
    sam.write_bytes(b"x" * 1000)
    status = catalog.status("sam_vit_b", tmp_path)
    assert status.state == catalog.PARTIAL and status.bytes_on_disk == 1000


def test_download_reports_progress_and_checks_the_files(tmp_path, online):
    files = variant_repo_files()
    reports = []
    with TinyHub({MASK_B: files}) as hub:
        assert catalog.hub_download_bytes("mask_background", hub.endpoint) == sum(len(d) for d in files.values())
        path = catalog.download_model(
            "mask_background",
            tmp_path,
            progress=reports.append,
            endpoint=hub.endpoint,
            chunk_bytes=16_384,
            report_every_s=0,
        )
    assert path == tmp_path / "Dynamictrl-Mask_B01"
    for name, data in files.items():
        assert (path / name).read_bytes() == data
    total = sum(len(d) for d in files.values())
    assert reports[-1].done_bytes == total and reports[-1].total_bytes == total
    done = [r.done_bytes for r in reports]
    assert done == sorted(done) and len(reports) > 10  # a report per chunk
    assert reports[-1].bytes_per_s > 0 and reports[-1].eta_s == 0
    assert "of" in reports[-1].text() and "/s" in reports[-1].text()
    assert catalog.status("mask_background", tmp_path).state == catalog.ON_DISK


def test_cancel_keeps_the_partial_file_and_the_next_download_resumes_it(tmp_path, online):
    files = variant_repo_files()
    cancel = threading.Event()
    weights_file = "diffusion_pytorch_model.safetensors"

    def cancel_midway(report):
        if report.file == weights_file and report.done_bytes > 100_000:
            cancel.set()

    with TinyHub({MASK_B: files}) as hub:
        with pytest.raises(weights.DownloadCancelled):
            catalog.download_model(
                "mask_background",
                tmp_path,
                progress=cancel_midway,
                cancel=cancel,
                endpoint=hub.endpoint,
                chunk_bytes=16_384,
                report_every_s=0,
            )
        part = tmp_path / "Dynamictrl-Mask_B01" / (weights_file + ".part")
        kept = part.stat().st_size
        assert 0 < kept < len(files[weights_file])
        assert catalog.status("mask_background", tmp_path).state == catalog.PARTIAL

        reports = []
        catalog.download_model(
            "mask_background", tmp_path, progress=reports.append, endpoint=hub.endpoint, report_every_s=0
        )
        assert (weights_file, f"bytes={kept}-") in hub.ranges  # resumed, not restarted
    assert (tmp_path / "Dynamictrl-Mask_B01" / weights_file).read_bytes() == files[weights_file]
    assert not part.exists()
    assert reports[-1].done_bytes == sum(len(d) for d in files.values())
    assert catalog.status("mask_background", tmp_path).state == catalog.ON_DISK


def test_a_corrupted_download_is_refused(tmp_path, online):
    files = variant_repo_files()
    with TinyHub({MASK_B: files}) as hub:
        original = hub.repos[MASK_B]
        hub.repos[MASK_B] = dict(original)
        listing_sha = hashlib.sha256(original["diffusion_pytorch_model.safetensors"]).hexdigest()
        # Serve different bytes than the listing's SHA-256 promises: list first, then swap.
        files_listed = catalog.remote_files(catalog.spec("mask_background"), hub.endpoint)
        assert any(f.sha256 == listing_sha for f in files_listed)
        bad = bytearray(original["diffusion_pytorch_model.safetensors"])
        bad[5] ^= 0xFF
        real_remote_files = catalog.remote_files

        def listing_then_corrupt(item, endpoint=None):
            listed = real_remote_files(item, endpoint)
            hub.repos[MASK_B]["diffusion_pytorch_model.safetensors"] = bytes(bad)
            return listed

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(catalog, "remote_files", listing_then_corrupt)
            with pytest.raises(weights.WeightsNotFoundError, match="download of diffusion_pytorch_model"):
                catalog.download_model("mask_background", tmp_path, endpoint=hub.endpoint)
    assert not (tmp_path / "Dynamictrl-Mask_B01" / "diffusion_pytorch_model.safetensors").exists()


def test_unreachable_hub_says_what_to_do_elsewhere_and_logs_the_raw_error(tmp_path, online, caplog):
    with TinyHub({}) as hub:
        endpoint = hub.endpoint  # closed when the block ends: nothing listens there any more
    with caplog.at_level(logging.WARNING, logger="dynamictrl.catalog"):
        with pytest.raises(weights.WeightsNotFoundError) as error:
            catalog.download_model("dwpose", tmp_path, endpoint=endpoint)
    message = str(error.value)
    assert "Cannot download DWPose here: the hub cannot be reached." in message
    assert "On a machine with internet access run `python -m dynamictrl download dwpose" in message
    assert "copy the folder weights/DWPose to" in message
    assert "Connect" not in message and "127.0.0.1" not in message  # the raw error is in the log only
    assert any("127.0.0.1" in record.getMessage() or "Connect" in record.getMessage() for record in caplog.records)
    assert catalog.hub_download_bytes("dwpose", endpoint) is None  # the table's estimate stands


def test_offline_download_names_every_missing_model_once(tmp_path, tiny_weights, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(weights.WeightsNotFoundError) as error:
        catalog.download(["base", "dwpose", "sam_vit_b"], tmp_path)
    message = str(error.value)
    assert "python -m dynamictrl download base dwpose sam_vit_b --weights-dir weights" in message
    assert "run: python -m dynamictrl download\n" not in message
    # Models already on disk are not asked for.
    assert catalog.download(["base", "dwpose"], tiny_weights) == [tiny_weights / "DynamiCtrl", tiny_weights / "DWPose"]


def test_missing_models_error_lists_all_with_sizes_and_one_command(tmp_path):
    with pytest.raises(catalog.MissingModelsError) as error:
        catalog.check_on_disk(["base", "dwpose", "sam_vit_b"], tmp_path)
    assert [s.spec.name for s in error.value.missing] == ["base", "dwpose", "sam_vit_b"]
    message = str(error.value)
    assert "22.0 GB" in message and "375.0 MB" in message
    assert message.endswith("Fetch with: python -m dynamictrl download base dwpose sam_vit_b")


def test_groups_and_unknown_names():
    assert [s.name for s in catalog.expand(["lipsync", "musetalk"])] == [
        "musetalk",
        "sd_vae",
        "whisper_tiny",
        "face_parsing",
    ]
    with pytest.raises(ValueError, match="Unknown model 'dwpos'"):
        catalog.expand(["dwpos"])


def test_studio_lists_every_missing_model_of_a_job_before_it_starts(tmp_path, monkeypatch):
    from PIL import Image

    from dynamictrl.studio import GenerateSettings, Studio

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    studio = Studio(weights_dir=tmp_path / "weights", device="cpu")
    settings = GenerateSettings(prompt="", mask_mode="background", width=48, height=64, num_frames=9)
    assert studio.models_needed(settings, driving_video=True) == [
        "base",
        "mask_background",
        "dwpose",
        "sam_vit_b",
        "qwen2vl_2b",
    ]
    assert studio.models_needed(GenerateSettings(prompt="a dancer")) == ["base"]
    image = tmp_path / "ref.png"
    Image.new("RGB", (48, 64)).save(image)
    out = tmp_path / "out" / "clip.mp4"
    out.parent.mkdir()
    with pytest.raises(catalog.MissingModelsError) as error:
        studio.generate(image, out, settings, driving_video_path=tmp_path / "dance.mp4")
    assert [s.spec.name for s in error.value.missing] == [
        "base",
        "mask_background",
        "dwpose",
        "sam_vit_b",
        "qwen2vl_2b",
    ]
    assert "offline mode is on" in str(error.value)
    assert str(error.value).endswith("python -m dynamictrl download base mask_background dwpose sam_vit_b qwen2vl_2b")
    assert list(out.parent.iterdir()) == []
    # Online with auto_download off (the app): the same list, nothing fetched.
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(catalog.MissingModelsError):
        Studio(weights_dir=tmp_path / "weights", device="cpu", auto_download=False).check_models(settings)
    Studio(weights_dir=tmp_path / "weights", device="cpu").check_models(settings)  # online: fetched on the way


def test_studio_with_every_model_on_disk_misses_none(tiny_weights, lipsync_weights):
    from dynamictrl.studio import GenerateSettings, Studio

    studio = Studio(weights_dir=lipsync_weights, device="cpu", auto_download=False)
    assert (
        studio.missing_models(GenerateSettings(prompt="x", variant="mask_clothing"), driving_video=True, lipsync=True)
        == []
    )
