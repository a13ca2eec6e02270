"""Reporters: views of an Report. They know nothing of the mathematics."""
