"""htmp inside training frameworks: `integrations.transformers.HTMPCallback` for Hugging Face's
Trainer and `integrations.lightning.HTMPCallback` for Lightning. Each module imports its framework
(an optional extra); this package imports neither."""
