"""Training machinery: distributed set-up, optimisers/schedules, checkpoints, the pre-training loop."""
