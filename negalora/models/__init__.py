"""Loading SDXL pipelines: the demo model, diffusers folders and single-file checkpoints."""
