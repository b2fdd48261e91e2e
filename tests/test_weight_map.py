"""The weight map on real Olive-optimized tiny artefacts: the CPU recipe (fp32, MatMul weights transposed)
and the CUDA recipe's graph built on this CPU (fp16, packed and per-head interleaved QKV, channels-last
convolutions); the ONNX reader against the onnx package; replacement weights in a session."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from conftest import tiny_model
from lib_ort.onnx_weights import Weights
from lib_ort.unet import OrtUnet
from lib_ort.weight_map import MAP_FILE, WeightMap, expand_runs


def params_of(model) -> dict:
    return {k: v.detach().float().numpy() for k, v in model.named_parameters()}


def mapped(artefact_of, ep: str):
    """(the tiny SD2 model, its parameters, the artefact's weights, the derived map) for ``ep``'s recipe."""
    model = tiny_model("tiny-sd2")
    params = params_of(model)
    weights = Weights(artefact_of("tiny-sd2", ep).model_path)
    return model, params, weights, WeightMap.derive(params, weights)


@pytest.fixture(scope="module")
def nudged():
    """tiny-sd2 with every weight nudged: a fresh model's norms are all ones/zeros, a trained one's are not."""
    model = tiny_model("tiny-sd2")
    g = torch.Generator().manual_seed(5)
    saved = {k: v.detach().clone() for k, v in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    yield model
    with torch.no_grad():
        for k, v in model.named_parameters():
            v.copy_(saved[k])


@pytest.mark.parametrize("ep", ["cpu", "cuda"])
def test_the_reader_gives_what_onnx_gives(artefact_of, ep):
    artefact = artefact_of("tiny-sd2", ep)
    ours = Weights(artefact.model_path)
    reference = {i.name: numpy_helper.to_array(i, base_dir=str(artefact.folder))
                 for i in onnx.load(str(artefact.model_path)).graph.initializer}
    assert set(ours.names()) == set(reference)
    external = 0
    for name, value in reference.items():
        got = ours.array(name)
        assert got.dtype == value.dtype and got.shape == value.shape and np.array_equal(got, value), name
        external += ours.entries[name].external is not None
    assert external > 0  # the large weights are memory-mapped from the data file


def test_cpu_recipe_maps_every_weight_a_lora_changes(artefact_of):
    model, params, weights, weight_map = mapped(artefact_of, "cpu")
    lora_able = [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    assert lora_able and all(n in weight_map.places for n in lora_able), [n for n in lora_able if n not in weight_map.places]
    views = {weight_map.places[n]["view"] for n in lora_able}
    assert views == {"rows", "cols"}  # convolutions as they are, Linear weights transposed into MatMuls
    for name, place in weight_map.places.items():
        assert np.array_equal(weight_map.read(name, weights, params[name].shape), params[name]), name
    # the fresh model's GroupNorm/LayerNorm scales are all ones: the same values in many places, said so
    assert "input_blocks.1.1.transformer_blocks.0.norm1.weight" in weight_map.unmapped
    assert "ambiguous" in weight_map.unmapped["input_blocks.1.1.transformer_blocks.0.norm1.weight"]


def test_a_trained_like_model_maps_its_norms_too(nudged, export_of, shared_registry):
    from conftest import checkpoint_of
    from lib_ort.pipeline import prepare

    artefact = prepare(nudged, shared_registry, checkpoint_of("tiny-sd2") | {"hash": "nudged" * 8}, "cpu").artefact
    saved = WeightMap.load(artefact.folder)  # recorded at optimization time
    assert saved is not None and (artefact.folder / MAP_FILE).is_file()
    assert saved.unmapped == {}
    assert len(saved.places) == len(list(nudged.parameters()))


def test_cuda_recipe_packed_qkv_channels_last_and_fp16(artefact_of):
    _, params, weights, weight_map = mapped(artefact_of, "cuda")
    q = "middle_block.1.transformer_blocks.0.attn1.to_q.weight"
    k = "middle_block.1.transformer_blocks.0.attn1.to_k.weight"
    place_q, place_k = weight_map.places[q], weight_map.places[k]
    assert place_q["init"] == place_k["init"] and place_q["dtype"] == "float16"
    assert len(place_q["units"]) > 1  # interleaved per head, not one block
    assert not set(expand_runs(place_q["units"]).tolist()) & set(expand_runs(place_k["units"]).tolist())
    conv = weight_map.places["input_blocks.1.0.in_layers.2.weight"]
    assert conv["form"] == "channels_last"
    for name in weight_map.places:
        np.testing.assert_allclose(weight_map.read(name, weights, params[name].shape), params[name], rtol=1e-3, atol=1e-4)


def test_replaced_weights_compute_what_pytorch_computes_and_go_back(artefact_of):
    model, _, weights, weight_map = mapped(artefact_of, "cpu")
    ort = OrtUnet(artefact_of("tiny-sd2", "cpu"))
    g = torch.Generator().manual_seed(0)
    x, t, c = torch.randn(1, 4, 8, 8, generator=g), torch.tensor([500.0]), torch.randn(1, 77, 96, generator=g)
    base = ort(x, t, c)
    changed = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))][::3]
    named = dict(model.named_parameters())
    saved = {f"{n}.weight": named[f"{n}.weight"].detach().clone() for n in changed}
    try:
        with torch.no_grad():
            for name in saved:
                named[name].add_(torch.randn(named[name].shape, generator=g) * 0.05)
            reference = model(x, t, context=c)
        values = {name: named[name].detach().numpy() for name in saved}
        overrides = weight_map.overrides(values, weights)
        assert len(overrides) == len(saved)
        ort.replace_weights(overrides)
        out = ort(x, t, c)
        assert float((out - base).abs().max()) > 1e-2  # the new weights matter
        torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-4)
        ort.replace_weights({})
        assert torch.equal(ort(x, t, c), base)
    finally:
        with torch.no_grad():
            for name, value in saved.items():
                named[name].copy_(value)


def test_save_and_load(artefact_of, tmp_path):
    artefact = artefact_of("tiny-sd2", "cpu")
    weight_map = WeightMap.derive(params_of(tiny_model("tiny-sd2")), Weights(artefact.model_path))
    weight_map.save(tmp_path)
    again = WeightMap.load(tmp_path)
    assert again.places == weight_map.places and again.unmapped == weight_map.unmapped
    (tmp_path / MAP_FILE).write_text("{")
    assert WeightMap.load(tmp_path) is None  # unreadable: derived again, never trusted


def test_command_line_optimize_records_the_map_after_the_child(tmp_path, capsys):
    """``python -m lib_ort optimize`` drops its model before the optimization; the map is still recorded."""
    import json

    from lib_ort.cli import main

    assert main(["--root", str(tmp_path), "optimize", "--arch", "tiny-sd1", "--ep", "cpu"]) == 0
    folder = json.loads(capsys.readouterr().out)["folder"]
    found = WeightMap.load(folder)
    assert found is not None and found.places
