"""benchmarks/hc18_workflow.py (README, "Real ultrasound: the HC18 workflow") reads real data that diffice does not
ship. Where they are is the user's to say (--hc18, --sononet); a missing one is a one-line error naming the option
and the path before anything is trained or written, not a traceback after the work folder was made."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def hc18():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import hc18_workflow
    finally:
        sys.path.remove(str(BENCHMARKS))
    return hc18_workflow


def _main(hc18, monkeypatch, *args: str) -> str:
    monkeypatch.setattr(sys, "argv", ["hc18_workflow.py", *args])
    with pytest.raises(SystemExit) as exc:
        hc18.main()
    return str(exc.value.code)


def test_missing_images_are_refused_before_the_work_folder_is_made(hc18, tmp_path, monkeypatch):
    weights = tmp_path / "SonoNet16.npz"
    weights.write_bytes(b"")
    work, missing = tmp_path / "work", tmp_path / "no-hc18"
    message = _main(hc18, monkeypatch, "--work", str(work), "--hc18", str(missing), "--sononet", str(weights))
    assert message.startswith(f"--hc18 {missing}: not found")
    assert not work.exists()


def test_missing_sononet_weights_are_refused_before_the_work_folder_is_made(hc18, tmp_path, monkeypatch):
    (tmp_path / "hc18" / "images").mkdir(parents=True)
    work, missing = tmp_path / "work", tmp_path / "none.npz"
    message = _main(hc18, monkeypatch, "--work", str(work), "--hc18", str(tmp_path / "hc18"), "--sononet", str(missing))
    assert message.startswith(f"--sononet {missing}: not found")
    assert not work.exists()


def test_hc18_takes_the_challenge_layout_or_the_image_folder_itself(hc18, tmp_path):
    (tmp_path / "hc18" / "images").mkdir(parents=True)
    assert hc18.hc18_images_folder(tmp_path / "hc18") == tmp_path / "hc18" / "images"
    assert hc18.hc18_images_folder(tmp_path / "hc18" / "images") == tmp_path / "hc18" / "images"


def test_the_defaults_are_the_shared_folder_beside_the_repository(hc18):
    shared = BENCHMARKS.parent.parent / "shared"
    assert hc18.DEFAULT_HC18 == shared / "data" / "hc18"
    assert hc18.DEFAULT_SONONET == shared / "weights" / "sononet" / "SonoNet16.npz"
