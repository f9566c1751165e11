"""The read path, one way: handle → stream → blocks → cache | fetcher → backend.

- :mod:`~warpdrive.read.reader`: the ``WarpDrive`` read facade and ``Handle`` (position, close →
  observers such as governance's access records);
- :mod:`~warpdrive.read.stream`: one handle's reading of one object version (readahead state,
  the reader, hits/fetches, direct reads of a whole cache file);
- :mod:`~warpdrive.read.blocks`: the block source, cache-or-fetch with verification;
- :mod:`~warpdrive.read.fetch`: backend requests (singleflight per block, priorities, retries);
- :mod:`~warpdrive.read.prefetch` and :mod:`~warpdrive.read.readthrough`: readahead, hints and
  directory scans;
- :mod:`~warpdrive.read.namespace`: paths → (backend, key), object metadata and listings.

Admin operations (index, usage, quotas, teams, evict) are :mod:`warpdrive.admin`'s; the mount's
file system is :mod:`warpdrive.fs`. See docs/read-path.md.
"""
