"""fusion: multimodal fusion models (early, late, progressive), alignment, sync and compressed DDP."""
