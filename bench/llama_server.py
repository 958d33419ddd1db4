"""Build llama.cpp's `llama-server` from the llama-cpp-python sdist on PyPI and cache it outside the repo.

    python -m bench.llama_server          # prints the binary's path, building it first if needed

For bench scripts only (never CI): the sdist's hash is checked, the vendored llama.cpp is built with
cmake (Release, native CPU, no curl, only the `llama-server` target) into
~/.cache/gguf-serve-bench/llama-server-<version>/ or $GGUF_SERVE_BENCH_CACHE/llama-server-<version>/.
"""

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

VERSION = "0.3.36"
SDIST = f"llama_cpp_python-{VERSION}.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
CMAKE_OPTIONS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_CURL=OFF",
    "-DGGML_NATIVE=ON",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_TOOLS=ON",  # the server lives under tools/ in this llama.cpp
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DBUILD_SHARED_LIBS=OFF",  # one self-contained binary: no libllama.so to find at run time
]


def cache_dir() -> Path:
    root = os.environ.get("GGUF_SERVE_BENCH_CACHE") or Path.home() / ".cache" / "gguf-serve-bench"
    return Path(root).expanduser() / f"llama-server-{VERSION}"


def llama_server_binary(jobs: int = 2, nice: int = 15) -> Path:
    """The cached `llama-server`, built first (download, verify, unpack, cmake) when absent."""
    cache = cache_dir()
    binary = cache / "bin" / "llama-server"
    if binary.is_file():
        return binary
    source = unpack(download(cache), cache)
    built = build(source, cache / "build", jobs, nice)
    binary.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(built, binary.with_suffix(".tmp"))
    binary.with_suffix(".tmp").replace(binary)  # only a whole binary ever sits at the cached path
    return binary


def download(cache: Path) -> Path:
    sdist = cache / SDIST
    if not sdist.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        subprocess.run([*pip, f"llama-cpp-python=={VERSION}", "-d", str(cache)], check=True)
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        sdist.unlink()
        raise ValueError(f"{SDIST}: sha256 {digest}, expected {SDIST_SHA256}; file removed")
    return sdist


def unpack(sdist: Path, cache: Path) -> Path:
    """The vendored llama.cpp source tree inside the unpacked sdist."""
    source = cache / f"llama_cpp_python-{VERSION}" / "vendor" / "llama.cpp"
    if not (source / "CMakeLists.txt").is_file():
        with tarfile.open(sdist) as tar:
            tar.extractall(cache, filter="data")
    if not (source / "CMakeLists.txt").is_file():
        raise ValueError(f"{sdist.name}: no vendor/llama.cpp/CMakeLists.txt after unpacking")
    return source


def build(source: Path, build_dir: Path, jobs: int, nice: int) -> Path:
    niced = ["nice", "-n", str(nice)]
    start = time.monotonic()
    subprocess.run([*niced, "cmake", "-S", str(source), "-B", str(build_dir), *CMAKE_OPTIONS], check=True)
    parallel = ["--parallel", str(jobs)]
    subprocess.run(
        [*niced, "cmake", "--build", str(build_dir), "--target", "llama-server", *parallel], check=True
    )
    print(f"built llama-server in {time.monotonic() - start:.0f} s", file=sys.stderr)
    built = build_dir / "bin" / "llama-server"
    if not built.is_file():
        raise ValueError(f"cmake build finished but {built} is missing")
    return built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="parallel compile jobs")
    parser.add_argument("--nice", type=int, default=15, help="niceness of the build")
    args = parser.parse_args(argv)
    print(llama_server_binary(args.jobs, args.nice))
    return 0


if __name__ == "__main__":
    sys.exit(main())
