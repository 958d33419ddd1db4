"""Deploy-check tools from the `deploy` extra: found, or the test fails loudly (never a silent skip)."""

import importlib
import os
import shutil
import sys
from pathlib import Path

import pytest

INSTALL_HINT = "it is a test dependency: pip install -e '.[deploy]'"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "needs_tool(*names): uses tools of the deploy extra; a missing tool fails the test"
    )


def _binary(name: str) -> str:
    # The venv's bin directory first: the deploy extra's wheels put their binaries there.
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found beside {sys.executable} nor on PATH; {INSTALL_HINT}", pytrace=False)
    return found


def _module(name: str):
    try:
        return importlib.import_module(name)
    except (ImportError, OSError) as exc:  # OSError: helm_python's native libhelm_c failed to load
        pytest.fail(f"cannot import {name} ({exc}); {INSTALL_HINT}", pytrace=False)


TOOLS = {
    "helm-python-sdk": lambda: _module("helm_python"),
    "kubernetes-validate": lambda: _module("kubernetes_validate"),
    "docker-compose": lambda: _binary("docker-compose"),
    "hadolint": lambda: _binary("hadolint"),
    "setuptools": lambda: _module("setuptools"),  # the wheel is built with --no-build-isolation
}


@pytest.fixture(autouse=True)
def _needed_tools_present(request: pytest.FixtureRequest) -> None:
    for marker in request.node.iter_markers("needs_tool"):
        for name in marker.args:
            TOOLS[name]()


@pytest.fixture(scope="session")
def helm():
    return TOOLS["helm-python-sdk"]()


@pytest.fixture(scope="session")
def compose_bin() -> str:
    return TOOLS["docker-compose"]()


@pytest.fixture(scope="session")
def hadolint_bin() -> str:
    return TOOLS["hadolint"]()


@pytest.fixture(scope="session")
def setuptools():
    return TOOLS["setuptools"]()
