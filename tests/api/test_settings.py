"""Settings: precedence CLI > env > TOML > default; invalid values stop start-up naming setting and source."""

import subprocess
import sys
from pathlib import Path

import pytest

from app.settings import Settings, SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_default_toml_documents_exactly_the_defaults():
    assert load_settings({}, {}, ROOT / "config" / "default.toml") == Settings()
    text = (ROOT / "config" / "default.toml").read_text()
    for name in Settings.__struct_fields__:  # every knob is there, with a comment line above it
        assert f"\n{name} = " in text, name


def test_precedence_cli_over_env_over_toml_over_default(tmp_path):
    toml = tmp_path / "s.toml"
    toml.write_text('port = 8001\nmax_waiting = 3\nmax_num_seqs = 7\nhost = "0.0.0.0"\n')
    env = {"GGUF_SERVE_PORT": "8002", "GGUF_SERVE_MAX_WAITING": "5", "GGUF_SERVE_CONFIG": str(toml)}
    s = load_settings({"port": "8003", "max_num_seqs": None}, env)
    assert (s.port, s.max_waiting, s.max_num_seqs, s.host, s.block_size) == (8003, 5, 7, "0.0.0.0", 16)


def test_env_values_are_converted_from_text():
    s = load_settings(
        {}, {"GGUF_SERVE_SHUTDOWN_GRACE_S": "2.5", "GGUF_SERVE_BACKEND": "numpy", "GGUF_SERVE_API_KEY": "k"}
    )
    assert (s.shutdown_grace_s, s.backend, s.api_key) == (2.5, "numpy", "k")


@pytest.mark.parametrize(
    ("cli", "env", "toml", "expected"),
    [
        (
            {"port": "70000"},
            {},
            None,
            "port = '70000' from command line flag --port: Expected `int` <= 65535",
        ),
        ({"port": "0"}, {}, None, "port = '0' from command line flag --port"),
        ({}, {"GGUF_SERVE_PORT": "http"}, None, "port = 'http' from environment variable GGUF_SERVE_PORT"),
        ({}, {"GGUF_SERVE_MAX_NUM_SEQS": "0"}, None, "max_num_seqs = '0' from environment variable"),
        ({}, {"GGUF_SERVE_MAX_WAITING": "-1"}, None, "max_waiting = '-1'"),
        (
            {},
            {"GGUF_SERVE_BACKEND": "tpu"},
            None,
            "backend = 'tpu' from environment variable GGUF_SERVE_BACKEND",
        ),
        ({}, {"GGUF_SERVE_LOG_LEVEL": "loud"}, None, "(one of: critical, error, warning, info, debug)"),
        (
            {},
            {"GGUF_SERVE_MAXWAITING": "4"},
            None,
            "unknown setting in environment variable GGUF_SERVE_MAXWAITING",
        ),
        ({}, {}, 'port = "8000"\n', "port = '8000' from config file"),
        ({}, {}, "request_timeout_s = -1.0\n", "request_timeout_s = -1.0 from config file"),
        ({}, {}, "prot = 8000\n", "unknown setting 'prot' in config file"),
        ({}, {}, "[server]\nport = 1\n", "unknown setting 'server' in config file"),
        ({}, {}, "port = \n", "cannot be read"),
        (
            {"block_size": "64", "kv_cache_tokens": "32"},
            {},
            None,
            "kv_cache_tokens (32) must be at least block_size",
        ),
        ({}, {}, "max_body_bytes = 1.5\n", "max_body_bytes = 1.5 from config file"),
    ],
)
def test_invalid_settings_name_setting_and_source(tmp_path, cli, env, toml, expected):
    config = None
    if toml is not None:
        config = tmp_path / "bad.toml"
        config.write_text(toml)
    with pytest.raises(SettingsError) as info:
        load_settings(cli, env, config)
    assert expected in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(SettingsError, match="config file not found"):
        load_settings({}, {"GGUF_SERVE_CONFIG": str(tmp_path / "nope.toml")})


def _serve(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app.serve", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )


def test_serve_refuses_bad_settings_before_loading_anything():
    done = _serve("--port", "70000")
    assert done.returncode == 2
    assert "invalid setting port = '70000' from command line flag --port" in done.stderr


def test_serve_refuses_unknown_toml_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("max_num_seq = 4\n")
    done = _serve(env={"GGUF_SERVE_CONFIG": str(bad)})
    assert done.returncode == 2
    assert f"unknown setting 'max_num_seq' in config file {bad}" in done.stderr


def test_serve_refuses_unknown_model(tmp_path):
    done = _serve("--model", str(tmp_path / "missing.gguf"), "--port", "1")
    assert done.returncode == 1
    assert "model file not found" in done.stderr
