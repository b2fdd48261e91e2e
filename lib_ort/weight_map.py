"""Where each PyTorch UNet parameter lives in an optimized ONNX graph, found by value.

Olive and ONNX Runtime's fusions move weights around: a Linear's weight becomes a MatMul's transposed
initializer, self-attention's Q, K and V become one packed MatMul whose columns interleave per head, a
convolution may go channels-last, the CUDA recipe stores everything in fp16. None of that is written
down anywhere usable, so the map is derived from the values themselves: a parameter of shape
``[out, ...]`` is ``out`` "units" (one per output channel); each initializer is looked at as rows, as
columns (a MatMul's ``[in, out]`` weight) and as one flat unit; a parameter maps to the one
(initializer, view, layout) in which every one of its units is found, in whatever order (a packed,
interleaved QKV is just a set of column indices). A 1-D parameter (a bias, a norm's scale) is one unit
and must fill a whole initializer.

Ambiguity is explicit: a parameter found in more than one place (two identical tensors, an all-zero
block) or whose place another parameter also claims is left unmapped with the reason, never guessed.
A LoRA that touches an unmapped parameter falls back to PyTorch, saying which and why.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

#: file name of the map in an artefact folder
MAP_FILE = "weight_map.json"
FORMAT = 1
#: elements of a unit that make its index key (the full unit is compared before a match is kept)
_KEY_ELEMENTS = 8


# -- views and layouts -------------------------------------------------------------------------------------


def init_view(array: np.ndarray, view: str) -> np.ndarray:
    """The 2-D unit view of an initializer (a numpy view, so writes go to ``array``)."""
    if view == "flat":
        return array.reshape(1, -1)
    if view == "rows":
        return array.reshape(array.shape[0], -1)
    if view == "cols":
        return array.reshape(-1, array.shape[-1]).T
    raise ValueError(f"unknown view {view!r}")


def param_units(value: np.ndarray, form: str) -> np.ndarray:
    """A parameter's units as rows: ``plain`` keeps torch's order within a unit, ``channels_last`` puts a
    convolution's input channels last (NHWC), ``flat`` is the whole tensor as one unit."""
    if form == "flat":
        return value.reshape(1, -1)
    if form == "plain":
        return value.reshape(value.shape[0], -1)
    if form == "channels_last":
        return np.ascontiguousarray(value.transpose(0, 2, 3, 1)).reshape(value.shape[0], -1)
    raise ValueError(f"unknown form {form!r}")


def units_to_param(units: np.ndarray, form: str, shape: tuple) -> np.ndarray:
    if form in ("flat", "plain"):
        return units.reshape(shape)
    if form == "channels_last":
        o, i, h, w = shape
        return units.reshape(o, h, w, i).transpose(0, 3, 1, 2)
    raise ValueError(f"unknown form {form!r}")


def _forms(shape: tuple) -> tuple:
    if len(shape) <= 1:
        return ("flat",)
    return ("plain", "channels_last") if len(shape) == 4 else ("plain",)


def _runs(indices: list[int]) -> list[list[int]]:
    """[[start, count, step], ...]: consecutive indices with one step, so a plain map is one run."""
    runs: list[list[int]] = []
    for i in indices:
        if runs:
            start, count, step = runs[-1]
            if count == 1 and i != start:
                runs[-1] = [start, 2, i - start]
                continue
            if count > 1 and i == start + count * step:
                runs[-1][1] += 1
                continue
        runs.append([i, 1, 1])
    return runs


def expand_runs(runs) -> np.ndarray:
    return np.concatenate([start + step * np.arange(count) for start, count, step in runs]) if runs else np.zeros(0, int)


# -- deriving -----------------------------------------------------------------------------------------------


def _key(row: np.ndarray) -> tuple:
    return (row.dtype.str, row.shape[0], row[:_KEY_ELEMENTS].tobytes())


def _index(weights) -> dict:
    """key -> [(initializer, view, unit index)] over every float initializer's units."""
    index: dict = {}
    for name in weights.names():
        array = weights.array(name)
        if array.dtype not in (np.float32, np.float16) or array.size == 0:
            continue
        views = ("flat", "rows", "cols") if array.ndim >= 2 else ("flat",)
        for view in views:
            units = init_view(array, view)
            if view != "flat" and units.shape[0] == 1:
                continue  # one unit of every element: the "flat" view again
            prefix = np.ascontiguousarray(units[:, :_KEY_ELEMENTS])
            for i in range(units.shape[0]):
                index.setdefault((array.dtype.str, units.shape[1], prefix[i].tobytes()), []).append((name, view, i))
    return index


def _place(value: np.ndarray, weights, index: dict) -> list:
    """Every (initializer, view, form, unit indices) that holds ``value`` whole."""
    found = []
    for dtype in (np.float32, np.float16):
        cast = value.astype(dtype)
        for form in _forms(value.shape):
            units = param_units(cast, form)
            combos: dict = {}
            for u in range(units.shape[0]):
                hits = index.get(_key(units[u]), ())
                for name, view, i in hits:
                    combos.setdefault((name, view), {}).setdefault(u, []).append(i)
            for (name, view), per_unit in combos.items():
                if len(per_unit) != units.shape[0]:
                    continue
                target = init_view(weights.array(name), view)
                chosen, used = [], set()
                for u in range(units.shape[0]):
                    pick = next((i for i in per_unit[u] if i not in used and np.array_equal(target[i], units[u])), None)
                    if pick is None:
                        break
                    used.add(pick)
                    chosen.append(pick)
                else:
                    place = {"init": name, "view": view, "form": form, "dtype": np.dtype(dtype).name,
                             "units": _runs(chosen)}
                    # a 1x1 convolution reads alike channels-first and channels-last: one place, not two
                    if not any((f["init"], f["view"], f["units"]) == (name, view, place["units"]) for f in found):
                        found.append(place)
    return found


class WeightMap:
    """torch parameter name -> where it is in the artefact's graph; ``unmapped`` says why for the rest."""

    def __init__(self, places: dict, unmapped: dict, model_file: str = ""):
        self.places = places
        self.unmapped = unmapped
        self.model_file = model_file

    @classmethod
    def derive(cls, params: dict, weights) -> "WeightMap":
        """``params``: name -> numpy array (float32, torch's layout); ``weights``: ``onnx_weights.Weights``."""
        index = _index(weights)
        places, unmapped = {}, {}
        for name, value in params.items():
            found = _place(np.asarray(value, dtype=np.float32), weights, index)
            if not found:
                unmapped[name] = "not found among the graph's weights (folded into another computation?)"
            elif len(found) > 1:
                where = ", ".join(sorted({f["init"] for f in found}))
                unmapped[name] = f"ambiguous: its values are held identically in more than one place ({where})"
            else:
                places[name] = found[0]
        # a unit claimed by two parameters (identical weights) cannot be written for one of them alone
        claims: dict = {}
        for name, p in places.items():
            for i in expand_runs(p["units"]).tolist():
                claims.setdefault((p["init"], p["view"], i), []).append(name)
        for owners in claims.values():
            if len(owners) > 1:
                for name in owners:
                    if name in places:
                        del places[name]
                        unmapped[name] = f"ambiguous: holds the same values as {', '.join(o for o in owners if o != name)}"
        return cls(places, unmapped, weights.model_path.name)

    # -- persistence --------------------------------------------------------------------------------------

    def to_json(self) -> dict:
        return {"format": FORMAT, "model_file": self.model_file, "places": self.places, "unmapped": self.unmapped}

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / MAP_FILE
        tmp = path.with_suffix(".part")
        tmp.write_text(json.dumps(self.to_json()))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, folder: str | Path) -> "WeightMap | None":
        """The map saved in ``folder``; None when there is none or it is unreadable (derive it again)."""
        path = Path(folder) / MAP_FILE
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if data.get("format") != FORMAT:
            return None
        return cls(data["places"], data["unmapped"], data.get("model_file", ""))

    # -- reading and writing values -----------------------------------------------------------------------

    def read(self, name: str, weights, shape: tuple) -> np.ndarray:
        """The parameter's value as the graph holds it, in torch's layout (float32)."""
        p = self.places[name]
        units = init_view(weights.array(p["init"]), p["view"])[expand_runs(p["units"])]
        return units_to_param(units.astype(np.float32), p["form"], shape)

    def initializers_of(self, names) -> dict:
        """initializer -> the parameters (of ``names``) that live in it."""
        out: dict = {}
        for name in names:
            out.setdefault(self.places[name]["init"], []).append(name)
        return out

    def overrides(self, values: dict, weights) -> dict:
        """initializer name -> a new array holding ``values`` (param name -> float32 array, torch layout)
        written into a copy of the artefact's initializer; the rest of each initializer stays as it is."""
        out = {}
        for init, names in self.initializers_of(values).items():
            buffer = np.array(weights.array(init))  # a writable copy of this one initializer
            for name in names:
                p = self.places[name]
                units = param_units(np.asarray(values[name], dtype=np.float32), p["form"]).astype(buffer.dtype)
                init_view(buffer, p["view"])[expand_runs(p["units"])] = units
            out[init] = buffer
        return out
