"""The control plane: one place for every node's cache, usage, stale data, growth, jobs and
quotas (``warpdrive-ctl serve``). ``db`` stores, ``api`` serves the HTTP API and the dashboard,
``reporter`` runs in each mount and sends heartbeats, access records and job reports."""
