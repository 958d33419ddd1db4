"""ruff (pinned in the test extra, configured in pyproject.toml) over the whole tree: CI fails on lint."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def ruff_check(*paths: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format=concise", *map(str, paths)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_ruff_reports_nothing():
    result = ruff_check(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_catches_a_broken_file(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\n\n\ndef f(x=[]):\n    return x\n")
    result = ruff_check(bad)
    assert result.returncode == 1
    assert "F401" in result.stdout and "B006" in result.stdout
