import pytest
import torch

from lib_ort.errors import OrtTurboError
from lib_ort.sessions import CudaGraphBook, CudaRunner, binding_plan, create_session, plan_session

MANIFEST = {
    "input_names": ["sample", "timestep", "encoder_hidden_states", "y"],
    "io": {"in_channels": 4, "context_dim": 2048, "adm_dim": 2816},
    "shape_ranges": {"batch": [1, 8], "height": [64, 128], "width": [64, 128], "sequence": [77, 154]},
}


def test_cpu_plan_matches_torch_threads():
    plan = plan_session("cpu")
    assert plan.providers == [("CPUExecutionProvider", {})]
    assert plan.session_options["intra_op_num_threads"] == torch.get_num_threads()
    assert not plan.io_binding and not plan.cuda_graph
    assert plan_session("cpu", intra_op_threads=3).session_options["intra_op_num_threads"] == 3
    assert "enable_cpu_mem_arena" not in plan.session_options  # ORT's default (arena on) for the UNet
    assert plan_session("cpu", cpu_memory_arena=False).session_options["enable_cpu_mem_arena"] is False


def test_cuda_plan_binds_on_torch_stream_with_optional_graphs():
    plan = plan_session("cuda", device_id=1, stream=123456, cuda_graph=True)
    assert plan.providers == [
        ("CUDAExecutionProvider", {"device_id": "1", "arena_extend_strategy": "kSameAsRequested",
                                   "enable_cuda_graph": "1", "user_compute_stream": "123456"}),
        ("CPUExecutionProvider", {}),
    ]
    assert plan.run_config == {"disable_synchronize_execution_providers": "1"}
    assert plan.io_binding and plan.cuda_graph and plan.preload_dlls
    dynamic = plan_session("cuda", stream=7)
    assert dynamic.providers[0][1]["enable_cuda_graph"] == "0" and not dynamic.cuda_graph
    assert plan_session("cuda").run_config == {}  # no shared stream: ORT synchronizes itself


def test_tensorrt_plan_has_profiles_caches_and_cuda_fallback_for_unsupported_nodes(tmp_path):
    plan = plan_session("tensorrt", manifest=MANIFEST, stream=9, cache_dir=tmp_path)
    names = [p[0] for p in plan.providers]
    assert names == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    trt = plan.providers[0][1]
    assert trt["trt_fp16_enable"] == "True" and trt["trt_engine_cache_path"] == str(tmp_path)
    assert trt["trt_profile_min_shapes"] == (
        "sample:1x4x64x64,timestep:1,encoder_hidden_states:1x77x2048,y:1x2816")
    assert trt["trt_profile_opt_shapes"] == (
        "sample:1x4x64x64,timestep:1,encoder_hidden_states:1x77x2048,y:1x2816")
    assert trt["trt_profile_max_shapes"] == (
        "sample:8x4x128x128,timestep:8,encoder_hidden_states:8x154x2048,y:8x2816")
    assert trt["user_compute_stream"] == "9"


def test_dml_plan():
    plan = plan_session("dml", device_id=0)
    assert plan.providers[0] == ("DmlExecutionProvider", {"device_id": "0"})
    assert plan.session_options["enable_mem_pattern"] is False


def test_binding_plan_is_zero_copy():
    x = torch.randn(2, 4, 8, 8)
    t = torch.tensor([1.5, 2.5])
    out = torch.empty(2, 4, 8, 8, dtype=torch.float16)
    plan = binding_plan({"sample": x, "timestep": t}, {"latent": out}, graph_id=3)
    assert [(b.name, b.element_type, b.shape, b.data_ptr) for b in plan.inputs] == [
        ("sample", "float32", (2, 4, 8, 8), x.data_ptr()), ("timestep", "float32", (2,), t.data_ptr())]
    assert plan.outputs[0].element_type == "float16" and plan.outputs[0].data_ptr == out.data_ptr()
    assert plan.run_config() == {"gpu_graph_id": "3"}
    with pytest.raises(ValueError, match="contiguous"):
        binding_plan({"sample": x.transpose(2, 3)}, {})


def test_graph_book_gives_one_id_per_shape_up_to_a_limit():
    book = CudaGraphBook(limit=2)
    assert [book.graph_id(k) for k in ("a", "b", "a", "c", "b")] == [0, 1, 0, -1, 1]


class _Plan:
    cuda_graph = True
    run_config: dict = {}


def test_static_mode_reuses_fixed_buffers_per_shape():
    runner = CudaRunner(session=None, plan=_Plan(), output_name="latent")
    a1 = {"sample": torch.randn(1, 4, 8, 8), "timestep": torch.tensor([3.0])}
    a2 = {"sample": torch.randn(1, 4, 8, 8), "timestep": torch.tensor([4.0])}
    b = {"sample": torch.randn(2, 4, 8, 16), "timestep": torch.tensor([1.0, 2.0])}
    p1, o1 = runner.bindings_for(a1, (1, 4, 8, 8), torch.float32)
    p2, o2 = runner.bindings_for(a2, (1, 4, 8, 8), torch.float32)
    p3, _ = runner.bindings_for(b, (2, 4, 8, 16), torch.float32)
    assert p1.graph_id == p2.graph_id == 0 and p3.graph_id == 1
    assert [t.data_ptr for t in p1.inputs] == [t.data_ptr for t in p2.inputs]  # same addresses to replay
    assert o1.data_ptr() == o2.data_ptr()
    assert p2.inputs[0].data_ptr != a2["sample"].data_ptr()  # copied into the fixed buffer ...
    assert torch.equal(runner._static[next(iter(runner._static))][0]["sample"], a2["sample"])  # ... with new data


def test_dynamic_mode_binds_the_callers_tensors():
    class Dyn(_Plan):
        cuda_graph = False

    runner = CudaRunner(session=None, plan=Dyn(), output_name="latent")
    feeds = {"sample": torch.randn(1, 4, 8, 8)}
    plan, _ = runner.bindings_for(feeds, (1, 4, 8, 8), torch.float32)
    assert plan.graph_id is None and plan.inputs[0].data_ptr == feeds["sample"].data_ptr()


def test_unavailable_provider_is_a_clear_error(tmp_path):
    import onnxruntime

    if "DmlExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("DirectML present")
    with pytest.raises(OrtTurboError, match="has no DmlExecutionProvider"):
        create_session(tmp_path / "model.onnx", plan_session("dml"))


def test_side_cudnn9_folder_is_loaded_first_when_install_put_one_there(tmp_path, monkeypatch):
    monkeypatch.setenv("ORT_TURBO_DATA", str(tmp_path))
    assert plan_session("cuda").dll_directories == []
    lib = tmp_path / "runtime-libs" / "cudnn9-cu12" / "nvidia" / "cudnn" / "lib"
    lib.mkdir(parents=True)
    assert plan_session("cuda").dll_directories == [str(lib)]
    assert plan_session("cpu").dll_directories == []


def test_toolchain_requirements_match_the_tested_dev_pins():
    """The Olive toolchain installs what the test suite ran with (requirements-dev.txt)."""
    from pathlib import Path

    from lib_ort.toolchain import REQUIREMENTS

    dev = {line.split("#")[0].strip() for line in (Path(__file__).parent.parent / "requirements-dev.txt").read_text().splitlines()}
    assert set(REQUIREMENTS) <= dev
