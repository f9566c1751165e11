"""Shard lists: brace patterns, globs, lists and several roots, as paths WarpDrive reads.

``"warpdrive://datasets-cac/train/shard-{000000..000199}.tar"`` (backend ``datasets-cac``,
wherever it is mounted), ``"/wd/datasets-wus3/train/shard-*.tar"`` (a path under the mount point,
read in-process all the same) and ``["/datasets-cac/a.tar", "/datasets-cac/b.tar"]`` (mount
paths) all name shards. Braces expand as in webdataset (``braceexpand``; ``::`` separates
patterns); glob characters (``*``, ``?``, ``[…]``) in any path component are matched against
listings, sorted by name (in a URL's backend name, against the backends' names). Each shard keeps
the URL it was given as (``__url__`` of its samples) and the mount-relative path it is read at.
"""

from __future__ import annotations

import contextlib
import fnmatch
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from braceexpand import UnbalancedBracesError, braceexpand

from warpdrive.errors import NotFoundError
from warpdrive.read.reader import WarpDrive

URL_SCHEME = "warpdrive://"
_GLOB = re.compile(r"[*?\[]")


@dataclass(frozen=True, slots=True)
class Shard:
    url: str  # as the user wrote it, expanded: what samples carry as __url__
    path: str  # mount-relative, what WarpDrive reads


def expand_braces(pattern: str) -> list[str]:
    """Every string ``pattern`` names, as webdataset expands it: ``::`` separates patterns, and
    braces expand left to right with ``braceexpand`` (bash's rules: ``{a,b}``, ``{0..9}``,
    ``{000..120..10}``, ``{a..e}``, nesting, ``\\{`` for a literal brace). One expansion for
    both, so a URL names the same shards in ``webdataset.WebDataset`` and ``ShardDataset``."""
    try:
        return [url for part in pattern.split("::") for url in braceexpand(part)]
    except UnbalancedBracesError:
        raise ValueError(f"{pattern!r}: unbalanced braces") from None


def expand(wd: WarpDrive, urls: str | Iterable[str]) -> list[Shard]:
    """The shards ``urls`` name, in order. A glob that matches nothing is an error naming it;
    a shard that does not exist is found when it is read (and names itself then)."""
    patterns = [urls] if isinstance(urls, str) else list(urls)
    if not patterns:
        raise ValueError("no shards: the list of URLs is empty")
    shards: list[Shard] = []
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise TypeError(f"shard URLs must be strings, got {type(pattern).__name__}")
        for url in expand_braces(pattern):
            if _GLOB.search(url.removeprefix(URL_SCHEME)):
                matched = list(_glob(wd, url))
                if not matched:
                    raise NotFoundError(f"{url}: no shard matches")
                shards.extend(matched)
            else:
                shards.append(Shard(url, wd.locate(url)[2]))
    return shards


def _glob(wd: WarpDrive, url: str) -> Iterator[Shard]:
    """Objects matching the glob ``url``, component by component, sorted by name; each keeps
    the spelling of ``url`` before its first glob component."""
    if url.startswith(URL_SCHEME):
        name, _, rest = url[len(URL_SCHEME) :].partition("/")
        if _GLOB.search(name):  # a glob over backends: their names, sorted
            for backend in sorted(b.name for b in wd.config.backends):
                if not fnmatch.fnmatchcase(backend, name):
                    continue
                concrete = f"{URL_SCHEME}{backend}/{rest}"
                if _GLOB.search(rest):
                    yield from _glob(wd, concrete)
                    continue
                with contextlib.suppress(NotFoundError):
                    info = wd.stat(concrete)
                    if not info.is_dir:
                        yield Shard(concrete, info.path)
            return
    parts = url.split("/")
    first = next(i for i, p in enumerate(parts) if _GLOB.search(p))
    head = "/".join(parts[:first])
    base = wd.normalize(head + "/")
    for path in _walk(wd, base, [p for p in parts[first:] if p]):
        yield Shard(head + path[len(base.rstrip("/")) :], path)


def _walk(wd: WarpDrive, base: str, rest: list[str]) -> Iterator[str]:
    component, remaining = rest[0], rest[1:]
    if not _GLOB.search(component):
        path = f"{base.rstrip('/')}/{component}"
        if remaining:
            yield from _walk(wd, path, remaining)
        else:
            with contextlib.suppress(NotFoundError):
                if not wd.stat(path).is_dir:
                    yield path
        return
    try:
        entries = wd.listdir(base)
    except NotFoundError:
        return
    for entry in entries:
        if not fnmatch.fnmatchcase(entry.name, component):
            continue
        if remaining and entry.is_dir:
            yield from _walk(wd, entry.path, remaining)
        elif not remaining and not entry.is_dir:
            yield entry.path
