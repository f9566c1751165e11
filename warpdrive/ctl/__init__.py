"""warpdrive-ctl: cache operations and data governance, usable while the mount runs."""
