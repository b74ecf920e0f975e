"""The portable scoring path uses only ops that ggml-metal accepts (issue 18; docs/gpu.md).

No Mac runs here, so this reads the sources: every ggml function that native/src/rcedge-graph.cpp
calls must be known below, and each op it creates must have a case in
ggml_metal_device_supports_op of the pinned llama.cpp (read from the sdist that native/build.py
fetched). Which types and layouts each case accepts is not checked here: docs/gpu.md lists the
ones the graph uses, read by hand.
"""

from __future__ import annotations

import importlib.util
import re
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("native_build", REPO / "native" / "build.py")
build = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build)

# ggml function -> the supports_op cases the node it makes needs (empty: no node of its own to run
# or not an op at all: views, reshapes, graph and tensor helpers)
OPS: dict[str, tuple[str, ...]] = {
    "ggml_add": ("GGML_OP_ADD",),
    "ggml_mul": ("GGML_OP_MUL",),
    "ggml_sqr": ("GGML_OP_SQR",),
    "ggml_scale": ("GGML_OP_SCALE",),
    "ggml_scale_bias": ("GGML_OP_SCALE",),
    "ggml_exp": ("GGML_OP_UNARY", "GGML_UNARY_OP_EXP"),
    "ggml_relu": ("GGML_OP_UNARY", "GGML_UNARY_OP_RELU"),
    "ggml_tanh": ("GGML_OP_UNARY", "GGML_UNARY_OP_TANH"),
    "ggml_arange": ("GGML_OP_ARANGE",),
    "ggml_cast": ("GGML_OP_CPY",),
    "ggml_cpy": ("GGML_OP_CPY",),
    "ggml_cont": ("GGML_OP_CONT",),
    "ggml_concat": ("GGML_OP_CONCAT",),
    "ggml_repeat_4d": ("GGML_OP_REPEAT",),
    "ggml_sum_rows": ("GGML_OP_SUM_ROWS",),
    "ggml_pool_2d": ("GGML_OP_POOL_2D",),
    "ggml_set_rows": ("GGML_OP_SET_ROWS",),
    "ggml_set_inplace": ("GGML_OP_SET",),
    "ggml_mul_mat": ("GGML_OP_MUL_MAT",),
    "ggml_soft_max_ext": ("GGML_OP_SOFT_MAX",),
    "ggml_transpose": ("GGML_OP_TRANSPOSE",),
    "ggml_view_3d": ("GGML_OP_VIEW",),
    "ggml_view_4d": ("GGML_OP_VIEW",),
    "ggml_reshape_2d": ("GGML_OP_RESHAPE",),
    "ggml_reshape_3d": ("GGML_OP_RESHAPE",),
    "ggml_reshape_4d": ("GGML_OP_RESHAPE",),
    "ggml_soft_max_add_sinks": (),
    "ggml_prec_set_acc": (),
    "ggml_set_name": (),
    "ggml_new_tensor_4d": (),
    "ggml_build_forward_expand": (),
    "ggml_are_same_shape": (),
    "ggml_is_contiguous": (),
}

# Calls made only where the statistics live in CUDA memory (rc.device_fused: a soft_max that carries
# them, for ggml-cuda's kernels of patch 0008); a Metal context never takes that branch.
DEVICE_FUSED_ONLY = {"ggml_attn_set_scores", "ggml_attn_set_scores_rows"}


def _graph_calls() -> set[str]:
    text = (REPO / "native" / "src" / "rcedge-graph.cpp").read_text()
    return set(re.findall(r"\b(ggml_[a-z0-9_]+)\s*\(", text))


def _supports_op_source() -> str:
    sdist = build.cache_root() / "sdist" / build.SDIST_NAME
    if not sdist.exists():
        pytest.skip(f"{sdist} is missing: native/build.py fetches it")
    with tarfile.open(sdist) as tar:
        member = tar.extractfile(build.VENDOR_PREFIX + "ggml/src/ggml-metal/ggml-metal-device.m")
        assert member is not None
        text = member.read().decode()
    start = text.index("bool ggml_metal_device_supports_op(")
    end = text.index("\n}\n", start)
    return text[start:end]


def test_every_ggml_call_of_the_portable_graph_is_known():
    unknown = _graph_calls() - set(OPS) - DEVICE_FUSED_ONLY
    assert not unknown, f"add these to OPS (and check ggml-metal accepts them): {sorted(unknown)}"


def test_device_fused_scores_are_for_cuda_buffers_only():
    # the graph attaches scores to a soft_max only on the device-fused branch, which the library
    # chooses only for device memory of ggml-cuda (rcedge_device_fused_ok in rcedge-api.cpp)
    graph = (REPO / "native" / "src" / "rcedge-graph.cpp").read_text()
    fused = graph[graph.index("static void rcedge_fused("):]
    fused = fused[:fused.index("\n}\n")]
    outside = graph.replace(fused, "")
    assert not any(f"{name}(" in outside for name in DEVICE_FUSED_ONLY)
    api = (REPO / "native" / "src" / "rcedge-api.cpp").read_text()
    ok = api[api.index("static bool rcedge_device_fused_ok("):]
    ok = ok[:ok.index("\n}\n")]
    assert '"CUDA"' in ok and "!ggml_backend_buft_is_host(buft)" in ok


def test_metal_has_a_case_for_every_op_the_portable_graph_makes():
    body = _supports_op_source()
    needed = {case for name in _graph_calls() for case in OPS.get(name, ())}
    missing = sorted(c for c in needed if not re.search(rf"case {c}\s*:", body))
    assert not missing, f"ggml_metal_device_supports_op has no case for {missing}"
