"""Starts `app.py --tiny` on a free local port for the browser and gradio_client tests."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 120  # tiny weights are built at start (~10 s on 2 cores); generous for slow CI


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TinyAppServer:
    def __init__(self, outputs: Path, log_path: Path):
        self.outputs = outputs
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = log_path
        env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
        env.pop("GRADIO_TEMP_DIR", None)  # the app puts its upload cache in its own temp folder
        self._log = open(log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, "app.py", "--tiny", "--port", str(self.port), "--outputs", str(outputs)],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
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
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()
