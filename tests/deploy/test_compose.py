"""docker-compose.yml: `docker-compose config` (Compose v5, offline) per profile: default, cpu, monitoring."""

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.checks import BROKEN, REPO, CheckFailed, compose_config, dockerfile_stages

pytestmark = pytest.mark.needs_tool("docker-compose")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the compose project with .env made from .env.example (the repo's own .env is never used)."""
    shutil.copy(REPO / "docker-compose.yml", tmp_path)
    shutil.copy(REPO / "Dockerfile", tmp_path)
    (tmp_path / "deploy").mkdir()
    shutil.copy(REPO / "deploy" / "prometheus.yml", tmp_path / "deploy")
    shutil.copy(REPO / ".env.example", tmp_path / ".env")
    return tmp_path


def check_server(service: dict, variant: str, host_port: str) -> None:
    # the Dockerfile's last stage is the runtime; VARIANT picks its base and venv
    assert service["build"]["args"] == {"VARIANT": variant} and "target" not in service["build"]
    assert {f"{variant}-base", f"{variant}-build"} <= set(dockerfile_stages(variant))
    assert service["image"] == f"gguf-serve:0.1.0-{variant}"
    assert service["restart"] == "unless-stopped"
    assert service["init"] is True
    assert service["environment"]["GGUF_SERVE_API_KEY"] == "change-me"  # from .env
    assert service["environment"]["GGUF_SERVE_CACHE_DIR"] == "/models"
    assert not any(k.startswith("GGUF_SERVE_") and k.endswith("_PORT") for k in service["environment"])
    (volume,) = service["volumes"]
    assert (volume["type"], volume["source"], volume["target"]) == ("volume", "models", "/models")
    assert "/health" in " ".join(service["healthcheck"]["test"])
    assert service["healthcheck"]["start_period"] == "10m0s"
    assert service["stop_grace_period"] == "45s"  # above the server's 30 s drain
    (port,) = service["ports"]
    assert (port["target"], port["published"]) == (8000, host_port)


def test_default_profile_is_the_gpu_server(compose_bin, project):
    config = compose_config(compose_bin, project / "docker-compose.yml")
    assert set(config["services"]) == {"gguf-serve"}
    server = config["services"]["gguf-serve"]
    check_server(server, "cuda", "8000")
    assert server["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    ]
    assert set(config["volumes"]) == {"models"}


def test_cpu_profile_runs_the_server_without_a_gpu(compose_bin, project):
    config = compose_config(compose_bin, project / "docker-compose.yml", "cpu")
    cpu = config["services"]["gguf-serve-cpu"]
    check_server(cpu, "cpu", "8001")
    assert "deploy" not in cpu


def test_monitoring_profile_scrapes_metrics(compose_bin, project):
    config = compose_config(compose_bin, project / "docker-compose.yml", "monitoring")
    prometheus = config["services"]["prometheus"]
    assert prometheus["image"].startswith("prom/prometheus:v3.5.0@sha256:")
    mounts = {v["target"]: v for v in prometheus["volumes"]}
    config_mount = mounts["/etc/prometheus/prometheus.yml"]
    assert config_mount["read_only"] is True
    assert Path(config_mount["source"]).is_file()
    text = (REPO / "deploy" / "prometheus.yml").read_text()
    assert "metrics_path: /metrics" in text
    for name in ("gguf-serve", "gguf-serve-cpu"):
        assert f'"{name}:8000"' in text


def test_missing_env_file_is_an_error(compose_bin, project):
    (project / ".env").unlink()
    with pytest.raises(CheckFailed, match=r"\.env not found"):
        compose_config(compose_bin, project / "docker-compose.yml")


def test_env_file_is_not_committed():
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=REPO)
    assert ignored.returncode == 0, ".env must be git-ignored: it holds the API key"
    assert "GGUF_SERVE_API_KEY=" in (REPO / ".env.example").read_text()


# --- broken variants ------------------------------------------------------------------------------------


def test_broken_gpu_device_without_capabilities_is_caught(compose_bin):
    with pytest.raises(CheckFailed, match="missing property 'capabilities'"):
        compose_config(compose_bin, BROKEN / "compose-gpu-no-capabilities.yml")


def test_this_compose_file_without_capabilities_is_caught(compose_bin, project):
    compose = project / "docker-compose.yml"
    lines = compose.read_text().splitlines(keepends=True)
    kept = [line for line in lines if "capabilities:" not in line]
    assert len(kept) == len(lines) - 1
    compose.write_text("".join(kept))
    with pytest.raises(CheckFailed, match="missing property 'capabilities'"):
        compose_config(compose_bin, compose)
