"""graphc: an ONNX graph-level compression compiler (prune, quantize, distill on the graph)."""

from graphc import checkout_imports as _checkout_imports

__version__ = "0.1.0"

_checkout_imports.install()
