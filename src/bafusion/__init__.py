"""bafusion: boundary-aware multi-focus image fusion with deep networks."""

__version__ = "0.1.0"
