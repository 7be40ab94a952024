"""graphc: an ONNX graph-level compression compiler (prune, quantize, distill on the graph)."""

__version__ = "0.1.0"
