"""The training run: the loop, one step, optimisers, schedules, resume, health, display."""
