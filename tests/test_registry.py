"""The model registry (brainseg/registry.py, issue 30): each known model once, where it lives, its numbers; the
bundled ones in the checkout and in a wheel."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from brainseg.cli.models import main as models_main
from brainseg.config import CONFIG_FILE, WEIGHTS_FILE
from brainseg.io.hub import BUNDLED_MODELS_DIR, bundled_models, find_bundled_root, resolve_model
from brainseg.registry import DEFAULT_MODEL_NAME, MODELS, Headline, ModelEntry, bundled_names, known_models

REPO = Path(__file__).resolve().parents[1]


def test_every_bundled_folder_is_registered_once_and_the_default_comes_first() -> None:
    names = [entry.name for entry in MODELS]
    assert len(names) == len(set(names)) and names[0] == DEFAULT_MODEL_NAME == "unet-generalist"
    on_disk = sorted(p.name for p in (REPO / "assets" / "models").iterdir() if (p / CONFIG_FILE).is_file())
    assert sorted(bundled_names()) == on_disk == ["segformer-b0", "unet", "unet-generalist"]
    assert list(bundled_models()) == bundled_names()
    assert all(folder == BUNDLED_MODELS_DIR / name for name, folder in bundled_models().items())
    assert known_models()["unet"].location == "assets/models/unet/"
    assert not (REPO / "assets" / "model").exists(), "the U-Net moved to assets/models/unet"


def test_headline_numbers_come_from_metrics_json_else_the_entry(tmp_path) -> None:
    unet = known_models()["unet"].headline(bundled_models()["unet"])
    recorded = json.loads((bundled_models()["unet"] / "metrics.json").read_text())
    assert (unet.slice_dice, unet.volume_dice) == (recorded["slice_dice"], recorded["volume_dice"])
    assert unet.brats_dice == recorded["external"]["mean_dice"]["all channels"] == 0.5897
    hub = ModelEntry("hub-model", "U-Net", "test", repo_id="org/hub-model", stated=Headline(0.9, 0.8, None))
    assert hub.location == "org/hub-model" and not hub.bundled
    assert hub.headline(tmp_path) == Headline(0.9, 0.8, None), "no metrics.json there: the entry's numbers"


def test_models_subcommand_prints_every_model_with_its_numbers(capsys) -> None:
    assert models_main([]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == [
        "unet-generalist (default)", "unet", "segformer-b0"]
    generalist = rows[0].split(" | ")
    assert generalist[1:6] == ["assets/models/unet-generalist/", "U-Net, width 16, depth 5 (3.3 M parameters)",
                               "0.906", "0.828", "0.859"]


def test_the_resolved_model_carries_its_name(tmp_path) -> None:
    assert resolve_model(None).name == DEFAULT_MODEL_NAME
    assert resolve_model("segformer-b0").name == "segformer-b0"
    folder = tmp_path / "my-model"
    folder.mkdir()
    assert resolve_model(folder).name == "my-model"


def test_an_installed_copy_finds_its_bundled_folder_first(tmp_path) -> None:
    (tmp_path / "pkg" / "_bundled").mkdir(parents=True)
    assert find_bundled_root(tmp_path / "pkg") == tmp_path / "pkg" / "_bundled"
    assert find_bundled_root(tmp_path / "other") == tmp_path / "assets" / "models"


@pytest.mark.slow  # builds the wheel (~30-60 s on 2 busy cores) and installs it
def test_the_wheel_carries_the_bundled_models_and_resolves_the_default(tmp_path) -> None:
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation",
                            "-w", str(tmp_path / "dist"), "-q"], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    [wheel] = (tmp_path / "dist").glob("brainseg-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in bundled_names():
        for file in (CONFIG_FILE, WEIGHTS_FILE, "metrics.json"):
            assert f"brainseg/_bundled/{name}/{file}" in names, (name, file)
    target = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target),
                                str(wheel), "-q"], capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr[-2000:]
    script = ("import json, brainseg.io.hub as hub; r = hub.resolve_model(None); "
              "print(json.dumps([str(r.folder), r.name, r.source, sorted(p.name for p in r.folder.iterdir())]))")
    env = {**os.environ, "PYTHONPATH": str(target)}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    folder, name, source, files = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(folder) == target / "brainseg" / "_bundled" / DEFAULT_MODEL_NAME
    assert (name, source) == (DEFAULT_MODEL_NAME, "bundled default") and {CONFIG_FILE, WEIGHTS_FILE} <= set(files)
    assert (Path(folder) / WEIGHTS_FILE).read_bytes() == (bundled_models()[DEFAULT_MODEL_NAME] / WEIGHTS_FILE
                                                          ).read_bytes()
