"""Stand-ins for deploying a Space, shared by ``tests/test_space.py`` and ``benchmarks/space_cold_start.py``:

* :class:`PushStandin`: a local bare repository whose pre-receive hook (``tests/space_push_hook.py``) refuses what
  the Hub refuses (plain blobs over 10 MB, binary over 1 MB, LFS pointers without their object, bad front matter);
* :func:`space_venv` and :func:`cold_start`: a Space's start, as the Space does it: a fresh venv with
  ``pip install -r requirements.txt`` only, then ``python app.py`` in the exported folder, timed to its first
  ``/segment`` answer, then one ``/segment_volume``, with the server's resident memory.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

HOOK = Path(__file__).resolve().parent / "space_push_hook.py"
STARTUP_TIMEOUT_S = 300
# The Space's own variables: it serves on 0.0.0.0:7860; here 127.0.0.1 and a free port.
SPACE_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1", "PIP_RETRIES": "0",
             "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


@dataclass(frozen=True)
class PushStandin:
    """A bare repository that accepts a push only when the Hub would; ``url`` is what to push to (``file://``:
    git-lfs then uploads objects into its ``lfs/objects``, as it would to the Hub)."""

    path: Path

    @classmethod
    def create(cls, path: Path) -> PushStandin:
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(path)], check=True)
        hook = path / "hooks" / "pre-receive"
        hook.write_text(f"#!{sys.executable}\n" + HOOK.read_text())
        hook.chmod(0o755)
        return cls(path)

    @property
    def url(self) -> str:
        return self.path.resolve().as_uri()

    def push(self, repo: Path, refspec: str = "main") -> subprocess.CompletedProcess:
        """``git push`` from ``repo`` (a work tree or a bare clone); the hook's verdict is in stderr."""
        return subprocess.run(["git", "push", self.url, refspec], cwd=repo, capture_output=True, text=True,
                              timeout=600)

    def refs(self) -> str:
        return subprocess.run(["git", "show-ref"], cwd=self.path, capture_output=True, text=True).stdout


def space_venv(folder: Path, requirements: Path) -> tuple[Path, float]:
    """A fresh venv in ``folder`` (kept when it is there: a rebuild) with ``requirements.txt`` installed and nothing
    else; (its python, seconds)."""
    start = time.perf_counter()
    if not (folder / "bin" / "python").exists():
        subprocess.run([sys._base_executable, "-m", "venv", str(folder)], check=True)  # not this venv's packages
    python = folder / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")} | SPACE_ENV
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(requirements)], env=env,
                          capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"pip install -r requirements.txt failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return python, time.perf_counter() - start


@dataclass(frozen=True)
class ColdStart:
    """One start of the exported app: seconds from ``python app.py`` to each answer, and its memory."""

    ready_s: float  # the server answers /config
    first_segment_s: float  # the first /segment answer came back (counted from the start)
    volume_s: float  # one /segment_volume, on its own
    rss_mb_after_volume: float
    peak_rss_mb: float
    slice_area_px: int
    volume_ml: float
    load_average: float

    def as_dict(self) -> dict:
        return asdict(self)


def cold_start(export: Path, python: Path, slice_path: Path, flair_path: Path, port: int, log: Path,
               env: dict[str, str] | None = None) -> ColdStart:
    """Start ``python app.py`` in ``export`` with a clean environment (``env`` added: ``HF_ENDPOINT``, ...), time it
    to the first ``/segment`` answer, run one ``/segment_volume``, read the server's RSS, stop it."""
    import psutil
    from gradio_client import Client, handle_file

    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "BRAINSEG_MODEL")}
    run_env = clean | SPACE_ENV | {"GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port)} | (env or {})
    url = f"http://127.0.0.1:{port}"
    start = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen([str(python), "app.py"], cwd=export, env=run_env, stdout=out,
                                   stderr=subprocess.STDOUT)
    try:
        ready_s = wait_ready(url, process, log, start)
        client = Client(url, verbose=False)
        _, numbers, *_ = client.predict(handle_file(str(slice_path)), 0.5, True, None, api_name="/segment")
        first_s = time.perf_counter() - start
        volume_start = time.perf_counter()
        _, volume_numbers, *_ = client.predict(handle_file(str(flair_path)), None, None, 0.5,
                                               api_name="/segment_volume")
        volume_s = time.perf_counter() - volume_start
        server = psutil.Process(process.pid)
        rss_mb = server.memory_info().rss / 2**20
        peak_kb = next(int(line.split()[1]) for line in open(f"/proc/{process.pid}/status")
                       if line.startswith("VmHWM"))
        return ColdStart(ready_s, first_s, volume_s, rss_mb, peak_kb / 1024, int(numbers["area_px"]),
                         float(volume_numbers["volume_ml"]), os.getloadavg()[0])
    finally:
        stop(process)


def wait_ready(url: str, process: subprocess.Popen, log: Path, start: float) -> float:
    """Seconds from ``start`` until the app answers ``/config``; the log when it exits or never answers."""
    while time.perf_counter() - start < STARTUP_TIMEOUT_S:
        if process.poll() is not None:
            raise RuntimeError(f"app.py exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url + "/config", timeout=5) as response:
                if response.status == 200:
                    return time.perf_counter() - start
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"app.py did not answer within {STARTUP_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def write_test_scan(lgg_test_dir: Path, patient: str, folder: Path) -> tuple[Path, Path]:
    """A held-out patient's slice with the most tumor (a TIFF path) and its FLAIR stack as a NIfTI (built now)."""
    from volume_synth import affine_of, lgg_patient, ras_from_presented, save_nifti

    images, truth = lgg_patient(lgg_test_dir, patient)
    slices = sorted((lgg_test_dir / patient).glob(f"{patient}_*[0-9].tif"), key=lambda p: int(p.stem.split("_")[-1]))
    best = slices[int(np.argmax(truth.reshape(len(truth), -1).sum(axis=1)))]
    folder.mkdir(parents=True, exist_ok=True)
    flair = save_nifti(ras_from_presented(images[..., 1]).astype(np.int16) * 16, affine_of(np.diag((0.9, 0.9, 2.5))),
                       folder / "flair.nii.gz")
    return best, flair


def git_lfs_available() -> bool:
    return shutil.which("git") is not None and subprocess.run(["git", "lfs", "version"],
                                                              capture_output=True).returncode == 0
