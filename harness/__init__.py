"""Reproducible benchmark harness for RL post-training of code models (rise-and-collapse)."""

__version__ = "0.1.0"
