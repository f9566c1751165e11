"""PyTorch datasets over the WarpDrive cache — tracked in issue #5."""
