import dataclasses
import json

import pytest
import torch

from lib_ort.errors import OrtTurboError
from lib_ort.cuda_libraries import find_tensorrt
from lib_ort import sessions
from lib_ort.sessions import (OWN_STREAM_STEPS, CudaGraphBook, CudaRunner, GraphThread, binding_plan, create_session,
                              graph_policy, placement_report, plan_session, require_planned_provider,
                              require_tensorrt_libraries, resolve_openvino_precision, run_ordered, stream_order,
                              unet_trt_profiles, vae_trt_profiles)

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


def test_cuda_plan_binds_on_a_dedicated_stream_with_optional_graphs():
    plan = plan_session("cuda", device_id=1, stream=123456, cuda_graph=True)
    assert plan.providers == [
        ("CUDAExecutionProvider", {"device_id": "1", "arena_extend_strategy": "kSameAsRequested",
                                   "enable_cuda_graph": "1", "cudnn_conv_algo_search": "EXHAUSTIVE",
                                   "user_compute_stream": "123456"}),
        ("CPUExecutionProvider", {}),
    ]
    assert plan.run_config == {"disable_synchronize_execution_providers": "1"}
    assert plan.io_binding and plan.cuda_graph and plan.preload_dlls
    dynamic = plan_session("cuda", stream=7)
    assert dynamic.providers[0][1]["enable_cuda_graph"] == "0" and not dynamic.cuda_graph
    assert plan_session("cuda").run_config == {}  # no shared stream: ORT synchronizes itself


@pytest.mark.parametrize("handle", [None, 0])
def test_stream_handle_0_is_never_given_to_ort_with_synchronization_disabled(handle):
    """0 is CUDA's legacy default stream, which ORT reads as "no stream given" and then runs on its own."""
    plan = plan_session("cuda", stream=handle)
    assert "user_compute_stream" not in plan.providers[0][1]
    assert "disable_synchronize_execution_providers" not in plan.run_config
    assert plan.stream == stream_order(None) and plan.stream.steps == OWN_STREAM_STEPS
    trt = plan_session("tensorrt", manifest=MANIFEST, stream=handle)
    assert "user_compute_stream" not in trt.providers[0][1] and trt.run_config == {}


class _Recorder:
    def __init__(self):
        self.events = []

    def stream(self, name):
        recorder = self

        class Stream:
            def wait_stream(self, other):
                recorder.events.append(f"{name} waits for {other.name}")

        s = Stream()
        s.name = name
        return s

    def tensor(self, name):
        recorder = self

        class Tensor:
            def record_stream(self, stream):
                recorder.events.append(f"{name} in use by {stream.name}")

        return Tensor()


def test_shared_stream_order_is_torch_then_ort_then_torch():
    rec = _Recorder()
    result = run_ordered(stream_order(4242), lambda: rec.events.append("ORT runs") or "out",
                         torch_stream=rec.stream("torch"), ort_stream=rec.stream("ort"),
                         inputs=[rec.tensor("sample"), rec.tensor("timestep")],
                         synchronize=lambda: rec.events.append("host waits"))
    assert result == "out"
    assert rec.events == ["ort waits for torch", "sample in use by ort", "timestep in use by ort", "ORT runs",
                          "torch waits for ort"]


def test_own_stream_order_waits_for_torch_before_ort_runs():
    rec = _Recorder()
    run_ordered(stream_order(0), lambda: rec.events.append("ORT runs"), torch_stream=rec.stream("torch"),
                ort_stream=None, inputs=[rec.tensor("sample")], synchronize=lambda: rec.events.append("host waits"))
    assert rec.events == ["host waits", "ORT runs"]


def test_conv_algorithm_search_is_heuristic_for_dynamic_shapes_and_exhaustive_with_graphs():
    assert plan_session("cuda", stream=5).providers[0][1]["cudnn_conv_algo_search"] == "HEURISTIC"
    assert plan_session("cuda", stream=5, cuda_graph=True).providers[0][1]["cudnn_conv_algo_search"] == "EXHAUSTIVE"
    assert plan_session("tensorrt", manifest=MANIFEST).providers[1][1]["cudnn_conv_algo_search"] == "HEURISTIC"


def test_vram_policy_options_and_vae_arena_shrinkage_reach_the_plan():
    plan = plan_session("cuda", stream=5, cuda_options={"cudnn_conv_use_max_workspace": "0"}, shrink_arena=True)
    assert plan.providers[0][1]["cudnn_conv_use_max_workspace"] == "0"
    assert plan.run_config["memory.enable_memory_arena_shrinkage"] == "gpu:0"
    assert "memory.enable_memory_arena_shrinkage" not in plan_session("cuda").run_config


def test_tensorrt_plan_has_small_default_profiles_caches_and_cuda_fallback(tmp_path):
    plan = plan_session("tensorrt", manifest=MANIFEST, stream=9, cache_dir=tmp_path)
    names = [p[0] for p in plan.providers]
    assert names == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    trt = plan.providers[0][1]
    assert trt["trt_fp16_enable"] == "True" and trt["trt_engine_cache_path"] == str(tmp_path)
    # batch 1-4, 512-1024 px, 77-154 tokens (not batch 16 at 2048 px), clamped to the artefact's 8 rows
    assert trt["trt_profile_min_shapes"] == (
        "sample:1x4x64x64,timestep:1,encoder_hidden_states:1x77x2048,y:1x2816")
    assert trt["trt_profile_opt_shapes"] == (
        "sample:1x4x64x64,timestep:1,encoder_hidden_states:1x77x2048,y:1x2816")
    assert trt["trt_profile_max_shapes"] == (
        "sample:4x4x128x128,timestep:4,encoder_hidden_states:4x154x2048,y:4x2816")
    assert trt["user_compute_stream"] == "9"


def test_tensorrt_profiles_follow_what_is_asked_inside_the_artefact():
    asked = {"batch": [2, 2], "height_px": [768, 768], "width_px": [512, 1024], "sequence": [77, 77]}
    profiles = unet_trt_profiles(MANIFEST, asked)
    assert profiles["trt_profile_min_shapes"].startswith("sample:2x4x96x64,")
    assert profiles["trt_profile_max_shapes"].startswith("sample:2x4x96x128,")
    assert profiles["trt_profile_opt_shapes"].startswith("sample:2x4x96x64,")
    with pytest.raises(OrtTurboError, match="batch range 9..12 lies outside"):
        unet_trt_profiles(MANIFEST, dict(asked, batch=[9, 12]))


def test_vae_parts_get_their_own_tensorrt_profiles():
    dec = vae_trt_profiles("latent", 4, 8)
    enc = vae_trt_profiles("image", 3, 1)
    assert dec == {"trt_profile_min_shapes": "latent:1x4x64x64", "trt_profile_opt_shapes": "latent:1x4x64x64",
                   "trt_profile_max_shapes": "latent:4x4x128x128"}
    assert enc["trt_profile_max_shapes"] == "image:4x3x1024x1024"
    plan = plan_session("tensorrt", trt_profiles=dec, stream=3)
    assert plan.providers[0][1]["trt_profile_max_shapes"] == "latent:4x4x128x128"


def test_tensorrt_is_refused_with_a_clear_message_when_libnvinfer_does_not_load(tmp_path, monkeypatch):
    with pytest.raises(OrtTurboError, match="TensorRT is not installed here .*libnvinfer.so.10.*choose the CUDA"):
        require_tensorrt_libraries(find=lambda: None)
    assert require_tensorrt_libraries(find=lambda: "libnvinfer.so.10") == "libnvinfer.so.10"
    tried = []
    assert find_tensorrt(lambda name: tried.append(name) or name == "libnvinfer.so.8") == "libnvinfer.so.8"
    assert tried == ["libnvinfer.so.10", "libnvinfer.so.8"]
    assert find_tensorrt(lambda name: False) is None


def test_tensorrt_cache_lives_in_the_data_folder_and_clean_up_removes_it(tmp_path, monkeypatch):
    from lib_ort.install_layout import Layout, delete_artefacts, usage

    monkeypatch.setenv("ORT_TURBO_DATA", str(tmp_path / "data"))
    plan = plan_session("tensorrt", manifest=MANIFEST)
    cache = Layout.default().trt_cache
    assert plan.providers[0][1]["trt_engine_cache_path"] == str(cache) == str(tmp_path / "data" / "trt-cache")
    cache.mkdir(parents=True)
    (cache / "engine.trt").write_bytes(b"x" * 1000)
    assert usage(Layout.default(), tmp_path / "artefacts")["trt_cache"] == 1000
    assert delete_artefacts(tmp_path / "artefacts") == 1000 and not cache.exists()


def test_dml_plan():
    plan = plan_session("dml", device_id=0)
    assert plan.providers[0] == ("DmlExecutionProvider", {"device_id": "0"})
    assert plan.session_options["enable_mem_pattern"] is False


BF16_CPU = frozenset({"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
AVX2_CPU = frozenset({"avx2", "fma", "f16c"})


def test_openvino_precision_auto_is_bf16_only_with_native_bf16():
    assert resolve_openvino_precision("auto", BF16_CPU) == "bf16"
    assert resolve_openvino_precision("auto", {"avx512_bf16"}) == "bf16"
    assert resolve_openvino_precision("auto", {"amx_bf16"}) == "bf16"
    assert resolve_openvino_precision("auto", AVX2_CPU) == "fp32"
    assert resolve_openvino_precision("auto", frozenset()) == "fp32"  # flags unknown (not Linux): never a guess
    assert resolve_openvino_precision("bf16", AVX2_CPU) == "bf16"  # asked for: emulated, the user's choice
    assert resolve_openvino_precision("fp32", BF16_CPU) == "fp32"
    with pytest.raises(ValueError, match="unknown OpenVINO precision 'fp16'"):
        resolve_openvino_precision("fp16", BF16_CPU)


@pytest.mark.parametrize("flags, expected", [(BF16_CPU, "bf16"), (AVX2_CPU, "fp32")])
def test_openvino_plan_is_the_cpu_path_with_openvino_first(monkeypatch, flags, expected):
    monkeypatch.setattr("lib_ort.cpu_features.this_cpu_flags", lambda: flags)
    plan = plan_session("openvino", intra_op_threads=3, cpu_memory_arena=False)
    (name, options), fallback = plan.providers
    assert name == "OpenVINOExecutionProvider" and fallback == ("CPUExecutionProvider", {})
    assert options["device_type"] == "CPU" and options["num_of_threads"] == "3"
    assert all(isinstance(v, str) for v in options.values())  # ORT takes provider options as strings
    assert plan.precision == expected
    if expected == "bf16":  # a JSON string: a path or "precision": "BF16" make the EP fail on CPU
        assert json.loads(options["load_config"]) == {"CPU": {"INFERENCE_PRECISION_HINT": "bf16"}}
        assert "precision" not in options
    else:
        assert options["precision"] == "FP32" and "load_config" not in options
    assert "cache_dir" not in options  # measured slower to load from than to compile (sessions.openvino_options)
    assert plan.session_options["intra_op_num_threads"] == 3 and plan.session_options["enable_cpu_mem_arena"] is False
    assert not plan.io_binding and not plan.cuda_graph and not plan.preload_dlls and plan.stream is None
    assert plan.to_dict()["precision"] == expected


def test_openvino_plan_follows_torch_threads_the_asked_precision_and_a_given_cache(tmp_path):
    plan = plan_session("openvino", openvino_precision="fp32", cache_dir=tmp_path)
    options = plan.providers[0][1]
    assert options["num_of_threads"] == str(torch.get_num_threads()) == str(plan.session_options["intra_op_num_threads"])
    assert plan.precision == "fp32" and options["cache_dir"] == str(tmp_path)
    assert plan_session("openvino", openvino_precision="bf16").precision == "bf16"
    assert plan_session("cpu").precision is None  # the artefact's own precision runs
    with pytest.raises(ValueError, match="OpenVINO precision"):
        plan_session("openvino", openvino_precision="BF16")


def test_the_runner_names_the_precision_openvino_runs_in():
    from lib_ort.runner import OrtRunner

    runner = OrtRunner.__new__(OrtRunner)  # the label needs only the provider and the plan
    runner.ep, runner.plan = "openvino", plan_session("openvino", intra_op_threads=1, openvino_precision="bf16")
    assert runner.runs_on == "OpenVINO (CPU), bf16"
    runner.ep, runner.plan = "cpu", plan_session("cpu", intra_op_threads=1)
    assert runner.runs_on == "CPU"


class _SessionOn:
    def __init__(self, *used):
        self.used = list(used)

    def get_providers(self):
        return self.used


@pytest.mark.parametrize("used", [["CPUExecutionProvider"], []])
def test_a_session_on_another_provider_than_planned_is_refused(used):
    plan = plan_session("openvino", intra_op_threads=1, openvino_precision="bf16")
    with pytest.raises(OrtTurboError, match="fell back to .* instead of OpenVINOExecutionProvider .*OpenVINO precision fp32"):
        require_planned_provider(_SessionOn(*used), plan)
    require_planned_provider(_SessionOn("OpenVINOExecutionProvider", "CPUExecutionProvider"), plan)
    with pytest.raises(OrtTurboError, match="instead of CUDAExecutionProvider .*CUDA/cuDNN"):
        require_planned_provider(_SessionOn("CPUExecutionProvider"), plan_session("cuda"))
    require_planned_provider(_SessionOn("CPUExecutionProvider"), plan_session("cpu", intra_op_threads=1))


def test_onnx_runtime_quietly_building_a_cpu_session_for_openvino_is_refused(tmp_path, monkeypatch):
    """What ONNX Runtime really does with a provider it cannot create (here: one this build lacks, let past the
    availability check): it warns and builds a CPU session. ``create_session`` refuses that session."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    import onnxruntime

    if "OpenVINOExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has OpenVINO: it would not fall back")
    monkeypatch.setattr(sessions, "require_provider", lambda ep: None)
    with pytest.raises(OrtTurboError, match="fell back to CPUExecutionProvider instead of OpenVINOExecutionProvider"):
        create_session(tmp_path / "m.onnx", plan_session("openvino", intra_op_threads=1, openvino_precision="fp32"))


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


def test_graph_runs_all_happen_on_one_thread_whichever_thread_calls():
    """ORT keeps captured graphs per calling thread: every graph run goes through one worker thread."""
    import threading

    class Session:
        threads = []

        def io_binding(self):
            class Binding:
                def bind_input(self, *a):
                    pass

                bind_output = bind_input

            return Binding()

        def run_with_iobinding(self, binding, options):
            self.threads.append(threading.get_ident())

    class Plan(_Plan):
        stream = None

    policy = graph_policy(True, "cuda", memcpy_nodes=0)
    assert policy.use_graphs and policy.dedicated_thread
    runner = CudaRunner(Session(), Plan(), "latent", graph_thread=GraphThread())
    bound = binding_plan({"sample": torch.zeros(1, 4, 8, 8)}, {"latent": torch.zeros(1, 4, 8, 8)}, graph_id=0)
    callers = [threading.Thread(target=runner.call, args=(bound,)) for _ in range(4)]
    for t in callers:
        t.start()
        t.join()
    runner.call(bound)
    assert len(Session.threads) == 5 and len(set(Session.threads)) == 1
    assert Session.threads[0] not in {t.ident for t in callers} | {threading.get_ident()}
    runner.graph_thread.close()
    plain = CudaRunner(Session(), Plan(), "latent")
    Session.threads.clear()
    plain.call(bound)
    assert Session.threads == [threading.get_ident()]  # without graphs: the caller's thread


def test_graph_policy_is_off_by_default_and_refused_with_memcpy_nodes():
    assert not graph_policy(False, "cuda", 0).use_graphs
    assert not graph_policy(True, "tensorrt", 0).use_graphs
    refused = graph_policy(True, "cuda", memcpy_nodes=3)
    assert not refused.use_graphs and "3 Memcpy node(s)" in refused.reason


def test_memcpy_nodes_are_counted_in_an_optimized_graph(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from lib_ort.graph import memcpy_count

    nodes = [helper.make_node("MemcpyToHost", ["x"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MemcpyFromHost", ["r"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph)
    assert memcpy_count(model) == 2
    onnx.save(model, tmp_path / "m.onnx")
    assert memcpy_count(tmp_path / "m.onnx") == 2
    branch = lambda n: helper.make_graph(  # noqa: E731
        [helper.make_node("MemcpyToHost", ["x"], [f"b{i}"]) for i in range(n)] + [helper.make_node("Identity", ["x"], ["o"])],
        "b", [], [helper.make_tensor_value_info("o", TensorProto.FLOAT, [2])])
    nested = helper.make_graph(nodes + [helper.make_node("If", ["c"], ["z"], then_branch=branch(1), else_branch=branch(2))],
                               "g", graph.input, graph.output)
    assert memcpy_count(helper.make_model(nested)) == 5  # subgraphs count too


def test_placement_report_saves_the_optimized_graph_once_and_counts(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    import numpy as np

    w = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")  # above the 1 KB external-data threshold
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    report = placement_report(tmp_path / "m.onnx", [("CPUExecutionProvider", {})])
    assert report["memcpy_nodes"] == 0 and report["providers_used"] == ["CPUExecutionProvider"]
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        assert placement_report(tmp_path / "m.onnx", [("CUDAExecutionProvider", {})]) is None


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


# -- cuDNN 9 from a side folder: the plan per OS, carried out by absolute path, checked afterwards --------


def test_cudnn9_plan_per_os_loads_dependencies_first_and_the_entry_library_last():
    from lib_ort.cuda_libraries import cudnn9_load_plan

    linux = "/data/runtime-libs/cudnn9-cu12/nvidia/cudnn/lib"
    present = {f"{linux}/{f}" for f in ("libcudnn.so.9", "libcudnn_graph.so.9", "libcudnn_ops.so.9",
                                        "libcudnn_engines_precompiled.so.9")}
    plan = cudnn9_load_plan([linux], os_name="posix", exists=present.__contains__)
    assert plan.files == (f"{linux}/libcudnn_graph.so.9", f"{linux}/libcudnn_engines_precompiled.so.9",
                          f"{linux}/libcudnn_ops.so.9", f"{linux}/libcudnn.so.9")
    assert plan.dll_directories == () and plan.expect_loaded == ("libcudnn.so.9",)

    win = "C:\\sd\\ext\\data\\runtime-libs\\cudnn9-cu12\\nvidia\\cudnn\\bin"
    names = ("cudnn64_9.dll", "cudnn_graph64_9.dll", "cudnn_ops64_9.dll", "cudnn_adv64_9.dll",
             "cudnn_heuristic64_9.dll", "cudnn_engines_precompiled64_9.dll", "cudnn_engines_runtime_compiled64_9.dll")
    plan = cudnn9_load_plan([win], os_name="nt", exists={f"{win}\\{n}" for n in names}.__contains__)
    assert plan.dll_directories == (win,)  # os.add_dll_directory before loading: dependencies resolve there
    assert [p.rsplit("\\", 1)[1] for p in plan.files] == [
        "cudnn_graph64_9.dll", "cudnn_engines_precompiled64_9.dll", "cudnn_engines_runtime_compiled64_9.dll",
        "cudnn_heuristic64_9.dll", "cudnn_ops64_9.dll", "cudnn_adv64_9.dll", "cudnn64_9.dll"]
    assert all(p.startswith(win + "\\") for p in plan.files)  # absolute paths only
    with pytest.raises(OrtTurboError, match="has no cudnn64_9.dll"):
        cudnn9_load_plan([win], os_name="nt", exists=lambda p: False)


def test_cudnn9_plan_is_carried_out_in_order_and_refuses_another_os(tmp_path):
    from lib_ort.cuda_libraries import carry_out, cudnn9_load_plan

    for name in ("libcudnn.so.9", "libcudnn_graph.so.9"):
        (tmp_path / name).write_bytes(b"")
    plan = cudnn9_load_plan([tmp_path], os_name="posix")
    loaded = []
    assert carry_out(plan, load=loaded.append) == [str(tmp_path / "libcudnn_graph.so.9"), str(tmp_path / "libcudnn.so.9")]
    assert loaded == list(plan.files)
    with pytest.raises(ValueError, match="cannot be carried out"):
        carry_out(dataclasses.replace(plan, os_name="nt"), load=loaded.append)


def test_loaded_libraries_are_read_from_the_process_maps_and_checked_against_the_plan():
    """On a real library loaded here by ctypes (libm), read back from /proc/self/maps."""
    import ctypes.util
    import os

    from lib_ort.cuda_libraries import DllLoadPlan, check_loaded, loaded_libraries

    if not os.path.exists("/proc/self/maps"):
        pytest.skip("no /proc (not Linux)")
    ctypes.CDLL(ctypes.util.find_library("m"))
    libm = loaded_libraries("libm.so")
    assert libm and all(os.path.isabs(p) and "libm.so" in os.path.basename(p) for p in libm)
    name = os.path.basename(libm[0])
    plan = DllLoadPlan("posix", (), (libm[0],), (name,))
    assert check_loaded(plan, libm) == []
    assert check_loaded(DllLoadPlan("posix", (), (), ("libcudnn.so.9",)), libm) == ["libcudnn.so.9"]
    assert loaded_libraries("no-such-library-anywhere") == []


# -- VRAM policy ----------------------------------------------------------------------------------------


def test_vram_policy_creates_empties_torch_cache_or_refuses_with_the_numbers():
    from lib_ort.vram import ACTIVATION_MARGIN, GiB, plan_vram

    sdxl = int(5.1 * GiB)
    ok = plan_vram(weights=sdxl, free=20 * GiB, total=24 * GiB)
    assert ok.action == "create" and ok.needed == sdxl + ACTIVATION_MARGIN
    assert ok.provider_options == {"cudnn_conv_use_max_workspace": "1"}  # large card: ORT's faster default
    tight = plan_vram(weights=sdxl, free=4 * GiB, total=8 * GiB, torch_cache=2 * GiB)
    assert tight.action == "empty-torch-cache" and "emptying torch's cache" in tight.message
    assert tight.provider_options["cudnn_conv_use_max_workspace"] == "0"  # small card: capped workspace
    refused = plan_vram(weights=sdxl, free=3 * GiB, total=8 * GiB, torch_cache=1 * GiB)
    assert refused.action == "refuse"
    assert "not enough free GPU memory" in refused.message and "5.6 GB" in refused.message and "3.0 GB" in refused.message
    limited = plan_vram(weights=GiB, free=8 * GiB, total=8 * GiB, gpu_mem_limit_mb=6000)
    assert limited.provider_options["gpu_mem_limit"] == str(6000 * 1024 * 1024)


def test_session_is_released_before_the_torch_unet_moves_up_when_both_do_not_fit():
    from lib_ort.vram import GiB, must_release_session

    assert must_release_session(torch_unet=int(5.1 * GiB), free=3 * GiB, torch_cache=1 * GiB)
    assert not must_release_session(torch_unet=int(1.7 * GiB), free=10 * GiB)


def test_weights_bytes_counts_the_artefacts_files(tmp_path):
    from lib_ort.vram import weights_bytes

    (tmp_path / "model.onnx").write_bytes(b"x" * 10)
    (tmp_path / "weights.pb").write_bytes(b"x" * 90)
    assert weights_bytes(tmp_path, ["model.onnx", "weights.pb", "missing.bin"]) == 100
