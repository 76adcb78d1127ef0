"""lmforge: train your own language models, end to end, on your own data."""

__version__ = "0.1.0"
