"""infra/: the Azure scripts, run for real against stand-ins for what cannot be reached here.

``az`` is a recording stub (tests/infra/az_stub.py) that keeps the resources the scripts
create, so the exact plan and the idempotence of a second run can be checked; the upload path
of 02 also runs with the real Azure CLI against Azurite; 03's system commands (apt-get, lsblk,
blkid, mkfs.ext4, mount) are recording stubs, and the files it edits live under SYSROOT.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from forge.gen import make_shard
from warpdrive import load_config
from warpdrive.testing.servers import AZURITE_KEY, start_azurite

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
SCRIPTS = sorted(p.name for p in INFRA.glob("0*.sh"))
STUB = Path(__file__).with_name("az_stub.py")
# What the scripts read from the environment: none may leak in from the machine running the tests.
SETTINGS = [
    "RESOURCE_GROUP",
    "LOCATION_A",
    "LOCATION_B",
    "VM_NAME",
    "VM_SIZE",
    "VM_IMAGE",
    "ADMIN_USER",
    "SSH_KEY",
    "STORAGE_PREFIX",
    "STORAGE_CONTAINER",
    "NUM_SHARDS",
    "IMAGES_PER_SHARD",
    "IMAGE_SIZE",
    "DATASET_SEED",
    "ENV_GENERATED",
    "CONFIG_PATH",
    "MOUNT_POINT",
    "NVME_MOUNT",
    "VENV_DIR",
    "TRAIN_STEPS",
    "TRAIN_BATCH",
    "TRAIN_WORKERS",
    "PYTHON",
    "SYSROOT",
    "STORAGE_ACCOUNT_A",
    "STORAGE_ACCOUNT_B",
    "AZURE_SUBSCRIPTION",
    "CACHE_DIR",
    "CACHE_MAX_SIZE",
    "FORCE_FORMAT",
    "NVME_DEVICE",
    "COCO_DIR",
    "UPLOADER_ROLE",
    "AZURE_STORAGE_CONNECTION_STRING_A",
    "AZURE_STORAGE_CONNECTION_STRING_B",
]
BASE_ENV = {k: v for k, v in os.environ.items() if k not in SETTINGS}


class Azure:
    """The stubbed Azure: a PATH with ``az``, and what it recorded."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.bin = tmp / "bin"
        self.bin.mkdir()
        self.log = tmp / "az.log"
        self.state_file = tmp / "az-state.json"
        (self.bin / "az").write_text(f'#!/bin/sh\nexec {sys.executable} {STUB} "$@"\n')
        (self.bin / "az").chmod(0o755)
        (tmp / "id.pub").write_text("ssh-ed25519 AAAA test@host\n")
        self.env = {
            **BASE_ENV,
            "PATH": f"{self.bin}:{os.environ['PATH']}",
            "AZ_STUB_LOG": str(self.log),
            "AZ_STUB_STATE": str(self.state_file),
            "ENV_GENERATED": str(tmp / ".env.generated"),
            "SSH_KEY": str(tmp / "id.pub"),
            "PYTHON": sys.executable,
        }

    def run(
        self, script: str, *args: str, expect: int = 0, **env: str
    ) -> subprocess.CompletedProcess[str]:
        self.log.write_text("")
        done = subprocess.run(
            ["bash", str(INFRA / script), *args],
            env={**self.env, **env},
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=300,
        )
        assert done.returncode == expect, done.stdout[-2000:] + done.stderr[-2000:]
        return done

    def calls(self) -> list[list[str]]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]

    def creates(self) -> list[list[str]]:
        verbs = ("create", "assign", "delete")
        return [c for c in self.calls() if any(v in c[:4] for v in verbs)]

    @property
    def state(self) -> dict[str, Any]:
        return json.loads(self.state_file.read_text())

    def generated(self) -> dict[str, str]:
        lines = (self.tmp / ".env.generated").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if "=" in line)


@pytest.fixture
def azure(tmp_path: Path) -> Azure:
    return Azure(tmp_path)


def test_scripts_are_shellcheck_clean() -> None:
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).with_name("shellcheck"))
    files = [*map(str, INFRA.glob("*.sh")), *map(str, (ROOT / "demo").glob("*.sh"))]
    files += [
        *map(str, (ROOT / "deploy").rglob("*.sh")),
        *map(str, (ROOT / "scripts").glob("*.sh")),
    ]
    done = subprocess.run([shellcheck, *files], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_explains_itself(azure: Azure, script: str) -> None:
    out = azure.run(script, "--help").stdout
    assert out.startswith(script) and "—" in out.splitlines()[0]
    assert azure.calls() == []  # --help touches nothing


def test_provision_plan_then_a_second_run_creates_nothing(azure: Azure) -> None:
    first = azure.run("01-provision.sh")
    state = azure.state
    assert state["groups"] == {"warpdrive-forge-rg": "canadacentral"}
    names = azure.generated()
    a, b = names["STORAGE_ACCOUNT_A"], names["STORAGE_ACCOUNT_B"]
    assert a.startswith("wdforge") and a.endswith("a") and b.endswith("b") and 3 <= len(a) <= 24
    assert {
        n: (acct["location"], acct["sku"], acct["kind"]) for n, acct in state["accounts"].items()
    } == {
        a: ("canadacentral", "Standard_LRS", "StorageV2"),
        b: ("westus3", "Standard_LRS", "StorageV2"),
    }
    assert set(state["containers"]) == {f"{a}/coco2017-wds", f"{b}/coco2017-wds"}
    vm = state["vms"]["warpdrive-forge-vm"]
    assert (vm["location"], vm["size"], vm["image"], vm["identity"]) == (
        "canadacentral", "Standard_L8s_v3", "Canonical:ubuntu-24_04-lts:server:latest", "[system]",
    )  # fmt: skip
    roles = {(r["assignee"], r["role"], r["scope"].rsplit("/", 1)[1]) for r in state["roles"]}
    assert roles == {
        ("vm-principal-id", "Storage Blob Data Reader", a),
        ("vm-principal-id", "Storage Blob Data Reader", b),
        ("user-object-id", "Storage Blob Data Contributor", a),
        ("user-object-id", "Storage Blob Data Contributor", b),
    }
    assert names["VM_IP"] == "20.0.0.10" and "20.0.0.10" in first.stdout
    assert a in first.stdout and b in first.stdout
    assert "KEY" not in (azure.tmp / ".env.generated").read_text().upper()
    azure.run("01-provision.sh")
    assert azure.creates() == []  # everything reused
    assert azure.generated() == names and azure.state == state


def test_provision_prerequisites_and_quota_errors_are_explained(azure: Azure) -> None:
    out = azure.run("01-provision.sh", expect=1, AZ_STUB_LOGGED_OUT="1").stderr
    assert "not logged in to Azure: run 'az login'" in out
    out = azure.run("01-provision.sh", expect=1, AZ_STUB_VERSION="2.40.1").stderr
    assert "Azure CLI 2.40.1 is too old" in out
    no_az = {"PATH": "/usr/bin:/bin"}
    assert (
        "the Azure CLI ('az') is not installed"
        in azure.run("01-provision.sh", expect=1, **no_az).stderr
    )
    quota = "QuotaExceeded: Operation could not be completed as it results in exceeding approved Total Regional Cores quota"
    out = azure.run("01-provision.sh", expect=1, AZ_STUB_FAIL=f"vm create={quota}").stderr
    assert (
        "no quota for Standard_L8s_v3 in canadacentral" in out and "VM_SIZE=Standard_D4s_v5" in out
    )


def test_gen_dataset_uploads_even_and_odd_shards_with_login(azure: Azure) -> None:
    azure.run("01-provision.sh")
    names = azure.generated()
    out = azure.run(
        "02-gen-dataset.sh", NUM_SHARDS="5", IMAGES_PER_SHARD="2", IMAGE_SIZE="16"
    ).stdout
    uploads = azure.state["uploads"]
    assert [(u["account"], u["auth"], u["container"], u["prefix"], u["files"]) for u in uploads] == [
        (names["STORAGE_ACCOUNT_A"], "login", "coco2017-wds", "train",
         ["shard-000000.tar", "shard-000002.tar", "shard-000004.tar"]),
        (names["STORAGE_ACCOUNT_B"], "login", "coco2017-wds", "train",
         ["shard-000001.tar", "shard-000003.tar"]),
    ]  # fmt: skip
    assert "wrote 5 shards" in out


def _real_az() -> str | None:
    for candidate in (
        os.environ.get("WD_AZ_CLI"),
        shutil.which("az"),
        str(ROOT / ".venv-azcli/bin/az"),
    ):
        if candidate and os.access(candidate, os.X_OK) and "tests/infra" not in candidate:
            return candidate
    return None


@pytest.mark.integration
def test_gen_dataset_upload_path_against_azurite(tmp_path: Path) -> None:
    az = _real_az()
    if az is None:
        pytest.skip(
            "the Azure CLI is not installed (scripts/install-deps.sh puts it in .venv-azcli)"
        )
    server = start_azurite(accounts={"regiona": AZURITE_KEY, "regionb": AZURITE_KEY})
    try:
        env = {
            **BASE_ENV,
            "PATH": f"{Path(az).parent}:{os.environ['PATH']}",
            "AZURE_CONFIG_DIR": str(tmp_path / "azconfig"),
            "AZURE_CORE_COLLECT_TELEMETRY": "no",
            "AZURE_STORAGE_CONNECTION_STRING_A": server.connection_string("regiona"),
            "AZURE_STORAGE_CONNECTION_STRING_B": server.connection_string("regionb"),
            "NUM_SHARDS": "4", "IMAGES_PER_SHARD": "3", "IMAGE_SIZE": "16", "DATASET_SEED": "5",
            "PYTHON": sys.executable,
        }  # fmt: skip
        done = subprocess.run(["bash", str(INFRA / "02-gen-dataset.sh")], env=env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert AZURITE_KEY not in done.stdout + done.stderr  # no secret in the output
        from azure.storage.blob import BlobServiceClient

        for account, shards in (("regiona", (0, 2)), ("regionb", (1, 3))):
            container = BlobServiceClient.from_connection_string(
                server.connection_string(account)
            ).get_container_client("coco2017-wds")
            blobs = {
                b.name: container.download_blob(b.name).readall() for b in container.list_blobs()
            }
            expected = {f"train/shard-{i:06d}.tar": make_shard(i, 3, 16, 10, 5)[0] for i in shards}
            assert {k: hashlib.sha256(v).hexdigest() for k, v in blobs.items()} == {
                k: hashlib.sha256(v).hexdigest() for k, v in expected.items()
            }
    finally:
        server.stop()


def _system_stubs(tmp: Path, lsblk: str, blkid_type: str = "", blkid_label: str = "") -> Path:
    """Recording stand-ins for what 03 runs as root on the VM."""
    bin_dir = tmp / "sysbin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    log = tmp / "sys.log"
    scripts = {
        "apt-get": "",
        "lsblk": f"printf '%s\\n' {json.dumps(lsblk)}",
        "blkid": f'case "$*" in *TYPE*) printf "{blkid_type}" ;; *LABEL*) printf "{blkid_label}" ;; esac',
        "mkfs.ext4": "",
        "mount": 'touch "$SYSROOT/mounted"',
        "mountpoint": '[ -e "$SYSROOT/mounted" ]',
        "python3": (  # python3 -m venv DIR: a venv whose pip records its arguments
            f'mkdir -p "$3/bin"; printf \'#!/bin/sh\\necho "pip $*" >> {log}\\n\' > "$3/bin/pip"; '
            'chmod +x "$3/bin/pip"; touch "$3/bin/python"; chmod +x "$3/bin/python"'
        ),
    }
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\n{body}\n')
        path.chmod(0o755)
    return bin_dir


def _vm_setup(tmp: Path, lsblk: str, expect: int = 0, **env: str) -> tuple[str, list[str]]:
    sysroot = tmp / "root"
    (sysroot / "etc").mkdir(parents=True, exist_ok=True)  # also makes tmp
    bin_dir = _system_stubs(tmp, lsblk, env.pop("BLKID_TYPE", ""), env.pop("BLKID_LABEL", ""))
    done = subprocess.run(
        ["bash", str(INFRA / "03-vm-setup.sh")],
        env={
            **BASE_ENV,
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "SYSROOT": str(sysroot),
            "VENV_DIR": str(tmp / "venv"),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == expect, done.stdout + done.stderr
    log = (tmp / "sys.log").read_text().splitlines() if (tmp / "sys.log").exists() else []
    return done.stdout + done.stderr, log


NVME = "/dev/nvme0n1 Microsoft NVMe Direct Disk\n/dev/sda Virtual Disk"


def test_vm_setup_formats_a_blank_nvme_disk_once(tmp_path: Path) -> None:
    out, log = _vm_setup(tmp_path, NVME)
    assert "mkfs.ext4 -F -q -L wd-nvme /dev/nvme0n1" in log
    assert any(line.startswith("mount -o noatime /dev/nvme0n1") for line in log)
    assert any(line.startswith("apt-get install") and "fuse3" in line for line in log)
    assert any(line.startswith("pip install") and "[azure,fuse,torch]" in line for line in log)
    assert "cache        /mnt/nvme/warpdrive-cache" in out
    root = tmp_path / "root"
    assert (root / "etc/fuse.conf").read_text() == "user_allow_other\n"
    assert (root / "wd").is_dir() and (
        root / "mnt/nvme/warpdrive-cache"
    ).stat().st_mode & 0o777 == 0o700
    (tmp_path / "sys.log").unlink()
    out, log = _vm_setup(tmp_path, NVME)  # again: the disk is mounted now
    assert not any(line.startswith(("mkfs", "mount ")) for line in log)
    assert "already mounted: reused" in out
    assert (root / "etc/fuse.conf").read_text() == "user_allow_other\n"


def test_vm_setup_never_touches_a_disk_with_a_file_system(tmp_path: Path) -> None:
    out, log = _vm_setup(tmp_path, NVME, expect=1, BLKID_TYPE="xfs", BLKID_LABEL="data")
    assert "/dev/nvme0n1 already holds a xfs file system (label data): not touching it" in out
    assert not any(line.startswith(("mkfs", "mount ")) for line in log)
    out, log = _vm_setup(tmp_path / "ours", NVME, BLKID_TYPE="ext4", BLKID_LABEL="wd-nvme")
    assert not any(line.startswith("mkfs") for line in log) and "mounting it as it is" in out
    out, log = _vm_setup(tmp_path / "forced", NVME, BLKID_TYPE="xfs", FORCE_FORMAT="1")
    assert "mkfs.ext4 -F -q -L wd-nvme /dev/nvme0n1" in log


def test_vm_setup_without_nvme_caches_on_the_os_disk(tmp_path: Path) -> None:
    out, log = _vm_setup(tmp_path, "/dev/sda Virtual Disk")
    assert "no local NVMe disk" in out and "cache        /var/cache/warpdrive" in out
    assert not any(line.startswith(("mkfs", "mount ")) for line in log)


def test_generated_config_loads_with_warpdrive(tmp_path: Path) -> None:
    sysroot = tmp_path / "root"
    (sysroot / "mnt/nvme").mkdir(parents=True)
    bin_dir = _system_stubs(tmp_path, "")
    (sysroot / "mounted").touch()  # 03 mounted the NVMe disk
    env = {**BASE_ENV, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SYSROOT": str(sysroot),
           "ENV_GENERATED": str(tmp_path / "gen.env"), "CONFIG_PATH": "/etc/warpdrive/config.yaml"}  # fmt: skip
    (tmp_path / "gen.env").write_text(
        "STORAGE_ACCOUNT_A=wdforgeabc123a\nSTORAGE_ACCOUNT_B=wdforgeabc123b\n"
    )
    done = subprocess.run(["bash", str(INFRA / "04-gen-warpdrive-config.sh")], env=env,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    config = load_config(sysroot / "etc/warpdrive/config.yaml")
    assert config.mount_point == "/wd" and config.allow_other
    assert config.cache.path == "/mnt/nvme/warpdrive-cache" and config.cache.max_size >= 2**30
    assert [(b.name, b.type, b.mount_path, b.options.account, b.options.container, b.auth.method)
            for b in config.backends] == [
        ("datasets-cac", "azureblob", "/datasets-cac", "wdforgeabc123a", "coco2017-wds", "managed_identity"),
        ("datasets-wus3", "azureblob", "/datasets-wus3", "wdforgeabc123b", "coco2017-wds", "managed_identity"),
    ]  # fmt: skip
    os.remove(tmp_path / "gen.env")
    missing = subprocess.run(["bash", str(INFRA / "04-gen-warpdrive-config.sh")], env=env,
                             capture_output=True, text=True)  # fmt: skip
    assert missing.returncode == 1 and "STORAGE_ACCOUNT_A/B unknown" in missing.stderr


def test_run_script_runs_the_shared_showcase(tmp_path: Path) -> None:
    record = tmp_path / "argv"
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}\n')
    python.chmod(0o755)
    config = tmp_path / "config.yaml"
    config.write_text("backends: []\n")
    done = subprocess.run(
        ["bash", str(INFRA / "05-run.sh")],
        env={**BASE_ENV, "PYTHON": str(python), "CONFIG_PATH": str(config), "TRAIN_STEPS": "50"},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert record.read_text().split("\n")[:7] == [
        str(ROOT / "demo" / "showcase.py"), "--config", str(config), "--steps", "50", "--batch-size", "32",
    ]  # fmt: skip


def test_teardown_asks_first(azure: Azure) -> None:
    azure.run("01-provision.sh")
    out = azure.run("06-teardown.sh", expect=1).stderr
    assert "refusing to delete warpdrive-forge-rg without confirmation: pass --yes" in out
    assert "warpdrive-forge-rg" in azure.state["groups"]
    azure.run("06-teardown.sh", "--yes")
    assert [
        "group",
        "delete",
        "--name",
        "warpdrive-forge-rg",
        "--yes",
        "--no-wait",
        "-o",
        "none",
    ] in azure.calls()
    assert azure.state["groups"] == {} and not (azure.tmp / ".env.generated").exists()
    assert "nothing to delete" in azure.run("06-teardown.sh", "--yes").stdout


def test_pack_coco_makes_webdataset_shards_with_labels(tmp_path: Path) -> None:
    import io
    import tarfile

    from PIL import Image

    images = tmp_path / "train2017"
    images.mkdir()
    for image_id in (9, 25, 30, 34, 36):
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (image_id, 0, 0)).save(buf, format="JPEG")
        (images / f"{image_id:012d}.jpg").write_bytes(buf.getvalue())
    annotations = tmp_path / "instances.json"
    annotations.write_text(json.dumps({"annotations": [
        {"image_id": 9, "category_id": 51}, {"image_id": 9, "category_id": 1},
        {"image_id": 30, "category_id": 18},
    ]}))  # fmt: skip
    done = subprocess.run(
        [sys.executable, str(INFRA / "pack_coco.py"), "--images", str(images), "--annotations",
         str(annotations), "--out", str(tmp_path / "a"), "--out", str(tmp_path / "b"), "--per-shard", "2"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "shard-000000.tar",
        "shard-000002.tar",
    ]
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["shard-000001.tar"]
    with tarfile.open(tmp_path / "a" / "shard-000000.tar") as tf:
        members = {m.name: tf.extractfile(m).read() for m in tf}  # type: ignore[union-attr]
    assert members["000000000009.cls"] == b"51" and members["000000000025.cls"] == b"0"
    assert members["000000000009.jpg"] == (images / "000000000009.jpg").read_bytes()
