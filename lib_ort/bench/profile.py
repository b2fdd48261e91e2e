"""Where one UNet call's time goes, in PyTorch eager and in ONNX Runtime, against this machine's own
float32 matrix rate.

The CPU target ("recipe >= 2x eager") is bounded by arithmetic: a UNet call is a fixed number of
floating-point operations, nearly all of them in convolutions, matrix products and attention, and no
graph rewrite removes any of them. So the profile counts those operations from the shapes ORT reports
for each node, times a large sgemm on the same threads, and puts both beside the per-category times of
each configuration. ``floor_ms`` (FLOPs / sgemm rate) is about the fastest an fp32 call can be here; the
ratio eager / floor is the largest speed-up any fp32 graph can show over eager on this machine.

FLOPs are counted as 2 per multiply-add, for Conv, MatMul/Gemm and attention only (what the matrix
units do); element-wise work is timed but not counted.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

#: profiled calls per PyTorch path (see ``run_profile``); their wall times are the profiler's, so speed-ups
#: come from ``bench``, unprofiled
TORCH_PROFILED_CALLS = 1
#: categories, in report order
CATEGORIES = ("convolution", "matmul", "attention", "normalization", "layout/copy", "elementwise/other")
#: where the FLOPs are counted (torch also counts element-wise adds and multiplies; they are left out)
MATRIX_CATEGORIES = CATEGORIES[:3]

_ORT_CATEGORY = {
    **dict.fromkeys(("Conv", "FusedConv", "NhwcConv", "ConvTranspose"), "convolution"),
    **dict.fromkeys(("MatMul", "FusedMatMul", "Gemm"), "matmul"),
    **dict.fromkeys(("Attention", "MultiHeadAttention", "Softmax"), "attention"),
    **dict.fromkeys(("GroupNorm", "SkipGroupNorm", "InstanceNormalization", "LayerNormalization",
                     "SkipLayerNormalization"), "normalization"),
    **dict.fromkeys(("ReorderInput", "ReorderOutput", "Transpose", "Reshape", "Concat", "Slice", "Split",
                     "Expand", "Identity", "Squeeze", "Unsqueeze", "Shape", "Gather", "Cast"), "layout/copy"),
}

# PyTorch ops by a part of their name; first match wins, in this order
_TORCH_CATEGORY = (
    ("conv", "convolution"),
    ("scaled_dot_product", "attention"), ("softmax", "attention"),
    ("addmm", "matmul"), ("baddbmm", "matmul"), ("bmm", "matmul"), ("aten::mm", "matmul"),
    ("matmul", "matmul"), ("linear", "matmul"), ("einsum", "matmul"),
    ("norm", "normalization"),
    ("copy", "layout/copy"), ("clone", "layout/copy"), ("contiguous", "layout/copy"), ("permute", "layout/copy"),
    ("transpose", "layout/copy"), ("reshape", "layout/copy"), ("view", "layout/copy"), ("aten::cat", "layout/copy"),
    ("aten::t", "layout/copy"), ("slice", "layout/copy"), ("chunk", "layout/copy"), ("split", "layout/copy"),
    ("expand", "layout/copy"), ("as_strided", "layout/copy"), ("empty", "layout/copy"),
)


def ort_category(op_type: str) -> str:
    return _ORT_CATEGORY.get(op_type, "elementwise/other")


def torch_category(op_name: str) -> str:
    for part, category in _TORCH_CATEGORY:
        if part in op_name:
            return category
    return "elementwise/other"


def _shapes(entries) -> list[list[int]]:
    return [list(next(iter(e.values()))) for e in entries or ()]


def node_flops(op_type: str, inputs: list[list[int]], outputs: list[list[int]]) -> float:
    """Multiply-add FLOPs of one node from the shapes ORT's profiler reports (constant weights are not
    among them, so each formula reads the activation shapes, and a weight shape only where it is listed).
    0 for ops that are not matrix work, and where the shapes do not tell."""
    if not outputs or not inputs:
        return 0.0
    out = outputs[0]
    if op_type in ("Conv", "FusedConv", "NhwcConv"):
        if len(inputs) < 2 or len(inputs[1]) < 3:
            return 0.0
        weight = inputs[1]  # [Cout, Cin/groups, kh, kw]: each output element is prod(weight[1:]) MACs
        return 2.0 * math.prod(out) * math.prod(weight[1:])
    if op_type in ("MatMul", "FusedMatMul", "Gemm"):
        a = inputs[0]
        # FusedMatMul/Gemm may transpose A (the attribute is not in the profile): K is A's dim that is not M
        k = a[-2] if len(a) >= 2 and len(out) >= 2 and a[-2] != out[-2] and a[-1] == out[-2] else a[-1]
        return 2.0 * math.prod(out) * k
    if op_type == "MultiHeadAttention":
        q = inputs[0]
        kv = inputs[1] if len(inputs) > 1 and inputs[1] else q
        batch, q_len, hidden = q[0], q[1], out[-1]
        kv_len = kv[1]
        return 4.0 * batch * q_len * kv_len * hidden  # Q K^T and softmax(.) V
    if op_type == "Attention":
        x = inputs[0]
        batch, length, hidden_in, hidden = x[0], x[1], x[-1], out[-1]
        qkv = inputs[1][0] if len(inputs) > 1 and len(inputs[1]) == 1 else 3 * hidden  # listed bias: [3H]
        return 2.0 * batch * length * hidden_in * qkv + 4.0 * batch * length * length * hidden
    return 0.0


@dataclasses.dataclass
class Breakdown:
    """One configuration's call: milliseconds and FLOPs per category, and its slowest ops."""

    config: str
    total_ms: float
    ms: dict
    flops: dict
    top_ops: list  # [(name, ms)], slowest first

    def to_dict(self) -> dict:
        rates = {c: round(self.flops[c] / self.ms[c] / 1e6, 1) for c in MATRIX_CATEGORIES
                 if self.flops.get(c) and self.ms.get(c)}
        return {"config": self.config, "total_ms": round(self.total_ms, 1),
                "ms": {c: round(self.ms.get(c, 0.0), 1) for c in CATEGORIES},
                "gflop": {c: round(self.flops[c] / 1e9, 4) for c in MATRIX_CATEGORIES if self.flops.get(c)},
                "gflops": rates, "top_ops": [[n, round(ms, 1)] for n, ms in self.top_ops]}


def profile_ort(model_path, values: list, runs: int = 2, warmup: int = 1, config: str = "ORT",
                cpu_memory_arena: bool = True) -> Breakdown:
    """Run the session with ORT's profiler on and add up node times and FLOPs per category (per call)."""
    from ..sessions import create_session, plan_session

    plan = plan_session("cpu", cpu_memory_arena=cpu_memory_arena)
    with tempfile.TemporaryDirectory(prefix="ort-turbo-profile-") as tmp:
        options = {**plan.session_options, "enable_profiling": True, "profile_file_prefix": str(Path(tmp) / "ort")}
        session = create_session(model_path, dataclasses.replace(plan, session_options=options))
        feed = dict(zip([i.name for i in session.get_inputs()], values))
        for _ in range(warmup):
            session.run(None, feed)
        start = time.perf_counter()
        for _ in range(runs):
            session.run(None, feed)
        wall_ms = (time.perf_counter() - start) * 1000.0 / runs
        events = json.loads(Path(session.end_profiling()).read_text())
        del session
    gc.collect()
    ms, flops, by_op = defaultdict(float), defaultdict(float), defaultdict(float)
    calls = runs + warmup
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        args = event.get("args", {})
        op = args.get("op_name", "?")
        category = ort_category(op)
        ms[category] += event["dur"] / 1000.0 / calls
        by_op[op] += event["dur"] / 1000.0 / calls
        flops[category] += node_flops(op, _shapes(args.get("input_type_shape")),
                                      _shapes(args.get("output_type_shape"))) / calls
    top = sorted(by_op.items(), key=lambda kv: -kv[1])[:8]
    return Breakdown(config, wall_ms, dict(ms), dict(flops), top)


def profile_torch(model, inputs: dict, runs: int = 2, warmup: int = 1, config: str = "PyTorch eager") -> Breakdown:
    """Time the eager call under torch's profiler: self time per op, FLOPs where torch counts them."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        for _ in range(warmup):
            model(**inputs)
        with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
            start = time.perf_counter()
            for _ in range(runs):
                model(**inputs)
            wall_ms = (time.perf_counter() - start) * 1000.0 / runs
    ms, flops, by_op = defaultdict(float), defaultdict(float), defaultdict(float)
    for item in prof.key_averages():
        category = torch_category(item.key)
        self_ms = item.self_cpu_time_total / 1000.0 / runs
        ms[category] += self_ms
        by_op[item.key] += self_ms
        flops[category] += (item.flops or 0) / runs
    top = sorted(by_op.items(), key=lambda kv: -kv[1])[:8]
    return Breakdown(config, wall_ms, dict(ms), dict(flops), top)


def _best_rate(run, n: int, runs: int) -> float:
    run()
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return 2.0 * n ** 3 / best / 1e9


def sgemm_rates(threads: int, n: int = 2048, runs: int = 5) -> dict:
    """GFLOP/s of a large float32 matrix product on ``threads`` threads, by torch (MKL/oneDNN) and by
    ONNX Runtime (MLAS): the rate a UNet call's matrix work can at best run at. The two libraries differ
    by CPU vendor, so both are measured and the faster one sets the floor."""
    rates = {}
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        rates["torch"] = _best_rate(lambda: a @ b, n, runs)
    finally:
        torch.set_num_threads(old)
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:  # the WebUI's environment has no onnx package: torch's rate alone
        return rates
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "sgemm",
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in "ab"],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed = {"a": a.numpy(), "b": b.numpy()}
    rates["onnxruntime"] = _best_rate(lambda: session.run(None, feed), n, runs)
    return rates


def run_profile(arch: str, ep: str = "cpu", *, batch: int = 1, height: int | None = None, width: int | None = None,
                seq: int = 77, runs: int = 2, warmup: int = 1, root=None, seed: int = 0, toolchain=None,
                out_dir=None, progress=None) -> dict:
    """Profile the PyTorch paths (``baselines.py``), the unfused export and the provider's recipe on one
    input; see the module docstring."""
    from ..describe import state_dict_digest
    from ..optimize import Toolchain
    from ..pipeline import prepare
    from ..registry import Registry
    from .architectures import ARCHITECTURES, build_unet, example_inputs
    from .baselines import baseline_context, baselines_for, fastest_baseline

    if ep != "cpu":
        raise ValueError("the profile runs on the CPU provider only (ORT's profiler times GPU kernels differently)")
    report = progress or (lambda fraction, message: None)
    spec = ARCHITECTURES[arch]
    lh = (height // 8) if height else spec.latent_size
    lw = (width // 8) if width else spec.latent_size
    model = build_unet(arch, seed=seed)
    checkpoint = {"hash": state_dict_digest(model), "name": f"{arch} (random weights, seed {seed})"}
    prepared = prepare(model, Registry(root), checkpoint, ep, toolchain=toolchain or Toolchain(), progress=progress)
    inputs = example_inputs(model, batch, lh, lw, seq, seed=seed)
    threads = torch.get_num_threads()
    report(0.1, "sgemm rate")
    rates = sgemm_rates(threads)
    rate = max(rates.values())
    breakdowns = []
    for name, forwards in baselines_for(model).items():
        report(0.2, f"{name} under torch's profiler")
        with baseline_context(model, forwards):
            # one profiled call: torch's profiler keeps every op's record, and InvokeAI's sliced attention
            # makes that ~3.7 GB per full-size SD-Turbo call (measured); 5 of them ran a 24 GB machine out
            breakdowns.append(profile_torch(model, inputs, TORCH_PROFILED_CALLS, warmup, config=name))
    torch_count = len(breakdowns)
    feed_values = [t.numpy() for t in inputs.values()]
    graphs = []
    if prepared.export_folder is not None:
        graphs.append(("ORT unfused", prepared.export_folder / "model.onnx"))
    graphs.append((f"ORT {ep} recipe", prepared.artefact.folder / "model.onnx"))
    for config, path in graphs:
        report(0.5, f"{config} under ORT's profiler")
        breakdowns.append(profile_ort(path, feed_values, runs, warmup, config))
    # the graph's count is exact (shapes of every node); torch counts only some ops
    gflop = max(sum(b.flops.values()) for b in breakdowns[torch_count:]) / 1e9
    floor_ms = gflop / rate * 1000.0
    eager_ms = breakdowns[0].total_ms
    baseline = fastest_baseline({b.config: b.total_ms for b in breakdowns[:torch_count]})
    baseline_ms = next(b.total_ms for b in breakdowns if b.config == baseline)
    result = {
        "arch": arch, "ep": ep, "batch": batch, "height": lh * 8, "width": lw * 8, "sequence": seq,
        "threads": threads, "runs": runs, "warmup": warmup,
        "sgemm_gflops": round(rate, 1), "sgemm_gflops_by_library": {k: round(v, 1) for k, v in rates.items()},
        "call_gflop": round(gflop, 4), "floor_ms": round(floor_ms, 3),  # a tiny model's floor is ~1 ms
        "max_speedup_over_eager": round(eager_ms / floor_ms, 2),
        # the faster of the WebUI's PyTorch paths, and the most any fp32 graph can gain over it here
        "baseline": baseline, "max_speedup_over_baseline": round(baseline_ms / floor_ms, 2),
        "configs": [b.to_dict() for b in breakdowns],
        "method": (f"{warmup} warm-up + {runs} profiled calls per ORT graph ({TORCH_PROFILED_CALLS} per PyTorch "
                   "path), times per call; categories "
                   "from self time (torch) and node time (ORT); GFLOP counted from ORT's node shapes for "
                   "Conv/MatMul/Gemm/attention; floor = call GFLOP / the faster sgemm (torch or ONNX Runtime) "
                   "on the same threads"),
    }
    for b in result["configs"]:
        b["share_of_floor"] = round(floor_ms / b["total_ms"], 2)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        stem = f"unet-profile-{arch}-{ep}"
        (out / f"{stem}.json").write_text(json.dumps(result, indent=2))
        (out / f"{stem}.md").write_text(profile_markdown(result) + "\n")
        result["files"] = [str(out / f"{stem}.json"), str(out / f"{stem}.md")]
    return result


def _seconds(ms: float) -> str:
    return f"{ms / 1000:.2f} s" if ms >= 1000 else f"{ms:.1f} ms"


def profile_markdown(result: dict) -> str:
    configs = result["configs"]
    lines = [
        f"{result['arch']} UNet, batch {result['batch']}, {result['height']}x{result['width']}, "
        f"{result['threads']} threads: one call is {result['call_gflop']} GFLOP of matrix work; a "
        f"{result['sgemm_gflops']} GFLOP/s sgemm puts the floor at {_seconds(result['floor_ms'])}, so no fp32 "
        f"graph can be more than {result['max_speedup_over_baseline']}x faster than {result['baseline']} (the "
        f"faster WebUI path) here, {result['max_speedup_over_eager']}x than ldm eager.",
        "",
        "| category | " + " | ".join(c["config"] for c in configs) + " |",
        "|---|" + "---|" * len(configs),
    ]
    for category in CATEGORIES:
        cells = []
        for c in configs:
            cell = _seconds(c["ms"][category])
            if category in c["gflops"]:
                cell += f" ({c['gflops'][category]:.0f} GFLOP/s)"
            cells.append(cell)
        lines.append(f"| {category} | " + " | ".join(cells) + " |")
    lines.append("| **call (wall)** | " + " | ".join(
        f"**{_seconds(c['total_ms'])}** ({100 * c['share_of_floor']:.0f} % of floor rate)" for c in configs) + " |")
    return "\n".join(lines)
