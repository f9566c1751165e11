"""Paths: normalisation, refusal of escapes, virtual directories, listings and the meta cache."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from warpdrive import WarpDrive, parse_config
from warpdrive.backends.wrappers import CountingClient, FaultInjectingClient
from warpdrive.errors import (
    BackendUnavailableError,
    InvalidPathError,
    IsDirectoryError,
    NotDirectoryError,
    NotFoundError,
    TransientBackendError,
    WarpDriveError,
)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    (root / "train" / "sub").mkdir(parents=True)
    (root / "train" / "a.bin").write_bytes(b"a" * 10)
    (root / "train" / "b.bin").write_bytes(b"b" * 20)
    (root / "top.txt").write_bytes(b"top")
    (tmp_path / "secret.txt").write_bytes(b"do not serve")
    (root / "escape").symlink_to(tmp_path / "secret.txt")
    return tmp_path


@pytest.fixture
def wd(tree: Path) -> WarpDrive:
    cfg = parse_config(
        f"""
mount_point: /wd
cache: {{path: {tree / "cache"}, max_size: 16MB, block_size: 1MB}}
backends:
  - {{name: one, type: local, mount_path: /regions/east, config: {{root: {tree / "src"}}}}}
  - {{name: two, type: local, mount_path: /regions/west, config: {{root: {tree / "src"}/train}}}}
""",
        env={},
    )
    reader = WarpDrive(cfg)
    yield reader
    reader.close()


def test_virtual_directories_above_mount_paths(wd: WarpDrive) -> None:
    assert [e.path for e in wd.listdir("/")] == ["/regions"]
    assert [e.name for e in wd.listdir("/regions")] == ["east", "west"]
    assert wd.stat("/regions").is_dir
    assert [e.name for e in wd.listdir("/regions/west")] == ["a.bin", "b.bin", "sub"]


@pytest.mark.parametrize(
    "path",
    [
        "/regions/east/train/a.bin",
        "regions/east/train/a.bin",
        "//regions/./east//train/a.bin",
        "warpdrive://one/train/a.bin",  # a URL names the backend, wherever it is mounted
        "warpdrive://one//./train/a.bin",
        "/wd/regions/east/train/a.bin",
    ],
)
def test_spellings_of_one_path(wd: WarpDrive, path: str) -> None:
    assert wd.read(path) == b"a" * 10
    assert wd.stat(path).path == "/regions/east/train/a.bin"


def test_urls_name_backends_and_paths_name_mount_paths(wd: WarpDrive) -> None:
    assert wd.read("warpdrive://two/a.bin") == wd.read("/regions/west/a.bin") == b"a" * 10
    assert wd.normalize("warpdrive://two/sub") == "/regions/west/sub"
    assert wd.url("/wd/regions/west/a.bin") == "warpdrive://two/a.bin"
    assert wd.url("/regions/east") == "warpdrive://one"
    assert wd.url("/regions") is None  # virtual: no backend holds it
    assert wd.stat("warpdrive://").path == "/"
    for url in (wd.url(e.path) for e in wd.listdir("warpdrive://one/train")):
        assert url is not None and wd.stat(url).path == wd.normalize(url)  # round trip
    # A mount path in a URL, or a path under no mount path: one line naming what there is.
    for bad in ("warpdrive://regions/east/train/a.bin", "/east/train/a.bin"):
        with pytest.raises(NotFoundError) as err:
            wd.read(bad)
        message = str(err.value)
        assert "\n" not in message
        for known in ("one", "two", "/regions/east", "/regions/west"):
            assert known in message, (bad, message)
    with pytest.raises(NotFoundError, match="no backend named 'regions'"):
        wd.stat("warpdrive://regions/east")


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("/regions/east/../east/top.txt", InvalidPathError),
        ("/regions/east/train/\0a.bin", InvalidPathError),
        ("/regions/east/" + "x" * 2000, InvalidPathError),
        ("/" + "a/" * 3000, InvalidPathError),
        ("/nowhere/file", NotFoundError),
        ("/regions/east/missing.bin", NotFoundError),
        ("/regions/east/escape", NotFoundError),  # symlink out of the backend root
        ("/regions/east/train", IsDirectoryError),
        ("/regions", IsDirectoryError),
    ],
)
def test_bad_paths_fail_cleanly(wd: WarpDrive, path: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        wd.read(path)


def test_listing_an_object_is_not_a_directory(wd: WarpDrive) -> None:
    with pytest.raises(NotDirectoryError):
        wd.listdir("/regions/east/top.txt")
    with pytest.raises(NotFoundError):
        wd.listdir("/regions/east/nope")


def test_metadata_is_cached_for_stale_ttl_and_listings_fill_it(tree: Path) -> None:
    counting: list[CountingClient] = []

    def wrap(client):  # type: ignore[no-untyped-def]
        counting.append(CountingClient(client))
        return counting[-1]

    cfg = parse_config(
        f"cache: {{path: {tree / 'cache'}, max_size: 16MB, block_size: 1MB, stale_ttl: 1h}}\n"
        f"backends: [{{name: s, type: local, config: {{root: {tree / 'src'}}}}}]",
        env={},
    )
    with WarpDrive(cfg, wrap_client=wrap) as wd:
        wd.listdir("/s/train")
        for _ in range(3):
            wd.read("/s/train/a.bin")
            wd.stat("/s/train/b.bin")
        assert counting[0].calls["stat"] == 0  # known from the listing
        wd.read("/s/top.txt")
        wd.read("/s/top.txt")
        assert counting[0].calls["stat"] == 1


def test_a_listing_cut_short_stays_an_error_on_its_directory_handle(tmp_path: Path) -> None:
    """The backend goes down after two pages of a listing: the open directory answers the
    entries it got, then the error at every read past them (a caller that retries never takes
    the short listing for the directory: a failed generator would have said "end"); opened
    again once the backend is back, it lists every entry."""
    from warpdrive.fs import ROOT_INODE, WarpDriveFS

    root = tmp_path / "src" / "many"
    root.mkdir(parents=True)
    names = [f"f{i:02d}" for i in range(10)]
    for name in names:
        (root / name).write_bytes(b"x")
    state = {"pages": 0, "down": True}

    def plan(op: str, key: str) -> WarpDriveError | None:
        if op != "list":
            return None
        state["pages"] += 1
        if state["down"] and state["pages"] > 2:
            return TransientBackendError("injected: backend down", kind="connection")
        return None

    cfg = parse_config(
        f"cache: {{path: {tmp_path / 'cache'}, max_size: 16MB, block_size: 1MB}}\n"
        "fetch: {max_attempts: 2, initial_backoff: 1ms, max_backoff: 1ms}\n"
        f"backends: [{{name: s, type: local, config: {{root: {tmp_path / 'src'}, "
        "list_page_size: 3}}]",
        env={},
    )
    with WarpDrive(cfg, wrap_client=lambda c: FaultInjectingClient(c, plan)) as wd:
        fs = WarpDriveFS(wd)
        top = fs.lookup(ROOT_INODE, "s")
        assert top is not None
        many = fs.lookup(top.ino, "many")
        assert many is not None
        dh = fs.opendir(many.ino)
        got: list[str] = []

        def read_on() -> None:
            while batch := fs.readdir(dh, len(got)):
                got.extend(name for name, _, _ in batch)

        with pytest.raises(BackendUnavailableError):
            read_on()
        assert got == names[:6]  # the two pages it listed
        for _ in range(2):  # where it stopped: the error again, never the end
            with pytest.raises(BackendUnavailableError):
                fs.readdir(dh, len(got))
        assert [name for name, _, _ in fs.readdir(dh, 0)] == names[:6]
        fs.releasedir(dh)
        state["down"] = False
        dh = fs.opendir(many.ino)
        assert [name for name, _, _ in fs.readdir(dh, 0)] == names
        fs.releasedir(dh)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.sampled_from(["a", "b", ".", "..", "/", "//", "\\", "\0", " ", "é", "train"]),
        max_size=12,
    ).map("".join)
)
def test_arbitrary_paths_resolve_or_fail_with_typed_errors(wd: WarpDrive, path: str) -> None:
    try:
        info = wd.stat(path)
    except (InvalidPathError, NotFoundError, IsDirectoryError):
        return
    assert info.path.startswith("/")
    assert ".." not in info.path.split("/")
