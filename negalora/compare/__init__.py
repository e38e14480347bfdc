"""Fixed-seed comparisons of a LoRA: three-way grids, sweeps, and blind votes."""
