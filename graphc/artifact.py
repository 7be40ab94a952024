"""``graphc build MODEL --target ort|tensorrt -o DIR`` and ``graphc build --check DIR``: a directory
an app loads without graphc.

Rules:

1. DIR holds ``model.onnx`` (with its external data file, if any), ``model.ort`` (onnxruntime's
   own format, basic optimizations only so it stays portable across CPUs) where onnxruntime
   converts it and the converted file loads, graphc's kernel library when the model imports
   ``ai.graphc`` (``libgraphc_kernels.so``), and ``manifest.json``.
2. The manifest (``FORMAT``, ``FORMAT_VERSION``): the target; the files (each one's sha256 and
   size); inputs and outputs (names, dtypes, shapes with symbolic dims named); the precision
   (fp32, int8, or int8 with graphc's sparse ops); the passes and options that produced it and
   their report (``--report``, graphc optimize's JSON); the CPU it was built on and what its
   int8 weights need (8-bit weights saturate where u8 x s8 adds in int16: AVX2 without VNNI,
   and a loader on such a CPU warns); graphc's, onnx's and onnxruntime's versions.
3. Written atomically: everything goes to a temporary folder beside DIR, which is renamed into
   place; an existing DIR is refused unless ``--force`` (then the old one is replaced only once
   the new one is complete). Nothing is left behind on failure.
4. ``--target tensorrt``: the same folder without ``model.ort``, the plan of
   ``graphc.tensorrt_plan`` (TensorRT's rules checked, each violation naming its node; the builder
   configuration as data) in the manifest's ``tensorrt`` section, and the engine where a
   TensorRT builder imports (the manifest says why not elsewhere).
5. ``--check DIR``: the manifest parses and is of a known version; every listed file exists with
   its size and sha256, and no other file is there; the model opens (with the artifact's own
   library where one is named) and runs once on synthetic inputs. Each failure is one line.

hashlib, json and onnxruntime do the work; this module only lays out the folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from graphc import __version__
from graphc.errors import GraphcError, first_line

FORMAT = "graphc-artifact"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MODEL = "model.onnx"
ORT_MODEL = "model.ort"
ENGINE = "model.plan"
LIBRARY = "libgraphc_kernels.so"


@dataclass(frozen=True)
class Built:
    directory: pathlib.Path
    manifest: dict


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _dims(value: onnx.ValueInfoProto) -> list[int | str | None]:
    shape = value.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in shape.dim]


def _io(values) -> list[dict]:
    return [{"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
             "shape": _dims(v)} for v in values]


def _precision(model: onnx.ModelProto) -> str:
    from graphc.kernels import DOMAIN
    from graphc.ops import QUANTIZED_OPS

    ops = {(n.domain, n.op_type) for n in model.graph.node}
    if any(domain == DOMAIN for domain, _ in ops):
        return "int8 (graphc sparse ops)"
    return "int8" if any(op in QUANTIZED_OPS for _, op in ops) else "fp32"


def _int8_weight_bits(model: onnx.ModelProto) -> int | None:
    """8 when an int8 initializer that onnxruntime's kernels read holds a value outside -64..63
    (7-bit weights never do), 7 when such initializers exist and all fit 7 bits, None without
    them. graphc's sparse ops (``ai.graphc``) never saturate and are not counted."""
    from graphc.kernels import DOMAIN

    read = {name for node in model.graph.node if node.domain != DOMAIN for name in node.input}
    widest = None
    for tensor in model.graph.initializer:
        if tensor.data_type == onnx.TensorProto.INT8 and not tensor.data_location and tensor.name in read:
            values = onnx.numpy_helper.to_array(tensor)
            if values.size:
                bits = 8 if int(np.abs(values.astype(np.int16)).max()) > 64 else 7
                widest = max(widest or 0, bits)
    return widest


def _cpu_section(model: onnx.ModelProto) -> dict:
    from graphc.cpu_features import cpu_features, cpu_name

    features = cpu_features()
    bits = _int8_weight_bits(model)
    return {"built_on": cpu_name(), "features": features.describe(), "int8_weight_bits": bits,
            "saturates_without_vnni": bits == 8,
            "note": ("8-bit int8 weights: on a CPU with AVX2 and no VNNI, onnxruntime's u8 x s8 kernels add "
                     "products in a saturating int16; rebuild with int8:weight_bits=7 for such CPUs")
            if bits == 8 else None}


def _report_section(report: str | os.PathLike | None) -> dict | None:
    if report is None:
        return None
    try:
        data = json.loads(pathlib.Path(report).read_text())
    except (OSError, ValueError) as exc:
        raise GraphcError(f"--report {report}: cannot read graphc optimize's JSON report: {first_line(exc)}") from None
    passes = data.get("passes") if isinstance(data, dict) else None
    if not isinstance(passes, list):
        raise GraphcError(f"--report {report}: not a graphc optimize report (no 'passes' list)")
    return {"passes": [p.get("spec") for p in passes if isinstance(p, dict)], "report": data}


def _session(model_path: pathlib.Path, library: pathlib.Path | None, optimized_to: pathlib.Path | None = None):
    options = ort.SessionOptions()
    options.log_severity_level = 4
    if library is not None:
        options.register_custom_ops_library(str(library))
    if optimized_to is not None:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(optimized_to)
        options.add_session_config_entry("session.save_model_format", "ORT")
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def _run_once(session, model: onnx.ModelProto) -> None:
    from graphc.data import synthetic_dataset

    feeds = synthetic_dataset(model, batches=1).inputs
    session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})


def build(model_path: str | os.PathLike, out: str | os.PathLike, report: str | os.PathLike | None = None,
          force: bool = False, target: str = "ort", shapes=None, sparse_weights: bool = False,
          workspace_mb: int = 1024) -> Built:
    """Rules 1-3 (``target`` ort), and for ``tensorrt`` the plan of ``graphc.tensorrt_plan`` in
    the manifest's ``tensorrt`` section (no .ort file: TensorRT reads the ONNX model)."""
    from graphc import kernels
    from graphc.model_io import external_data_files, load_model, save_model

    out = pathlib.Path(out)
    if out.exists() and not force:
        raise GraphcError(f"-o {out}: already exists; give --force to replace it")
    if out.exists() and not out.is_dir():
        raise GraphcError(f"-o {out}: is a file, not an artifact directory")
    model = load_model(model_path)
    produced_by = _report_section(report)
    tensorrt = None
    if target == "tensorrt":
        from graphc import tensorrt_plan

        tensorrt = {"builder": tensorrt_plan.plan(model, shapes, sparse_weights, workspace_mb)}
    library_source = None
    if kernels.uses_graphc_ops(model):
        try:
            library_source = kernels.library_path()
        except kernels.KernelLibraryError as exc:
            raise GraphcError(str(exc)) from None
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=parent))
    except OSError as exc:
        raise GraphcError(f"-o {out}: cannot write there: {first_line(exc)}") from None
    try:
        save_model(model, staging / MODEL)
        library = None
        if library_source is not None:
            library = staging / LIBRARY
            shutil.copy2(library_source, library)
        try:
            _run_once(_session(staging / MODEL, library), model)
        except Exception as exc:  # onnxruntime's own exception types, or bad synthetic inputs
            raise GraphcError(f"{model_path}: onnxruntime cannot run it for --target ort: {first_line(exc)}") from None
        ort_note = None
        if tensorrt is not None:
            from graphc import tensorrt_plan

            ort_note = "no .ort file: target tensorrt"
            tensorrt["engine_note"] = tensorrt_plan.build_engine(staging / MODEL, tensorrt["builder"],
                                                                 staging / ENGINE)
            tensorrt["engine"] = ENGINE if (staging / ENGINE).exists() else None
        else:
            try:
                _session(staging / MODEL, library, optimized_to=staging / ORT_MODEL)
                _run_once(_session(staging / ORT_MODEL, library), model)
            except Exception as exc:
                (staging / ORT_MODEL).unlink(missing_ok=True)
                ort_note = f"no .ort file: {first_line(exc)}"
        files = sorted(p for p in staging.iterdir() if p.is_file())
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "target": target,
            "model": MODEL, "ort_model": ORT_MODEL if (staging / ORT_MODEL).exists() else None, "ort_note": ort_note,
            "custom_op_library": LIBRARY if library is not None else None,
            "external_data": [p.name for p in external_data_files(staging / MODEL)],
            "inputs": _io([i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]),
            "outputs": _io(model.graph.output),
            "precision": _precision(model),
            "produced_by": produced_by,
            "cpu": _cpu_section(model),
            "tensorrt": tensorrt,
            "versions": {"graphc": __version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__},
            "files": {p.name: {"sha256": _sha256(p), "bytes": p.stat().st_size} for p in files},
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        os.chmod(staging, 0o755)  # mkdtemp made it private; an artifact is for other users and apps too
        if out.exists():  # --force: the old artifact goes only now that the new one is complete
            old = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=parent))
            os.replace(out, old / out.name)
            os.replace(staging, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, out)
    except OSError as exc:
        raise GraphcError(f"-o {out}: cannot write the artifact: {first_line(exc)}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Built(out, manifest)


def check(directory: str | os.PathLike) -> dict:
    """Rule 5; the manifest, with ``warnings`` (e.g. this CPU saturates the model's weights)."""
    from graphc.cpu_features import cpu_features

    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise GraphcError(f"{directory}: not an artifact directory")
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except OSError:
        raise GraphcError(f"{directory}: no {MANIFEST}") from None
    except ValueError as exc:
        raise GraphcError(f"{directory}/{MANIFEST}: not valid JSON: {first_line(exc)}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise GraphcError(f"{directory}/{MANIFEST}: not a graphc artifact manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise GraphcError(f"{directory}/{MANIFEST}: format version {manifest.get('format_version')!r}; this graphc "
                          f"reads version {FORMAT_VERSION}")
    files = manifest.get("files")
    if not isinstance(files, dict) or manifest.get("model") not in files:
        raise GraphcError(f"{directory}/{MANIFEST}: its file list does not name the model")
    for name, entry in files.items():
        path = directory / name
        if pathlib.PurePath(name).name != name:
            raise GraphcError(f"{directory}/{MANIFEST}: file name {name!r} is not a plain name in the artifact")
        if not path.is_file():
            raise GraphcError(f"{directory}: {name} is missing")
        if not isinstance(entry, dict) or path.stat().st_size != entry.get("bytes") or _sha256(path) != entry.get("sha256"):
            raise GraphcError(f"{directory}: {name} does not match its sha256 and size in {MANIFEST}")
    extra = sorted(p.name for p in directory.iterdir() if p.name not in files and p.name != MANIFEST)
    if extra:
        raise GraphcError(f"{directory}: {', '.join(extra)} not listed in {MANIFEST}")
    library_name = manifest.get("custom_op_library")
    if library_name is not None and library_name not in files:
        raise GraphcError(f"{directory}/{MANIFEST}: names the library {library_name} but does not list it")
    library = directory / library_name if library_name else None
    model_path = directory / manifest["model"]
    try:
        model = onnx.load(str(model_path))
        _run_once(_session(model_path, library), model)
        if manifest.get("ort_model"):
            _run_once(_session(directory / manifest["ort_model"], library), model)
    except Exception as exc:
        raise GraphcError(f"{directory}: the model does not run: {first_line(exc)}") from None
    warnings = []
    cpu = manifest.get("cpu") or {}
    if cpu.get("saturates_without_vnni") and cpu_features().u8s8_saturates:
        warnings.append(f"this CPU ({cpu_features().describe()}) adds u8 x s8 products in a saturating int16: "
                        f"the model's 8-bit weights can give wrong sums here; {cpu.get('note') or ''}".strip())
    return dict(manifest, warnings=warnings)
