"""Memory sizing: the chart's default request and limit, and the README's table, follow the estimate
GGUF file + KV cache + ~250 MB, computed here from the real model files and the default settings."""

import re
from pathlib import Path

import pytest
import yaml

from app.settings import Settings
from inference.gguf.loader import load_gguf
from inference.gguf.model_config import ModelConfig

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_BYTES = 250e6  # Python, tokenizer, one batch's activations


def estimate(path: Path, kv_bytes: int) -> tuple[float, float, float]:
    """(file, KV cache, total) in bytes at the default kv_cache_tokens."""
    c = ModelConfig.from_gguf(load_gguf(path))
    kv = Settings().kv_cache_tokens * 2 * c.num_layers * c.num_kv_heads * c.head_dim * kv_bytes
    size = path.stat().st_size
    return size, kv, size + kv + RUNTIME_BYTES


def quantity(text: str) -> float:
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)(Mi|Gi)", text).groups()
    return float(number) * {"Mi": 2**20, "Gi": 2**30}[unit]


def test_chart_memory_follows_the_estimate_of_its_default_model(smollm2_path):
    values = yaml.safe_load((ROOT / "helm/gguf-serve/values.yaml").read_text())
    assert values["settings"]["model"] == "smollm2-135m" == smollm2_path.stem
    request = quantity(values["resources"]["requests"]["memory"])
    limit = quantity(values["resources"]["limits"]["memory"])
    _, _, f16 = estimate(smollm2_path, 2)
    _, _, f32 = estimate(smollm2_path, 4)
    assert f16 <= request <= limit, (f16, request)
    assert 1.25 * f32 <= limit <= 2 * f32, (
        f"limit {limit / 2**30:.2f} GiB for an estimate of {f32 / 2**30:.2f} GiB"
    )


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f}" if n >= 1e9 else f"{n / 1e6:.0f}"


@pytest.mark.parametrize("fixture", ["smollm2_path", "qwen05_path"])
def test_readme_sizing_table_matches_the_estimate(request, fixture):
    path = request.getfixturevalue(fixture)
    size, kv16, total16 = estimate(path, 2)
    _, kv32, total32 = estimate(path, 4)
    readme = (ROOT / "README.md").read_text()
    (row,) = [line for line in readme.splitlines() if line.startswith(f"| {path.stem} (")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == f"{size / 1e6:.0f} MB"
    kv = [float(x) * (1e9 if unit == "GB" else 1e6) for x, unit in re.findall(r"([\d.]+) (MB|GB)", cells[2])]
    assert kv == pytest.approx([kv16, kv32], rel=0.01), cells[2]
    totals = [float(x) * 1e9 for x in re.findall(r"~([\d.]+) GB", cells[3])]
    assert totals == pytest.approx([total16, total32], abs=0.05e9), (cells[3], _gb(total16), _gb(total32))
