"""XT core: config, metrics, checkpoint I/O and the model-agnostic training engine."""
