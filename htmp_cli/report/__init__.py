"""Reporters: views of an AnalysisReport. They know nothing of the mathematics."""
