"""graphc's native kernels: ``cpu/`` (C++ onnxruntime custom-op library) and ``triton/``.

No kernel has landed yet; the package exists so the install layout (``graphc.kernels``) is
fixed from the start.
"""
