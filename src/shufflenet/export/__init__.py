"""Exports that verify themselves: ONNX, TorchScript, ncnn, LiteRT, ExecuTorch and MNN, plus
int8 for ONNX, LiteRT, ExecuTorch and MNN.

Every export starts from a copy with the BatchNorms folded and the shuffles expressed with
constant indices (:mod:`shufflenet.deploy`), or, for ONNX by default, from the shuffle-free graph
of :mod:`shufflenet.deploy.fastpath`; either way an ONNX graph has no shape-computing subgraph
and its batch axis is dynamic. After writing, the file is run in its own runtime (an ONNX
file in ONNX Runtime and, when installed, in OpenVINO) next to the PyTorch model on the same
inputs (random pixels through the model's preprocessing) and the largest absolute difference of
the outputs is reported; :class:`Verification` says whether it is within tolerance (1e-4 of
the largest output for fp32; non-finite outputs fail).

The files carry the model's metadata (:mod:`.metadata`). :data:`FORMATS` (:mod:`.formats`) maps
each format's name to its exporter, verifier, int8 and the :class:`Runtime` that runs its files
(:mod:`.runtime`), one module each; :func:`export_model` dispatches through it. A file opened in
its runtime is an :class:`OpenedModel`, which verification, ``predict`` and the bench share.
ONNX's int8 (:mod:`.int8`) is ONNX Runtime's post-training static quantization, calibrated on
digits or an image folder (:mod:`.calibration`); :func:`compare_int8` measures what it costs
and :func:`int8_layer_errors` (:mod:`.int8_errors`) where. The edge formats (:mod:`.edge`) have
a fixed batch and quantize with PyTorch 2 export quantization or their runtime's own tool.
Every int8 export takes the same choices (:class:`Int8Options`: calibration method, images,
per-channel weights, layers kept in float; :mod:`.int8_sensitivity` ranks the layers).
"""

from ..runtimes import ort_session
from ..verification import FP32_TOLERANCE, Verification
from .calibration import calibration_data
from .check import verify_opened
from .executorch import export_executorch, open_executorch, verify_executorch
from .formats import FORMATS, RUNTIMES, ExportResult, export_model, output_files
from .int8 import INT8_WEIGHTS, compare_int8, default_int8_weights, export_int8, quantize_int8
from .int8_errors import LayerError, int8_layer_errors
from .int8_options import CALIB_METHODS, Int8Options
from .int8_report import Int8Report, Int8Result
from .litert import export_litert, open_litert, read_tflite_metadata, verify_litert
from .metadata import model_metadata, read_onnx_metadata, sample_inputs
from .mnn import export_mnn, open_mnn, verify_mnn
from .ncnn import export_ncnn, verify_ncnn
from .onnx import DEFAULT_OPSET, OPSETS, export_onnx, onnx_bytes
from .onnx_format import open_onnx, verify_onnx, verify_openvino
from .runtime import OpenedModel, Runtime
from .spec import ExportFormat, ExportOptions
from .torchscript import export_torchscript, verify_torchscript

# The edge formats' names for these, kept for code that uses them.
EdgeModel = OpenedModel
verify_edge = verify_opened

__all__ = [
    "CALIB_METHODS",
    "DEFAULT_OPSET",
    "FORMATS",
    "FP32_TOLERANCE",
    "INT8_WEIGHTS",
    "OPSETS",
    "RUNTIMES",
    "EdgeModel",
    "ExportFormat",
    "ExportOptions",
    "ExportResult",
    "Int8Options",
    "Int8Report",
    "Int8Result",
    "LayerError",
    "OpenedModel",
    "Runtime",
    "Verification",
    "calibration_data",
    "compare_int8",
    "default_int8_weights",
    "export_executorch",
    "export_int8",
    "export_litert",
    "export_mnn",
    "export_model",
    "export_ncnn",
    "export_onnx",
    "export_torchscript",
    "int8_layer_errors",
    "model_metadata",
    "onnx_bytes",
    "open_executorch",
    "open_litert",
    "open_mnn",
    "open_onnx",
    "ort_session",
    "output_files",
    "quantize_int8",
    "read_onnx_metadata",
    "read_tflite_metadata",
    "sample_inputs",
    "verify_edge",
    "verify_executorch",
    "verify_litert",
    "verify_mnn",
    "verify_ncnn",
    "verify_onnx",
    "verify_opened",
    "verify_openvino",
    "verify_torchscript",
]
