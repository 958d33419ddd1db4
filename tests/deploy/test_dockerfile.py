"""The Dockerfile: hadolint clean at warning level and above; both targets keep the deploy contract."""

import fnmatch
import json
import re
import subprocess

import pytest

from tests.deploy.checks import BROKEN, REPO

DOCKERFILE = REPO / "Dockerfile"
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


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1].strip()) for text in joined]


def stages() -> dict[str, list[tuple[str, str]]]:
    found, current = {}, None
    for op, args in instructions():
        if op == "FROM":
            current = args.split()[-1]
            found[current] = []
        elif current:
            found[current].append((op, args))
    return found


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
    args = dict(a.split("=", 1) for op, a in instructions() if op == "ARG" and "=" in a)
    assert args["PYTHON_IMAGE"].startswith("python:3.11.")
    assert "-devel-" in args["CUDA_IMAGE"]  # nvcc is needed at run time by pycuda's SourceModule
    for image in (args["PYTHON_IMAGE"], args["CUDA_IMAGE"]):
        assert DIGEST.search(image), image
    for op, a in instructions():
        if op == "FROM":
            assert a.split()[0] in ("${PYTHON_IMAGE}", "${CUDA_IMAGE}"), a


@pytest.mark.parametrize(
    ("target", "base", "extra"), [("cuda", "${CUDA_IMAGE}", ".[cuda]"), ("cpu", "${PYTHON_IMAGE}", ".")]
)
def test_runtime_target(target, base, extra):
    found = stages()
    steps = found[target]
    ops = dict(steps)  # last of each instruction wins, as in Docker
    froms = [a for op, a in instructions() if op == "FROM" and a.endswith(f"AS {target}")]
    assert froms == [f"{base} AS {target}"]
    assert ops["USER"] == "10001:10001"
    assert ops["VOLUME"] == '["/models"]'
    assert "GGUF_SERVE_CACHE_DIR=/models" in ops["ENV"] and "GGUF_SERVE_HOST=0.0.0.0" in ops["ENV"]
    assert json.loads(ops["ENTRYPOINT"]) == ["gguf-serve"]  # exec form: the server is PID 1 and gets SIGTERM
    assert json.loads(ops["CMD"]) == ["serve"]
    healthcheck = ops["HEALTHCHECK"]
    assert "/health" in healthcheck and "urllib.request" in healthcheck and "curl" not in healthcheck
    assert json.loads(healthcheck.split(" CMD ", 1)[1])[0].startswith("python")
    (copied,) = [a for op, a in steps if op == "COPY"]
    assert copied == f"--from={target}-build /opt/venv /opt/venv"
    build_runs = " ".join(a for op, a in found[f"{target}-build"] if op == "RUN")
    assert (
        f'pip install --no-cache-dir "{extra}"' in build_runs
        or f"pip install --no-cache-dir {extra}" in build_runs
    )


def test_cpu_is_the_default_target():
    assert list(stages())[-1] == "cpu"


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


def test_dockerignore_keeps_every_copied_path():
    sources = []
    for op, args in instructions():
        if op == "COPY" and not args.startswith("--from"):
            sources += args.split()[:-1]
    assert {"pyproject.toml", "README.md", "app", "inference", "config", "cuda"} <= set(sources)
    for source in sources:
        assert not dockerignore_excludes(source), f".dockerignore drops {source}, which the Dockerfile copies"
    assert dockerignore_excludes(".venv") and dockerignore_excludes(".env") and dockerignore_excludes("tests")
