"""deploy/ and docs/: the Helm chart rendered by a real Helm engine and validated against the
Kubernetes schemas, alert rules through promtool, the dashboard against a live mount's metrics,
the Slurm scripts, Ansible, the Dockerfiles, and the config reference against the loader."""

from __future__ import annotations

import configparser
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import Store
from warpdrive import parse_config
from warpdrive.testing.mounts import OTHER_ADDRESS, Mount, http_status_in, own_network, start_mount
from warpdrive.testing.servers import Server, ServerError, free_port, start_azurite

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "warpdrive"
KUBE_VERSION = "1.30.0"

CUSTOM = {
    "agent": {"mountPoint": "/mnt/datasets", "cachePath": "/local/nvme/wd", "metricsPort": 9191},
    "controlPlane": {
        "enabled": True,
        "database": {"host": "pg.db.svc", "password": "s3cret-pw", "name": "wd", "user": "wd"},
        "token": "api-token-value",
    },
    "config": {
        "cache": {
            "maxSize": "500GB",
            "blockSize": "8MB",
            "readaheadBlocks": 4,
            "maxParallelFetch": 16,
            "offlineMaxAge": "3d",
        },
        "fetch": {"max_attempts": 7},
        "governance": {"teams": {"alice": "vision"}},
        "backends": [
            {
                "name": "datasets-cac",
                "type": "azureblob",
                "config": {"account": "acct", "container": "coco"},
                "auth": {"method": "workload_identity"},
            },
            {"name": "s3-data", "type": "s3", "config": {"bucket": "b", "region": "us-east-1"}},
        ],
    },
}


# Azure workload identity (the identity values.yaml and the operator guide recommend) and the
# Prometheus Operator's PodMonitor.
IDENTITY = {
    "serviceAccount": {"annotations": {"azure.workload.identity/client-id": "0f1e2d3c-client"}},
    "agent": {"podLabels": {"azure.workload.identity/use": "true"}},
    "controlPlane": {"podLabels": {"azure.workload.identity/use": "true"}},
    "metrics": {"podMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}}},
}
CRDS = {"PodMonitor"}  # no schema in kubernetes-validate: checked field by field below


def render(values: dict[str, Any] | None = None) -> dict[str, list[dict[str, Any]]]:
    """The chart rendered offline by Helm's own engine: {kind: [manifests]}."""
    import helm_python as helm

    chart = helm.Chart.load(str(CHART))
    out: dict[str, list[dict[str, Any]]] = {}
    for path, text in chart.render(values, name="wd", namespace="gpu", is_install=True).items():
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                out.setdefault(doc["kind"], []).append(doc)
    return out


@pytest.mark.parametrize(
    "values", [None, CUSTOM, IDENTITY], ids=["defaults", "custom", "identity+podmonitor"]
)
def test_chart_lints_renders_and_validates(values: dict[str, Any] | None) -> None:
    import helm_python as helm
    import kubernetes_validate

    report = helm.lint(str(CHART), values, strict=True, kube_version=f"v{KUBE_VERSION}")
    assert report["errors"] == [] and [m for m in report["messages"] if m["severity"] >= 2] == []
    manifests = render(values)
    for kind, docs in manifests.items():
        for doc in docs:
            if kind not in CRDS:
                kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    expected = {"ConfigMap", "DaemonSet", "Secret", "ServiceAccount", "ClusterRole",
                "ClusterRoleBinding", "PodDisruptionBudget", "Deployment", "Service"}  # fmt: skip
    assert set(manifests) == expected | ({"PodMonitor"} if values is IDENTITY else set())


def test_agent_daemonset_has_what_a_fuse_mount_needs() -> None:
    ds = render()["DaemonSet"][0]["spec"]["template"]
    pod, (agent,) = ds["spec"], ds["spec"]["containers"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu": "true"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert agent["securityContext"]["privileged"] is True
    assert "SYS_ADMIN" in agent["securityContext"]["capabilities"]["add"]
    mounts = {m["name"]: m for m in agent["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["data"] == {
        "name": "data",
        "mountPath": "/data",
        "mountPropagation": "Bidirectional",
    }
    assert volumes["data"]["hostPath"] == {"path": "/data", "type": "DirectoryOrCreate"}
    assert (
        volumes["fuse"]["hostPath"]["path"] == "/dev/fuse"
        and mounts["fuse"]["mountPath"] == "/dev/fuse"
    )
    assert volumes["cache"]["hostPath"] == {
        "path": "/nvme/warpdrive-cache",
        "type": "DirectoryOrCreate",
    }
    assert volumes["config"]["configMap"]["name"] == "wd-warpdrive-config"
    # A backend outage must not restart the agent (or keep it from starting): the cache serves
    # on. Liveness asks the mount only; readiness is /readyz, which follows the backends.
    assert agent["command"] == ["warpdrive-mount", "--config", "/etc/warpdrive/config.yaml",
                                "--foreground", "--degraded-ok"]  # fmt: skip
    reads_a_byte = 'mountpoint -q "$1" && [ -n "$(head -c 1 "$1/.warpdrive-health")" ]'
    mount_answers = ["sh", "-c", reads_a_byte, "mount-answers", "/data"]
    assert agent["livenessProbe"]["exec"]["command"] == mount_answers
    assert agent["startupProbe"]["exec"]["command"] == mount_answers
    assert agent["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert "fusermount3 -u -z /data" in " ".join(agent["lifecycle"]["preStop"]["exec"]["command"])
    assert agent["resources"] == {
        "requests": {"cpu": "1", "memory": "2Gi"},
        "limits": {"cpu": "4", "memory": "8Gi"},
    }
    annotations = ds["metadata"]["annotations"]
    assert (
        annotations["prometheus.io/scrape"] == "true"
        and annotations["prometheus.io/port"] == "9090"
    )


def test_custom_values_reach_the_manifests_and_the_config_loads() -> None:
    manifests = render(CUSTOM)
    (config_map,) = manifests["ConfigMap"]
    config = parse_config(config_map["data"]["config.yaml"], env={})
    assert config.mount_point == "/mnt/datasets" and config.allow_other
    assert config.cache.path == "/local/nvme/wd" and config.cache.max_size == 500 * 2**30
    assert config.cache.block_size == 8 * 2**20 and config.fetch.max_attempts == 7
    assert config.cache.offline_max_age == 3 * 86400
    # Cluster nodes read only their share of a directory: the chart turns directory scans off.
    assert config.cache.scan_prefetch is False
    assert config.metrics.addr == "0.0.0.0:9191" and config.governance.teams == {"alice": "vision"}
    assert [b.name for b in config.backends] == ["datasets-cac", "s3-data"]
    assert config.telemetry.control_plane_addr == "http://wd-warpdrive-control-plane:8080"
    (deployment,) = manifests["Deployment"]
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["WARPDRIVE_DB_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "wd-warpdrive-secrets", "key": "database-password",
    }  # fmt: skip
    assert env["WARPDRIVE_DATABASE_URL"]["value"].startswith(
        "postgresql://wd:$(WARPDRIVE_DB_PASSWORD)@pg.db.svc:5432/wd"
    )
    (secret,) = manifests["Secret"]
    assert set(secret["data"]) == {"api-token", "database-password"}
    assert "s3cret-pw" not in json.dumps(manifests)  # only base64 in the Secret, nowhere in clear
    (service,) = manifests["Service"]
    assert service["spec"]["ports"][0]["port"] == 8080
    rules = manifests["ClusterRole"][0]["rules"]
    assert {(r["resources"][0], tuple(r["verbs"])) for r in rules} == {
        ("pods", ("list",)),
        ("nodes", ("get",)),
    }
    agent = manifests["DaemonSet"][0]["spec"]["template"]["spec"]["containers"][0]
    assert {
        "name": "data",
        "mountPath": "/mnt/datasets",
        "mountPropagation": "Bidirectional",
    } in agent["volumeMounts"]
    assert manifests["PodDisruptionBudget"][0]["spec"]["maxUnavailable"] == 1


def _pod(manifest: dict[str, Any]) -> dict[str, Any]:
    template: dict[str, Any] = manifest["spec"]["template"]
    return template


def test_the_pdb_guards_the_control_plane_which_reads_the_agents_config() -> None:
    manifests = render()
    (pdb,) = manifests["PodDisruptionBudget"]
    selector = pdb["spec"]["selector"]["matchLabels"]
    control_plane = _pod(manifests["Deployment"][0])
    agent = _pod(manifests["DaemonSet"][0])
    # Drains do not evict DaemonSet pods: a budget over the agents guards nothing.
    assert selector.items() <= control_plane["metadata"]["labels"].items()
    assert not selector.items() <= agent["metadata"]["labels"].items()
    assert pdb["spec"]["maxUnavailable"] == 1
    assert "PodDisruptionBudget" not in render({"controlPlane": {"enabled": False}})
    # warpdrive-ctl run in the control plane's pod finds the agents' config and a writable place
    # for its cache (the pod runs as uid 10001 with no hostPath).
    (container,) = control_plane["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in control_plane["spec"]["volumes"]}
    config_dir, _, name = env["WARPDRIVE_CONFIG"].rpartition("/")
    (config_map,) = manifests["ConfigMap"]
    config_volume = volumes[mounts[config_dir]["name"]]
    assert config_volume["configMap"]["name"] == config_map["metadata"]["name"]
    assert mounts[config_dir]["readOnly"] is True and name in config_map["data"]
    config = parse_config(config_map["data"][name], env={})
    assert volumes[mounts[config.cache.path]["name"]] == {"name": "cache", "emptyDir": {}}


def test_workload_identity_values_reach_the_service_account_and_both_pods() -> None:
    manifests = render(IDENTITY)
    (account,) = manifests["ServiceAccount"]
    assert account["metadata"]["annotations"] == {
        "azure.workload.identity/client-id": "0f1e2d3c-client"
    }
    for kind, component in (("DaemonSet", "agent"), ("Deployment", "control-plane")):
        (manifest,) = manifests[kind]
        pod = _pod(manifest)
        assert pod["spec"]["serviceAccountName"] == account["metadata"]["name"]
        assert pod["metadata"]["labels"]["azure.workload.identity/use"] == "true"
        # Extra pod labels never reach the selector (immutable once installed).
        assert manifest["spec"]["selector"]["matchLabels"] == {
            "app.kubernetes.io/name": "warpdrive", "app.kubernetes.io/instance": "wd",
            "app.kubernetes.io/component": component,
        }  # fmt: skip
    assert "annotations" not in render()["ServiceAccount"][0]["metadata"]


def test_the_images_are_the_package_version_the_chart_names() -> None:
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert version is not None
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == version[1]
    manifests = render()
    images = [_pod(manifests[k][0])["spec"]["containers"][0]["image"]
              for k in ("DaemonSet", "Deployment")]  # fmt: skip
    assert images == [f"warpdrive/agent:{version[1]}", f"warpdrive/control-plane:{version[1]}"]
    labels = manifests["DaemonSet"][0]["metadata"]["labels"]
    assert labels["app.kubernetes.io/version"] == version[1]
    custom = render({"agent": {"image": {"tag": "0.1.0-rc1"}}})
    assert _pod(custom["DaemonSet"][0])["spec"]["containers"][0]["image"].endswith(":0.1.0-rc1")
    for name in ("agent", "control-plane"):
        dockerfile = (DEPLOY / "docker" / f"{name}.Dockerfile").read_text()
        assert f"-t warpdrive/{name}:{version[1]} ." in dockerfile


def test_the_podmonitor_selects_the_agents_and_names_their_job() -> None:
    manifests = render(IDENTITY)
    (monitor,) = manifests["PodMonitor"]
    agent = _pod(manifests["DaemonSet"][0])
    spec = monitor["spec"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert set(spec) == {"jobLabel", "namespaceSelector", "selector", "podMetricsEndpoints"}
    assert spec["selector"]["matchLabels"].items() <= agent["metadata"]["labels"].items()
    assert spec["namespaceSelector"] == {"matchNames": ["gpu"]}
    # The job is the value of this pod label: "warpdrive", as the alert rules expect.
    assert agent["metadata"]["labels"][spec["jobLabel"]] == "warpdrive"
    (endpoint,) = spec["podMetricsEndpoints"]
    assert endpoint["port"] in {p["name"] for p in agent["spec"]["containers"][0]["ports"]}
    assert set(endpoint) == {"port", "path", "interval", "relabelings"}
    assert "PodMonitor" not in render()


def test_alert_rules_check_and_each_fires_then_resolves() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip(
            "promtool not installed (apt-get install prometheus; scripts/install-deps.sh does)"
        )
    monitoring = DEPLOY / "monitoring"
    check = subprocess.run(
        [promtool, "check", "rules", "alerts.yaml"], cwd=monitoring, capture_output=True, text=True
    )
    assert check.returncode == 0 and "SUCCESS: 5 rules found" in check.stdout, (
        check.stdout + check.stderr
    )
    tests = subprocess.run(
        [promtool, "test", "rules", "alerts_test.yaml"],
        cwd=monitoring,
        capture_output=True,
        text=True,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    alerts = {
        r["alert"]
        for g in yaml.safe_load((monitoring / "alerts.yaml").read_text())["groups"]
        for r in g["rules"]
    }
    tested = set(re.findall(r"alertname: (\w+)", (monitoring / "alerts_test.yaml").read_text()))
    assert (
        alerts
        == tested
        == {
            "WarpDriveCacheHitRateLow",
            "WarpDriveBackendErrorRate",
            "WarpDriveCacheFull",
            "WarpDriveCacheIndexReset",
            "WarpDriveMountDown",
        }
    )


def _label_name(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _discovered(pod: dict[str, Any], name: str, ip: str) -> list[dict[str, Any]]:
    """What Prometheus' Kubernetes discovery (role: pod) finds for a running pod made from this
    template: one target per container port, with the meta labels its documentation lists."""
    meta = {
        "__meta_kubernetes_namespace": "gpu", "__meta_kubernetes_pod_name": name,
        "__meta_kubernetes_pod_ip": ip, "__meta_kubernetes_pod_node_name": "gpu-node-1",
        "__meta_kubernetes_pod_phase": "Running", "__meta_kubernetes_pod_ready": "true",
    }  # fmt: skip
    for kind, values in (("label", pod["metadata"].get("labels", {})),
                         ("annotation", pod["metadata"].get("annotations", {}))):  # fmt: skip
        for key, value in values.items():
            meta[f"__meta_kubernetes_pod_{kind}_{_label_name(key)}"] = value
            meta[f"__meta_kubernetes_pod_{kind}present_{_label_name(key)}"] = "true"
    return [
        {"targets": [f"{ip}:{port['containerPort']}"],
         "labels": {**meta, "__meta_kubernetes_pod_container_name": container["name"],
                    "__meta_kubernetes_pod_container_init": "false",
                    "__meta_kubernetes_pod_container_port_name": port["name"],
                    "__meta_kubernetes_pod_container_port_number": str(port["containerPort"]),
                    "__meta_kubernetes_pod_container_port_protocol": port["protocol"]}}
        for container in pod["spec"]["containers"]
        for port in container.get("ports", [])
    ]  # fmt: skip


# A pod-annotation scrape job as Prometheus setups without the Operator commonly have it (the
# prometheus-community chart's "kubernetes-pods"): pods that ask to be scraped, their pod labels
# copied onto the targets.
ANNOTATION_JOB = r"""
job_name: kubernetes-pods
kubernetes_sd_configs: [{role: pod}]
relabel_configs:
  - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_scrape]
    regex: "true"
    action: keep
  - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_path]
    regex: (.+)
    target_label: __metrics_path__
  - source_labels: [__address__, __meta_kubernetes_pod_annotation_prometheus_io_port]
    regex: ([^:]+)(?::\d+)?;(\d+)
    replacement: $1:$2
    target_label: __address__
  - {action: labelmap, regex: __meta_kubernetes_pod_label_(.+)}
  - {source_labels: [__meta_kubernetes_namespace], target_label: namespace}
  - {source_labels: [__meta_kubernetes_pod_name], target_label: pod}
"""


def _operator_job(monitor: dict[str, Any], namespace: str) -> dict[str, Any]:
    """The scrape job the Prometheus Operator makes of a PodMonitor installed in ``namespace``,
    for the fields the chart's uses (prometheus-operator's pkg/prometheus/promcfg.go,
    generatePodMonitorConfig)."""
    spec, name = monitor["spec"], monitor["metadata"]["name"]
    (endpoint,) = spec["podMetricsEndpoints"]
    relabel: list[dict[str, Any]] = [
        {"action": "keep", "regex": f"({value});true",
         "source_labels": [f"__meta_kubernetes_pod_label_{_label_name(key)}",
                           f"__meta_kubernetes_pod_labelpresent_{_label_name(key)}"]}
        for key, value in sorted(spec["selector"]["matchLabels"].items())
    ]  # fmt: skip
    relabel += [
        {"action": "keep", "source_labels": ["__meta_kubernetes_pod_container_port_name"],
         "regex": endpoint["port"]},
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"target_label": "job", "replacement": f"{namespace}/{name}"},
        {"source_labels": [f"__meta_kubernetes_pod_label_{_label_name(spec['jobLabel'])}"],
         "target_label": "job", "regex": "(.+)", "replacement": "${1}"},
        {"target_label": "endpoint", "replacement": endpoint["port"]},
    ]  # fmt: skip
    keys = {"sourceLabels": "source_labels", "targetLabel": "target_label"}
    relabel += [{keys.get(k, k): v for k, v in r.items()} for r in endpoint.get("relabelings", [])]
    return {"job_name": f"podMonitor/{namespace}/{name}/0",
            "kubernetes_sd_configs": [{"role": "pod"}], "metrics_path": endpoint["path"],
            "relabel_configs": relabel}  # fmt: skip


def _query(port: int, promql: str) -> list[dict[str, Any]]:
    import urllib.parse
    import urllib.request

    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as reply:
        result: list[dict[str, Any]] = json.loads(reply.read())["data"]["result"]
    return result


@pytest.mark.integration
def test_mount_down_fires_for_each_way_prometheus_finds_the_agents(tmp_path: Path) -> None:
    """A real Prometheus, the chart's pods as Kubernetes discovery shows them, and the scrape
    jobs users have: a pod-annotation job, deploy/monitoring/prometheus-scrape.yaml, the
    Operator's job for the chart's PodMonitor. Every agent target is down: each must alert."""
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.skip("prometheus not installed (apt-get install prometheus)")
    dead = free_port()  # nothing listens: every scrape of the agent fails, up == 0
    manifests = render({**IDENTITY, "agent": {"metricsPort": dead}})
    pods = _discovered(_pod(manifests["DaemonSet"][0]), "wd-warpdrive-agent-x7k2p", "127.0.0.1")
    pods += _discovered(_pod(manifests["Deployment"][0]), "wd-warpdrive-control-plane-5d9c8",
                        "127.0.0.1")  # fmt: skip
    shipped = yaml.safe_load((DEPLOY / "monitoring" / "prometheus-scrape.yaml").read_text())
    jobs = [yaml.safe_load(ANNOTATION_JOB), *shipped["scrape_configs"],
            _operator_job(manifests["PodMonitor"][0], "gpu")]  # fmt: skip
    for job in jobs:  # this Prometheus has no cluster to ask: discovery's answer, given
        assert job.pop("kubernetes_sd_configs") == [{"role": "pod"}]
        job["static_configs"] = pods
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(DEPLOY / "monitoring" / "alerts.yaml")],
        "scrape_configs": jobs,
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with open(tmp_path / "prometheus.log", "wb") as log:
        proc = subprocess.Popen(
            [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=log,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        up: list[dict[str, Any]] = []
        alerts: list[dict[str, Any]] = []
        while time.monotonic() < deadline and (len(up) < 3 or len(alerts) < len(up)):
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
            time.sleep(0.5)
            try:
                up = _query(port, "up == 0")
                alerts = _query(port, 'ALERTS{alertname="WarpDriveMountDown"}')
            except OSError:
                continue  # not listening yet
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    # Three targets, the agent's /metrics once per job; the control plane's pod in none.
    assert sorted(u["metric"]["job"] for u in up) == ["kubernetes-pods", "warpdrive", "warpdrive"]
    assert {u["metric"]["instance"] for u in up} == {f"127.0.0.1:{dead}"}
    assert all(u["metric"].get("app_kubernetes_io_component", "agent") == "agent" for u in up)
    pending = [{k: v for k, v in a["metric"].items() if k not in ("alertstate", "severity")}
               for a in alerts]  # fmt: skip
    wanted = [{**u["metric"], "__name__": "ALERTS", "alertname": "WarpDriveMountDown"} for u in up]
    key = json.dumps
    assert sorted(pending, key=key) == sorted(wanted, key=key)


def test_dashboard_plots_each_query_on_an_axis_of_its_unit() -> None:
    dashboard = json.loads((DEPLOY / "monitoring" / "grafana-dashboard.json").read_text())

    def unit(panel: dict[str, Any], ref: str) -> str:
        found: str = panel["fieldConfig"]["defaults"]["unit"]
        for override in panel["fieldConfig"]["overrides"]:
            if override["matcher"] == {"id": "byFrameRefID", "options": ref}:
                for prop in override["properties"]:
                    found = prop["value"] if prop["id"] == "unit" else found
        return found

    def yields(expr: str) -> set[str]:
        if expr.startswith("histogram_quantile("):
            return {"s"}
        if "_ratio" in expr or " / " in expr:
            return {"percentunit"}  # a ratio, 0..1: Grafana's percentunit shows it as %
        if "bytes" in expr:
            return {"Bps"} if "rate(" in expr else {"bytes"}
        return {"ops", "reqps"}  # rate() of a count

    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            assert unit(panel, target["refId"]) in yields(target["expr"]), (panel["title"], target)
            assert "* 100" not in target["expr"]
    (latency,) = [p for p in dashboard["panels"] if p["title"] == "FUSE Operation Latency"]
    quantiles = {t["expr"].split(",")[0] for t in latency["targets"]}
    assert {"histogram_quantile(0.95", "histogram_quantile(0.99"} <= quantiles


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(warpdrive_[a-z_]+)\b", expr))


@pytest.mark.integration
def test_dashboard_and_alerts_name_only_metrics_a_live_mount_exposes(tmp_path: Path) -> None:
    dashboard = json.loads((DEPLOY / "monitoring" / "grafana-dashboard.json").read_text())
    titles = [p["title"] for p in dashboard["panels"]]
    assert titles == ["Cache Hit Rate", "Cache Size", "Backend Latency p99", "Backend Errors",
                      "FUSE Throughput", "FUSE Operation Latency"]  # fmt: skip
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"instance", "job"} <= variables
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert all('instance=~"$instance"' in e and 'job=~"$job"' in e for e in exprs)
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    rules = yaml.safe_load((DEPLOY / "monitoring" / "alerts.yaml").read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    wanted = set().union(*map(_metric_names, exprs))
    assert len(wanted) >= 10

    source = tmp_path / "src"
    (source / "d").mkdir(parents=True)
    (source / "d" / "f.bin").write_bytes(os.urandom(300_000))
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        f"mount_point: {tmp_path / 'wd'}\nmetrics: {{addr: '127.0.0.1:{port}'}}\n"
        f"cache: {{path: {tmp_path / 'cache'}, max_size: 64MB, block_size: 64KB}}\n"
        f"backends:\n  - {{name: src, type: local, config: {{root: {source}}}}}\n"
    )
    mount = start_mount(config, tmp_path / "wd", port)
    try:
        assert (tmp_path / "wd" / "src" / "d" / "f.bin").read_bytes()  # reads, misses, fetches
        assert (tmp_path / "wd" / "src" / "d" / "f.bin").read_bytes()  # and hits
        import urllib.request

        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    finally:
        mount.cleanup()
    exposed = {
        line.split("{")[0].split(" ")[0]
        for line in text.splitlines()
        if line.startswith("warpdrive_")
    }
    missing = sorted(name for name in wanted if name not in exposed)
    assert missing == [], f"not on /metrics: {missing}"


def _probe_passes(probe: dict[str, Any], metrics_port: int) -> bool:
    """Run a rendered probe as the kubelet would, on this machine: an exec probe's command
    within timeoutSeconds (its process group killed after), an httpGet to 127.0.0.1."""
    import urllib.error
    import urllib.request

    timeout = probe.get("timeoutSeconds", 1)
    if "exec" in probe:
        proc = subprocess.Popen(probe["exec"]["command"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        try:
            return proc.wait(timeout=timeout) == 0
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its `ls` may wait on a hung mount
            proc.wait()
            return False
    get = probe["httpGet"]
    assert get["port"] == "metrics"
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}{get['path']}",
                                    timeout=timeout) as reply:  # fmt: skip
            return 200 <= int(reply.status) < 400
    except (urllib.error.URLError, OSError):  # HTTPError (a 503) included
        return False


@dataclass
class ChartAgent:
    """warpdrive-mount as the chart's DaemonSet runs it (its command's flags, its ConfigMap's
    config) over an Azurite container, on this machine; its probes run as the kubelet would."""

    azurite: Server
    files: dict[str, bytes]
    config: Path
    point: Path
    port: int
    flags: list[str]
    probes: dict[str, dict[str, Any]]

    def start(self) -> Mount:
        return start_mount(self.config, self.point, self.port, *self.flags)

    def alive(self) -> bool:
        return _probe_passes(self.probes["livenessProbe"], self.port)

    def ready(self) -> bool:
        return _probe_passes(self.probes["readinessProbe"], self.port)

    def read_from_mount(self, key: str) -> bytes:
        """The file's bytes from the mount process, not the kernel's page cache."""
        fd = os.open(self.point / "az" / key, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            return b"".join(iter(lambda: os.read(fd, 1 << 20), b""))
        finally:
            os.close(fd)


@pytest.fixture
def chart_agent(tmp_path: Path) -> Iterator[ChartAgent]:
    if not os.path.exists("/dev/fuse") or shutil.which("mountpoint") is None:
        pytest.skip("needs /dev/fuse and mountpoint (util-linux)")
    from tests.conftest import _azure_store

    try:
        azurite = start_azurite()
    except ServerError as exc:
        pytest.skip(f"Azurite unavailable: {exc}")
    try:
        store = _azure_store(tmp_path, azurite)
        rnd = random.Random(9)
        files = {"labels.bin": rnd.randbytes(300_000),
                 "train/shard-000000.tar": rnd.randbytes(700_000)}  # fmt: skip
        for key, data in files.items():
            store.put(key, data)
        point, port = tmp_path / "wd", free_port()
        manifests = render({
            "agent": {"mountPoint": str(point), "cachePath": str(tmp_path / "cache"),
                      "metricsPort": port},
            "controlPlane": {"enabled": False},
            "config": {"cache": {"maxSize": "64MB", "blockSize": "256KB"},
                       "fetch": {"request_timeout": "2s", "max_attempts": 2,
                                 "initial_backoff": "20ms"},
                       "backends": yaml.safe_load(store.backend_yaml)},
        })  # fmt: skip
        config = yaml.safe_load(manifests["ConfigMap"][0]["data"]["config.yaml"])
        config["metrics"]["addr"] = f"127.0.0.1:{port}"  # not the chart's every interface
        config["allow_other"] = os.getuid() == 0  # needs user_allow_other for anyone else
        config["cache"].update(stale_ttl="1s", list_ttl="1s")  # metadata soon asks the backend
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
        agent = _pod(manifests["DaemonSet"][0])["spec"]["containers"][0]
        command = agent["command"]
        assert command[:3] == ["warpdrive-mount", "--config", "/etc/warpdrive/config.yaml"]
        flags = [a for a in command[3:] if a != "--foreground"]  # start_mount adds it
        probes = {k: v for k, v in agent.items() if k.endswith("Probe")}
        yield ChartAgent(azurite, files, tmp_path / "config.yaml", point, port, flags, probes)
    finally:
        azurite.stop()


@pytest.mark.integration
def test_the_chart_agent_keeps_serving_its_cache_through_a_backend_outage(
    chart_agent: ChartAgent,
) -> None:
    agent = chart_agent
    mount = agent.start()
    try:
        for key, data in agent.files.items():
            assert (agent.point / "az" / key).read_bytes() == data  # cached
        assert agent.alive() and agent.ready()
        agent.azurite.stop()  # the outage: every request is refused
        # Past stale_ttl and list_ttl (1 s): the mount asks the backend again, and fails; past
        # the 2 s for which the health checks reuse an answer (docs/mount.md): it knows the
        # outage.
        time.sleep(2.5)
        assert not agent.ready()  # /readyz: not every backend answers
        hits = mount.metric("warpdrive_cache_hit_total")
        for key, data in agent.files.items():
            assert agent.read_from_mount(key) == data
        assert mount.metric("warpdrive_cache_hit_total") > hits
        assert agent.alive()  # the kubelet leaves it serving
    finally:
        mount.cleanup()
    # Restarted during the outage (a node reboot, an upgrade, a crash): the chart's command
    # mounts anyway, and what the cache holds is served.
    mount = agent.start()
    try:
        assert agent.alive()
        assert agent.read_from_mount("labels.bin") == agent.files["labels.bin"]
        # What liveness is for: a hung agent fails it, then a dead one (ENOTCONN).
        mount.proc.send_signal(signal.SIGSTOP)
        try:
            assert not agent.alive()
        finally:
            mount.proc.send_signal(signal.SIGCONT)
        assert agent.alive()
        mount.stop(signal.SIGKILL)
        # Dead: a stat still passes (the kernel's cached attributes), the probe's read fails at
        # once (ENOTCONN), well within its timeout.
        assert subprocess.run(["mountpoint", "-q", str(agent.point)]).returncode == 0
        started = time.monotonic()
        assert not agent.alive()
        assert time.monotonic() - started < 2.0
    finally:
        mount.cleanup()


@pytest.mark.integration
def test_a_restart_during_an_outage_serves_cached_objects_under_directories(
    chart_agent: ChartAgent,
) -> None:
    agent = chart_agent
    key = "train/shard-000000.tar"
    mount = agent.start()
    try:
        assert (agent.point / "az" / key).read_bytes() == agent.files[key]
    finally:
        mount.cleanup()
    agent.azurite.stop()
    mount = agent.start()
    try:
        assert agent.read_from_mount(key) == agent.files[key]
    finally:
        mount.cleanup()


def test_slurm_prolog_restarts_once_then_drains(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    (tmp_path / "wd").mkdir()
    healthy = tmp_path / "wd" / ".warpdrive-health"  # a healthy mount's health file reads
    stubs = {
        "mountpoint": f"[ -e {healthy} ]",
        "curl": f"[ -e {healthy} ]",
        "systemctl": f"[ -e {tmp_path}/restart-heals ] && echo ok 1 > {healthy}; true",
        "warpdrive-ctl": "true",
        "sleep": "true",
    }
    for name, body in stubs.items():
        (bin_dir / name).write_text(f'#!/bin/sh\necho "{name} $*" >> {calls}\n{body}\n')
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "77",
           "WARPDRIVE_LOG": str(tmp_path / "prolog.log"), "WARPDRIVE_MOUNT": str(tmp_path / "wd"),
           "WARPDRIVE_WARMUP_PATH": "/wd/datasets-cac/train"}  # fmt: skip
    prolog = str(DEPLOY / "slurm" / "warpdrive-prolog.sh")

    def run() -> tuple[int, list[str]]:
        calls.write_text("")
        done = subprocess.run(["bash", prolog], env=env, capture_output=True, text=True)
        return done.returncode, calls.read_text().splitlines()

    healthy.write_text("ok 1\n")
    code, log = run()
    assert code == 0 and not any(c.startswith("systemctl") for c in log)
    assert "warpdrive-ctl job-start --job-id 77 --json" in log
    assert any(
        c.startswith(
            "warpdrive-ctl warm /wd/datasets-cac/train --recursive --max-size 50GB --workers 32"
        )
        for c in log
    )
    healthy.unlink()
    (tmp_path / "restart-heals").touch()
    code, log = run()
    assert code == 0 and log.count("systemctl restart warpdrive-agent") == 1
    healthy.unlink()
    (tmp_path / "restart-heals").unlink()
    code, log = run()
    assert code == 1 and log.count("systemctl restart warpdrive-agent") == 1
    assert not any(c.startswith("warpdrive-ctl warm") for c in log)
    assert "still unhealthy after a restart" in (tmp_path / "prolog.log").read_text()
    # A dataset's shard URLs: this node's share only, numbered as Slurm numbers the job's nodes.
    healthy.write_text("ok 1\n")
    (bin_dir / "scontrol").write_text(
        f'#!/bin/sh\necho "scontrol $*" >> {calls}\nprintf "gpu-a\\ngpu-b\\ngpu-c\\n"\n'
    )
    (bin_dir / "scontrol").chmod(0o755)
    shards = (
        "warpdrive://datasets-cac/train/shard-{000000..000099..2}.tar /wd/datasets-wus3/train/*.tar"
    )
    env.update(WARPDRIVE_WARMUP_SHARDS=shards, WARPDRIVE_WARMUP_SEED="7",
               SLURM_JOB_NODELIST="gpu-[a-c]", SLURMD_NODENAME="gpu-b")  # fmt: skip
    expected = (
        "warpdrive-ctl warm --num-nodes 3 --node-rank 1 --seed 7 --max-size 50GB --workers 32 "
        f"--json -- {shards}"
    )
    code, log = run()
    assert code == 0 and expected in log, log
    env.update(SLURM_NODEID="2", SLURM_NNODES="4")
    code, log = run()
    assert code == 0 and expected.replace("3 --node-rank 1", "4 --node-rank 2") in log, log
    epilog = subprocess.run(["bash", str(DEPLOY / "slurm" / "warpdrive-epilog.sh")], env=env | {"SLURM_JOB_USER": "alice"},
                            capture_output=True, text=True)  # fmt: skip
    assert epilog.returncode == 0
    assert (
        "warpdrive-ctl job-report --job-id 77 --user alice --status 0 --json" in calls.read_text()
    )


@pytest.mark.integration
def test_slurm_prolog_reads_a_byte_of_the_mount_it_checks(
    tmp_path: Path, local_store: Store
) -> None:
    """The prolog's check, run for real (mountpoint, head, curl) against real mounts: the mount
    at WARPDRIVE_MOUNT must read a byte (its health file). After its agent is killed (-9),
    `mountpoint` still passes on the kernel's cached attributes, and the /healthz at
    WARPDRIVE_METRICS_URL may answer for another mount (here a second agent's: nothing ties the
    URL to the mount): the prolog must still see the mount dead, restart once and fail, at once."""
    if not os.path.exists("/dev/fuse") or shutil.which("mountpoint") is None:
        pytest.skip("needs /dev/fuse and mountpoint (util-linux)")
    local_store.put("a.bin", b"abc")
    mounts: dict[str, Mount] = {}
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            config, port = tmp_path / name / "config.yaml", free_port()
            config.write_text(
                f"mount_point: {tmp_path / name / 'wd'}\nmetrics: {{addr: '127.0.0.1:{port}'}}\n"
                f"cache: {{path: {tmp_path / name / 'cache'}, max_size: 64MB, block_size: 256KB}}\n"
                f"backends:\n{local_store.backend_yaml}"
            )
            mounts[name] = start_mount(config, tmp_path / name / "wd", port)
        a, b = mounts["a"], mounts["b"]
        bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
        bin_dir.mkdir()
        for name in ("systemctl", "warpdrive-ctl", "sleep"):  # the rest is real
            (bin_dir / name).write_text(f'#!/bin/sh\necho "{name} $*" >> {calls}\n')
            (bin_dir / name).chmod(0o755)
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "78",
               "WARPDRIVE_LOG": str(tmp_path / "prolog.log"), "WARPDRIVE_MOUNT": str(a.point)}  # fmt: skip

        def prolog(metrics_port: int) -> tuple[int, list[str]]:
            calls.write_text("")
            url = f"http://127.0.0.1:{metrics_port}"
            done = subprocess.run(["bash", str(DEPLOY / "slurm" / "warpdrive-prolog.sh")],
                                  env=env | {"WARPDRIVE_METRICS_URL": url}, timeout=120)  # fmt: skip
            return done.returncode, calls.read_text().splitlines()

        code, log = prolog(a.metrics_port)
        assert code == 0 and not any(c.startswith("systemctl") for c in log), log
        a.stop(signal.SIGKILL)
        assert subprocess.run(["mountpoint", "-q", str(a.point)]).returncode == 0
        started = time.monotonic()
        code, log = prolog(b.metrics_port)  # /healthz answers 200, for b
        assert code == 1 and log.count("systemctl restart warpdrive-agent") == 1, log
        assert time.monotonic() - started < 20  # 31 checks, none waits for a timeout
        assert "still unhealthy after a restart" in (tmp_path / "prolog.log").read_text()
    finally:
        for mount in mounts.values():
            mount.cleanup()


@pytest.mark.integration
def test_the_charts_config_serves_metrics_on_the_pod_address(
    tmp_path: Path, local_store: Store
) -> None:
    """warpdrive's own default is 127.0.0.1 (no authentication); the chart's rendered config
    must listen where Prometheus scrapes /metrics and the kubelet asks /readyz: the pod's
    address. The mount runs with that config in a network namespace of its own, which has an
    address besides loopback, as a pod has."""
    if not os.path.exists("/dev/fuse"):
        pytest.skip("needs /dev/fuse")
    for tool in ("unshare", "nsenter", "ip", "curl"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")
    manifests = render()
    config = yaml.safe_load(manifests["ConfigMap"][0]["data"]["config.yaml"])
    agent = _pod(manifests["DaemonSet"][0])["spec"]["containers"][0]
    port = agent["ports"][0]["containerPort"]
    assert config["metrics"]["addr"].endswith(f":{port}")
    config.update(
        mount_point=str(tmp_path / "wd"), backends=yaml.safe_load(local_store.backend_yaml)
    )
    config["cache"].update(path=str(tmp_path / "cache"), max_size="64MB", block_size="256KB")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    local_store.put("a.bin", b"abc")
    mount = start_mount(tmp_path / "config.yaml", tmp_path / "wd", port, prefix=own_network())
    try:
        pod = f"http://{OTHER_ADDRESS}:{port}"
        assert http_status_in(mount.proc.pid, f"{pod}/metrics") == 200
        assert (
            http_status_in(mount.proc.pid, pod + agent["readinessProbe"]["httpGet"]["path"]) == 200
        )
    finally:
        mount.cleanup()


def test_ansible_playbook_syntax_and_its_config_template(tmp_path: Path) -> None:
    playbook = shutil.which("ansible-playbook") or str(
        Path(sys.executable).with_name("ansible-playbook")
    )
    ansible_dir = DEPLOY / "slurm" / "ansible"
    env = {
        **os.environ,
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp"),
        "ANSIBLE_HOME": str(tmp_path / "home"),
    }
    done = subprocess.run([playbook, "-i", "localhost,", "--syntax-check", "install-warpdrive.yaml"],
                          cwd=ansible_dir, capture_output=True, text=True, env=env)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    # The config template, rendered by Ansible itself, loads with warpdrive's loader.
    extra = {
        "warpdrive_mount_point": "/wd", "warpdrive_allow_other": True, "warpdrive_metrics_addr": ":9090",
        "warpdrive_cache_path": "/mnt/nvme/warpdrive-cache", "warpdrive_cache_max_size": "1TB",
        "warpdrive_block_size": "4MB", "warpdrive_control_plane_addr": "http://cp:8080",
        "warpdrive_backends": [{"name": "datasets-cac", "type": "azureblob",
                                "config": {"account": "a", "container": "c"}, "auth": {"method": "managed_identity"}}],
    }  # fmt: skip
    (tmp_path / "vars.json").write_text(json.dumps(extra))
    out = tmp_path / "config.yaml"
    ansible = str(Path(playbook).with_name("ansible"))
    done = subprocess.run(
        [ansible, "localhost", "-c", "local", "-i", "localhost,", "-m", "ansible.builtin.template",
         "-a", f"src={ansible_dir / 'config.yaml.j2'} dest={out}", "-e", f"@{tmp_path / 'vars.json'}",
         "-e", f"ansible_python_interpreter={sys.executable}"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    config = parse_config(out.read_text(), env={})
    assert config.mount_point == "/wd" and config.cache.max_size == 2**40
    assert config.cache.scan_prefetch is False  # cluster nodes read only their share
    assert [(b.name, b.auth.method) for b in config.backends] == [
        ("datasets-cac", "managed_identity")
    ]
    assert config.telemetry.control_plane_addr == "http://cp:8080"


def test_dockerfiles_lint_clean() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    files = sorted(map(str, (DEPLOY / "docker").glob("*.Dockerfile")))
    assert len(files) == 2
    done = subprocess.run([hadolint, *files], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_systemd_unit_runs_the_mount_in_the_foreground() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(DEPLOY / "systemd" / "warpdrive-agent.service")
    assert unit["Service"]["ExecStart"].split() == [
        "/usr/local/bin/warpdrive-mount", "--config", "/etc/warpdrive/config.yaml", "--foreground",
        "--degraded-ok",
    ]  # fmt: skip
    assert (
        unit["Service"]["Restart"] == "on-failure"
        and unit["Install"]["WantedBy"] == "multi-user.target"
    )


def _documented(section: str) -> set[str]:
    """Keys in the table under ``## `section` `` of docs/configuration.md (aliases included)."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    body = text.split(f"## `{section}`", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    keys: set[str] = set()
    for line in body.splitlines():
        if line.startswith("| `"):
            first = line.split("|")[1]
            keys |= set(re.findall(r"`([a-z_]+)`", first))
    return keys


def test_config_reference_lists_exactly_the_keys_the_loader_accepts() -> None:
    from warpdrive.config import _TOP_KEYS as TOP_KEYS
    from warpdrive.config import CacheConfig, FetchConfig, GovernanceConfig

    assert _documented("cache") == set(CacheConfig.__dataclass_fields__) | {"dir"}
    assert _documented("fetch") == set(FetchConfig.__dataclass_fields__)
    assert _documented("governance") == set(GovernanceConfig.__dataclass_fields__)
    assert _documented("backends[]") == {
        "name",
        "type",
        "mount_path",
        "config",
        "auth",
        "immutable",
    }
    text = (ROOT / "docs" / "configuration.md").read_text()
    top = text.split("## Top level", 1)[1].split("\n## ", 1)[0]
    documented_top = set()
    for line in top.splitlines():
        if line.startswith("| `"):
            documented_top |= set(re.findall(r"`([a-z_]+)`", line.split("|")[1]))
    assert documented_top == set(TOP_KEYS)
    # Per backend type: every option the loader has is documented, and every documented one
    # (the original's aliases included) is taken.
    from warpdrive.config import AzureBlobOptions, GcsOptions, LocalOptions, S3Options

    per_type = text.split("### `config` per type", 1)[1].split("\n### ", 1)[0]
    rows = {
        m.group(1): set(re.findall(r"`([a-z_]+)`", m.group(2)))
        for m in re.finditer(r"^\| `(\w+)` \|(.*)\|$", per_type, re.M)
    }
    options = {
        "azureblob": AzureBlobOptions,
        "s3": S3Options,
        "gcs": GcsOptions,
        "local": LocalOptions,
    }
    for kind, cls in options.items():
        assert set(cls.__dataclass_fields__) <= rows[kind], kind
        for key in rows[kind]:
            try:
                parse_config(
                    f"backends:\n  - {{name: x, type: {kind}, config: {{{key}: 1}}}}\n", env={}
                )
            except Exception as exc:
                assert "unknown key" not in str(exc), (kind, key, exc)
    # And each documented key of those sections is one the loader takes (no "unknown key").
    for section, keys in (("cache", _documented("cache")), ("fetch", _documented("fetch"))):
        for key in keys:
            try:
                parse_config(f"{section}: {{{key}: 1}}\nbackends: []\n", env={})
            except Exception as exc:  # a bad value is fine here; an unknown key is not
                assert "unknown key" not in str(exc), (section, key, exc)
