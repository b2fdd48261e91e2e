"""Build ONNX Runtime sessions per execution provider and bind torch tensors to them.

Everything a session is built from is first written down as data (``SessionPlan``,
``BindingPlan``) so that the CUDA, TensorRT and DirectML paths, which cannot run on a machine
without their hardware, can still be inspected and tested; ``create_session`` and
``CudaRunner`` then only carry the plan out.

* CPU: zero-copy numpy views of torch tensors, intra-op threads matching torch's.
* CUDA: IO binding on torch CUDA tensors (no copies), torch's current stream as ORT's compute
  stream, ``onnxruntime.preload_dlls()`` where it exists, and an optional static mode with CUDA
  graphs: one ``gpu_graph_id`` per input shape, each with its own fixed buffers, instead of
  rebuilding the session whenever the shape changes.
* A session that ONNX Runtime quietly created on another provider (what it does when the CUDA
  libraries fail to load) is refused with the reason, never used.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from .errors import OrtTurboError, RuntimeUnavailable

PROVIDER_NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "dml": "DmlExecutionProvider",
}

#: how many CUDA graphs (distinct input shapes) one session keeps in static mode
DEFAULT_MAX_CUDA_GRAPHS = 8


@dataclasses.dataclass
class SessionPlan:
    ep: str
    providers: list  # [(provider name, {option: value})], in priority order
    session_options: dict  # onnxruntime.SessionOptions attributes
    session_config: dict  # SessionOptions.add_session_config_entry
    run_config: dict  # RunOptions.add_run_config_entry, for every run
    io_binding: bool
    cuda_graph: bool
    preload_dlls: bool
    #: extra folders whose cuDNN ORT loads first (cuDNN 9 beside a torch that ships cuDNN 8)
    dll_directories: list = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _cuda_options(device_id: int, stream: int | None, cuda_graph: bool) -> dict:
    options = {
        "device_id": str(device_id),
        "arena_extend_strategy": "kSameAsRequested",
        "enable_cuda_graph": "1" if cuda_graph else "0",
    }
    if stream is not None:
        options["user_compute_stream"] = str(stream)
    return options


def _trt_profiles(input_names, io: dict, ranges: dict) -> dict:
    """TensorRT optimization profile strings: min / opt (batch 1 at 512 px, or the range) / max."""

    def shapes(batch, h, w, seq):
        dims = {
            "sample": (batch, io["in_channels"], h, w),
            "timestep": (batch,),
            "encoder_hidden_states": (batch, seq, io["context_dim"]),
            "y": (batch, io["adm_dim"] or 0),
        }
        return ",".join(f"{n}:{'x'.join(str(d) for d in dims[n])}" for n in input_names)

    b, hh, ww, ss = ranges["batch"], ranges["height"], ranges["width"], ranges["sequence"]
    clamp = lambda v, r: min(max(v, r[0]), r[1])
    return {
        "trt_profile_min_shapes": shapes(b[0], hh[0], ww[0], ss[0]),
        "trt_profile_opt_shapes": shapes(clamp(1, b), clamp(64, hh), clamp(64, ww), clamp(77, ss)),
        "trt_profile_max_shapes": shapes(b[1], hh[1], ww[1], ss[1]),
    }


def plan_session(ep: str, *, manifest: dict | None = None, device_id: int = 0, stream: int | None = None,
                 cuda_graph: bool = False, intra_op_threads: int | None = None,
                 cache_dir: str | os.PathLike | None = None, cpu_memory_arena: bool = True) -> SessionPlan:
    """What the session for ``ep`` is made of. ``stream`` is a CUDA stream handle (an int).

    ``cpu_memory_arena=False`` lets ORT's CPU provider free each buffer after the run instead of keeping
    it in its arena: for graphs whose activations are hundreds of MB (the VAE at 512²) that was measured
    faster on CPU (decoder 21.8 s against 24.1 s with the arena, alternating A/B, 3 of 3 pairs)."""
    if ep not in PROVIDER_NAMES:
        raise ValueError(f"unknown execution provider {ep!r}; choose one of: {', '.join(PROVIDER_NAMES)}")
    session_options = {"graph_optimization_level": "ORT_ENABLE_ALL", "execution_mode": "ORT_SEQUENTIAL"}
    session_config: dict = {}
    run_config: dict = {}
    if ep == "cpu":
        if intra_op_threads is None:
            import torch

            intra_op_threads = torch.get_num_threads()
        session_options["intra_op_num_threads"] = int(intra_op_threads)
        if not cpu_memory_arena:
            session_options["enable_cpu_mem_arena"] = False
        return SessionPlan(ep, [("CPUExecutionProvider", {})], session_options, session_config, run_config,
                           io_binding=False, cuda_graph=False, preload_dlls=False)
    if ep == "dml":
        # DirectML wants no memory pattern and sequential execution
        session_options["enable_mem_pattern"] = False
        return SessionPlan(ep, [("DmlExecutionProvider", {"device_id": str(device_id)}),
                                ("CPUExecutionProvider", {})],
                           session_options, session_config, run_config,
                           io_binding=False, cuda_graph=False, preload_dlls=False)
    cuda = _cuda_options(device_id, stream, cuda_graph and ep == "cuda")
    if stream is not None:
        # ORT runs on torch's stream; torch orders the work, so ORT need not synchronize after a run
        run_config["disable_synchronize_execution_providers"] = "1"
    providers = [("CUDAExecutionProvider", cuda), ("CPUExecutionProvider", {})]
    if ep == "tensorrt":
        cache = str(Path(cache_dir) if cache_dir else Path.cwd() / "trt-cache")
        trt = {
            "device_id": str(device_id),
            "trt_fp16_enable": "True",
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": cache,
            "trt_timing_cache_enable": "True",
            "trt_timing_cache_path": cache,
            "trt_cuda_graph_enable": "True" if cuda_graph else "False",
        }
        if manifest is not None:
            trt.update(_trt_profiles(manifest["input_names"], manifest["io"], manifest["shape_ranges"]))
        if stream is not None:
            trt["user_compute_stream"] = str(stream)
        providers.insert(0, ("TensorrtExecutionProvider", trt))
    return SessionPlan(ep, providers, session_options, session_config, run_config,
                       io_binding=True, cuda_graph=cuda_graph and ep == "cuda", preload_dlls=True,
                       dll_directories=side_cudnn_directories())


def side_cudnn_directories() -> list[str]:
    """cuDNN 9 that install.py put beside a torch carrying cuDNN 8 (onnxruntime-gpu 1.19+ needs 9)."""
    from .install_layout import Layout

    lib = Layout.default().side_folder("cudnn9-cu12") / "nvidia" / "cudnn" / ("bin" if os.name == "nt" else "lib")
    return [str(lib)] if lib.is_dir() else []


def import_onnxruntime():
    """``onnxruntime``, or ``RuntimeUnavailable`` with why not (missing, or its import raised anything)."""
    try:
        import onnxruntime
    except Exception as exc:
        raise RuntimeUnavailable(
            f"ONNX Runtime cannot be imported in this Python ({type(exc).__name__}: {exc}). Run the WebUI once "
            "without --skip-install so ORT Turbo's install.py installs it, or pip install onnxruntime.") from exc
    return onnxruntime


def require_provider(ep: str) -> None:
    """Raise ``RuntimeUnavailable`` unless the installed ONNX Runtime offers the provider of ``ep``."""
    ort = import_onnxruntime()

    wanted = PROVIDER_NAMES[ep]
    available = ort.get_available_providers()
    if wanted not in available:
        raise RuntimeUnavailable(
            f"this ONNX Runtime ({ort.__version__}) has no {wanted}; it has {', '.join(available)}. "
            "Install the matching onnxruntime package or choose another execution provider.")


def create_session(model_path: str | os.PathLike, plan: SessionPlan):
    """Carry out ``plan``: an ``onnxruntime.InferenceSession`` on the planned provider, or an error."""
    ort = import_onnxruntime()

    require_provider(plan.ep)
    wanted = plan.providers[0][0]
    if plan.preload_dlls and hasattr(ort, "preload_dlls"):
        for directory in plan.dll_directories:
            try:
                ort.preload_dlls(cuda=False, cudnn=True, msvc=False, directory=directory)
            except Exception as exc:
                raise OrtTurboError(f"could not load cuDNN 9 from {directory}: {exc}") from exc
        try:
            ort.preload_dlls()
        except Exception:  # torch's own CUDA libraries may already be loaded, which is fine
            pass
    options = ort.SessionOptions()
    for key, value in plan.session_options.items():
        if key == "graph_optimization_level":
            value = getattr(ort.GraphOptimizationLevel, value)
        elif key == "execution_mode":
            value = getattr(ort.ExecutionMode, value)
        setattr(options, key, value)
    for key, value in plan.session_config.items():
        options.add_session_config_entry(key, value)
    try:
        session = ort.InferenceSession(str(model_path), sess_options=options, providers=plan.providers)
    except Exception as exc:
        raise OrtTurboError(f"ONNX Runtime could not load {Path(model_path).parent.name} on {wanted}: {exc}") from exc
    used = session.get_providers()
    if not used or used[0] != wanted:
        raise OrtTurboError(
            f"ONNX Runtime fell back to {used[0] if used else 'nothing'} instead of {wanted} (its CUDA/cuDNN "
            "libraries probably failed to load; see the console above). Refusing to run silently on another provider.")
    return session


# -- IO binding --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BoundTensor:
    name: str
    element_type: str  # numpy dtype name, as IOBinding takes it
    shape: tuple
    device_type: str
    device_id: int
    data_ptr: int


@dataclasses.dataclass(frozen=True)
class BindingPlan:
    inputs: tuple
    outputs: tuple
    graph_id: int | None

    def run_config(self) -> dict:
        return {} if self.graph_id is None else {"gpu_graph_id": str(self.graph_id)}


def _bound(name: str, tensor) -> BoundTensor:
    device = tensor.device
    return BoundTensor(name, str(tensor.dtype).replace("torch.", ""), tuple(tensor.shape), device.type,
                       device.index or 0, tensor.data_ptr())


def binding_plan(feeds: dict, outputs: dict, graph_id: int | None = None) -> BindingPlan:
    """How ``feeds`` and preallocated ``outputs`` (torch tensors, contiguous) bind to a session."""
    for name, t in {**feeds, **outputs}.items():
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous to be bound without a copy")
    return BindingPlan(tuple(_bound(n, t) for n, t in feeds.items()),
                       tuple(_bound(n, t) for n, t in outputs.items()), graph_id)


class CudaGraphBook:
    """One CUDA graph per input shape: shape key -> ``gpu_graph_id`` (0, 1, ...), at most ``limit``.

    Shapes past the limit run without a graph (id -1), which ORT supports on the same session.
    """

    def __init__(self, limit: int = DEFAULT_MAX_CUDA_GRAPHS):
        self.limit = limit
        self.ids: dict[tuple, int] = {}

    def graph_id(self, key: tuple) -> int:
        if key not in self.ids:
            if len(self.ids) >= self.limit:
                return -1
            self.ids[key] = len(self.ids)
        return self.ids[key]


class CudaRunner:
    """Runs a CUDA/TensorRT session on torch CUDA tensors through IO binding."""

    def __init__(self, session, plan: SessionPlan, output_name: str, max_graphs: int = DEFAULT_MAX_CUDA_GRAPHS):
        self.session = session
        self.plan = plan
        self.output_name = output_name
        self.graphs = CudaGraphBook(max_graphs) if plan.cuda_graph else None
        self._static: dict[tuple, tuple[dict, object]] = {}  # shape key -> (input buffers, output buffer)

    def bindings_for(self, feeds: dict, output_shape: tuple, output_dtype) -> tuple[BindingPlan, object]:
        import torch

        device = next(iter(feeds.values())).device
        if self.graphs is None:
            out = torch.empty(output_shape, dtype=output_dtype, device=device)
            return binding_plan(feeds, {self.output_name: out}), out
        key = tuple((n, tuple(t.shape), t.dtype) for n, t in feeds.items())
        graph_id = self.graphs.graph_id(key)
        if graph_id < 0:
            out = torch.empty(output_shape, dtype=output_dtype, device=device)
            return binding_plan(feeds, {self.output_name: out}, graph_id), out
        if key not in self._static:
            self._static[key] = ({n: torch.empty_like(t) for n, t in feeds.items()},
                                 torch.empty(output_shape, dtype=output_dtype, device=device))
        buffers, out = self._static[key]
        for name, t in feeds.items():
            buffers[name].copy_(t)  # a captured graph replays on fixed addresses
        return binding_plan(buffers, {self.output_name: out}, graph_id), out

    def run(self, feeds: dict, output_shape: tuple, output_dtype):
        import onnxruntime as ort

        plan, out = self.bindings_for(feeds, output_shape, output_dtype)
        binding = self.session.io_binding()
        for t in plan.inputs:
            binding.bind_input(t.name, t.device_type, t.device_id, _np_dtype(t.element_type), t.shape, t.data_ptr)
        for t in plan.outputs:
            binding.bind_output(t.name, t.device_type, t.device_id, _np_dtype(t.element_type), t.shape, t.data_ptr)
        run_options = ort.RunOptions()
        for key, value in {**self.plan.run_config, **plan.run_config()}.items():
            run_options.add_run_config_entry(key, value)
        self.session.run_with_iobinding(binding, run_options)
        # a static buffer is overwritten by the next call of the same shape
        return out.clone() if plan.graph_id is not None and plan.graph_id >= 0 else out


def _np_dtype(name: str):
    import numpy as np

    return np.dtype(name)
