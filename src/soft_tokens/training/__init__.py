"""Training: the LightningModule and its RL step (optimiser, optimizer step, step metrics), built from the config."""
