"""The command line: `diffice info` and `diffice check` (every op, fast backend vs reference kernels)."""
import subprocess
import sys

from diffice.cli import main


def test_info(capsys):
    assert main(["info"]) == 0
    assert "onednn" in capsys.readouterr().out


def test_check_passes_and_lists_every_op(capsys):
    assert main(["check", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "all ops agree" in out and "MISMATCH" not in out
    for op in ("conv2d", "group_norm", "attention", "resize_bilinear", "cross_entropy"):
        assert op in out


def test_python_dash_m_entry_point():
    done = subprocess.run([sys.executable, "-m", "diffice", "info"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "diffice" in done.stdout


def test_unknown_command_is_a_usage_error():
    done = subprocess.run([sys.executable, "-m", "diffice", "frobnicate"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "invalid choice" in done.stderr
