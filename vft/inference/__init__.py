"""Inference drivers: chunked tokenization / decoding of long videos."""
from vft.inference.chunked import ChunkDraws, ChunkedTokenizer, ChunkSpec, DecodedChunk

__all__ = ["ChunkDraws", "ChunkedTokenizer", "ChunkSpec", "DecodedChunk"]
