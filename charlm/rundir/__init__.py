"""The run directory: file names, the lock, checkpoints, metrics records, info, averaging."""
