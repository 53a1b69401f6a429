"""Inductor's freezing for the sampler's compiled decode step on a CPU.

With ``torch._inductor.config.freezing`` a graph compiled under inference mode takes the model's weights as
constants and lays out every matrix product's weight once for the CPU's kernels (MKL's or oneDNN's packed
format). A decode step reads every weight once per token, so this is where a weight-bound decoder's time goes:
the ~42 M-parameter decoder of ``benchmarks/run.py`` decoded 2.5x faster in float32 (with max-autotune,
``_inductor_settings``) and 1.8x faster in bf16 at batch 1 on a 2-core EPYC than the compiled step without it
(docs/BENCHMARKS.md, "Decode with frozen weights").

The price is that such a graph holds the weights, the KV cache and the fused projections by identity: dynamo
guards them with ``id()`` alone, so a graph compiled for one model would run on another model's tensors that
happen to reuse the addresses, and on weights changed in place it would run the old values. A
``FrozenDecode`` therefore compiles a private copy of the step function (dynamo keeps its graphs per code
object), keeps the KV caches its graphs were compiled on alive and installs them again on the next call, and
lives only as long as its model does and its weights stay as they were when it was made: the weights'
storage and version counters (which every in-place change bumps: optimiser steps, ``load_state_dict``,
``.to``) are compared on every call, and a change starts a new one, so a stale graph is never reachable.
"""

from __future__ import annotations

import types
import weakref
from contextlib import contextmanager
from typing import Callable, Iterator

import torch

from mmgen.model.transformer import DecodeCache

_sessions: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def freezes(model, backend) -> bool:
    """Whether ``sample`` freezes the weights of ``model`` for ``backend``: inductor on a CPU, where the weights'
    packed layout pays; other backends and devices compile as before."""
    return backend == "inductor" and next(model.parameters()).device.type == "cpu"


def own_code(fn: Callable) -> Callable:
    """``fn`` with a code object of its own: dynamo keeps the graphs it compiles per code object, so a compiled
    copy's graphs are reachable from that copy alone and die with it."""
    return types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)


class FrozenDecode:
    """A model's frozen compiled step or forward (``step``, compiled from a function of its own, ``own_code``) and
    the KV caches its graphs were compiled on (one per batch shape, dtype and device used since it was made: they
    stay allocated while it lives)."""

    def __init__(self, model, compile_step: Callable[[], Callable]) -> None:
        self.fingerprint = weights_fingerprint(model)
        self.step = compile_step()
        self._caches: dict[tuple, DecodeCache] = {}

    @contextmanager
    def open(self, model, rows: int, length: int) -> Iterator[None]:
        """``CachedDecoding.open`` with the cache these graphs were compiled on (a new one for a new shape), and
        freezing on for the step's tracing (dynamo reads the setting to guard the weights by identity) and its
        compilation (inductor's, to fold them; ``_inductor_settings``)."""
        param = next(model.parameters())
        key = (rows, length, param.dtype, param.device)
        if key in self._caches:
            model.install_cache(self._caches[key])
        else:
            self._caches[key] = model.setup_cache(rows, length, dtype=param.dtype, device=param.device)
        try:
            with torch._inductor.config.patch(_inductor_settings(param.dtype)):
                yield
        finally:
            model.clear_cache()


def _inductor_settings(dtype: torch.dtype) -> dict:
    """Freezing; for float32 weights also max-autotune, which times inductor's own C++ matrix-product template
    against ATen's for every product and keeps the faster. On the AVX512-BF16 EPYC, one thread, against the
    frozen step without it: the ~42 M decoder 1.64x faster at batch 1 and 1.26x at batch 8, the demo's 1.43x
    and 1.39x; in bf16 it was slower (0.69x and 0.96x), so bf16 keeps oneDNN's packed products alone."""
    if dtype == torch.float32:
        # its timings of each product's candidates are printed unless turned off: nothing a user can act on
        return {"freezing": True, "max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN",
                "autotune_num_choices_displayed": 0, "max_autotune_report_choices_stats": False}
    return {"freezing": True}


def frozen_decode(model, what: str, compile_step: Callable[[], Callable]) -> FrozenDecode:
    """The model's ``FrozenDecode`` of ``what`` (the sampler's whole step, or the model's forward alone): the last
    one, unless its weights changed since; a new one's step is ``compile_step()``, a compiled ``own_code`` copy
    (``freezes``: always inductor's)."""
    sessions = _sessions.setdefault(model, {})
    session = sessions.get(what)
    if session is None or session.fingerprint != weights_fingerprint(model):
        session = sessions[what] = FrozenDecode(model, compile_step)
    return session


class _Unversioned:
    """The fingerprint of weights whose in-place changes cannot be seen: equal to nothing, so every call
    compiles anew."""

    def __eq__(self, other) -> bool:
        return False

    __hash__ = object.__hash__


def weights_fingerprint(model) -> tuple | _Unversioned:
    """Each parameter's identity, storage, dtype and version counter. Inference tensors (made under
    ``torch.inference_mode``) keep no version counter, so a model loaded under it gets ``_Unversioned``."""
    params = list(model.parameters())
    if any(p.is_inference() for p in params):
        return _Unversioned()
    return tuple((id(p), p.data_ptr(), p.dtype, p._version) for p in params)
