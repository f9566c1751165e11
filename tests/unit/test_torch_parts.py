"""The parts of warpdrive_torch that need no backend: brace expansion, the tar reader,
decoders."""

from __future__ import annotations

import io
import tarfile

import pytest

from tests.shardgen import make_shard, tar_of
from warpdrive.shards import expand_braces
from warpdrive_torch.decode import make_decoder
from warpdrive_torch.tario import ShardError, iter_members


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("a.tar", ["a.tar"]),
        ("s-{0..3}.tar", ["s-0.tar", "s-1.tar", "s-2.tar", "s-3.tar"]),
        ("s-{000008..000011}", ["s-000008", "s-000009", "s-000010", "s-000011"]),
        ("s-{00..10..5}", ["s-00", "s-05", "s-10"]),
        ("s-{3..1}", ["s-3", "s-2", "s-1"]),
        ("{a,b}/{0..1}", ["a/0", "a/1", "b/0", "b/1"]),
        ("x{a,b{1..2}}y", ["xay", "xb1y", "xb2y"]),
        (
            "{cac,wus3}/shard-{0..1}.tar",
            ["cac/shard-0.tar", "cac/shard-1.tar", "wus3/shard-0.tar", "wus3/shard-1.tar"],
        ),
    ],
)
def test_braces_expand_in_order_keeping_padding(pattern: str, expected: list[str]) -> None:
    assert expand_braces(pattern) == expected


def test_bad_braces_name_the_pattern() -> None:
    with pytest.raises(ValueError, match="unbalanced") as info:
        expand_braces("s-{0..3")
    assert "'s-{0..3'" in str(info.value)


@pytest.mark.parametrize(
    "pattern",
    [
        "{a..e}",  # letter ranges
        "{a}",  # one item: no expansion
        "{}",
        r"shard-\{0,1\}.tar",  # escaped braces are literal
        "{5..1..2}",
        "{5..1..-2}",  # negative steps count down all the same
        "{-3..3}",
        "{000..010..5}",
        "s-{0..1}::t-{a,b}",  # webdataset's separator of patterns
        "warpdrive://cac/train/shard-{000000..000011..2}.tar",
    ],
)
def test_braces_expand_exactly_as_webdataset_does(pattern: str) -> None:
    from webdataset.shardlists import expand_urls

    assert expand_braces(pattern) == expand_urls(pattern)


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_tar_reader_matches_tarfile_for_every_format(fmt: int) -> None:
    long_dir = "d" * 120  # past ustar's 100-byte name: prefix, GNU 'L' or pax 'path'
    content = {
        f"{long_dir}/k{i}": {"jpg": bytes([i]) * (i * 700), "cls": b"%d" % i} for i in range(4)
    }
    content["ünï/çödé"] = {"txt": "héllo".encode()}
    data = tar_of(content, fmt)
    got = [(m.name, m.data) for m in iter_members(io.BytesIO(data), "mem://x.tar")]
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        expected = [(ti.name, tf.extractfile(ti).read()) for ti in tf if ti.isfile()]  # type: ignore[union-attr]
    assert got == expected
    # Replay mode reads headers only; the offsets it reports hold the same bytes.
    skipped = list(iter_members(io.BytesIO(data), "mem://x.tar", skip_data=True))
    assert [(m.name, data[m.offset : m.offset + m.size]) for m in skipped] == expected
    assert all(m.data is None for m in skipped)


def test_tar_reader_passes_over_directories_and_links() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        directory = tarfile.TarInfo("dir")
        directory.type = tarfile.DIRTYPE
        tf.addfile(directory)
        link = tarfile.TarInfo("dir/link.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "a.jpg"
        tf.addfile(link)
        info = tarfile.TarInfo("dir/a.jpg")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"abc"))
    got = [(m.name, m.data) for m in iter_members(io.BytesIO(buf.getvalue()), "u")]
    assert got == [("dir/a.jpg", b"abc")]


def test_corrupt_header_names_shard_offset_and_previous_member() -> None:
    data, _ = make_shard(0, 3)
    second = data.index(b"0000000001.jpg")  # the second sample's first header
    damaged = data[:second] + b"X" + data[second + 1 :]
    members = iter_members(io.BytesIO(damaged), "warpdrive://az/s.tar")
    first = [next(members), next(members)]
    assert [m.name for m in first] == ["0000000000.jpg", "0000000000.cls"]
    with pytest.raises(ShardError) as info:
        next(members)
    message = str(info.value)
    assert "warpdrive://az/s.tar" in message and f"offset {second}" in message
    assert "'0000000000.cls'" in message and "checksum" in message
    assert info.value.offset == second


@pytest.mark.parametrize("skip_data", [False, True])
def test_truncated_member_names_itself(skip_data: bool) -> None:
    data, _ = make_shard(0, 3)
    start = data.index(b"0000000002.jpg") + 512
    cut = data[: start + 100]
    with pytest.raises(ShardError, match=r"s\.tar: member '0000000002\.jpg'.*truncated") as info:
        list(iter_members(io.BytesIO(cut), "s.tar", skip_data=skip_data))
    assert info.value.member == "0000000002.jpg"


def test_archive_cut_at_a_member_boundary_is_truncated_not_smaller() -> None:
    data, _ = make_shard(0, 2)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        last = tf.getmembers()[-1]
    boundary = last.offset_data + -(-last.size // 512) * 512  # where the end blocks begin
    with pytest.raises(ShardError, match="end-of-archive"):
        list(iter_members(io.BytesIO(data[:boundary]), "s.tar"))
    with pytest.raises(ShardError, match="header of 17 bytes"):
        list(iter_members(io.BytesIO(data[: boundary + 17]), "s.tar"))


def test_not_a_tar_at_all() -> None:
    with pytest.raises(ShardError, match=r"checksum.*first header"):
        list(iter_members(io.BytesIO(b"<html>" + bytes(1000)), "s.tar"))


def test_decoders() -> None:
    _, content = make_shard(0, 1, jpeg=True)
    fields = content["0000000000"]
    sample = {"__key__": "k", **fields, "json": b'{"a": 1}', "txt": "é".encode()}
    pil = make_decoder("pil")(sample)  # type: ignore[misc]
    assert pil["__key__"] == "k" and pil["cls"] == int(fields["cls"])
    assert pil["jpg"].size == (16, 12) and pil["jpg"].mode == "RGB"
    assert pil["json"] == {"a": 1} and pil["txt"] == "é"
    tensor = make_decoder("torch")(sample)["jpg"]  # type: ignore[misc]
    assert tuple(tensor.shape) == (3, 12, 16) and str(tensor.dtype) == "torch.uint8"
    custom = make_decoder({"cls": lambda b: int(b) * 2})(sample)  # type: ignore[misc]
    assert custom["cls"] == 2 * int(fields["cls"]) and custom["jpg"] == fields["jpg"]
    with pytest.raises(ValueError, match="decode='jpeg'"):
        make_decoder("jpeg")


def test_the_order_sampler_lets_a_reader_name_the_batches_after_this_one() -> None:
    import pickle

    from torch.utils.data import BatchSampler

    from warpdrive_torch.ahead import Ahead, OrderSampler

    sampler = OrderSampler(50, seed=4)
    ahead = Ahead(sampler, batches=2)
    copy = pickle.loads(pickle.dumps(ahead))  # what a worker gets before the epoch's pass
    batches = list(BatchSampler(sampler, batch_size=8, drop_last=False))
    assert sorted(i for b in batches for i in b) == list(range(50))
    # In this process (the pass has begun) and in the copy (made before it): the same answer.
    for reader in (ahead, copy):
        assert reader.next_batches(batches[0]) == batches[1:3]
        assert reader.next_batches(batches[4]) == batches[5:7]
        assert reader.next_batches(batches[5]) == batches[6:7]  # fewer at the end
        assert reader.next_batches(sorted(batches[2])) is None  # not a batch of the order
    assert ahead.to_hint(batches[0]) == [i for b in batches[:3] for i in b]
    assert ahead.to_hint(batches[1]) == batches[3]  # the rest were named already
    second = list(BatchSampler(sampler, batch_size=8, drop_last=False))
    assert second != batches  # a new epoch, a new order, hinted again
    assert ahead.to_hint(second[0]) == [i for b in second[:3] for i in b]
