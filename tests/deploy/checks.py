"""The offline deploy checks as functions: helm lint/render, Kubernetes schema validation, compose config."""

import json
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
VARIANTS = ("cpu", "cuda")  # the Dockerfile's VARIANT build argument: a <variant>-base and -build stage each
CHART = REPO / "helm" / "gguf-serve"
HERE = Path(__file__).parent
BROKEN = HERE / "broken"
KUBE_VERSION = "1.30.0"
# kubernetes-validate ships schemas for built-in kinds only; CRD kinds get a vendored schema here.
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): HERE / "schemas" / "servicemonitor-monitoring-v1.json"
}


class CheckFailed(AssertionError):
    """A deploy artifact did not pass a check; the message names the object and the field."""


def lint_problems(helm, chart: Path, values: dict | None = None) -> list[str]:
    """`helm lint --strict` for Kubernetes 1.30: every warning or error, as text (empty = clean)."""
    report = helm.lint(str(chart), values, strict=True, kube_version=f"v{KUBE_VERSION}")
    problems = [f"{m['path']}: {m['error'].strip()}" for m in report["messages"] if m["severity"] >= 2]
    return problems + [e.strip() for e in report["errors"] if not any(e.strip() in p for p in problems)]


def render(helm, chart: Path, values: dict | None = None) -> list[dict]:
    """`helm template` offline: every rendered Kubernetes object (NOTES.txt and empty documents dropped)."""
    import yaml  # PyYAML and jsonschema come with kubernetes-validate (deploy extra): imported on use

    with helm.Chart.load(str(chart)) as loaded:
        manifests = loaded.render(values, name="demo", namespace="llm", is_install=True)
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        try:
            objects += [doc for doc in yaml.safe_load_all(text) if doc]
        except yaml.YAMLError as exc:
            raise CheckFailed(f"{path} is not valid YAML: {exc}") from exc
    return objects


def validate_object(obj: dict) -> None:
    """Strict schema validation for Kubernetes 1.30; a kind with no schema is a failure, not a pass."""
    import jsonschema
    import kubernetes_validate
    from kubernetes_validate import utils

    name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')} ({obj.get('apiVersion')})"
    crd = CRD_SCHEMAS.get((obj.get("apiVersion"), obj.get("kind")))
    if crd is not None:
        errors = sorted(
            jsonschema.Draft202012Validator(json.loads(crd.read_text())).iter_errors(obj), key=str
        )
        if errors:
            first = errors[0]
            raise CheckFailed(f"{name}: {'.'.join(map(str, first.absolute_path))}: {first.message}")
        return
    try:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    except utils.SchemaNotFoundError as exc:
        raise CheckFailed(
            f"{name}: no schema ({exc.message}); a kind the validator cannot check fails"
        ) from exc
    except utils.ValidationError as exc:
        raise CheckFailed(f"{name}: {'.'.join(map(str, exc.path))}: {exc.message}") from exc


def compose_config(compose_bin: str, compose_file: Path, *profiles: str) -> dict:
    """`docker-compose config --format json` for the given profiles; CheckFailed carries compose's stderr."""
    cmd = [compose_bin, "-f", str(compose_file)]
    for profile in profiles:
        cmd += ["--profile", profile]
    cmd += ["config", "--format", "json"]
    # A bare environment: the developer's COMPOSE_* or SERVE_* variables must not change the result.
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(compose_file.parent)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    if done.returncode != 0:
        raise CheckFailed(f"docker-compose config {' '.join(profiles)} failed: {done.stderr.strip()}")
    return json.loads(done.stdout)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of the Dockerfile, continuation lines joined, comments dropped."""
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


def dockerfile_stages(variant: str) -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """Stage name -> (its base, its instructions), for a build with VARIANT=variant (in file order)."""
    found, current = {}, None
    for op, args in dockerfile_instructions():
        if op == "FROM":
            base, _, current = args.replace("${VARIANT}", variant).split()
            found[current] = (base, [])
        elif current:
            found[current][1].append((op, args))
    return found


def image_of(variant: str, stage: str) -> tuple[str, list[tuple[str, str]]]:
    """The base image and every instruction (the bases' stages first) of `stage` built for `variant`."""
    found = dockerfile_stages(variant)
    base, steps = found[stage]
    if base in found:
        root, inherited = image_of(variant, base)
        return root, inherited + steps
    return base, steps
