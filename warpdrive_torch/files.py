"""FileDataset: one-file-per-sample layouts (``train/cat/0001.jpg``) as a map-style Dataset.

The files are listed once, when the dataset is made, and grouped into samples the WebDataset
way: ``0001.jpg`` and ``0001.json`` in one directory are fields of sample ``…/0001``. With
``labels=True`` the name of each sample's parent directory is its class; ``cls`` holds the
index of that name in the sorted ``classes``. Items are read through the cache at random;
a batch (``__getitems__``, which DataLoader uses) hints all its files first, so they are fetched
in parallel rather than one after another. With the dataset's own sampler
(``DataLoader(ds, sampler=ds.sampler(), …)``) each worker also hints the next ``hint_batches``
batches dealt to it, so they are fetched while it reads this one (see
:mod:`warpdrive_torch.ahead`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

from torch.utils.data import Dataset

from warpdrive import Config, FileInfo, WarpDrive
from warpdrive.errors import NotFoundError
from warpdrive.shards import expand
from warpdrive_torch.ahead import Ahead, OrderSampler
from warpdrive_torch.dataset import split_name
from warpdrive_torch.decode import DecodeSpec, Sample, make_decoder


class FileDataset(Dataset[Sample]):
    """``roots``: directories (walked recursively), brace patterns or globs of files, as
    ``warpdrive://`` URLs or mount paths. ``extensions``: keep only these fields (e.g.
    ``{"jpg", "cls"}``); samples left without any are dropped. ``decode`` as in ShardDataset.
    ``hint_batches``: how many of a worker's next batches it hints (with :meth:`sampler`)."""

    def __init__(
        self,
        roots: str | Iterable[str],
        *,
        wd: WarpDrive | Config | str | os.PathLike[str] | None = None,
        extensions: Iterable[str] | None = None,
        decode: DecodeSpec = None,
        labels: bool = False,
        hint_batches: int = 2,
    ) -> None:
        self.wd = wd if isinstance(wd, WarpDrive) else WarpDrive(wd)
        self.decoder = make_decoder(decode)
        keep = None if extensions is None else {e.lower().lstrip(".") for e in extensions}
        groups: dict[str, dict[str, str]] = {}
        # What the listings said of each file (size, etag), and when: a worker process reads
        # with it instead of asking the backend about each file first.
        self._listed_at = time.time()
        self._infos: dict[str, FileInfo] = {}
        for entry in expand(self.wd, roots):
            for info in self.wd.walk(entry.path):
                key, ext = split_name(info.path)
                if key is None or (keep is not None and ext not in keep):
                    continue
                fields = groups.setdefault(key, {})
                if ext in fields:
                    raise ValueError(f"{info.path}: two files give sample {key!r} field {ext!r}")
                fields[ext] = info.path
                self._infos[info.path] = info
        if not groups:
            raise NotFoundError(f"{roots!r}: no files found")
        self.keys = sorted(groups)
        self._fields = [groups[k] for k in self.keys]
        self.classes = sorted({_parent(k) for k in self.keys}) if labels else []
        self._class_index = {name: i for i, name in enumerate(self.classes)}
        self.hint_batches = hint_batches
        self._ahead: Ahead | None = None

    def sampler(self, *, shuffle: bool = True, seed: int = 0) -> OrderSampler:
        """A sampler for this dataset's DataLoader whose order its workers know: each worker
        then hints the batches it reads next, not only the one it reads now."""
        sampler = OrderSampler(len(self), shuffle=shuffle, seed=seed)
        self._ahead = Ahead(sampler, self.hint_batches)
        return sampler

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> Sample:
        self.wd.remember((self._infos[p] for p in self._fields[index].values()), self._listed_at)
        return self._sample(index)

    def _sample(self, index: int) -> Sample:
        sample: Sample = {"__key__": self.keys[index]}
        for ext, path in self._fields[index].items():
            sample[ext] = self.wd.read(path)
        if self.classes:
            sample["cls"] = self._class_index[_parent(self.keys[index])]
        return self.decoder(sample) if self.decoder is not None else sample

    def __getitems__(self, indices: list[int]) -> list[Sample]:
        # This batch (unless hinted before), then the next ones of this worker, in that order.
        todo = indices if self._ahead is None else self._ahead.to_hint(indices)
        paths = [p for i in todo for p in self._fields[i].values()]
        self.wd.remember((self._infos[p] for p in paths), self._listed_at)
        self.wd.prefetch(paths)
        return [self._sample(i) for i in indices]  # remembered when hinted, here or before

    def paths(self, index: int) -> dict[str, str]:
        """The file behind each field of sample ``index``."""
        return dict(self._fields[index])


def _parent(key: str) -> str:
    return key.rsplit("/", 2)[-2] if key.count("/") >= 2 else ""
