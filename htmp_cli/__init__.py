"""htmp: heavy-tail and random-matrix diagnostics for trained model weights."""

__version__ = "0.1.0"
