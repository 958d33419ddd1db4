"""The Helm chart: lint --strict, render several values sets, every object schema-valid on Kubernetes 1.30.

`helm lint` runs templates in lint mode, where `fail` only logs, so the chart's guards are tested by
rendering (as `helm template` does). ServiceMonitor is a CRD kind that kubernetes-validate has no schema
for: it is checked against tests/deploy/schemas/servicemonitor-monitoring-v1.json; any other kind without
a schema fails.
"""

import re
import shutil

import pytest

from tests.deploy.checks import BROKEN, CHART, CheckFailed, lint_problems, render, validate_object

pytestmark = pytest.mark.needs_tool("helm-python-sdk", "kubernetes-validate")

VALUE_SETS = {
    "defaults": {},
    "gpu": {
        "gpu": {"enabled": True, "count": 2, "runtimeClassName": "nvidia"},
        "apiKey": {"existingSecret": "gguf-serve-api-key"},
        "settings": {"max_num_seqs": 32, "max_waiting": 128},
    },
    "autoscaling": {
        "autoscaling": {"enabled": True, "queueDepth": {"enabled": True}},
        "modelStorage": {"type": "emptyDir"},
    },
    "existing-pvc": {
        "modelStorage": {"pvc": {"existingClaim": "shared-models"}, "fetch": {"enabled": False}},
        "settings": {"model": "/models/models/custom.gguf"},
    },
    "init-fetch": {
        "modelStorage": {"type": "emptyDir", "fetch": {"enabled": True}},
        "settings": {"model": "qwen2.5-coder-0.5b", "shutdown_grace_s": 60},
    },
    "monitoring": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "podDisruptionBudget": {"minAvailable": 1, "maxUnavailable": None},
    },
}


@pytest.fixture(scope="module")
def rendered(helm) -> dict[str, list[dict]]:
    return {name: render(helm, CHART, values) for name, values in VALUE_SETS.items()}


def by_kind(objects: list[dict]) -> dict[str, dict]:
    kinds = [o["kind"] for o in objects]
    assert len(kinds) == len(set(kinds)), f"one object per kind expected, got {kinds}"
    return {o["kind"]: o for o in objects}


def pod_spec(objects: list[dict]) -> dict:
    return by_kind(objects)["Deployment"]["spec"]["template"]["spec"]


def server(objects: list[dict]) -> dict:
    (container,) = [c for c in pod_spec(objects)["containers"] if c["name"] == "server"]
    return container


@pytest.mark.parametrize("name", VALUE_SETS)
def test_lint_strict_is_clean(helm, name):
    assert lint_problems(helm, CHART, VALUE_SETS[name]) == []


@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_rendered_object_validates_on_kubernetes_1_30(rendered, name):
    objects = rendered[name]
    assert {"Deployment", "Service", "ConfigMap", "ServiceAccount"} <= {o["kind"] for o in objects}
    for obj in objects:
        validate_object(obj)


def test_defaults(rendered):
    objects = by_kind(rendered["defaults"])
    assert set(objects) == {
        "ConfigMap",
        "Deployment",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
    }
    deployment, spec, container = (
        objects["Deployment"],
        pod_spec(rendered["defaults"]),
        server(rendered["defaults"]),
    )
    assert deployment["spec"]["replicas"] == 1
    assert container["image"] == "gguf-serve:0.1.0-cpu"
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    assert objects["ConfigMap"]["data"] == {
        "GGUF_SERVE_HOST": "0.0.0.0",
        "GGUF_SERVE_PORT": "8000",
        "GGUF_SERVE_CACHE_DIR": "/models",
        "GGUF_SERVE_BACKEND": "cpu",
        "GGUF_SERVE_MODEL": "smollm2-135m",
        "GGUF_SERVE_SHUTDOWN_GRACE_S": "30",
    }
    assert not any(e["name"] == "GGUF_SERVE_API_KEY" for e in container["env"])
    # The model volume is a new claim, filled by the fetch init container before the server starts.
    claim = objects["PersistentVolumeClaim"]
    assert claim["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    (init,) = spec["initContainers"]
    assert init["command"] == ["gguf-serve", "fetch-model", "smollm2-135m"]
    assert {m["mountPath"] for m in init["volumeMounts"]} == {"/models", "/tmp"}
    assert objects["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1


def test_probes_and_shutdown(rendered):
    spec, container = pod_spec(rendered["defaults"]), server(rendered["defaults"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # model load fits before liveness
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    assert spec["terminationGracePeriodSeconds"] == 5 + 30 + 15
    longer_drain = pod_spec(rendered["init-fetch"])
    assert longer_drain["terminationGracePeriodSeconds"] == 5 + 60 + 15


def test_security_context(rendered):
    spec = pod_spec(rendered["defaults"])
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 10001
    assert spec["automountServiceAccountToken"] is False
    for container in spec["containers"] + spec["initContainers"]:
        ctx = container["securityContext"]
        assert ctx["readOnlyRootFilesystem"] is True
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["capabilities"] == {"drop": ["ALL"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["tmp"] == {"name": "tmp", "emptyDir": {"sizeLimit": "2Gi"}}
    assert {"name": "tmp", "mountPath": "/tmp"} in server(rendered["defaults"])["volumeMounts"]


def test_service_reaches_the_container_port(rendered):
    objects = by_kind(rendered["defaults"])
    (port,) = objects["Service"]["spec"]["ports"]
    assert port["targetPort"] == "http"
    assert objects["Service"]["spec"]["selector"] == objects["Deployment"]["spec"]["selector"]["matchLabels"]
    (container_port,) = server(rendered["defaults"])["ports"]
    assert str(container_port["containerPort"]) == objects["ConfigMap"]["data"]["GGUF_SERVE_PORT"]


def test_settings_become_env_text(helm):
    values = {"settings": {"max_waiting": 1000000, "shutdown_grace_s": 7.5, "prefix_caching": True}}
    (config,) = [o for o in render(helm, CHART, values) if o["kind"] == "ConfigMap"]
    data = config["data"]
    assert data["GGUF_SERVE_MAX_WAITING"] == "1000000"  # not Helm's float64 "1e+06"
    assert data["GGUF_SERVE_SHUTDOWN_GRACE_S"] == "7.5"
    assert data["GGUF_SERVE_PREFIX_CACHING"] == "true"
    assert data["GGUF_SERVE_MODEL"] == "smollm2-135m"  # defaults merge with the override


def test_gpu(rendered):
    objects, spec, container = by_kind(rendered["gpu"]), pod_spec(rendered["gpu"]), server(rendered["gpu"])
    assert container["resources"]["limits"] == {"memory": "3Gi", "nvidia.com/gpu": 2}
    assert container["image"] == "gguf-serve:0.1.0-cuda"
    assert spec["runtimeClassName"] == "nvidia"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    data = objects["ConfigMap"]["data"]
    assert (data["GGUF_SERVE_BACKEND"], data["GGUF_SERVE_MAX_NUM_SEQS"], data["GGUF_SERVE_MAX_WAITING"]) == (
        "cuda",
        "32",
        "128",
    )
    (api_key,) = [e for e in container["env"] if e["name"] == "GGUF_SERVE_API_KEY"]
    assert api_key["valueFrom"] == {"secretKeyRef": {"name": "gguf-serve-api-key", "key": "api-key"}}


def test_autoscaling(rendered):
    objects = by_kind(rendered["autoscaling"])
    assert "replicas" not in objects["Deployment"]["spec"]  # the HPA owns the replica count
    hpa = objects["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": objects["Deployment"]["metadata"]["name"],
    }
    assert hpa["spec"]["metrics"] == [
        {
            "type": "Resource",
            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
        },
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": "gguf_serve_requests_waiting"},
                "target": {"type": "AverageValue", "averageValue": "4"},
            },
        },
    ]
    # CPU utilization is measured against requests, so the server must request CPU.
    assert server(rendered["autoscaling"])["resources"]["requests"]["cpu"] == "1"
    volumes = {v["name"]: v for v in pod_spec(rendered["autoscaling"])["volumes"]}
    assert volumes["models"] == {"name": "models", "emptyDir": {"sizeLimit": "10Gi"}}
    assert "PersistentVolumeClaim" not in objects


def test_existing_claim_without_fetch(rendered):
    objects, spec = by_kind(rendered["existing-pvc"]), pod_spec(rendered["existing-pvc"])
    assert "PersistentVolumeClaim" not in objects
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"] == {"claimName": "shared-models"}
    assert "initContainers" not in spec
    assert objects["ConfigMap"]["data"]["GGUF_SERVE_MODEL"] == "/models/models/custom.gguf"


def test_init_container_fetches_the_configured_model(rendered):
    spec = pod_spec(rendered["init-fetch"])
    (init,) = spec["initContainers"]
    assert init["command"] == ["gguf-serve", "fetch-model", "qwen2.5-coder-0.5b"]
    assert init["image"] == server(rendered["init-fetch"])["image"]
    assert init["envFrom"] == server(rendered["init-fetch"])["envFrom"]  # same GGUF_SERVE_CACHE_DIR


def test_service_monitor_scrapes_the_service(rendered):
    objects = by_kind(rendered["monitoring"])
    monitor = objects["ServiceMonitor"]
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["selector"]["matchLabels"] == objects["Service"]["spec"]["selector"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")
    assert endpoint["port"] in {p["name"] for p in objects["Service"]["spec"]["ports"]}
    assert objects["PodDisruptionBudget"]["spec"] == {
        "minAvailable": 1,
        "selector": objects["Deployment"]["spec"]["selector"],
    }


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"settings": {"model": "/models/custom.gguf"}}, "fetches a registry model by name"),
        (
            {"terminationGracePeriodSeconds": 30},
            "must exceed preStopSleepSeconds + settings.shutdown_grace_s = 35",
        ),
        ({"autoscaling": {"enabled": True, "targetCPUUtilizationPercentage": None}}, "needs a metric"),
        ({"podDisruptionBudget": {"minAvailable": 1}}, "exactly one of minAvailable and maxUnavailable"),
    ],
    ids=["fetch-with-a-path", "grace-too-short", "hpa-without-metric", "pdb-both-bounds"],
)
def test_template_guards_refuse_inconsistent_values(helm, values, message):
    with pytest.raises(helm.HelmRenderError, match=re.escape(message)):
        render(helm, CHART, values)


# --- broken variants: the checks above must fail on them -------------------------------------------------


def test_missing_schema_is_a_failure():
    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {}}
    with pytest.raises(CheckFailed, match="no schema"):
        validate_object(unknown)


def test_broken_chart_without_container_port_is_caught(helm):
    objects = render(helm, BROKEN / "chart-no-containerport")
    with pytest.raises(CheckFailed, match="containerPort"):
        for obj in objects:
            validate_object(obj)


def test_this_chart_without_container_port_is_caught(helm, tmp_path):
    chart = shutil.copytree(CHART, tmp_path / "gguf-serve")
    template = chart / "templates" / "deployment.yaml"
    lines = template.read_text().splitlines(keepends=True)
    kept = [line for line in lines if "containerPort:" not in line]
    assert len(kept) == len(lines) - 1
    template.write_text("".join(kept))
    with pytest.raises(CheckFailed, match="containerPort"):
        for obj in render(helm, chart):
            validate_object(obj)


@pytest.mark.parametrize("fixture", sorted(p.name for p in BROKEN.glob("values-*.yaml")))
def test_values_rejected_by_schema(helm, fixture):
    import yaml

    values = yaml.safe_load((BROKEN / fixture).read_text())
    problems = lint_problems(helm, CHART, values)
    assert any("values.yaml" in p for p in problems), problems
    with pytest.raises(helm.HelmValuesError):
        render(helm, CHART, values)


def test_broken_service_monitor_is_caught(rendered):
    monitor = dict(by_kind(rendered["monitoring"])["ServiceMonitor"])
    monitor["spec"] = {k: v for k, v in monitor["spec"].items() if k != "endpoints"}
    with pytest.raises(CheckFailed, match="endpoints"):
        validate_object(monitor)
