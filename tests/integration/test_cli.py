"""Both command lines as a user meets them: the version (one source, the package metadata), the
licence in the metadata, ``warm``'s progress on a real terminal (a pty of a given width) and
through a pipe, ``--quiet``, and shell completion sourced into a real bash."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import shutil
import struct
import subprocess
import sys
import termios
import time
from email.parser import Parser as EmailParser
from importlib import metadata
from pathlib import Path

import pytest

from tests.conftest import Store

ROOT = Path(__file__).resolve().parents[2]
CTL = [sys.executable, "-m", "warpdrive.ctl.main"]
MOUNT = [sys.executable, "-m", "warpdrive.fuse.mount"]
MB = 1 << 20
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


# -- version and licence ----------------------------------------------------------------------


def _python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_every_version_comes_from_the_package_metadata() -> None:
    installed = metadata.version("warpdrive")
    for argv, prog in ((CTL, "warpdrive-ctl"), (MOUNT, "warpdrive-mount")):
        done = subprocess.run([*argv, "--version"], capture_output=True, text=True, timeout=60)
        assert (done.returncode, done.stdout) == (0, f"{prog} {installed}\n"), done.stderr
    # Whatever the metadata says, everything says: nothing holds a copy of the number.
    pytest.importorskip("torch")
    patched = _python(
        "import importlib.metadata as m\n"
        "real = m.version\n"
        "m.version = lambda name: '9.8.7' if name == 'warpdrive' else real(name)\n"
        "import warpdrive, warpdrive_torch\n"
        "from warpdrive.ctl.main import main\n"
        "print(warpdrive.__version__, warpdrive_torch.__version__, flush=True)\n"
        "main(['--version'])\n"
    )
    assert patched == "9.8.7 9.8.7\nwarpdrive-ctl 9.8.7\n"
    # A source tree that was never installed says so instead of a made-up number.
    unknown = _python(
        "import importlib.metadata as m\n"
        "real = m.version\n"
        "def version(name):\n"
        "    if name == 'warpdrive':\n"
        "        raise m.PackageNotFoundError(name)\n"
        "    return real(name)\n"
        "m.version = version\n"
        "import warpdrive\n"
        "print(warpdrive.__version__)\n"
    )
    assert unknown == "0+unknown\n"


def test_the_metadata_declares_the_licence_by_spdx_expression(tmp_path: Path) -> None:
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "END OF TERMS AND CONDITIONS" in license_text
    # The metadata a wheel of this tree gets from setuptools, and any warning about the licence
    # (the table form of `license` is deprecated; License classifiers beside an expression are
    # refused outright).
    build = (
        "import sys, warnings\n"
        "from setuptools import build_meta\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    info = build_meta.prepare_metadata_for_build_wheel(sys.argv[1])\n"
        "for w in caught:\n"
        "    if 'licen' in str(w.message).lower():\n"
        "        print('warning:', str(w.message).strip().splitlines()[0])\n"
        "print(info)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", build, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "warning:" not in done.stdout, done.stdout
    info = tmp_path / done.stdout.split()[-1]
    meta = EmailParser().parsestr((info / "METADATA").read_text())
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta.get_all("License-File") == ["LICENSE"]
    assert (info / "licenses" / "LICENSE").read_text() == license_text
    assert not [c for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL") or [])
    assert {"Homepage", "Documentation", "Issues", "Changelog"} <= set(urls)


# -- warm's progress --------------------------------------------------------------------------


def _warm_setup(tmp_path: Path, local_store: Store) -> tuple[list[str], Path]:
    """Four 1 MiB objects to warm and the config that names them; each run gets a new cache."""
    for i in range(4):
        local_store.put(f"ds/obj-{i}.bin", os.urandom(MB + i))
    config = tmp_path / "config.yaml"
    config.write_text(
        f"mount_point: {tmp_path / 'wd'}\n"
        "metrics: {addr: '127.0.0.1:0'}\n"
        f"cache: {{path: {tmp_path / 'cache'}, max_size: 64MB, block_size: 256KB}}\n"
        f"backends:\n{local_store.backend_yaml}"
    )
    return [*CTL, "warm", "/src/ds", "--config", str(config)], tmp_path / "cache"


def _env() -> dict[str, str]:
    # The terminal's own size must decide, not variables inherited from the shell running pytest.
    return {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}


def _on_terminal(argv: list[str], columns: int) -> tuple[int, str, bytes]:
    """Run ``argv`` with stderr on a pseudo-terminal ``columns`` wide: the exit status, stdout,
    and every byte the terminal received."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, env=_env()
    )
    os.close(slave)
    screen = b""
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end of the terminal
                break
            if not data:
                break
            screen += data
        assert proc.stdout is not None
        out = proc.stdout.read().decode()
        rc = proc.wait(timeout=60)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return rc, out, screen


def _drawn(screen: bytes) -> list[str]:
    """What each redraw put on the terminal line (split at carriage returns and newlines)."""
    text = ANSI.sub("", screen.decode("utf-8", "replace"))
    return [part.rstrip() for part in re.split(r"[\r\n]+", text) if part.strip()]


def test_warm_progress_bar_fits_the_terminal_width(tmp_path: Path, local_store: Store) -> None:
    warm, cache = _warm_setup(tmp_path, local_store)
    widest = {}
    for columns in (60, 110):
        shutil.rmtree(cache, ignore_errors=True)
        rc, out, screen = _on_terminal([*warm, "--json"], columns)
        assert rc == 0, screen
        assert json.loads(out)["bytes_fetched"] == 4 * MB + 6  # the JSON summary, as ever
        lines = _drawn(screen)
        assert lines and all("warm" in line and "%|" in line for line in lines), lines
        assert lines[-1].startswith("warm: 100%|"), lines
        assert all(len(line) <= columns for line in lines), (columns, lines)
        widest[columns] = max(map(len, lines))
    assert "4/4 files" in lines[-1]  # with room for it, the files done
    assert widest[110] > 60  # the bar grows with the terminal: it is measured, not fixed


def test_warm_quiet_prints_no_progress(tmp_path: Path, local_store: Store) -> None:
    warm, cache = _warm_setup(tmp_path, local_store)
    # Not quiet, through a pipe (a log): plain lines on stderr.
    loud = subprocess.run([*warm, "--json"], capture_output=True, text=True, timeout=120)
    assert loud.returncode == 0 and loud.stderr.startswith("warm: "), loud.stderr
    # Quiet on a terminal and through a pipe: nothing on stderr, the same summary on stdout.
    shutil.rmtree(cache)
    rc, out, screen = _on_terminal([*warm, "--quiet", "--json"], 80)
    assert (rc, screen) == (0, b"")
    summary = json.loads(out)
    assert set(summary) == set(json.loads(loud.stdout)) and summary["bytes_fetched"] == 4 * MB + 6
    shutil.rmtree(cache)
    quiet = subprocess.run([*warm, "-q"], capture_output=True, text=True, timeout=120)
    assert (quiet.returncode, quiet.stderr) == (0, "")
    assert quiet.stdout.startswith("objects ") and "bytes_fetched" in quiet.stdout


# -- shell completion -------------------------------------------------------------------------


def _complete(script: str, prog: str, words: list[str]) -> list[str]:
    """What bash offers for the last of ``words`` after sourcing ``script``."""
    line = " ".join([prog, *words])
    program = f"""
source {script}
spec=$(complete -p {prog}) || exit 3
fn=$(sed -E 's/.* -F ([^ ]+) .*/\\1/' <<<"$spec")
COMP_WORDS=({prog} {" ".join(f"'{w}'" for w in words)})
COMP_CWORD={len(words)}
COMP_LINE='{line}'
COMP_POINT=${{#COMP_LINE}}
"$fn" {prog} '{words[-1]}' '{words[-2] if len(words) > 1 else prog}'
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    done = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", program], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, (done.returncode, done.stderr)
    return done.stdout.split()


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash on this machine")
def test_shell_completion_in_a_real_bash(tmp_path: Path) -> None:
    for argv, prog in ((CTL, "warpdrive-ctl"), (MOUNT, "warpdrive-mount")):
        for shell in ("bash", "zsh", "tcsh"):
            done = subprocess.run(
                [*argv, "--print-completion", shell], capture_output=True, text=True, timeout=60
            )
            assert done.returncode == 0 and prog in done.stdout, done.stderr
            (tmp_path / f"{prog}.{shell}").write_text(done.stdout)
    ctl, mount = tmp_path / "warpdrive-ctl.bash", tmp_path / "warpdrive-mount.bash"
    assert _complete(str(ctl), "warpdrive-ctl", ["wa"]) == ["warm"]
    assert sorted(_complete(str(ctl), "warpdrive-ctl", ["st"])) == ["stale", "stats", "status"]
    assert sorted(_complete(str(ctl), "warpdrive-ctl", ["quota", ""])) == ["list", "rm", "set"]
    assert _complete(str(ctl), "warpdrive-ctl", ["warm", "--q"]) == ["--quiet"]
    assert _complete(str(mount), "warpdrive-mount", ["--fo"]) == ["--foreground"]
    assert "--version" in _complete(str(mount), "warpdrive-mount", ["--v"])
