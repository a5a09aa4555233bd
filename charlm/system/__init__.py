"""The machine: compute device, CPU threads, process groups, messages on stderr, safe file writes."""
