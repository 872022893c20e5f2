"""Running a training: a run's parts built from its config, the one training step, checkpoints,
the teacher-output store, the run's log and plots, and `train(cfg)`."""
