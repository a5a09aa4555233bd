"""Synthetic long-range tasks: their mask format, the task generators, the curriculum."""
