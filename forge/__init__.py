"""forge: the training benchmark (cold vs warm epochs) — tracked in issue #6."""
