"""Fine-tuning: config, what trains (LoRA or full), the loop, checkpoints, export."""
