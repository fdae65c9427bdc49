"""Shared by the demo tests and ``benchmarks/app_latency.py``: the test slices, and ``app.py`` served on
127.0.0.1 in a subprocess (:class:`DemoServer`, the one launcher)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT_S = 240
_SERVER_KEY = pytest.StashKey["DemoServer"]()


def require_test_data() -> Path:
    """The held-out test patients (conftest's ``lgg_test_dir``, for code outside a fixture)."""
    from conftest import LGG_TEST_DIR, require_data  # tests/ is on the path only under pytest

    return require_data(LGG_TEST_DIR, "the held-out LGG patients")


def largest_tumor_slice() -> tuple[Path, Path]:
    """(image, mask) paths of the test slice with the largest ground-truth mask."""
    from brainseg.io.dataset import read_mask, scan_dataset

    records = [r for p in scan_dataset(require_test_data()) for r in p.slices if r.mask_path]
    best = max(records, key=lambda r: int(read_mask(r.mask_path).sum()))
    return best.image_path, best.mask_path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class DemoServer:
    """``python app.py`` on 127.0.0.1 and a free port in a subprocess, its output in ``log``; a context manager
    that stops it."""

    url: str
    process: subprocess.Popen
    log: Path

    @classmethod
    def start(cls, log: Path, *args: str) -> "DemoServer":
        """Start it with ``args`` for app.py (``--data-dir``, ``--model``, ...) and wait until it answers."""
        port = free_port()
        env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
        command = [sys.executable, "app.py", "--host", "127.0.0.1", "--port", str(port), *args]
        with log.open("w") as out:
            process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        server = cls(f"http://127.0.0.1:{port}", process, log)
        server.wait_ready()
        return server

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"app.py exited with {self.process.returncode}:\n{self.log.read_text()}")
            try:
                with urllib.request.urlopen(self.url + "/config", timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"app.py did not answer within {STARTUP_TIMEOUT_S} s:\n{self.log.read_text()}")

    def __enter__(self) -> "DemoServer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def demo_server(request: pytest.FixtureRequest) -> DemoServer:
    """One app (with the test patients as its data folder) for the whole test session."""
    config = request.config
    server = config.stash.get(_SERVER_KEY, None)
    if server is None or server.process.poll() is not None:
        data = require_test_data()
        log = Path(tempfile.mkdtemp(prefix="brainseg-demo-")) / "app.log"
        server = DemoServer.start(log, "--data-dir", str(data))
        config.stash[_SERVER_KEY] = server
        config.add_cleanup(server.stop)
    return server


def read_png(path: str | Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img)
