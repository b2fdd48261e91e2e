"""End-to-end benchmark against a running WebUI over its API (``--api``), the way the blog timed it:
whole txt2img requests at fixed (batch, steps), size and seed, warm-up first, then the median of
several runs. It never starts or installs a WebUI; it talks to the one at ``--url``.

Three configurations, all at CFG scale 1 with Euler a + SGM Uniform:
* ``WebUI stock``: SD Unet "None", ORT Turbo's CFG-free off (the UNet runs 2B rows);
* ``WebUI + CFG-free``: SD Unet "None", CFG-free on (B rows);
* ``ORT Turbo``: SD Unet "ORT Turbo", CFG-free on. A request whose infotext says the PyTorch UNet
  ran instead is reported as such, not counted as ORT Turbo.

The two PyTorch configurations are timed once per cross-attention optimization in ``attention``
(default: the WebUI's CPU default InvokeAI, and SDP), labelled with it, and gains are over the stock row
of the faster one (``meta["baseline"]``). The WebUI applies that setting only through its change callback,
which ``/sdapi/v1/options`` runs and ``override_settings`` does not (``processing.py`` sets overrides with
``run_callbacks=False``), so it is set through the options endpoint, and the user's value is written back
at the end. ORT Turbo runs under the user's own setting (its UNet does not use it).

``providers`` (labels of Settings -> ORT Turbo -> Execution provider, e.g. "CPU", "OpenVINO (CPU)") times the
ORT Turbo row once per provider, set the same way (the options endpoint, the user's value back at the
end); a request whose infotext names another provider is reported as an error, not as that provider.

The SD Unet is chosen per request through ``override_settings``. The WebUI (v1.10.1) puts an overridden
setting back afterwards only if the user had set it before (``processing.py``), so on a fresh config the
first override would stick. The user's SD Unet is therefore read first, written back as it is (so every
override is undone by the WebUI itself, even if this command is stopped), and written again at the end.
"""

from __future__ import annotations

import json
import re
import statistics
import time
import urllib.error
import urllib.request

PROMPT = ("little cute gremlin wearing a jacket, cinematic, vivid colors, intricate masterpiece, golden ratio, "
          "highly detailed")  # the blog's prompt

CONFIGS = (
    ("WebUI stock", "None", False),
    ("WebUI + CFG-free", "None", True),
    ("ORT Turbo", "ORT Turbo", True),
)
#: the WebUI's cross-attention optimizations a CPU user chooses between (their titles in the settings):
#: InvokeAI is what Automatic picks without CUDA/MPS, SDP is PyTorch's scaled_dot_product_attention
ATTENTION = ("InvokeAI", "sdp - scaled dot product")
STOCK = CONFIGS[0][0]
ATTENTION_OPTION = "cross_attention_optimization"
#: Settings -> ORT Turbo -> Execution provider (lib_ort/webui/settings.py PROVIDER; not imported: this module
#: talks to a WebUI over HTTP and imports nothing of ours that needs it)
PROVIDER_OPTION = "ort_turbo_provider"


def payload(sd_unet: str, cfg_free: bool, batch: int, steps: int, width: int, height: int, seed: int) -> dict:
    return {
        "prompt": PROMPT, "negative_prompt": "", "seed": seed, "batch_size": batch, "n_iter": 1, "steps": steps,
        "cfg_scale": 1.0, "width": width, "height": height, "sampler_name": "Euler a", "scheduler": "SGM Uniform",
        "send_images": False, "save_images": False,
        "override_settings": {"sd_unet": sd_unet}, "override_settings_restore_afterwards": True,
        "alwayson_scripts": {"ort turbo": {"args": [cfg_free]}},
    }


def call(url: str, path: str, body: dict | None, timeout: float):
    """GET (``body`` None) or POST JSON to the WebUI's API; a readable RuntimeError on failure."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url.rstrip("/") + path, data=data, headers={"Content-Type": "application/json"},
                                     method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"the WebUI answered {exc.code}: {exc.read()[:300]!r}") from exc
    except urllib.error.URLError as exc:
        raise RuntimeError(f"cannot reach the WebUI at {url} ({exc.reason}); start it with --api") from exc


def post(url: str, body: dict, timeout: float) -> dict:
    return call(url, "/sdapi/v1/txt2img", body, timeout)


def _infotext(response: dict) -> str:
    info = response.get("info", "")
    try:
        parsed = json.loads(info) if isinstance(info, str) else info
        return " ".join(parsed.get("infotexts", [])) or str(parsed)
    except ValueError:
        return str(info)


def run_webui_bench(url: str, *, batches=(1, 4), steps=(1, 4), width: int = 512, height: int = 512, seed: int = 1,
                    runs: int = 5, warmup: int = 1, timeout: float = 1800, attention=ATTENTION, providers=None,
                    out_dir=None, progress=None) -> dict:
    from .report import write_report

    report = progress or (lambda fraction, message: None)
    try:
        users = call(url, "/sdapi/v1/options", None, 60)
    except RuntimeError:
        users = {}  # no WebUI there: every row says so below
    users_sd_unet, users_attention = users.get("sd_unet"), users.get("cross_attention_optimization")
    users_provider = users.get(PROVIDER_OPTION)
    if users_sd_unet is not None:
        call(url, "/sdapi/v1/options", {"sd_unet": users_sd_unet}, 300)
    plan = [(f"{label} ({a})", sd_unet, cfg_free, {ATTENTION_OPTION: a})
            for a in attention for label, sd_unet, cfg_free in CONFIGS[:2]]
    plan += [(label if not providers else f"{label} ({p})", sd_unet, cfg_free, {PROVIDER_OPTION: p} if providers else {})
             for label, sd_unet, cfg_free in CONFIGS[2:] for p in (providers or [None])]
    users_values = {ATTENTION_OPTION: users_attention, PROVIDER_OPTION: users_provider}
    try:
        rows = _time_grid(url, plan, batches, steps, width, height, seed, runs, warmup, timeout, report,
                          users_values)
    finally:
        restore = {k: v for k, v in (("sd_unet", users_sd_unet), (ATTENTION_OPTION, users_attention),
                                     (PROVIDER_OPTION, users_provider)) if v is not None}
        if restore:
            call(url, "/sdapi/v1/options", restore, 300)
    baseline = stock_baseline(rows)
    meta = {"url": url, "width": width, "height": height, "seed": seed, "runs": runs, "warmup": warmup,
            "users_sd_unet": users_sd_unet, "users_cross_attention_optimization": users_attention,
            "users_provider": users_provider,
            "baseline": baseline,
            "method": "whole /sdapi/v1/txt2img requests (text encoders, UNet steps, VAE decode), CFG scale 1, "
                      f"Euler a + SGM Uniform; median of {runs} after {warmup} warm-up; the PyTorch rows once per "
                      "cross-attention optimization (set through /sdapi/v1/options), gains over the faster stock"}
    result = {"meta": meta, "rows": rows}
    if out_dir is not None:
        result["files"] = write_report(rows, out_dir, "webui-e2e", f"WebUI txt2img {width}x{height}: images/s", meta,
                                       baseline=baseline)
    return result


def stock_baseline(rows: list[dict]) -> str | None:
    """The stock configuration (one per cross-attention optimization) with the least time per image over
    the grid cells every stock configuration completed; None when none completed any."""
    stock = {r["config"] for r in rows if r["config"].startswith(STOCK)}
    cells = {}
    for r in rows:
        if r["config"] in stock and r.get("images_per_s"):
            cells.setdefault((r["batch"], r["steps"]), {})[r["config"]] = 1.0 / r["images_per_s"]
    common = [c for c in cells.values() if set(c) == stock]
    if not common:
        return None
    return min(stock, key=lambda config: sum(c[config] for c in common))


def _time_grid(url, plan, batches, steps, width, height, seed, runs, warmup, timeout, report,
               users_values: dict) -> list[dict]:
    rows = []
    total = len(plan) * len(batches) * len(steps)
    done = 0
    current: dict = {}
    for label, sd_unet, cfg_free, options in plan:
        # each row's own options, the user's values for the rest (ORT Turbo runs under the user's attention)
        wanted = {key: options.get(key, value) for key, value in users_values.items()}
        changed = {key: value for key, value in wanted.items() if value is not None and current.get(key) != value}
        if changed:
            try:
                call(url, "/sdapi/v1/options", changed, 300)
                current.update(changed)
            except RuntimeError:
                pass  # no WebUI: the requests below say so
        for batch in batches:
            for n_steps in steps:
                body = payload(sd_unet, cfg_free, batch, n_steps, width, height, seed)
                report(done / total, f"{label}, batch {batch}, {n_steps} steps")
                row = {"config": label, "batch": batch, "steps": n_steps}
                try:
                    for _ in range(warmup):
                        post(url, body, timeout)
                    samples, info = [], ""
                    for _ in range(runs):
                        start = time.perf_counter()
                        info = _infotext(post(url, body, timeout))
                        samples.append(time.perf_counter() - start)
                    median = statistics.median(samples)
                    row.update(request_s=round(median, 3), spread_s=[round(min(samples), 3), round(max(samples), 3)],
                               images_per_s=round(batch / median, 4),
                               spread_images_per_s=[round(batch / max(samples), 4), round(batch / min(samples), 4)])
                    ran = _ort_turbo_value(info)
                    if sd_unet == "ORT Turbo" and (ran is None or "PyTorch" in ran):
                        row["error"] = "PyTorch ran: " + (ran.split(": ", 1)[-1] if ran else "no ORT Turbo infotext")
                        row["images_per_s"] = None
                    elif PROVIDER_OPTION in options and not _served_by(ran, options[PROVIDER_OPTION]):
                        row["error"] = f"another provider ran: {ran}"
                        row["images_per_s"] = None
                except RuntimeError as exc:
                    row["error"] = str(exc)
                rows.append(row)
                done += 1
    return rows


def _served_by(ran: str, label: str) -> bool:
    """Whether an ``ORT Turbo`` infotext value ("<artefact> (<provider label>[, <precision>])") names the
    provider ``label`` ("CPU" is not served by "OpenVINO (CPU), bf16")."""
    served = ran.strip('"').partition(" (")[2]
    return served.startswith((label + ")", label + ","))


def _ort_turbo_value(infotext: str) -> str | None:
    """The ``ORT Turbo`` value of an infotext; the WebUI quotes values with a comma or colon (JSON-style)."""
    found = re.search(r'(?:^|, )ORT Turbo: ("(?:[^"\\]|\\.)*"|[^,]*)', infotext)
    if found is None:
        return None
    value = found.group(1)
    if value.startswith('"'):
        try:
            return json.loads(value)
        except ValueError:
            return value.strip('"')
    return value
