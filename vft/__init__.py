"""vft: VideoFlexTok (arXiv 2604.12887) in JAX/Flax."""

__version__ = "0.1.0"
__all__ = ["VideoTokenizer"]


def __getattr__(name: str):
  # Lazy: `import vft` (e.g. for configs or the version) does not load jax and PyAV.
  if name == "VideoTokenizer":
    from vft.api import VideoTokenizer
    return VideoTokenizer
  raise AttributeError(f"module 'vft' has no attribute {name!r}")
