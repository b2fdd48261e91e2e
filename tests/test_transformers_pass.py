"""The recipes' ORT transformers pass run with the weights on disk makes the graph Olive's pass makes:
the same nodes, the same weights byte for byte, for every provider recipe that has the pass."""

import copy

import onnx
import pytest
from onnx import numpy_helper

from lib_ort import transformers_pass
from lib_ort.export import MODEL_FILE, WEIGHTS_FILE
from lib_ort.recipes import RECIPES, get_recipe, olive_config

RECIPES_WITH_THE_PASS = [ep for ep, r in RECIPES.items() if any(transformers_pass.supports(p) for p in r["passes"].values())]


def _olive(export, recipe, out):
    from olive.workflows import run

    run(copy.deepcopy(olive_config(recipe, str(export), MODEL_FILE, str(out / "olive-out"), str(out / "cache"))))
    (made,) = sorted((out / "olive-out").rglob("*.onnx"))
    return onnx.load(str(made))


def _signature(model):
    nodes = [(n.op_type, tuple(n.input), tuple(n.output), tuple(a.SerializeToString() for a in n.attribute))
             for n in model.graph.node]
    weights = {t.name: (t.data_type, tuple(t.dims), numpy_helper.to_array(t).tobytes()) for t in model.graph.initializer}
    io = [v.SerializeToString() for v in list(model.graph.input) + list(model.graph.output)]
    return nodes, weights, io


def test_the_recipes_that_have_the_pass():
    assert {"cpu", "cuda", "dml"} <= set(RECIPES_WITH_THE_PASS)
    assert not transformers_pass.supports({"type": "OnnxPeepholeOptimizer"})
    assert not transformers_pass.supports({"type": "OrtTransformersOptimization", "opt_level": 1})


@pytest.mark.parametrize("ep", ["cpu", "cuda", "dml"])
@pytest.mark.parametrize("name", ["tiny-sd2", "tiny-sdxl"])
def test_weights_on_disk_match_olive(name, ep, export_of, tmp_path):
    export = export_of(name)
    recipe = get_recipe(ep)
    (pass_config,) = recipe["passes"].values()
    before = sorted(p.name for p in export.iterdir())
    ours_path = transformers_pass.run(pass_config, export / MODEL_FILE, tmp_path / "ours" / MODEL_FILE, WEIGHTS_FILE)
    assert sorted(p.name for p in export.iterdir()) == before  # the fp16 side file is gone
    ours = onnx.load(str(ours_path))
    olive = _olive(export, recipe, tmp_path)
    o_nodes, o_weights, o_io = _signature(olive)
    n_nodes, n_weights, n_io = _signature(ours)
    assert [n[0] for n in n_nodes] == [n[0] for n in o_nodes]
    assert n_nodes == o_nodes
    assert n_io == o_io
    assert n_weights.keys() == o_weights.keys()
    for key in o_weights:
        assert n_weights[key] == o_weights[key], key
    # the weights are in one file beside the graph, none left inside it but small constants
    assert (ours_path.parent / WEIGHTS_FILE).exists()
    assert all(len(t.raw_data) < 1024 for t in onnx.load(str(ours_path), load_external_data=False).graph.initializer)
