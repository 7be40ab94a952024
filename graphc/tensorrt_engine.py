"""The thin adapter that turns ``graphc.tensorrt_plan``'s builder configuration into a TensorRT
engine file, with the ``tensorrt`` module (or ``tensorrt_rtx``, which has the same builder API)
where one imports. Nothing here runs without one: PyPI's packages of both are source stubs that
download from NVIDIA's index, so the tests drive this adapter with a stand-in module.

Rules:

1. The network is strongly typed (``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` where the
   module has it): with explicit Q/DQ quantization TensorRT takes each layer's precision from
   the graph, and precision flags "are not required and should not be specified" (TensorRT's
   explicit-quantization guide). A FP32 model builds as FP32.
2. ONNX is parsed from the file (external weights beside it are read); a parser error refuses the
   build with TensorRT's first message.
3. The workspace limit, ``SPARSE_WEIGHTS`` (when asked) and one optimization profile per entry of
   the plan's ``profiles`` (min / opt / max per dynamic input) go into the builder config.
4. A build that returns no engine is refused; the engine is written atomically
   (``graphc.model_io.write_bytes_atomically``).
"""

from __future__ import annotations

import os
import pathlib

from graphc.errors import GraphcError
from graphc.model_io import write_bytes_atomically


def builder_module():
    """``tensorrt``, else ``tensorrt_rtx``, else None."""
    import importlib

    for name in ("tensorrt", "tensorrt_rtx"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


def build(trt, onnx_path: str | os.PathLike, config: dict, engine_path: str | os.PathLike) -> pathlib.Path:
    """Rules 1-4: write the engine of ``onnx_path`` built with ``config`` to ``engine_path``."""
    onnx_path, engine_path = pathlib.Path(onnx_path), pathlib.Path(engine_path)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is not None:
        flags |= 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise GraphcError(f"TensorRT's ONNX parser refused {onnx_path.name}: {errors[0] if errors else 'no reason given'}")
    builder_config = builder.create_builder_config()
    builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(config["workspace_bytes"]))
    if config.get("sparse_weights"):
        builder_config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    for entry in config.get("profiles", []):
        profile = builder.create_optimization_profile()
        for name, dims in entry.items():
            profile.set_shape(name, dims["min"], dims["opt"], dims["max"])
        builder_config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, builder_config)
    if serialized is None:
        raise GraphcError(f"TensorRT built no engine for {onnx_path.name} (its log above says why)")
    write_bytes_atomically(engine_path, bytes(serialized))
    return engine_path


def run_engine(trt, engine_path: str | os.PathLike, feeds: dict) -> dict:
    """Deserialize ``engine_path`` and run it once on a CUDA GPU: ``{output name: numpy array}``.
    Inputs and outputs live in torch CUDA tensors (TensorRT's ``execute_async_v3`` on a torch
    stream); the GPU check and the ``gpu`` tests use it."""
    import numpy as np
    import torch

    logger = trt.Logger(trt.Logger.WARNING)
    engine = trt.Runtime(logger).deserialize_cuda_engine(pathlib.Path(engine_path).read_bytes())
    if engine is None:
        raise GraphcError(f"TensorRT could not deserialize {pathlib.Path(engine_path).name}")
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    keep = {}
    for name in inputs:
        tensor = torch.from_numpy(np.ascontiguousarray(feeds[name])).cuda()
        keep[name] = tensor
        context.set_input_shape(name, tuple(tensor.shape))
        context.set_tensor_address(name, tensor.data_ptr())
    outputs = {}
    for name in names:
        if name in inputs:
            continue
        dtype = torch.from_numpy(np.zeros(0, trt.nptype(engine.get_tensor_dtype(name)))).dtype
        outputs[name] = torch.empty(tuple(context.get_tensor_shape(name)), dtype=dtype, device="cuda")
        context.set_tensor_address(name, outputs[name].data_ptr())
    stream = torch.cuda.Stream()
    if not context.execute_async_v3(stream.cuda_stream):
        raise GraphcError(f"TensorRT failed to run {pathlib.Path(engine_path).name}")
    stream.synchronize()
    return {name: tensor.cpu().numpy() for name, tensor in outputs.items()}
