"""Fits and metrics: pure functions of eigenvalues and shape. No I/O, no printing."""
