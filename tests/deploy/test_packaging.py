"""The wheel `pip install .` builds (the Dockerfile's install) carries cuda/ and config/default.toml, and an
installed copy finds them inside its own packages; a checkout (or an editable install) at the top level."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from app.settings import default_config_path
from inference.model.backends.cuda_backend import kernel_dir
from tests.deploy.checks import REPO

KERNELS = sorted(p.name for p in (REPO / "cuda").iterdir() if p.is_file())  # *.cu and *.cuh
DEFAULT_TOML = REPO / "config" / "default.toml"
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
# run in a fresh interpreter whose sys.path starts with the installed copy, from outside the repository
PROBE = """
import json, app.settings, inference.model.backends.cuda_backend as cuda
print(json.dumps({
    "modules": [app.settings.__file__, cuda.__file__],
    "config": str(app.settings.default_config_path()),
    "kernels": str(cuda.kernel_dir()),
    "CUDA_DIR": str(cuda.CUDA_DIR),
}))
"""


def pip(*args: str) -> None:
    done = subprocess.run([*PIP, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"pip {' '.join(args)} failed:\n{done.stdout}{done.stderr}"


def build_context() -> list[str]:
    """The paths .dockerignore lets into the image build (its `!path` lines): what `pip install .` sees."""
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line[1:].strip().rstrip("/") for line in lines if line.startswith("!")]


@pytest.fixture(scope="module")
def wheel(setuptools, tmp_path_factory) -> Path:
    """The wheel, built offline from a copy of the Docker build context (so no build/ lands in the repo)."""
    src, dist = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("dist")
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in build_context():
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=skip)
        else:
            shutil.copy2(REPO / name, src / name)
    pip("wheel", str(src), "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist))
    (built,) = dist.glob("gguf_serve-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The wheel installed into an empty directory (no venv: nothing of the editable install comes along)."""
    target = tmp_path_factory.mktemp("site").resolve()
    pip("install", "--no-deps", "--no-index", "--target", str(target), str(wheel))
    return target


def test_wheel_carries_every_kernel_and_the_default_settings(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        wanted = {f"inference/cuda/{name}" for name in KERNELS} | {"app/config/default.toml"}
        assert wanted <= names, f"missing from the wheel: {sorted(wanted - names)}"
        for name in KERNELS:
            assert z.read(f"inference/cuda/{name}") == (REPO / "cuda" / name).read_bytes(), name
        assert z.read("app/config/default.toml") == DEFAULT_TOML.read_bytes()
    # pyproject.toml lists the packages by name: a new subpackage must be added there
    sources = [*REPO.glob("app/**/*.py"), *REPO.glob("inference/**/*.py")]
    modules = {p.relative_to(REPO).as_posix() for p in sources}
    assert modules <= names, f"missing from the wheel: {sorted(modules - names)}"
    # nothing at the top of site-packages but the two packages (no `cuda`, which NVIDIA's cuda-python owns)
    assert {name.split("/")[0] for name in names} == {"app", "inference", "gguf_serve-0.1.0.dist-info"}


def test_installed_wheel_finds_its_own_kernels_and_settings(installed, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(installed)}
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    for module in found["modules"]:  # the installed copy, not the checkout the editable install maps
        assert Path(module).is_relative_to(installed), module
    assert Path(found["config"]) == installed / "app" / "config" / "default.toml"
    assert Path(found["config"]).read_bytes() == DEFAULT_TOML.read_bytes()
    assert Path(found["kernels"]) == Path(found["CUDA_DIR"]) == installed / "inference" / "cuda"
    assert sorted(p.name for p in Path(found["kernels"]).iterdir()) == KERNELS


def test_installed_cli_help_names_the_installed_default_settings(installed, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(installed), "COLUMNS": "1000"}
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--help"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"{installed / 'app' / 'config' / 'default.toml'} documents every setting" in done.stdout


def test_a_checkout_finds_them_at_the_top_level():
    assert default_config_path() == DEFAULT_TOML
    assert kernel_dir() == REPO / "cuda"


def test_a_missing_kernel_directory_names_the_paths_looked_at(tmp_path):
    installed, checkout = tmp_path / "site" / "inference" / "cuda", tmp_path / "repo" / "cuda"
    checkout.mkdir(parents=True)
    (checkout / "add.cu").write_text("")  # a directory without common.cuh is not the kernel directory
    with pytest.raises(FileNotFoundError) as caught:
        kernel_dir((installed, checkout))
    assert str(caught.value) == (
        f"CUDA kernel sources not found: looked for {installed}/common.cuh and {checkout}/common.cuh; "
        "reinstall gguf-serve"
    )


def test_a_missing_default_settings_file_names_the_paths_looked_at(tmp_path):
    installed = tmp_path / "site" / "app" / "config" / "default.toml"
    checkout = tmp_path / "config" / "default.toml"
    with pytest.raises(FileNotFoundError) as caught:
        default_config_path((installed, checkout))
    assert str(caught.value) == (
        f"default settings file not found: looked for {installed} and {checkout}; reinstall gguf-serve"
    )
