"""vft: VideoFlexTok (arXiv 2604.12887) in JAX/Flax."""

__version__ = "0.1.0"
