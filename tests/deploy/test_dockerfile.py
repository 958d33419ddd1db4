"""The Dockerfile: hadolint clean at warning level and above; both variants keep the deploy contract."""

import fnmatch
import json
import re
import shlex
import subprocess

import pytest

from tests.deploy.checks import (
    BROKEN,
    DOCKERFILE,
    REPO,
    VARIANTS,
    dockerfile_instructions,
    dockerfile_stages,
    image_of,
)

DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


def hadolint(binary: str, dockerfile) -> list[dict]:
    done = subprocess.run(
        [binary, "--no-color", "-f", "json", "--no-fail", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.needs_tool("hadolint")
def test_hadolint_finds_nothing_at_warning_or_above(hadolint_bin):
    findings = hadolint(hadolint_bin, DOCKERFILE)
    serious = [
        f"{f['line']}: {f['code']} {f['message']}" for f in findings if f["level"] in ("error", "warning")
    ]
    assert serious == []


def test_only_apt_pinning_is_waived_inline():
    # DL3008 (apt version pins) is waived on the CUDA stages' apt lines, with the reason written above them.
    waived = re.findall(r"#\s*hadolint ignore=([\w,]+)", DOCKERFILE.read_text())
    assert waived and set(",".join(waived).split(",")) == {"DL3008"}


@pytest.mark.needs_tool("hadolint")
def test_hadolint_catches_a_broken_dockerfile(hadolint_bin):
    codes = {
        f["code"]
        for f in hadolint(hadolint_bin, BROKEN / "Dockerfile.root-unpinned")
        if f["level"] == "warning"
    }
    assert {"DL3008", "DL3013", "DL3002", "DL3025"} <= codes


def test_base_images_are_pinned_by_digest():
    args = dict(a.split("=", 1) for op, a in dockerfile_instructions() if op == "ARG" and "=" in a)
    assert args["PYTHON_IMAGE"].startswith("python:3.11.")
    assert "-devel-" in args["CUDA_IMAGE"]  # nvcc is needed at run time by pycuda's SourceModule
    for image in (args["PYTHON_IMAGE"], args["CUDA_IMAGE"]):
        assert DIGEST.search(image), image
    for variant in VARIANTS:  # every stage starts from a pinned image or from an earlier stage
        earlier = set()
        for name, (base, _) in dockerfile_stages(variant).items():
            assert base in ("${PYTHON_IMAGE}", "${CUDA_IMAGE}") or base in earlier, f"{name}: FROM {base}"
            earlier.add(name)


def env_of(steps: list[tuple[str, str]]) -> dict[str, str]:
    """The environment ENV instructions leave (KEY=value form only), later ones winning."""
    env = {}
    for op, args in steps:
        if op == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(args))
    return env


@pytest.mark.parametrize(
    ("variant", "base", "extra", "backend"),
    [("cuda", "${CUDA_IMAGE}", ".[cuda]", "cuda"), ("cpu", "${PYTHON_IMAGE}", ".", "cpu")],
)
def test_runtime_image(variant, base, extra, backend):
    root, steps = image_of(variant, "runtime")
    assert root == base
    ops = dict(steps)  # last of each instruction wins, as in Docker
    env = env_of(steps)
    assert env["GGUF_SERVE_BACKEND"] == backend
    assert env["GGUF_SERVE_CACHE_DIR"] == "/models" and env["GGUF_SERVE_HOST"] == "0.0.0.0"
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert ops["USER"] == "10001:10001"
    assert ops["VOLUME"] == '["/models"]'
    assert json.loads(ops["ENTRYPOINT"]) == ["gguf-serve"]  # exec form: the server is PID 1 and gets SIGTERM
    assert json.loads(ops["CMD"]) == ["serve"]
    healthcheck = ops["HEALTHCHECK"]
    assert "/health" in healthcheck and "urllib.request" in healthcheck and "curl" not in healthcheck
    assert json.loads(healthcheck.split(" CMD ", 1)[1])[0].startswith("python")
    (copied,) = [a for op, a in steps if op == "COPY"]
    assert copied == "--from=build /opt/venv /opt/venv"
    build_root, build_steps = image_of(variant, "build")
    assert build_root == base  # the venv runs on the interpreter it was built with
    build_runs = " ".join(a for op, a in build_steps if op == "RUN")
    assert f'pip install --no-cache-dir --disable-pip-version-check "{extra}"' in build_runs or (
        f"pip install --no-cache-dir --disable-pip-version-check {extra}" in build_runs
    )
    runtime_runs = " ".join(a for op, a in steps if op == "RUN")
    if variant == "cuda":  # pycuda's SourceModule runs nvcc, which calls the host C++ compiler
        assert "python3 g++" in runtime_runs
    else:  # the native kernels are compiled by pip in the build stage; the runtime has their OpenMP library
        assert "gcc" in build_runs and "gcc" not in runtime_runs and "libgomp1" in runtime_runs


def test_cpu_is_the_default_variant():
    args = dict(a.split("=", 1) for op, a in dockerfile_instructions() if op == "ARG" and "=" in a)
    assert args["VARIANT"] == "cpu"
    for variant in VARIANTS:
        assert list(dockerfile_stages(variant))[-1] == "runtime"  # a plain `docker build .` builds it


def dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a directory covers its files."""
    prefixes = ["/".join(path.split("/")[: i + 1]) for i in range(path.count("/") + 1)]
    excluded = False
    for line in (REPO / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate, pattern = pattern.startswith("!"), pattern.lstrip("!").rstrip("/")
        if pattern.startswith("**/"):
            matched = any(fnmatch.fnmatch(p.rsplit("/", 1)[-1], pattern[3:]) for p in prefixes)
        else:
            matched = any(fnmatch.fnmatch(p, pattern) for p in prefixes)
        if matched:
            excluded = not negate
    return excluded


def test_dockerignore_keeps_what_the_build_copies():
    sources = {
        src for op, args in dockerfile_instructions() if op == "COPY" and not args.startswith("--from")
        for src in args.split()[:-1]
    }  # fmt: skip
    assert sources == {"."}  # the build context, which .dockerignore cuts down to what `pip install .` needs
    for path in (
        "pyproject.toml",
        "setup.py",
        "README.md",
        "app",
        "inference",
        "config",
        "cuda",
        "cpu/common.h",
    ):
        assert not dockerignore_excludes(path), f".dockerignore drops {path}, which `pip install .` needs"
    for path in (".venv", ".env", "tests", "build", "gguf_serve.egg-info", "app/__pycache__"):
        assert dockerignore_excludes(path), f".dockerignore lets {path} into the image build"
