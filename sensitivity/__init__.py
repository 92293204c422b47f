"""Hyperparameter sensitivity studies of learning-rate rules."""

__version__ = "0.1.0"
