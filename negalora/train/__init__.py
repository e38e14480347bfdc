"""Training the "wrong" LoRA: dataset pre-flight, buckets, caches, the trainer and its checkpoints."""
