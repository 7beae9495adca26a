"""Training: data preparation, reference sampling, losses, UNet and SyncNet trainers (docs/training.md)."""
