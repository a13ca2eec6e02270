"""htmp inside training frameworks: `integrations.transformers.HTMPCallback` for Hugging Face's
Trainer and `integrations.lightning.HTMPCallback` for Lightning watch the spectra; their
`BalanceCallback`s, and `integrations.balance.SpectralBalancer` in a plain loop, apply TempBalance
and AlphaDecay. Each framework module imports its framework (an optional extra); this package
imports neither."""
