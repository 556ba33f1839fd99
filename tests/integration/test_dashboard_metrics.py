"""The Grafana dashboard and the Prometheus adapter rules use only metrics Triton exports.

Every PromQL expression of docker/kubernetes/base/grafana/tddfa-triton.json (panels and
template variables) and of docker/kubernetes/prometheus-adapter/values.yaml is parsed for
metric names, functions and grouping labels; the names are then looked up in the /metrics
page of a running tritonserver (the embedded Triton 2.51, serving the toy repository).

GPU metrics: a server without a GPU (CI) exports no ``nv_gpu_*`` series. Those names are
accepted only from :data:`GPU_ONLY`, Triton's documented per-GPU metrics (docs/user_guide/
metrics.md, "GPU Metrics"); on a machine whose server exports them they are checked like
the others.
"""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

KUBERNETES = Path(__file__).resolve().parents[2] / "docker" / "kubernetes"
DASHBOARD = KUBERNETES / "base" / "grafana" / "tddfa-triton.json"
ADAPTER = KUBERNETES / "prometheus-adapter" / "values.yaml"

# Triton's per-GPU metrics (exported only where the server sees a GPU, with a gpu_uuid label).
GPU_ONLY = {
    "nv_gpu_utilization",
    "nv_gpu_memory_total_bytes",
    "nv_gpu_memory_used_bytes",
    "nv_gpu_power_usage",
    "nv_gpu_power_limit",
    "nv_energy_consumption",
}
# Labels Prometheus adds at scrape time (not in /metrics) or that only GPU series carry.
TARGET_LABELS = {"instance", "job", "namespace", "pod", "gpu_uuid"}
FUNCTIONS = {
    "sum", "avg", "max", "min", "count", "rate", "irate", "increase", "clamp_min",
    "clamp_max", "histogram_quantile", "label_values", "topk", "abs",
}  # fmt: skip
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
            "unless", "bool", "offset"}  # fmt: skip
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def parse(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, grouping labels) of a PromQL expression (Grafana ``$vars`` and the
    adapter's ``<<.Templates>>`` allowed). Raises ValueError on an unknown function."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"<<[^>]*>>|\$\{?\w+\}?", "", text)  # template placeholders
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    labels = {label.strip() for group in GROUPING.findall(text) for label in group.split(",")} - {
        ""
    }
    text = GROUPING.sub("", text)
    text = re.sub(r"(?<![\w:])\d+(?:\.\d+)?(?:e[-+]?\d+)?", "", text)  # numbers
    names = set()
    for match in re.finditer(r"[A-Za-z_:][\w:]*", text):
        token = match.group(0)
        if text[match.end() :].lstrip().startswith("("):
            if token not in FUNCTIONS:
                raise ValueError(f"unknown PromQL function {token!r} in {expr!r}")
        elif token not in KEYWORDS:
            names.add(token)
    return names, labels


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def adapter_expressions() -> list[str]:
    rules = yaml.safe_load(ADAPTER.read_text())["rules"]["custom"]
    return [e for rule in rules for e in (rule["seriesQuery"], rule["metricsQuery"])]


def exported(metrics_url: str) -> dict[str, set[str]]:
    """{metric name: label names} of every series on the /metrics page."""
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    series: dict[str, set[str]] = {}
    for line in text.splitlines():
        match = re.match(r"([A-Za-z_:][\w:]*)(\{([^}]*)\})?\s", line)
        if match and not line.startswith("#"):
            labels = set(re.findall(r"(\w+)=\"", match.group(3) or ""))
            series.setdefault(match.group(1), set()).update(labels)
    return series


def test_promql_parser_finds_names_labels_and_unknown_functions() -> None:
    names, labels = parse(
        'sum by (model, reason) (rate(nv_a{model=~"x|y",instance=~"$instance"}[$__rate_interval]))'
        " / clamp_min(sum by (<<.GroupBy>>) (rate(nv_b{<<.LabelMatchers>>}[1m])), 1) / 1000 > 0"
    )
    assert names == {"nv_a", "nv_b"} and labels == {"model", "reason"}
    assert parse("label_values(nv_inference_count, instance)") == (
        {"nv_inference_count", "instance"},
        set(),
    )
    with pytest.raises(ValueError, match="unknown PromQL function 'rat'"):
        parse("rat(nv_a[1m])")


@pytest.mark.server
def test_dashboard_and_adapter_use_only_exported_metrics(triton_server) -> None:
    import tritonclient.http as httpclient

    with httpclient.InferenceServerClient(triton_server.http_url) as client:  # some traffic
        tensor = httpclient.InferInput("INPUT", [1, 3], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 3), np.float32))
        client.infer("echo_double", [tensor])
    served = exported(triton_server.metrics_url)
    assert "nv_inference_request_success" in served, sorted(served)
    used: dict[str, set[str]] = {}
    grouping: dict[str, set[str]] = {}
    for source, exprs in (
        ("dashboard", dashboard_expressions()),
        ("adapter", adapter_expressions()),
    ):
        assert exprs, f"no expressions found in the {source}"
        for expr in exprs:
            names, labels = parse(expr)
            names.discard("instance")  # label_values(metric, instance): a label, not a metric
            for name in names:
                used.setdefault(name, set()).add(source)
                grouping.setdefault(name, set()).update(labels)
    missing = {
        name: sorted(where)
        for name, where in used.items()
        if name not in served and not (name in GPU_ONLY and not served.keys() & GPU_ONLY)
    }
    assert not missing, f"metrics not exported by this Triton: {missing}"
    assert used.keys() & GPU_ONLY, "the dashboard shows no GPU metric"
    for name, labels in grouping.items():  # `by (model, reason)` labels exist on the series
        if name in served:
            unknown = labels - served[name] - TARGET_LABELS
            assert not unknown, f"{name} has no label(s) {sorted(unknown)}"
