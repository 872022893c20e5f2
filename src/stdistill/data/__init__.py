"""The images a run sees: Fashion-MNIST, image folders, images in the model's mode, augmentation,
the deterministic data schedule, and the loaders built from a config."""
