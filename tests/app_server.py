"""Starts `app.py --tiny` on a free local port for the browser and gradio_client tests, with
its tiny weights in a folder the tests can see and a local model hub to download from.

`LocalHub` is a real HTTP server on 127.0.0.1 that answers the two requests the catalog's
download makes (`/api/models/<repo>` with file sizes and SHA-256, `/<repo>/resolve/<sha>/<file>`
with HTTP Range), serving the repos found under its folder (`<owner>/<name>/...`). The app
reaches it through `HF_ENDPOINT`, so the Models tab's downloads run the catalog's own code,
at a throttled speed a progress bar can be watched at; nothing leaves the machine.
"""

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 120  # tiny weights are built at start (~10 s on 2 cores); generous for slow CI


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


HUB_REVISION = "0123456789abcdef0123456789abcdef01234567"


class LocalHub:
    """The hub's listing and file endpoints over a folder of repos; `seconds_per_file` spreads
    each file's bytes over that long (a tiny model would otherwise arrive in one report)."""

    def __init__(self, root: Path, seconds_per_file: float = 2.0):
        self.root = root
        self.seconds_per_file = seconds_per_file
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass  # the test's output stays readable

            def do_GET(self):
                path = urllib.request.unquote(self.path.split("?")[0])
                if path.startswith("/api/models/"):
                    return self.listing(path[len("/api/models/") :])
                repo, _, rest = path[1:].partition("/resolve/")
                revision, _, name = rest.partition("/")
                file = hub.file(repo, name)
                if file is None or revision != HUB_REVISION:
                    return self.send_error(404)
                data = file.read_bytes()
                start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers.get("Range") else 0
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                chunk = 64 * 1024
                pause = hub.seconds_per_file * chunk / max(len(data), 1)
                for offset in range(start, len(data), chunk):
                    self.wfile.write(data[offset : offset + chunk])
                    time.sleep(pause)

            def listing(self, repo: str):
                repo = repo.split("/revision/")[0]
                folder = hub.root / repo
                if not folder.is_dir():
                    return self.send_error(404)
                siblings = []
                for file in sorted(p for p in folder.rglob("*") if p.is_file()):
                    data = file.read_bytes()
                    size = len(data)
                    siblings.append(
                        {
                            "rfilename": file.relative_to(folder).as_posix(),
                            "size": size,
                            "lfs": {"size": size, "sha256": hashlib.sha256(data).hexdigest(), "pointerSize": 130},
                        }
                    )
                body = json.dumps({"id": repo, "sha": HUB_REVISION, "siblings": siblings}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def file(self, repo: str, name: str) -> Path | None:
        path = (self.root / repo / name).resolve()
        inside = path.is_relative_to(self.root.resolve()) and path.is_file()
        return path if inside else None

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class TinyAppServer:
    """`app.py --tiny` with its weights in `weights` (built there at start) and `hub` as its
    model hub (HF_ENDPOINT; offline mode off, so downloads can run)."""

    def __init__(self, outputs: Path, log_path: Path, weights: Path | None = None, hub: Path | None = None):
        self.outputs = outputs
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = log_path
        self.weights = weights or outputs.parent / "weights"
        self.hub = LocalHub(hub or outputs.parent / "hub")
        self.hub.root.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": self.hub.url}
        env.pop("GRADIO_TEMP_DIR", None)  # the app puts its upload cache in its own temp folder
        self._log = open(log_path, "w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "app.py",
                "--tiny",
                "--port",
                str(self.port),
                "--outputs",
                str(outputs),
                "--weights-dir",
                str(self.weights),
            ],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_until_up(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"app.py --tiny exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"app.py --tiny did not answer on {self.url} within {START_TIMEOUT_S} s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()[-5000:]

    def stop(self) -> None:
        """Ends the app and its hub; a second call does nothing."""
        if self._log.closed:
            return
        self.hub.stop()
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()
