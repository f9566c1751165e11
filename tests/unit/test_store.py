"""Block files: atomic writes, verified reads of any range, corruption never returned."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warpdrive.cache.keys import ObjectVersion
from warpdrive.cache.store import CHUNK, BlockStore, chunk_sums

SIZES = [1, 100, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 7, 1 << 20]


def _block(tmp_path: Path, data: bytes) -> tuple[BlockStore, bytes, int]:
    store = BlockStore(str(tmp_path))
    bkey = ObjectVersion("b", "k", "e", len(data), 0, 1 << 20).block_key(0)
    return store, bkey, store.write(bkey, data)


@pytest.mark.parametrize("size", SIZES)
def test_every_range_of_a_block_reads_back_exactly(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    store, bkey, nonce = _block(tmp_path, data)
    view = store.open(bkey, nonce, size, chunk_sums(data))
    assert view is not None
    edges = sorted(
        {0, 1, CHUNK - 1, CHUNK, CHUNK + 1, size // 2, size - 1, size} & set(range(size + 1))
    )
    for a in edges:
        for b in edges:
            if a <= b:
                buf = bytearray(b - a)
                assert view.read_into(a, memoryview(buf)), (a, b)
                assert bytes(buf) == data[a:b], (a, b)
    view.close()


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_random_ranges_property(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    size = data.draw(st.integers(1, 5 * CHUNK + 123))
    payload = os.urandom(size)
    store, bkey, nonce = _block(tmp_path_factory.mktemp("s"), payload)
    view = store.open(bkey, nonce, size, chunk_sums(payload))
    assert view is not None
    a = data.draw(st.integers(0, size))
    b = data.draw(st.integers(a, size))
    buf = bytearray(b - a)
    assert view.read_into(a, memoryview(buf))
    assert bytes(buf) == payload[a:b]
    view.close()


def test_reads_past_the_end_or_of_a_short_file_fail(tmp_path: Path) -> None:
    data = os.urandom(3 * CHUNK)
    store, bkey, nonce = _block(tmp_path, data)
    sums = chunk_sums(data)
    view = store.open(bkey, nonce, len(data), sums)
    assert view is not None
    assert not view.read_into(len(data) - 1, memoryview(bytearray(2)))
    os.truncate(store.path(bkey, nonce), 2 * CHUNK + 5)
    truncated = store.open(bkey, nonce, len(data), sums)
    assert truncated is not None
    assert not truncated.read_into(2 * CHUNK, memoryview(bytearray(CHUNK)))
    assert truncated.read_into(0, memoryview(bytearray(CHUNK)))  # untouched chunks still verify


def test_a_flipped_byte_fails_only_the_chunks_that_hold_it(tmp_path: Path) -> None:
    data = os.urandom(4 * CHUNK)
    store, bkey, nonce = _block(tmp_path, data)
    with open(store.path(bkey, nonce), "r+b") as f:
        f.seek(2 * CHUNK + 17)
        f.write(bytes([data[2 * CHUNK + 17] ^ 0xFF]))
    view = store.open(bkey, nonce, len(data), chunk_sums(data))
    assert view is not None
    assert view.read_into(0, memoryview(bytearray(2 * CHUNK)))
    assert not view.read_into(2 * CHUNK + 100, memoryview(bytearray(10)))
    assert not view.read_into(CHUNK + 5, memoryview(bytearray(2 * CHUNK)))
    assert view.read_into(3 * CHUNK, memoryview(bytearray(CHUNK)))


def test_write_leaves_no_temporary_file_and_private_modes(tmp_path: Path) -> None:
    store, bkey, nonce = _block(tmp_path, b"x" * 1000)
    path = store.path(bkey, nonce)
    files = list(Path(store.dir).rglob("*"))
    assert [p for p in files if p.is_file()] == [Path(path)]
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o700
    scanned = list(store.scan())
    assert len(scanned) == 1 and not isinstance(scanned[0], str)
    assert (scanned[0].bkey, scanned[0].nonce, scanned[0].size) == (bkey, nonce, 1000)


def test_each_write_of_a_block_is_a_new_file(tmp_path: Path) -> None:
    store, bkey, first = _block(tmp_path, b"a" * 10)
    second = store.write(bkey, b"a" * 10)
    assert first != second
    store.remove(bkey, first)
    assert os.path.exists(store.path(bkey, second))
    assert store.open(bkey, first, 10, chunk_sums(b"a" * 10)) is None


def test_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    store = BlockStore(str(tmp_path))
    bkey = ObjectVersion("b", "k", "e", 10, 0, 1 << 20).block_key(0)

    with pytest.raises(TypeError):
        store.write(bkey, object())  # type: ignore[arg-type]  # fails after the temp file exists
    leftovers = [p for p in Path(store.dir).rglob("*") if p.is_file()]
    assert leftovers == []


def test_scan_reports_strays(tmp_path: Path) -> None:
    store, bkey, nonce = _block(tmp_path, b"abc")
    stray = os.path.join(os.path.dirname(store.path(bkey, nonce)), ".tmp-leftover")
    Path(stray).write_bytes(b"partial")
    found = list(store.scan())
    assert stray in found


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_read_bytes_equals_read_into(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    size = data.draw(st.integers(1, 5 * CHUNK + 123))
    payload = os.urandom(size)
    store, bkey, nonce = _block(tmp_path_factory.mktemp("b"), payload)
    view = store.open(bkey, nonce, size, chunk_sums(payload))
    assert view is not None
    a = data.draw(st.integers(0, size))
    b = data.draw(st.integers(a, size))
    assert view.read_bytes(a, b - a) == payload[a:b]
    assert view.read_bytes(a, b - a, nowait=True) in (payload[a:b], None)  # resident: same bytes
    view.close()


def test_read_bytes_refuses_corrupt_chunks_and_reads_past_the_end(tmp_path: Path) -> None:
    data = os.urandom(3 * CHUNK)
    store, bkey, nonce = _block(tmp_path, data)
    with open(store.path(bkey, nonce), "r+b") as f:
        f.seek(CHUNK + 1)
        f.write(bytes([data[CHUNK + 1] ^ 1]))
    view = store.open(bkey, nonce, len(data), chunk_sums(data))
    assert view is not None
    assert view.read_bytes(0, CHUNK) == data[:CHUNK]
    assert view.read_bytes(CHUNK, 10) is None
    assert view.read_bytes(3 * CHUNK - 5, 10) is None
