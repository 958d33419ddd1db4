"""External test material from the package registry: llama.cpp's vocab files, test vectors, templates."""

import hashlib
import subprocess
import sys
import tarfile
from pathlib import Path

from inference.gguf.registry import cache_dir

SDIST = "llama-cpp-python==0.3.36"
SDIST_FILE = "llama_cpp_python-0.3.36.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
MODELS_PREFIX = "llama_cpp_python-0.3.36/vendor/llama.cpp/models/"


def llama_cpp_models_dir() -> Path:
    """vendor/llama.cpp/models from the sdist (vocab GGUFs, .inp/.out vectors, templates/), cached."""
    root = cache_dir() / "sdist"
    models = root / MODELS_PREFIX
    if (models / "templates").is_dir() and (root / ".complete").exists():
        return models
    root.mkdir(parents=True, exist_ok=True)
    archive = root / SDIST_FILE
    if not archive.exists():
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
        cmd = [*pip, "download", "--no-deps", "--no-binary", ":all:", "-d", str(root), SDIST]
        subprocess.run(cmd, check=True)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        archive.unlink()
        raise RuntimeError(f"{SDIST_FILE}: sha256 {digest}, expected {SDIST_SHA256}")
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(MODELS_PREFIX) and m.isfile()]
        tar.extractall(root, members=members, filter="data")
    (root / ".complete").touch()
    return models
