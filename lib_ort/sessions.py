"""Build ONNX Runtime sessions per execution provider and bind torch tensors to them.

Everything a session is built from is first written down as data (``SessionPlan``,
``BindingPlan``) so that the CUDA, TensorRT and DirectML paths, which cannot run on a machine
without their hardware, can still be inspected and tested; ``create_session`` and
``CudaRunner`` then only carry the plan out.

* CPU: zero-copy numpy views of torch tensors, intra-op threads matching torch's.
* CUDA: IO binding on torch CUDA tensors (no copies), a dedicated non-zero torch stream as ORT's
  compute stream, ordered against torch's by events (:class:`StreamOrder`), cuDNN 9 from a side folder
  loaded by absolute path (``cuda_libraries``), the VRAM policy's options (``vram``), and an optional
  static mode with CUDA graphs: one ``gpu_graph_id`` per input shape, each with its own fixed buffers,
  all replayed from one thread (:class:`GraphPolicy`).
* TensorRT: only when libnvinfer loads; profiles from what is asked for, else a small default.
* OpenVINO (CPU): the CPU path (numpy views, torch's thread count), OpenVINO compiling the whole graph in
  bf16 where the CPU has native bf16 (``cpu_features``), else fp32 (:func:`resolve_openvino_precision`).
* A session that ONNX Runtime quietly created on another provider (what it does when the CUDA
  libraries fail to load) is refused with the reason, never used.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from .errors import OrtTurboError, RuntimeUnavailable
from .providers import provider

#: how many CUDA graphs (distinct input shapes) one session keeps in static mode
DEFAULT_MAX_CUDA_GRAPHS = 8

#: TensorRT profile when the user asks for nothing else: batch 1-4 rows, 512-1024 px, 77-154 tokens (a
#: profile's maximum is what TensorRT sizes its memory for; the demo uses batch 1-8 at 256-1024 px)
DEFAULT_TRT_RANGES = {"batch": [1, 4], "height_px": [512, 1024], "width_px": [512, 1024], "sequence": [77, 154]}
#: the shape TensorRT tunes for inside the profile
TRT_OPT = {"batch": 1, "height_px": 512, "width_px": 512, "sequence": 77}


# -- streams -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StreamOrder:
    """How a CUDA run is ordered against torch's stream, as steps carried out by :func:`run_ordered`.

    Handle 0 is CUDA's legacy default stream, which ORT reads as "no stream given"
    (``has_user_compute_stream = user_compute_stream != nullptr``): it then runs on its own non-blocking
    stream. So a shared stream is only ever a dedicated non-zero one, and only then is ORT's own
    synchronization disabled; otherwise torch's pending work is waited for before the run and ORT
    synchronizes after it (its default).
    """

    handle: int | None  # the ORT compute stream handle, None when ORT uses its own stream
    steps: tuple

    @property
    def shared(self) -> bool:
        return self.handle is not None


#: ORT runs on a dedicated torch stream: it waits for torch's stream, the inputs are marked in use by it
#: (torch's allocator must not hand their memory out before ORT is done), and torch's stream waits for it.
SHARED_STREAM_STEPS = (("wait", "ort", "torch"), ("record_inputs", "ort"), ("run",), ("wait", "torch", "ort"))
#: ORT on its own stream: finish torch's queued work first (ORT's stream is not ordered against it); ORT
#: synchronizes its own stream before the run returns.
OWN_STREAM_STEPS = (("synchronize", "torch"), ("run",))


def stream_order(handle: int | None) -> StreamOrder:
    if handle:  # neither None nor 0
        return StreamOrder(int(handle), SHARED_STREAM_STEPS)
    return StreamOrder(None, OWN_STREAM_STEPS)


def run_ordered(order: StreamOrder, run, *, torch_stream, ort_stream, inputs=(), synchronize=None):
    """Carry out ``order`` around ``run()``; ``torch_stream``/``ort_stream`` are ``torch.cuda.Stream``s (or
    stand-ins with ``wait_stream``), ``inputs`` the tensors ORT reads, ``synchronize`` waits for torch."""
    streams = {"torch": torch_stream, "ort": ort_stream}
    result = None
    for step in order.steps:
        if step[0] == "wait":
            streams[step[1]].wait_stream(streams[step[2]])
        elif step[0] == "record_inputs":
            for t in inputs:
                t.record_stream(streams[step[1]])
        elif step[0] == "synchronize":
            synchronize()
        elif step[0] == "run":
            result = run()
        else:
            raise ValueError(f"unknown stream step {step!r}")
    return result


# -- the session plan --------------------------------------------------------------------------


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
    stream: StreamOrder | None = None  # CUDA/TensorRT only
    #: the arithmetic the provider was told to use at load time (OpenVINO: "bf16" or "fp32"); None where
    #: the artefact's own precision is what runs
    precision: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def conv_algo_search(cuda_graph: bool) -> str:
    """cuDNN's convolution algorithm search. EXHAUSTIVE (ORT's default) benchmarks every algorithm at each
    new input shape: with dynamic shapes every new (batch, height, width) pays it, for SD-Turbo's 1-4 steps
    often more than it saves. With static graphs each shape is captured once and replayed many times, so
    the search is paid once per shape and the fastest kernels are kept."""
    return "EXHAUSTIVE" if cuda_graph else "HEURISTIC"


def _cuda_options(device_id: int, order: StreamOrder, cuda_graph: bool, extra: dict | None = None) -> dict:
    options = {
        "device_id": str(device_id),
        "arena_extend_strategy": "kSameAsRequested",
        "enable_cuda_graph": "1" if cuda_graph else "0",
        "cudnn_conv_algo_search": conv_algo_search(cuda_graph),
        **(extra or {}),
    }
    if order.shared:
        options["user_compute_stream"] = str(order.handle)
    return options


def trt_ranges(shape_ranges: dict, requested: dict | None = None) -> dict:
    """The TensorRT profile's ranges: what was asked for (else :data:`DEFAULT_TRT_RANGES`) inside what the
    artefact allows (``shape_ranges`` in latent units, as in a manifest). Pixel ranges in the result."""
    wanted = requested or DEFAULT_TRT_RANGES
    allowed = {"batch": shape_ranges["batch"], "sequence": shape_ranges.get("sequence", [1, 1]),
               "height_px": [8 * v for v in shape_ranges["height"]], "width_px": [8 * v for v in shape_ranges["width"]]}
    out = {}
    for key, (lo, hi) in wanted.items():
        a_lo, a_hi = allowed[key]
        out[key] = [max(lo, a_lo), min(hi, a_hi)]
        if out[key][0] > out[key][1]:
            raise OrtTurboError(f"the TensorRT {key} range {lo}..{hi} lies outside this artefact's {a_lo}..{a_hi}")
    return out


def _profile_strings(shape_of, ranges: dict) -> dict:
    opt = {k: min(max(TRT_OPT[k], lo), hi) for k, (lo, hi) in ranges.items()}
    pick = lambda i: {k: (v[i] if i < 2 else opt[k]) for k, v in ranges.items()}  # noqa: E731
    return {f"trt_profile_{label}_shapes": shape_of(pick(i)) for i, label in ((0, "min"), (2, "opt"), (1, "max"))}


def unet_trt_profiles(manifest: dict, requested: dict | None = None) -> dict:
    """TensorRT optimization profile strings (min / opt / max) for a UNet artefact."""
    io = manifest["io"]
    ranges = trt_ranges(manifest["shape_ranges"], requested)

    def shape_of(r):
        b, h, w, s = r["batch"], r["height_px"] // 8, r["width_px"] // 8, r["sequence"]
        dims = {"sample": (b, io["in_channels"], h, w), "timestep": (b,),
                "encoder_hidden_states": (b, s, io["context_dim"]), "y": (b, io.get("adm_dim") or 0)}
        return ",".join(f"{n}:{'x'.join(str(d) for d in dims[n])}" for n in manifest["input_names"])

    return _profile_strings(shape_of, ranges)


def vae_trt_profiles(input_name: str, channels: int, pixels_per_unit: int, requested: dict | None = None) -> dict:
    """Profiles for a VAE part: the decoder takes latents (``pixels_per_unit`` 8), the encoder images (1)."""
    wanted = dict(requested or DEFAULT_TRT_RANGES)
    wanted.pop("sequence", None)
    ranges = {k: list(v) for k, v in wanted.items()}

    def shape_of(r):
        dims = (r["batch"], channels, r["height_px"] // pixels_per_unit, r["width_px"] // pixels_per_unit)
        return f"{input_name}:{'x'.join(str(d) for d in dims)}"

    return _profile_strings(shape_of, ranges)


def default_trt_cache() -> Path:
    from .install_layout import Layout

    return Layout.default().trt_cache


#: the OpenVINO precision setting's values; "auto" is bf16 where the CPU has native bf16, else fp32
OPENVINO_PRECISIONS = ("auto", "bf16", "fp32")


def resolve_openvino_precision(choice: str = "auto", flags=None) -> str:
    """"bf16" or "fp32" for the OpenVINO precision ``choice``. "auto" asks the CPU's ``flags`` (this CPU's,
    read once, when None): bf16 is 3-4x faster than the CPU provider only with native bf16, and fp32 is
    not faster at all, so "auto" never emulates bf16."""
    if choice not in OPENVINO_PRECISIONS:
        raise ValueError(f"unknown OpenVINO precision {choice!r}; choose one of: {', '.join(OPENVINO_PRECISIONS)}")
    if choice != "auto":
        return choice
    from .cpu_features import has_native_bf16, this_cpu_flags

    return "bf16" if has_native_bf16(this_cpu_flags() if flags is None else flags) else "fp32"


def openvino_options(threads: int, precision: str, cache_dir: str | os.PathLike | None = None) -> dict:
    """The OpenVINO provider's options (all strings) for its CPU device. bf16 goes through ``load_config``,
    a JSON string for the CPU plugin (its ``precision`` option takes only FP32 or ACCURACY on CPU; a path
    to a JSON file is not read). ``cache_dir`` turns on OpenVINO's model cache, off by default: measured
    (onnxruntime-openvino 1.24.1, SD-Turbo UNet, bf16) it wrote a 3.3 GB blob and later loads took 8 s
    instead of 2.8 s without it (the VAE decoder: 0.6-0.8 s instead of 1.2 s) -- the compile it saves is
    cheaper than reading the blob."""
    options = {"device_type": "CPU", "num_of_threads": str(int(threads))}
    if precision == "bf16":
        options["load_config"] = json.dumps({"CPU": {"INFERENCE_PRECISION_HINT": "bf16"}})
    elif precision == "fp32":
        options["precision"] = "FP32"
    else:
        raise ValueError(f"OpenVINO runs in bf16 or fp32, not {precision!r}")
    if cache_dir:
        options["cache_dir"] = str(cache_dir)
    return options


def _cpu_threads(intra_op_threads: int | None) -> int:
    """``intra_op_threads``, else torch's thread count (torch is only imported when it is not given)."""
    if intra_op_threads is None:
        import torch

        intra_op_threads = torch.get_num_threads()
    return int(intra_op_threads)


def plan_session(ep: str, *, manifest: dict | None = None, device_id: int = 0, stream: int | None = None,
                 cuda_graph: bool = False, intra_op_threads: int | None = None,
                 cache_dir: str | os.PathLike | None = None, cpu_memory_arena: bool = True,
                 trt_profiles: dict | None = None, cuda_options: dict | None = None,
                 shrink_arena: bool = False, openvino_precision: str = "auto") -> SessionPlan:
    """What the session for ``ep`` is made of. ``stream`` is a CUDA stream handle (an int): a dedicated
    non-zero stream is shared with ORT, 0 or None leaves ORT on its own stream (see :class:`StreamOrder`).

    ``cpu_memory_arena=False`` lets ORT's CPU provider free each buffer after the run instead of keeping
    it in its arena: for graphs whose activations are hundreds of MB (the VAE at 512²) that was measured
    faster on CPU (docs/benchmarks.md, "VAE on ONNX Runtime (CPU)").
    ``shrink_arena`` gives the device arena's unused memory back after each run (the VAE: large, rare
    activations that would otherwise stay reserved). ``trt_profiles`` overrides the profiles computed from
    ``manifest``; ``cuda_options`` adds CUDA provider options (the VRAM policy's).
    ``cache_dir`` is TensorRT's engine cache (default: the layout's) or OpenVINO's model cache (default: none);
    ``openvino_precision`` one of :data:`OPENVINO_PRECISIONS`."""
    name = {key: provider(key).ort_name for key in (ep, "cpu", "cuda")}  # a ValueError for an unknown ep
    session_options = {"graph_optimization_level": "ORT_ENABLE_ALL", "execution_mode": "ORT_SEQUENTIAL"}
    session_config: dict = {}
    run_config: dict = {}
    if ep in ("cpu", "openvino"):
        threads = _cpu_threads(intra_op_threads)
        session_options["intra_op_num_threads"] = threads  # the CPU provider's, and any node OpenVINO leaves it
        if not cpu_memory_arena:
            session_options["enable_cpu_mem_arena"] = False
        plans = [(name["cpu"], {})]
        precision = None
        if ep == "openvino":
            precision = resolve_openvino_precision(openvino_precision)
            plans.insert(0, (name[ep], openvino_options(threads, precision, cache_dir)))
        return SessionPlan(ep, plans, session_options, session_config, run_config,
                           io_binding=False, cuda_graph=False, preload_dlls=False, precision=precision)
    if ep == "dml":
        # DirectML wants no memory pattern and sequential execution
        session_options["enable_mem_pattern"] = False
        return SessionPlan(ep, [(name[ep], {"device_id": str(device_id)}), (name["cpu"], {})],
                           session_options, session_config, run_config,
                           io_binding=False, cuda_graph=False, preload_dlls=False)
    order = stream_order(stream)
    graphs = cuda_graph and ep == "cuda"
    cuda = _cuda_options(device_id, order, graphs, cuda_options)
    if order.shared:
        # ORT runs on our dedicated stream, ordered by StreamOrder's events: it need not synchronize itself
        run_config["disable_synchronize_execution_providers"] = "1"
    if shrink_arena:
        run_config["memory.enable_memory_arena_shrinkage"] = f"gpu:{device_id}"
    providers = [(name["cuda"], cuda), (name["cpu"], {})]
    if ep == "tensorrt":
        cache = str(Path(cache_dir) if cache_dir else default_trt_cache())
        trt = {
            "device_id": str(device_id),
            "trt_fp16_enable": "True",
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": cache,
            "trt_timing_cache_enable": "True",
            "trt_timing_cache_path": cache,
            "trt_cuda_graph_enable": "True" if cuda_graph else "False",
        }
        if trt_profiles is None and manifest is not None:
            trt_profiles = unet_trt_profiles(manifest)
        trt.update(trt_profiles or {})
        if order.shared:
            trt["user_compute_stream"] = str(order.handle)
        providers.insert(0, (name[ep], trt))
    return SessionPlan(ep, providers, session_options, session_config, run_config,
                       io_binding=True, cuda_graph=graphs, preload_dlls=True,
                       dll_directories=side_cudnn_directories(), stream=order)


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

    wanted = provider(ep).ort_name
    available = ort.get_available_providers()
    if wanted not in available:
        raise RuntimeUnavailable(
            f"this ONNX Runtime ({ort.__version__}) has no {wanted}; it has {', '.join(available)}. "
            "Install the matching onnxruntime package or choose another execution provider.")


def require_tensorrt_libraries(find=None) -> str:
    """onnxruntime-gpu lists TensorRT whether or not TensorRT is installed, then quietly builds a CUDA
    session. Raise ``OrtTurboError`` unless libnvinfer loads; the library's name otherwise."""
    from .cuda_libraries import NVINFER_NAMES, tensorrt_library

    found = (find or tensorrt_library)()
    if not found:
        names = NVINFER_NAMES["nt" if os.name == "nt" else "posix"]
        raise OrtTurboError(
            f"TensorRT is not installed here (none of {', '.join(names)} could be loaded). Install TensorRT 10 with "
            "its lib folder on the library path (LD_LIBRARY_PATH on Linux, PATH on Windows) or choose the CUDA "
            "provider.")
    return found


def create_session(model_path: str | os.PathLike, plan: SessionPlan, initializers: dict | None = None):
    """Carry out ``plan``: an ``onnxruntime.InferenceSession`` on the planned provider, or an error.

    ``initializers`` (name -> C-contiguous numpy array) replace the model file's weights of those names,
    all through ``SessionOptions.add_external_initializers``, which puts them in the file's place when the
    graph is loaded, before ORT's optimizations. ``add_initializer`` is not used: measured (ORT 1.26 and
    1.32, CPU, ORT_ENABLE_ALL), some convolution weights and the final convolution's bias given that way
    were ignored. ORT 1.26 refuses to replace a weight stored inside the model file (under 1 KB) this
    way: that error is raised, never a weight silently ignored. ORT reads the caller's memory, which must
    outlive the session (the OrtValues are kept on the session)."""
    ort = import_onnxruntime()

    require_provider(plan.ep)
    if plan.ep == "tensorrt":
        require_tensorrt_libraries()
    wanted = plan.providers[0][0]
    if plan.preload_dlls:
        from .cuda_libraries import load_side_cudnn9

        if plan.dll_directories:
            load_side_cudnn9(plan.dll_directories)  # by absolute path, checked; raises OrtTurboError
        elif hasattr(ort, "preload_dlls"):
            try:
                ort.preload_dlls()  # CUDA/cuDNN from pip packages, where torch has not loaded them
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
    # the OrtValues (and the arrays they wrap) must live as long as the session: kept on it below
    given = {name: ort.OrtValue.ortvalue_from_numpy(array) for name, array in (initializers or {}).items()}
    if given:
        options.add_external_initializers(list(given), list(given.values()))
    try:
        session = ort.InferenceSession(str(model_path), sess_options=options, providers=plan.providers)
    except Exception as exc:
        if plan.ep == "tensorrt":
            profiles = {k: v for k, v in plan.providers[0][1].items() if k.startswith("trt_profile")}
            raise OrtTurboError(
                f"TensorRT could not build its engine for {Path(model_path).parent.name} (profiles {profiles}): {exc}. "
                "Engines need much GPU memory and time for large profiles; try smaller sizes or the CUDA provider."
            ) from exc
        raise OrtTurboError(f"ONNX Runtime could not load {Path(model_path).parent.name} on {wanted}: {exc}") from exc
    session.ort_turbo_initializers = given
    require_planned_provider(session, plan)
    return session


#: why ONNX Runtime may have built a session on another provider than the planned one, per provider key
_FALLBACK_CAUSES = {
    "openvino": "the OpenVINO provider could not be created: an option this onnxruntime-openvino does not take, "
                "or a CPU OpenVINO does not support; choose OpenVINO precision fp32 or the CPU provider",
}


def require_planned_provider(session, plan: SessionPlan) -> None:
    """ONNX Runtime only logs when a provider cannot be created and builds the session on the next one (for
    OpenVINO and CUDA: the CPU provider, many times slower). Raise ``OrtTurboError`` unless ``session``'s first
    provider is the planned one, with the likely cause; the session is never used on another provider."""
    wanted = plan.providers[0][0]
    used = session.get_providers()
    if not used or used[0] != wanted:
        cause = _FALLBACK_CAUSES.get(plan.ep, "its CUDA/cuDNN libraries probably failed to load")
        raise OrtTurboError(
            f"ONNX Runtime fell back to {used[0] if used else 'nothing'} instead of {wanted} ({cause}; ONNX "
            "Runtime's own error is in the console above). Refusing to run silently on another provider.")


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


@dataclasses.dataclass(frozen=True)
class GraphPolicy:
    """Whether a session captures CUDA graphs, and why.

    ORT keeps captured graphs per calling thread (``cuda_graph_`` lives in the CUDA provider's
    PerThreadContext, captured after 2 regular runs), and the WebUI calls the UNet from whichever worker
    thread runs the job: each (shape, thread) pair would capture again. So graph runs all go through one
    dedicated thread (:class:`GraphThread`). Graphs stay off unless asked for (at SD-Turbo's 1-4 steps
    the capture may cost more than replay saves; the GPU check measures it), and are refused when the
    optimized graph has Memcpy nodes (nodes placed on the CPU), which ORT cannot capture.
    """

    use_graphs: bool
    dedicated_thread: bool
    reason: str


def graph_policy(requested: bool, ep: str, memcpy_nodes: int | None) -> GraphPolicy:
    if not requested:
        return GraphPolicy(False, False, "CUDA graphs not asked for")
    if ep != "cuda":
        return GraphPolicy(False, False, f"CUDA graphs are for the CUDA provider, not {ep}")
    if memcpy_nodes:
        return GraphPolicy(False, False, f"CUDA graphs refused: the optimized graph has {memcpy_nodes} Memcpy "
                                         "node(s) (some nodes run on the CPU), which ORT cannot capture")
    return GraphPolicy(True, True, "CUDA graphs on, replayed on one dedicated thread")


class GraphThread:
    """One worker thread that makes every run of a graph-capturing session, whichever thread asks."""

    def __init__(self, name: str = "ort-turbo-cuda-graphs"):
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    def call(self, fn):
        return self._pool.submit(fn).result()

    def close(self) -> None:
        self._pool.shutdown(wait=False)


class CudaRunner:
    """Runs a CUDA/TensorRT session on torch CUDA tensors through IO binding.

    ``ort_stream`` is the dedicated ``torch.cuda.Stream`` whose handle the plan gave ORT (None when ORT
    runs on its own stream); ``graph_thread`` the :class:`GraphThread` of a graph-capturing session.
    """

    def __init__(self, session, plan: SessionPlan, output_name: str, max_graphs: int = DEFAULT_MAX_CUDA_GRAPHS,
                 *, ort_stream=None, graph_thread: GraphThread | None = None):
        self.session = session
        self.plan = plan
        self.output_name = output_name
        self.graphs = CudaGraphBook(max_graphs) if plan.cuda_graph else None
        self.ort_stream = ort_stream
        self.graph_thread = graph_thread
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

    def _run_bound(self, plan: BindingPlan) -> None:
        import onnxruntime as ort

        binding = self.session.io_binding()
        for t in plan.inputs:
            binding.bind_input(t.name, t.device_type, t.device_id, _np_dtype(t.element_type), t.shape, t.data_ptr)
        for t in plan.outputs:
            binding.bind_output(t.name, t.device_type, t.device_id, _np_dtype(t.element_type), t.shape, t.data_ptr)
        run_options = ort.RunOptions()
        for key, value in {**self.plan.run_config, **plan.run_config()}.items():
            run_options.add_run_config_entry(key, value)
        self.session.run_with_iobinding(binding, run_options)

    def call(self, plan: BindingPlan) -> None:
        """One session run of ``plan``, on the graph thread when there is one."""
        if self.graph_thread is not None:
            return self.graph_thread.call(lambda: self._run_bound(plan))
        return self._run_bound(plan)

    def run(self, feeds: dict, output_shape: tuple, output_dtype):
        import torch

        plan, out = self.bindings_for(feeds, output_shape, output_dtype)
        run = lambda: self.call(plan)  # noqa: E731
        device = out.device
        inputs = list(feeds.values()) if plan.graph_id is None or plan.graph_id < 0 else list(self._static_inputs(feeds))
        run_ordered(self.plan.stream or stream_order(None), run, torch_stream=torch.cuda.current_stream(device),
                    ort_stream=self.ort_stream, inputs=inputs, synchronize=lambda: torch.cuda.synchronize(device))
        # a static buffer is overwritten by the next call of the same shape
        return out.clone() if plan.graph_id is not None and plan.graph_id >= 0 else out

    def _static_inputs(self, feeds: dict):
        key = tuple((n, tuple(t.shape), t.dtype) for n, t in feeds.items())
        return self._static[key][0].values()


def _np_dtype(name: str):
    import numpy as np

    return np.dtype(name)


# -- placement ------------------------------------------------------------------------------------


def placement_report(model_path: str | os.PathLike, provider_options: list) -> dict | None:
    """Count the Memcpy nodes in the graph ORT makes of ``model_path`` for ``provider_options`` (the
    ``providers`` list of a session): it saves its optimized graph once (``optimized_model_filepath``,
    weights to a side file) into a temporary folder, which is read and removed. None when this ONNX
    Runtime lacks the first provider (an Olive toolchain without onnxruntime-gpu)."""
    import tempfile

    import onnxruntime as ort

    from .graph import memcpy_count

    provider = provider_options[0][0]
    if provider not in ort.get_available_providers():
        return None
    with tempfile.TemporaryDirectory(prefix="ort-turbo-placement-") as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", "optimized.bin")
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        session = ort.InferenceSession(str(model_path), sess_options=options, providers=provider_options)
        used = session.get_providers()
        del session
        count = memcpy_count(Path(tmp) / "optimized.onnx")
    return {"memcpy_nodes": count, "provider": provider, "providers_used": used, "onnxruntime": ort.__version__}
