"""A real PostgreSQL (the Debian package's binaries) started on a free port for the session, and
a headless Chromium for the dashboard's tests."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from warpdrive.testing.servers import free_port

PG_BIN = (
    next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), None)
    if Path("/usr/lib/postgresql").exists()
    else None
)


def _as_postgres(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", "postgres", "--", *argv], capture_output=True, text=True
    )


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    if PG_BIN is None or shutil.which("runuser") is None:
        pytest.skip(
            "PostgreSQL is not installed (apt-get install postgresql; scripts/install-deps.sh does)"
        )
    base = Path(tempfile.mkdtemp(prefix="wd-pg-", dir="/tmp"))
    data, sockets = base / "data", base / "run"
    sockets.mkdir()
    shutil.chown(base, "postgres")
    shutil.chown(sockets, "postgres")
    init = _as_postgres(
        str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"
    )
    assert init.returncode == 0, init.stderr
    port = free_port()
    start = _as_postgres(
        str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w", "-t", "60", "start",
        "-o", f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1",
    )  # fmt: skip
    assert start.returncode == 0, start.stderr + (base / "log").read_text()
    try:
        made = _as_postgres(
            str(PG_BIN / "createdb"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            "postgres",
            "warpdrive",
        )
        assert made.returncode == 0, made.stderr
        yield f"postgresql://postgres@127.0.0.1:{port}/warpdrive"
    finally:
        _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        time.sleep(0.2)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'control.db'}"
    url: str = request.getfixturevalue("postgres_url")
    # A clean schema per test: drop what the previous test made.

    from warpdrive.control import db

    engine = db.engine_for(url)
    with engine.begin() as conn:
        db.meta.drop_all(conn)
    engine.dispose()
    return url


def headless_chromium() -> Any:
    """A Selenium driver of the system's headless Chromium (skips the test without one)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.skip("chromium and chromium-driver are not installed (scripts/install-deps.sh does)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=options)
