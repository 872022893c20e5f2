"""What every layer uses and that knows no model: errors, logging, printed hints, whole-file writes,
folder locks, torchrun, and what a top-1 means (accuracy)."""
