"""Data: the prompt sources (arithmetic, MNNS, hub and local files), prompts and the datamodule."""
