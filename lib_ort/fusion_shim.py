"""Keep ORT's UNet attention fusion working under numpy >= 2.4 (the GPU machine has numpy 2.5.2).

Why: ``FusionAttentionUnet.get_num_heads`` reads the head count of an SDPA-traced (torch 2) graph from the
Concat that builds Q's reshape shape, gets it as a one-element array of shape [1] and calls ``int()`` on
it. numpy 2.4 made ``int()`` of an array with ndim > 0 a ``TypeError`` (it had been deprecated since
1.25), so the whole optimization of every SD/SDXL UNet dies on the first attention block. The graph is
fine; only that conversion breaks. Pinning numpy below 2.4 is no answer there: the GPU machine's torch,
onnx and onnxruntime were built against numpy 2.5.

What the shim does, and no more: while ``get_num_heads`` runs (and only then), the model's
``get_constant_value`` hands back a shape-[1] integer array as :class:`OneElement`, an ndarray view that
also answers ``int()`` with its one element. Every check ORT makes on it (``isinstance(..., np.ndarray)``,
``shape == [1]``) sees what it saw before; the head count it returns is the element itself. Nothing else in
ORT changes, and under numpy < 2.4 the result is the same number ORT computed already (the tests compare).

One wrapper class per fusion style that has this conversion: today only the torch-2 branch of the UNet
attention fusion (the torch-1 branch indexes ``q_shape_value[2]``, a scalar, and is unaffected). A new ORT
release that fixes the conversion keeps working with the shim applied (the wrapper is then a no-op).
Applied by the optimization child (``lib_ort.olive_child``) before Olive or our on-disk pass
(``lib_ort.transformers_pass``) imports the fusions' users; :func:`apply` is idempotent.
"""

from __future__ import annotations

import functools

#: set on a patched method, so :func:`apply` never wraps twice
_MARK = "_ort_turbo_scalar_heads"


def _one_element_class():
    import numpy as np

    class OneElement(np.ndarray):
        """A shape-[1] integer array that ``int()`` accepts on every numpy (its single element)."""

        def __int__(self):
            return int(np.asarray(self).reshape(-1)[0])

        __index__ = __int__

    return OneElement


class ScalarHeadsTorch2:
    """The torch-2 (SDPA) pattern of ``FusionAttentionUnet``: ``get_num_heads(reshape_q, is_torch2=True)``
    reads ``model.get_constant_value(concat.input[2])``, a shape-[1] array, and converts it with ``int()``."""

    target = ("onnxruntime.transformers.fusion_attention_unet", "FusionAttentionUnet", "get_num_heads")

    @staticmethod
    def wrap(original):
        one_element = _one_element_class()

        @functools.wraps(original)
        def get_num_heads(self, reshape_q, is_torch2: bool = False):
            import numpy as np

            model = self.model
            plain = model.get_constant_value

            def constant_value(name):
                value = plain(name)
                if isinstance(value, np.ndarray) and value.shape == (1,) and value.dtype.kind in "iu":
                    return value.view(one_element)
                return value

            model.get_constant_value = constant_value  # this instance only, for this call only
            try:
                return original(self, reshape_q, is_torch2)
            finally:
                del model.get_constant_value  # back to the class's method
        setattr(get_num_heads, _MARK, True)
        return get_num_heads


SHIMS = (ScalarHeadsTorch2,)


def _modules(module_name: str):
    """ORT's transformers code imports its modules both as ``onnxruntime.transformers.X`` and, with its
    folder on ``sys.path``, as bare ``X`` (``onnx_model_unet`` does ``from fusion_attention_unet import``):
    two module objects, two classes. Patch every one that is loaded or loadable."""
    import importlib
    import sys

    importlib.import_module(module_name)  # also puts ORT's transformers folder on sys.path
    bare = module_name.rsplit(".", 1)[-1]
    try:
        importlib.import_module(bare)
    except ImportError:
        pass
    return [sys.modules[n] for n in (module_name, bare) if n in sys.modules]


def apply() -> list[str]:
    """Patch every fusion class in :data:`SHIMS`; returns what was patched (for the child's log)."""
    patched = []
    for shim in SHIMS:
        module_name, class_name, method = shim.target
        for module in _modules(module_name):
            cls = getattr(module, class_name, None)
            original = getattr(cls, method, None) if cls else None
            if original is None or getattr(original, _MARK, False):
                continue
            setattr(cls, method, shim.wrap(original))
            patched.append(f"{module.__name__}.{class_name}.{method}")
    return patched


def remove() -> None:
    """Undo :func:`apply` (tests: show that the fusion fails without it)."""
    for shim in SHIMS:
        module_name, class_name, method = shim.target
        for module in _modules(module_name):
            cls = getattr(module, class_name, None)
            current = getattr(cls, method, None) if cls else None
            if current is not None and getattr(current, _MARK, False):
                setattr(cls, method, current.__wrapped__)
