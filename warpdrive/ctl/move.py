"""``warpdrive-ctl move``: copy (or move) objects between backends, streamed and verified.

Each object is read in 8 MiB ranges pinned to its version and written as a stream; then the
copy's size is checked and the copy is read back and its SHA-256 compared with the source's.
Only a verified copy lets ``--delete`` remove the source. Objects go one at a time; a failure
names the object and moves on to the next.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

from warpdrive.admin import Admin
from warpdrive.backends import Backend, RetryingBackend
from warpdrive.backends.base import ObjectMeta
from warpdrive.errors import ConfigError, IsDirectoryError, NotFoundError, WarpDriveError
from warpdrive.governance.crawl import walk

CHUNK = 8 << 20


@dataclass
class Moved:
    src: str
    dst: str
    size: int
    sha256: str
    deleted: bool


def parse(spec: str, admin: Admin, flag: str) -> tuple[RetryingBackend, str]:
    """``BACKEND:PATH`` → (backend, key)."""
    name, sep, key = spec.partition(":")
    if not sep or not name:
        raise ConfigError(flag, f"expected BACKEND:PATH, got {spec!r}")
    backend = admin.backends.get(name)
    if backend is None:
        names = ", ".join(admin.backends) or "none"
        raise ConfigError(flag, f"no backend named {name!r} (configured: {names})")
    assert isinstance(backend, RetryingBackend)
    return backend, key.strip("/")


def chunks(backend: Backend, meta: ObjectMeta, digest: hashlib._Hash | None) -> Iterator[bytes]:
    for start in range(0, meta.size, CHUNK):
        data = backend.read_range(meta.key, start, min(meta.size, start + CHUNK), meta.etag)
        if digest is not None:
            digest.update(data)
        yield data
    if meta.size == 0:
        yield b""


def sources(backend: Backend, key: str, recursive: bool) -> list[ObjectMeta]:
    """The object ``key``, or with ``recursive`` every object below the prefix ``key``."""
    try:
        return [backend.stat(key)]
    except IsDirectoryError:
        if not recursive:
            raise ConfigError("--src", f"{key!r} is a directory: add --recursive") from None
    except NotFoundError:
        if not recursive:
            raise
    prefix = f"{key}/" if key else ""
    metas = [
        ObjectMeta(k, size, etag or "", mtime) for k, size, mtime, etag in walk(backend, prefix)
    ]
    if not metas:
        raise NotFoundError(f"{backend.name}: nothing at {key!r}")
    return metas


def copy_one(src: RetryingBackend, meta: ObjectMeta, dst: RetryingBackend, key: str) -> str:
    """Copy, then verify size and SHA-256 of the copy against the source's; the digest."""
    digest = hashlib.sha256()
    dst.write(key, chunks(src, meta, digest))
    copied = dst.stat(key)
    if copied.size != meta.size:
        raise WarpDriveError(f"{dst.name}:{key}: copy has {copied.size} bytes, source {meta.size}")
    check = hashlib.sha256()
    for _ in chunks(dst, copied, check):
        pass
    if check.hexdigest() != digest.hexdigest():
        raise WarpDriveError(f"{dst.name}:{key}: copy's SHA-256 differs from the source's")
    return digest.hexdigest()


def move(
    admin: Admin, src_spec: str, dst_spec: str, recursive: bool, delete: bool
) -> tuple[list[Moved], dict[str, str]]:
    src, src_key = parse(src_spec, admin, "--src")
    dst, dst_key = parse(dst_spec, admin, "--dst")
    into_dir = dst_spec.endswith(("/", ":"))  # "b:dir/" or "b:": keep the source's name
    done: list[Moved] = []
    failed: dict[str, str] = {}
    for meta in sources(src, src_key, recursive):
        if meta.key == src_key:  # one object
            rel = src_key.rsplit("/", 1)[-1] if into_dir else ""
        else:
            rel = meta.key[len(src_key) :].lstrip("/")
        target = "/".join(p for p in (dst_key, rel) if p)
        label = f"{src.name}:{meta.key}"
        if src is dst and target == meta.key:
            failed[label] = "source and destination are the same object"
            continue
        try:
            sha = copy_one(src, meta, dst, target)
            if delete:
                src.delete(meta.key)
            done.append(Moved(label, f"{dst.name}:{target}", meta.size, sha, delete))
        except WarpDriveError as exc:
            failed[label] = str(exc)
    return done, failed
