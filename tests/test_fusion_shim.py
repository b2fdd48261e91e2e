"""lib_ort.fusion_shim: ORT's UNet attention fusion gets a scalar head count under numpy >= 2.4.

Under numpy >= 2.4 (the GPU machine's 2.5.2; ``make gpu-rehearsal`` runs this file there) the tests also
show the crash without the shim, so a shim that stops working, or an ORT that changes the pattern, fails
here. Under numpy < 2.4 (.venv) they show the shim changes nothing ORT computed."""

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from lib_ort import fusion_shim

NUMPY_REFUSES = tuple(int(p) for p in np.__version__.split(".")[:2]) >= (2, 4)


def _reshape_after_concat(heads: int):
    """Q's reshape as torch 2's SDPA export leaves it: shape = Concat(b, s, [heads], [head_size])."""
    inits = [numpy_helper.from_array(np.array([v], dtype=np.int64), n)
             for n, v in (("b", 0), ("s", 0), ("h", heads), ("d", 64))]
    nodes = [helper.make_node("Concat", ["b", "s", "h", "d"], ["shape"], axis=0, name="concat"),
             helper.make_node("Reshape", ["q", "shape"], ["q4"], name="reshape_q")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("q", onnx.TensorProto.FLOAT, [1, 77, 320])],
                              [helper.make_tensor_value_info("q4", onnx.TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph)


def _get_num_heads(heads: int) -> int:
    from onnxruntime.transformers.fusion_attention_unet import FusionAttentionUnet
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(_reshape_after_concat(heads))
    fusion = FusionAttentionUnet(model, 320, 0, False, False, False)
    reshape = next(n for n in model.model.graph.node if n.op_type == "Reshape")
    return fusion.get_num_heads(reshape, is_torch2=True)


@pytest.fixture
def shim():
    fusion_shim.apply()
    yield
    fusion_shim.apply()  # other tests in this process optimize too


def test_the_head_count_is_the_concat_element_with_the_shim(shim):
    assert _get_num_heads(5) == 5
    assert _get_num_heads(20) == 20
    assert fusion_shim.apply() == []  # idempotent: nothing wrapped twice


def test_without_the_shim(shim):
    fusion_shim.remove()
    if NUMPY_REFUSES:
        with pytest.raises(TypeError):  # the crash the shim exists for
            _get_num_heads(5)
    else:
        assert _get_num_heads(5) == 5  # ORT's own answer: the shim's must match it (test above)


def test_a_tiny_unet_fuses_its_attention_under_this_numpy(export_of, tmp_path, shim):
    """End to end on a real SDPA export: our on-disk pass (which applies the shim) fuses attention."""
    from lib_ort import transformers_pass
    from lib_ort.export import MODEL_FILE, WEIGHTS_FILE
    from lib_ort.graph import op_counts
    from lib_ort.recipes import get_recipe

    (pass_config,) = get_recipe("cpu")["passes"].values()
    out = transformers_pass.run(pass_config, export_of("tiny-sd2") / MODEL_FILE, tmp_path / MODEL_FILE, WEIGHTS_FILE)
    assert op_counts(out).get("MultiHeadAttention", 0) > 0, op_counts(out)
