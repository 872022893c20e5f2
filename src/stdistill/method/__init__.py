"""Spatial-channel Token Distillation itself: MINE, the distillation losses, teachers and their
input contracts, the `STDTask` (a `timm.task.TrainingTask`), and a student's recorded architecture."""
