"""``warpdrive://`` as fsspec defines a file system, over Azurite: the conventions (ls of a
file, modified, list paths, fsspec file objects, read_block, caches), cat_ranges fetching its
ranges together, and real libraries reading through it (pandas, pyarrow, Hugging Face datasets).

fsspec's own contract suite runs in test_fsspec_abstract.py."""

from __future__ import annotations

import io
import os
import random
import re
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path, PurePosixPath
from typing import Any

import fsspec
import fsspec.parquet
import pytest
from fsspec.caching import ReadAheadCache
from fsspec.implementations.local import LocalFileSystem
from fsspec.spec import AbstractBufferedFile
from fsspec.utils import read_block

from tests.conftest import Store
from tests.shardgen import make_shard
from warpdrive import Config, WarpDrive
from warpdrive.backends.base import Entry, ObjectClient, ObjectMeta
from warpdrive.backends.wrappers import FaultInjectingClient
from warpdrive.errors import PermissionDeniedError
from warpdrive.fsspec_fs import WarpDriveFileSystem
from warpdrive.testing.servers import Server

pytestmark = pytest.mark.integration
KB = 1024
BS = 64 * KB  # cache block size of these tests: ranges below name blocks of it
GATE_TIMEOUT = 2.0  # how long a gated read waits for the others (only a failing run waits)

CSV = b"".join(b"%d,%d,row %d\n" % (i, i * i, i) for i in range(3000))


@pytest.fixture
def tree(azure_store: Store, tmp_path: Path) -> dict[str, bytes]:
    """Objects in the container, and the same tree on local disk (``tmp_path/mirror``) as the
    oracle of what fsspec's LocalFileSystem answers."""
    rnd = random.Random(11)
    objects = {
        "data/multi.bin": rnd.randbytes(8 * BS + 1234),
        "data/other.bin": rnd.randbytes(3 * BS),
        "data/empty.bin": b"",
        "data/rows.csv": CSV,
        "data/sub/deep/x.bin": rnd.randbytes(100),
        "data/sub/y.txt": b"y\n",
        "data2/z.bin": rnd.randbytes(10),
    }
    mirror = tmp_path / "mirror"
    for key, payload in objects.items():
        azure_store.put(key, payload)
        (mirror / key).parent.mkdir(parents=True, exist_ok=True)
        (mirror / key).write_bytes(payload)
    return objects


FsMaker = Callable[..., WarpDriveFileSystem]


@pytest.fixture
def make_fs(azure_store: Store) -> Iterator[FsMaker]:
    """New file systems over the container (no fsspec instance cache: each its own reader),
    closed at the end; ``wrap`` wraps the backend client, keywords override ``cache:``."""
    made: list[WarpDriveFileSystem] = []

    def make(wrap: Callable[[ObjectClient], ObjectClient] | None = None, **cache: Any) -> Any:
        cache.setdefault("block_size", BS)
        wd = WarpDrive(azure_store.config(**cache), wrap_client=wrap)
        fs = fsspec.filesystem("warpdrive", config=wd, skip_instance_cache=True)
        made.append(fs)
        return fs

    yield make
    for fs in made:
        fs.wd.close()


def url(key: str) -> str:
    return f"warpdrive://az/{key}"


def name(key: str) -> str:
    return f"az/{key}"


# -- conventions ---------------------------------------------------------------------------


def test_modified_is_the_blobs_last_modified_in_utc(
    azure_store: Store, azurite: Server, tree: dict[str, bytes], make_fs: FsMaker
) -> None:
    from azure.storage.blob import BlobServiceClient

    container = re.search(r"container: ([^,}]+)", azure_store.backend_yaml)
    assert container is not None
    blobs = BlobServiceClient.from_connection_string(azurite.connection_string())
    fs = make_fs()
    for key in ("data/multi.bin", "data/sub/deep/x.bin"):
        props = blobs.get_blob_client(container.group(1), key).get_blob_properties()
        modified = fs.modified(url(key))
        assert modified == props.last_modified
        assert modified.utcoffset() == timedelta(0)  # aware, in UTC
    for directory in (name("data"), url("data/sub"), "az", ""):
        with pytest.raises(IsADirectoryError, match=r"is a directory: .* no modification time"):
            fs.modified(directory)


def test_ls_of_a_file_is_its_info_and_directories_are_sizeless(
    tree: dict[str, bytes], make_fs: FsMaker
) -> None:
    # A fresh reader knows nothing yet: ls(file) must find out it is a file by itself.
    for fs in (make_fs(), make_fs()):
        entries = fs.ls(url("data/multi.bin"))
        assert len(entries) == 1
        assert entries == [fs.info(name("data/multi.bin"))]  # now known: answered from the cache
        assert entries[0]["name"] == name("data/multi.bin")
        assert (entries[0]["type"], entries[0]["size"]) == ("file", len(tree["data/multi.bin"]))
        assert fs.ls(name("data/sub/y.txt"), detail=False) == [name("data/sub/y.txt")]
    fs = make_fs()
    assert fs.ls(url("data/sub"), detail=False) == [name("data/sub/deep"), name("data/sub/y.txt")]
    assert fs.ls("", detail=False) == ["az"]
    directory = {"name": name("data/sub"), "size": 0, "type": "directory", "mtime": None}
    assert fs.info(url("data/sub/")) | {"etag": None} == directory | {"etag": None}
    assert [e for e in fs.ls(name("data")) if e["name"] == name("data/sub")] == [
        fs.info(name("data/sub"))
    ]  # a directory in a listing is what info says of it
    with pytest.raises(FileNotFoundError):
        fs.ls(name("data/nothing"))


def test_names_are_backend_names_where_the_mount_path_differs(
    azure_store: Store, tree: dict[str, bytes]
) -> None:
    """``warpdrive://NAME/key`` names backend NAME (fsspec's bucket), not a mount path: with
    ``az`` mounted at ``/regions/cac``, names and URLs say ``az/…``, whatever fsspec gives
    back opens again, and the mount path is an absolute path for WarpDrive itself."""
    yaml = azure_store.backend_yaml.replace(
        "    type: azureblob\n", "    type: azureblob\n    mount_path: /regions/cac\n"
    )
    assert "mount_path" in yaml
    cfg = Store(**{**vars(azure_store), "backend_yaml": yaml}).config(block_size=BS)
    fs = fsspec.filesystem("warpdrive", config=cfg, skip_instance_cache=True)
    try:
        assert fs.ls("", detail=False) == ["az"] == fs.ls("warpdrive://", detail=False)
        assert fs.info("az")["type"] == "directory" and fs.info("az")["name"] == "az"
        assert fs.info(url("data/multi.bin"))["name"] == name("data/multi.bin")
        assert fs.ls(url("data/sub"), detail=False) == [
            name("data/sub/deep"),
            name("data/sub/y.txt"),
        ]
        found = fs.find("az")
        assert sorted(found) == sorted(name(k) for k in tree)
        for entry in found:  # every name fsspec gave opens again, as a name and as a URL
            key = entry.removeprefix("az/")
            assert fs.info(entry)["name"] == entry
            assert fs.cat_file(entry) == tree[key]
            with fsspec.open(fs.unstrip_protocol(entry), config=fs.wd) as f:
                assert f.read() == tree[key]
        assert fs.glob("warpdrive://az/data/*.bin") == [
            name(k) for k in ("data/empty.bin", "data/multi.bin", "data/other.bin")
        ]
        # The mount path is no name; the error names the backends and where they are mounted.
        assert not fs.exists("regions/cac/data/multi.bin")
        with pytest.raises(
            FileNotFoundError, match=r"no backend named 'regions'.*az.*/regions/cac"
        ):
            fs.cat_file("warpdrive://regions/cac/data/multi.bin")
        assert fs.wd.read("/regions/cac/data/rows.csv") == CSV  # an absolute mount path
        assert fs.wd.read("warpdrive://az/data/rows.csv") == CSV
    finally:
        fs.wd.close()


def test_strip_protocol_maps_lists_and_paths(tree: dict[str, bytes], make_fs: FsMaker) -> None:
    strip = WarpDriveFileSystem._strip_protocol
    assert strip(["warpdrive://az/data/", "az/data/sub", "warpdrive::az/x"]) == [
        "az/data",
        "az/data/sub",
        "az/x",
    ]
    assert strip(PurePosixPath("/az/data/rows.csv")) == "az/data/rows.csv"
    assert strip([]) == []
    fs = make_fs()
    both = [url("data/sub/y.txt"), url("data2/z.bin")]
    assert fs.cat(both) == {
        name("data/sub/y.txt"): tree["data/sub/y.txt"],
        name("data2/z.bin"): tree["data2/z.bin"],
    }
    assert fs.sizes(both) == [2, 10]


def test_open_gives_an_fsspec_file_and_read_block_works(
    tree: dict[str, bytes], make_fs: FsMaker
) -> None:
    fs = make_fs()
    data = tree["data/multi.bin"]
    with fs.open(url("data/multi.bin")) as f:
        assert isinstance(f, AbstractBufferedFile)
        assert (f.size, f.path, f.fs) == (len(data), name("data/multi.bin"), fs)
        assert f.full_name == url("data/multi.bin")
        assert f.info()["etag"] == fs.info(name("data/multi.bin"))["etag"]
        assert f.read(10) == data[:10]
        f.seek(-5, os.SEEK_END)
        assert (f.tell(), f.read()) == (len(data) - 5, data[-5:])
        f.seek(BS - 3)
        buf = bytearray(7)
        assert f.readinto(buf) == 7
        assert bytes(buf) == data[BS - 3 : BS + 4]
    assert f.closed
    with pytest.raises(ValueError, match="closed"):
        f.read(1)
    with fs.open(url("data/rows.csv"), "r") as text:  # text mode over the binary file
        assert text.readline() == "0,0,row 0\n"
    for offset, length, delim in [
        (0, 100, None),
        (5, 200, b"\n"),
        (1000, 1000, b"\n"),
        (len(CSV) - 50, 10**6, b"\n"),
        (0, None, None),
        (len(CSV), 10, b"\n"),
    ]:
        expected = read_block(io.BytesIO(CSV), offset, length or len(CSV), delim)
        assert fs.read_block(url("data/rows.csv"), offset, length, delim) == expected


def test_block_size_and_cache_type_are_honoured(tree: dict[str, bytes], make_fs: FsMaker) -> None:
    fs = make_fs()
    data = tree["data/multi.bin"]
    with fs.open(name("data/multi.bin")) as f:  # the default: the handle's own readahead
        assert (f.cache.name, f.blocksize) == ("none", 1 << 20)
        assert f.read(3 * BS) == data[: 3 * BS]
    with fs.open(name("data/multi.bin"), block_size=4096, cache_type="readahead") as f:
        assert isinstance(f.cache, ReadAheadCache) and f.blocksize == 4096
        assert f.read(10) == data[:10]
        assert f.cache.total_requested_bytes == 10 + 4096  # the read and a block_size past it
        assert f.read(100) == data[10:110]
        assert (f.cache.hit_count, f.cache.miss_count) == (1, 1)
    for cache_type in ("bytes", "blockcache", "mmap", "first", "all"):
        opened = fsspec.open(url("data/multi.bin"), config=fs.wd, cache_type=cache_type)
        with opened as f:
            assert f.cache.name == cache_type
            f.seek(BS + 7)
            assert f.read(2 * BS) == data[BS + 7 : 3 * BS + 7]


def test_writing_is_refused_with_the_mode_named(tree: dict[str, bytes], make_fs: FsMaker) -> None:
    fs = make_fs()
    for mode, shown in [("wb", "wb"), ("ab", "ab"), ("xb", "xb"), ("w", "wb"), ("a", "ab")]:
        with pytest.raises(ValueError, match=f"read-only: mode '{shown}'") as exc:
            fs.open(name("data/new.bin"), mode)
        assert "\n" not in str(exc.value)
    refused: list[Callable[[], object]] = [
        lambda: fs.mkdir(name("data/newdir")),
        lambda: fs.makedirs(name("data/newdir/a"), exist_ok=True),
        lambda: fs.rm(name("data/multi.bin")),
        lambda: fs.rmdir(name("data/sub")),
        lambda: fs.cp_file(name("data/multi.bin"), name("data/copy.bin")),
        lambda: fs.mv(name("data/multi.bin"), name("data/moved.bin")),
        lambda: fs.touch(name("data/new.bin")),
        lambda: fs.pipe_file(name("data/new.bin"), b"x"),
    ]
    for call in refused:
        with pytest.raises(ValueError, match="warpdrive:// is read-only"):
            call()
    assert sorted(fs.find(name("data"))) == sorted(name(k) for k in tree if k.startswith("data/"))


# -- cat_ranges / cat: ranges fetched together -------------------------------------------


class GateClient(ObjectClient):
    """Holds each read until ``want`` reads are in flight at once (or ``GATE_TIMEOUT`` passed):
    reads issued one after another never get there, so ``peak`` shows whether they overlapped.
    Records the byte ranges read."""

    def __init__(self, inner: ObjectClient, want: int) -> None:
        super().__init__(inner.name, inner.type)
        self.inner = inner
        self.want = want
        self.active = 0
        self.peak = 0
        self.ranges: list[tuple[str, int, int]] = []
        self._cond = threading.Condition()

    def stat(self, key: str) -> ObjectMeta:
        return self.inner.stat(key)

    def list_page(self, prefix: str, token: str | None) -> tuple[list[Entry], str | None]:
        return self.inner.list_page(prefix, token)

    def read_range(self, key: str, start: int, end: int, etag: str) -> bytes:
        with self._cond:
            self.ranges.append((key, start, end))
            self.active += 1
            self.peak = max(self.peak, self.active)
            self._cond.notify_all()
            self._cond.wait_for(lambda: self.peak >= self.want, timeout=GATE_TIMEOUT)
        try:
            return self.inner.read_range(key, start, end, etag)
        finally:
            with self._cond:
                self.active -= 1

    def close(self) -> None:
        self.inner.close()


def gated(want: int) -> tuple[list[GateClient], Callable[[ObjectClient], ObjectClient]]:
    made: list[GateClient] = []

    def wrap(client: ObjectClient) -> ObjectClient:
        made.append(GateClient(client, want))
        return made[-1]

    return made, wrap


def blocks_of(ranges: list[tuple[str, int, int]]) -> list[tuple[str, int]]:
    """The cache blocks the backend reads covered, one entry per block read."""
    return [(key, b) for key, start, end in ranges for b in range(start // BS, -(-end // BS))]


def test_cat_ranges_fetch_together_and_are_byte_exact(
    tree: dict[str, bytes], make_fs: FsMaker
) -> None:
    multi, other = tree["data/multi.bin"], tree["data/other.bin"]
    # (key, start, end): blocks 0, 2, 4 and the last of multi (twice: overlapping ranges),
    # blocks 0 and 2 of other; negative and open ends, ranges past the end and empty ones.
    ranges: list[tuple[str, int | None, int | None]] = [
        ("data/multi.bin", 10, 300),
        ("data/multi.bin", 2 * BS + 5, 2 * BS + 900),
        ("data/multi.bin", 4 * BS, 4 * BS + BS // 2),
        ("data/multi.bin", -1000, None),
        ("data/multi.bin", -600, -100),  # overlaps the one before
        ("data/multi.bin", 20, 250),  # overlaps the first
        ("data/other.bin", None, 77),
        ("data/other.bin", 2 * BS + 1, 10**9),
        ("data/other.bin", 500, 400),  # empty
        ("data/multi.bin", len(multi) + 5, None),  # past the end: empty
    ]
    touched = {("data/multi.bin", b) for b in (0, 2, 4, 8)} | {
        ("data/other.bin", b) for b in (0, 2)
    }
    gates, wrap = gated(want=len(touched))
    # coalesce_size one block: these objects are fetched block by block, not whole (as objects
    # up to 1 MiB are by default), so each range's fetch is seen apart
    fs = make_fs(wrap=wrap, max_parallel_fetch=16, fetch={"coalesce_size": BS})
    got = fs.cat_ranges(
        [url(k) for k, _, _ in ranges], [s for _, s, _ in ranges], [e for _, _, e in ranges]
    )
    source = {"data/multi.bin": multi, "data/other.bin": other}
    assert got == [source[k][s:e] for k, s, e in ranges]  # Python slices: fsspec's semantics
    assert gates[0].peak == len(touched), "the ranges' fetches did not overlap"
    read = blocks_of(gates[0].ranges)
    assert sorted(read) == sorted(touched)  # each block once, nothing read ahead of the ranges
    # Scalar starts/ends apply to every path; warm now, the same bytes come from the cache.
    assert fs.cat_ranges([name("data/multi.bin"), name("data/other.bin")], 0, 50) == [
        multi[:50],
        other[:50],
    ]
    assert len(gates[0].ranges) == len(read)


def test_cat_ranges_and_cat_put_errors_in_place(tree: dict[str, bytes], make_fs: FsMaker) -> None:
    multi = tree["data/multi.bin"]
    gates, wrap = gated(want=3)
    fs = make_fs(wrap=wrap, max_parallel_fetch=16, fetch={"coalesce_size": BS})  # as above
    paths = [
        url("data/multi.bin"),
        url("data/missing.bin"),
        url("data/multi.bin"),
        url("data/sub"),  # a directory
        url("data/../etc/passwd"),  # can never be a path
        url("data/multi.bin"),
    ]
    starts = [0, 0, 3 * BS, 0, 0, 6 * BS]
    ends = [100, 100, 3 * BS + 100, 100, 100, 6 * BS + 100]
    got = fs.cat_ranges(paths, starts, ends, on_error="return")
    assert [got[i] for i in (0, 2, 5)] == [multi[s : s + 100] for s in (0, 3 * BS, 6 * BS)]
    assert isinstance(got[1], FileNotFoundError)
    assert isinstance(got[3], IsADirectoryError)
    assert isinstance(got[4], ValueError) and "'..'" in str(got[4])
    assert gates[0].peak == 3, "the good ranges' fetches did not overlap around the errors"
    with pytest.raises(FileNotFoundError, match="missing"):  # the first error, in order
        fs.cat_ranges(paths, starts, ends, on_error="raise")
    with pytest.raises(ValueError, match="3 paths, 2 starts"):
        fs.cat_ranges(paths[:3], [0, 1], 5)
    # cat: a dict for several paths, with fsspec's three on_error behaviours.
    some = [name("data/sub/y.txt"), name("data/missing.bin"), name("data2/z.bin")]
    with pytest.raises(FileNotFoundError):
        fs.cat(some)
    assert fs.cat(some, on_error="omit") == {
        name("data/sub/y.txt"): b"y\n",
        name("data2/z.bin"): tree["data2/z.bin"],
    }
    returned = fs.cat(some, on_error="return")
    assert isinstance(returned.pop(name("data/missing.bin")), FileNotFoundError)
    assert returned == fs.cat(some, on_error="omit")
    assert fs.cat(url("data/sub/*.txt")) == {name("data/sub/y.txt"): b"y\n"}
    with pytest.raises(IsADirectoryError):  # as in fsspec: a glob's directories are no files
        fs.cat(url("data/sub/*"))
    assert fs.cat(url("data/sub/y.txt")) == b"y\n"  # one path, not a pattern: its bytes


# -- the rest of fsspec's read side, against LocalFileSystem over the same tree ------------


def test_find_glob_walk_du_and_checks_agree_with_a_local_copy(
    tree: dict[str, bytes], make_fs: FsMaker, tmp_path: Path
) -> None:
    local, root = LocalFileSystem(), str(tmp_path / "mirror")
    fs = make_fs()

    def ours(paths: Any) -> Any:
        return sorted(p.removeprefix("az/") for p in paths)

    def theirs(paths: Any) -> Any:
        return sorted(p.removeprefix(f"{root}/") for p in paths)

    assert ours(fs.find(url("data"))) == theirs(local.find(f"{root}/data"))
    assert ours(fs.find(name("data"), withdirs=True, maxdepth=2)) == theirs(
        local.find(f"{root}/data", withdirs=True, maxdepth=2)
    )
    assert ours(fs.find(name("data/multi.bin"))) == ["data/multi.bin"]
    for pattern in ("data/*", "data/**", "data/**/*.bin", "data/*/y.txt", "data?/*", "*/sub/**"):
        assert ours(fs.glob(url(pattern))) == theirs(local.glob(f"{root}/{pattern}")), pattern
    walked = [(p, sorted(d), sorted(f)) for p, d, f in fs.walk(name("data"))]
    expected = [(p, sorted(d), sorted(f)) for p, d, f in local.walk(f"{root}/data")]
    assert [(ours([p])[0], d, f) for p, d, f in walked] == [
        (theirs([p])[0], d, f) for p, d, f in expected
    ]
    assert (
        fs.du(name("data"))
        == local.du(f"{root}/data")
        == sum(len(v) for k, v in tree.items() if k.startswith("data/"))
    )
    sizes = fs.du(name("data"), total=False)
    assert {k.removeprefix("az/"): v for k, v in sizes.items()} == {
        k: len(v) for k, v in tree.items() if k.startswith("data/")
    }
    assert fs.exists(name("data/multi.bin")) and fs.exists(url("data/sub"))
    assert not fs.exists(name("data/missing.bin")) and not fs.exists(name("data/../x"))
    assert fs.isdir(name("data/sub")) and not fs.isdir(name("data/multi.bin"))
    assert fs.isfile(name("data/multi.bin")) and not fs.isfile(name("data/sub"))
    # ukey: the object's version; two directories do not share one.
    assert fs.ukey(name("data/multi.bin")) == fs.info(name("data/multi.bin"))["etag"]
    assert fs.ukey(name("data/sub")) != fs.ukey(name("data/sub/deep"))
    assert fs.checksum(name("data/multi.bin")) == fs.checksum(url("data/multi.bin"))
    assert fs.checksum(name("data/multi.bin")) != fs.checksum(name("data/other.bin"))
    assert fs.head(name("data/rows.csv"), 9) == CSV[:9]
    assert fs.tail(name("data/rows.csv"), 9) == CSV[-9:]


def test_exists_raises_when_the_backend_cannot_answer(
    tree: dict[str, bytes], make_fs: FsMaker
) -> None:
    def refuse(op: str, key: str) -> PermissionDeniedError | None:
        return PermissionDeniedError(f"denied: {key}") if key.endswith("secret.bin") else None

    fs = make_fs(wrap=lambda client: FaultInjectingClient(client, refuse))
    with pytest.raises(PermissionError, match="denied"):  # not False: it may well exist
        fs.exists(name("data/secret.bin"))
    assert fs.exists(name("data/multi.bin"))


# -- real libraries ------------------------------------------------------------------------


@pytest.fixture
def config(azure_store: Store) -> Iterator[Config]:
    """The container's config, for libraries given ``storage_options``: fsspec keeps the file
    systems they make (one reader each) for the process, so they are closed and dropped after
    the test. One reader per cache directory in a process: others need their own ``path``."""
    yield azure_store.config(block_size=BS)
    for fs in list(WarpDriveFileSystem._cache.values()):
        fs.wd.close()
    WarpDriveFileSystem.clear_instance_cache()


def padded_parquet(azure_store: Store, key: str) -> tuple[Any, int]:
    """A table of 4 row groups, each a small column "x" beside a large incompressible "pad",
    stored at ``key``; the table and the file's size."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rnd = random.Random(9)
    table = pa.table({"x": list(range(4000)), "pad": [rnd.randbytes(1000) for _ in range(4000)]})
    out = io.BytesIO()
    pq.write_table(table, out, row_group_size=1000, compression="none")
    azure_store.put(key, out.getvalue())
    return table, len(out.getvalue())


def test_pandas_reads_parquet_and_csv(azure_store: Store, config: Config, tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    np = pytest.importorskip("numpy")
    frame = pd.DataFrame(
        {
            "i": np.arange(20_000),
            "x": np.random.default_rng(3).random(20_000),
            "s": [f"s{i % 97}" for i in range(20_000)],
        }
    )
    parquet = io.BytesIO()
    frame.to_parquet(parquet, row_group_size=4000)  # several row groups: ranged reads
    azure_store.put("tables/frame.parquet", parquet.getvalue())
    azure_store.put("tables/frame.csv", frame.to_csv(index=False).encode())
    options = {"config": config}
    read = pd.read_parquet(url("tables/frame.parquet"), storage_options=options)
    pd.testing.assert_frame_equal(read, frame)
    read = pd.read_csv(url("tables/frame.csv"), storage_options=options)
    pd.testing.assert_frame_equal(read, frame)
    # A text stream of small reads is where fsspec's readahead cache pays (storage options
    # choose it); the result is the same.
    chunks = pd.read_csv(
        url("tables/frame.csv"),
        storage_options={**options, "cache_type": "readahead", "block_size": 256 * KB},
        chunksize=7000,
    )
    pd.testing.assert_frame_equal(pd.concat(chunks), frame)
    # One column of a wide file: only its blocks are fetched (a buffered reader pulled 1 MiB
    # past each of pyarrow's reads: most of the file).
    table, size = padded_parquet(azure_store, "wide/t.parquet")
    with WarpDrive(azure_store.config(block_size=BS, path=tmp_path / "cold")) as wd:
        x = pd.read_parquet(url("wide/t.parquet"), columns=["x"], storage_options={"config": wd})
        assert x["x"].tolist() == table.column("x").to_pylist()
        fetched = wd.metrics.totals()["bytes_fetched"]
    assert fetched < size / 3, (fetched, size)


def test_pyarrow_reads_parquet_through_the_file_system(
    azure_store: Store, make_fs: FsMaker, tmp_path: Path
) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    ds = pytest.importorskip("pyarrow.dataset")
    rnd = random.Random(5)
    tables, size = [], 0
    for part in range(3):
        # Per row group: a small column "v" between large incompressible "pad" chunks, so
        # that reading "v" alone touches few blocks.
        rows = range(part * 3000, part * 3000 + 3000)
        table = pa.table(
            {
                "part": [part] * len(rows),
                "v": list(rows),
                "pad": [rnd.randbytes(1000) for _ in rows],
            }
        )
        out = io.BytesIO()
        pq.write_table(table, out, row_group_size=1000, compression="none")
        azure_store.put(f"parts/p{part}.parquet", out.getvalue())
        tables.append(table)
        size += len(out.getvalue())
    fs = make_fs()
    assert pq.read_table(name("parts/p1.parquet"), filesystem=fs).equals(tables[1])
    with fs.open(name("parts/p2.parquet")) as f:
        meta = pq.ParquetFile(f).metadata
        assert (meta.num_rows, meta.num_row_groups) == (3000, 3)
    # A path without the scheme: given "warpdrive://az/parts", pyarrow refuses the names any
    # fsspec file system lists ("outside base dir"; memory:// does the same).
    dataset = ds.dataset(name("parts"), filesystem=fs, format="parquet")
    assert dataset.to_table().sort_by("v").equals(pa.concat_tables(tables))
    assert dataset.to_table(filter=ds.field("part") == 2).equals(tables[2])
    # fsspec's parquet reader: every file's footer in one cat_ranges, then the chunks of the
    # chosen column in another; the footers' fetches overlap, and only what was named is read.
    # (A footer sample under 64 KiB gives files pyarrow cannot open, memory:// too: pyarrow
    # reads the last 64 KiB, and fsspec's "parts" cache has nothing for a read that starts in
    # a gap.) Each footer sample spans 2 or 3 blocks: only reads of two files or more overlap
    # 6 blocks.
    gates, wrap = gated(want=6)
    fs = make_fs(wrap=wrap, max_parallel_fetch=16, path=tmp_path / "cold")  # nothing cached
    paths = [name(f"parts/p{part}.parquet") for part in range(3)]
    files = fsspec.parquet.open_parquet_files(
        paths, fs=fs, columns=["v"], footer_sample_size=100_000, engine="pyarrow"
    )
    for f, table in zip(files, tables, strict=True):
        assert pq.read_table(f, columns=["v"]).equals(table.select(["v"]))
    assert gates[0].peak >= 6, "the footers' fetches did not overlap"
    fetched = sum(end - start for _, start, end in gates[0].ranges)
    assert fetched < size / 3, (fetched, size)


def test_hf_datasets_streams_webdataset_shards_and_parquet(
    azure_store: Store, config: Config, tmp_path: Path
) -> None:
    datasets = pytest.importorskip("datasets")
    content: dict[str, dict[str, bytes]] = {}
    for shard in range(3):
        data, samples = make_shard(shard, 6)
        azure_store.put(f"wds/shard-{shard:06d}.tar", data)
        content.update(samples)
    stream = datasets.load_dataset(
        "webdataset",
        data_files=url("wds/*.tar"),
        streaming=True,
        split="train",
        storage_options={"config": config},
    ).decode(False)  # the payloads are not real JPEGs: compare raw bytes
    seen = {}
    for sample in stream:
        seen[sample["__key__"]] = sample
        assert sample["__url__"].startswith(url("wds/shard-"))
    assert sorted(seen) == sorted(content)
    for key, fields in content.items():
        assert seen[key]["jpg"]["bytes"] == fields["jpg"]
        assert seen[key]["cls"] == int(fields["cls"])
    # Streaming one column of a wide parquet file fetches little more than that column.
    table, size = padded_parquet(azure_store, "wide/t.parquet")
    with WarpDrive(azure_store.config(block_size=BS, path=tmp_path / "cold")) as wd:
        rows = datasets.load_dataset(
            "parquet",
            data_files=url("wide/t.parquet"),
            streaming=True,
            split="train",
            columns=["x"],
            storage_options={"config": wd},
        )
        assert [row["x"] for row in rows] == table.column("x").to_pylist()
        fetched = wd.metrics.totals()["bytes_fetched"]
    assert fetched < size / 3, (fetched, size)
