"""scripts/screenshots.py (`make screenshots`): what it refuses, and what it writes. The walkthrough itself runs in
the browser suites (tests/browser/test_ui_local.py and the compose suite's 7b), which publish through `publish`."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from conftest import free_port
from scripts import screenshots


def screen_files(folder: Path, names: tuple[str, ...]) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, name in enumerate(names):
        path = folder / f"{i:02d}-{name}.png"
        Image.new("RGB", (320, 200), (40 * i % 255, 120, 200)).save(path)
        out[name] = str(path)
    return out


def test_publish_writes_every_named_screen_as_a_small_png_of_the_same_size(tmp_path: Path) -> None:
    shots = screen_files(tmp_path / "shots", screenshots.SCREENS)
    written = screenshots.publish(shots, tmp_path / "out")
    assert [p.name for p in written] == [f"{n}.png" for n in screenshots.SCREENS]
    for path in written:
        with Image.open(path) as image:
            assert image.size == (320, 200) and image.mode == "P", (path, image.size, image.mode)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in written)  # no temp files


def test_publish_with_a_screen_missing_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "mlflow-run.png").write_bytes(b"the previous picture")
    shots = screen_files(tmp_path / "shots", screenshots.SCREENS[:-1])
    with pytest.raises(ValueError, match=screenshots.SCREENS[-1]):
        screenshots.publish(shots, out)
    assert [p.name for p in out.iterdir()] == ["mlflow-run.png"]
    assert (out / "mlflow-run.png").read_bytes() == b"the previous picture"


def test_without_an_env_file_it_says_make_env(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="make env"):
        screenshots.main(["--env-file", str(tmp_path / ".env"), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_without_a_running_stack_it_says_start_it_and_writes_nothing(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text(f"AIRFLOW_PORT={free_port()}\nMLFLOW_PORT={free_port()}\nAIRFLOW_ADMIN_PASSWORD=x\n")
    with pytest.raises(SystemExit, match=r"Airflow does not answer at http://127\.0\.0\.1:\d+/.*make demo"):
        screenshots.main(["--env-file", str(env), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
