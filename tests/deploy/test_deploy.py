"""deploy/ and docs/: the Helm chart rendered by a real Helm engine and validated against the
Kubernetes schemas, alert rules through promtool, the dashboard against a live mount's metrics,
the Slurm scripts, Ansible, the Dockerfiles, and the config reference against the loader."""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from warpdrive import parse_config
from warpdrive.testing.mounts import start_mount
from warpdrive.testing.servers import free_port

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


@pytest.mark.parametrize("values", [None, CUSTOM], ids=["defaults", "custom"])
def test_chart_lints_renders_and_validates(values: dict[str, Any] | None) -> None:
    import helm_python as helm
    import kubernetes_validate

    report = helm.lint(str(CHART), values, strict=True, kube_version=f"v{KUBE_VERSION}")
    assert report["errors"] == [] and [m for m in report["messages"] if m["severity"] >= 2] == []
    manifests = render(values)
    for docs in manifests.values():
        for doc in docs:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    expected = {"ConfigMap", "DaemonSet", "Secret", "ServiceAccount", "ClusterRole",
                "ClusterRoleBinding", "PodDisruptionBudget", "Deployment", "Service"}  # fmt: skip
    assert set(manifests) == expected


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
    assert agent["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert agent["readinessProbe"]["exec"]["command"] == ["mountpoint", "-q", "/data"]
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
    # Cluster nodes read only their share of a directory: the chart turns directory scans off.
    assert config.cache.scan_prefetch is False
    assert config.metrics.addr == ":9191" and config.governance.teams == {"alice": "vision"}
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
    assert check.returncode == 0 and "SUCCESS: 4 rules found" in check.stdout, (
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
            "WarpDriveMountDown",
        }
    )


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


def test_slurm_prolog_restarts_once_then_drains(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    stubs = {
        "mountpoint": f"[ -e {tmp_path}/healthy ]",
        "curl": f"[ -e {tmp_path}/healthy ]",
        "systemctl": f"[ -e {tmp_path}/restart-heals ] && touch {tmp_path}/healthy; true",
        "warpdrive-ctl": "true",
        "sleep": "true",
    }
    for name, body in stubs.items():
        (bin_dir / name).write_text(f'#!/bin/sh\necho "{name} $*" >> {calls}\n{body}\n')
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "77",
           "WARPDRIVE_LOG": str(tmp_path / "prolog.log"), "WARPDRIVE_WARMUP_PATH": "/wd/datasets-cac/train"}  # fmt: skip
    prolog = str(DEPLOY / "slurm" / "warpdrive-prolog.sh")

    def run() -> tuple[int, list[str]]:
        calls.write_text("")
        done = subprocess.run(["bash", prolog], env=env, capture_output=True, text=True)
        return done.returncode, calls.read_text().splitlines()

    (tmp_path / "healthy").touch()
    code, log = run()
    assert code == 0 and not any(c.startswith("systemctl") for c in log)
    assert "warpdrive-ctl job-start --job-id 77 --json" in log
    assert any(
        c.startswith(
            "warpdrive-ctl warm /wd/datasets-cac/train --recursive --max-size 50GB --workers 32"
        )
        for c in log
    )
    (tmp_path / "healthy").unlink()
    (tmp_path / "restart-heals").touch()
    code, log = run()
    assert code == 0 and log.count("systemctl restart warpdrive-agent") == 1
    (tmp_path / "healthy").unlink()
    (tmp_path / "restart-heals").unlink()
    code, log = run()
    assert code == 1 and log.count("systemctl restart warpdrive-agent") == 1
    assert not any(c.startswith("warpdrive-ctl warm") for c in log)
    assert "still unhealthy after a restart" in (tmp_path / "prolog.log").read_text()
    # A dataset's shard URLs: this node's share only, numbered as Slurm numbers the job's nodes.
    (tmp_path / "healthy").touch()
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
