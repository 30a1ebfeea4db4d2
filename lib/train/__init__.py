"""Training: the loop, LoRA files, checkpoints, the torchrun worker, the memory plan."""
