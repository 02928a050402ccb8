"""Dispatch settings for quantized dots and a report of the path each layer took.

    with jaxquant.inference.dispatch.settings(backend="xla", report=True) as rep:
        logits = run(...)
    print(rep.rows)   # [(layer, format, path), ...] collected while tracing
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from typing import Iterator, Literal

from jaxquant.core.qarray import QArray

Backend = Literal["auto", "xla", "pallas"]


@dataclasses.dataclass
class DispatchReport:
    rows: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)

    def __str__(self) -> str:
        return "\n".join(f"{layer or '<layer>'}: {fmt} -> {path}" for layer, fmt, path in self.rows)


@dataclasses.dataclass(frozen=True)
class DispatchSettings:
    """backend: "auto" (Pallas kernels on GPU where they apply, else XLA), "xla" (never Pallas),
    "pallas" (Pallas kernels, interpret mode off-GPU; error where none applies).
    allow_low_precision: run W8A8 schemes as int8/fp8 dots (False: dequantize the weight).
    observer: while calibrating static activation scales, a dict id(weight QArray) -> observer
    state that quantized dots update with their inputs (eager execution only)."""

    backend: Backend = "auto"
    allow_low_precision: bool = True
    report: DispatchReport | None = None
    observer: dict | None = None


_SETTINGS: contextvars.ContextVar[DispatchSettings] = contextvars.ContextVar(
    "jaxquant_dispatch", default=DispatchSettings()
)


def current() -> DispatchSettings:
    return _SETTINGS.get()


@contextlib.contextmanager
def settings(
    backend: Backend = "auto", allow_low_precision: bool = True, report: bool = False
) -> Iterator[DispatchReport | None]:
    """Set dispatch for the quantized dots traced inside the block. Settings apply at trace
    time: a jitted function already compiled keeps the path it was traced with."""
    if backend not in ("auto", "xla", "pallas"):
        raise ValueError(f"backend={backend!r}; use 'auto', 'xla' or 'pallas'")
    rep = DispatchReport() if report else None
    token = _SETTINGS.set(DispatchSettings(backend, allow_low_precision, rep, current().observer))
    try:
        yield rep
    finally:
        _SETTINGS.reset(token)


@contextlib.contextmanager
def observing(states: dict) -> Iterator[dict]:
    """Collect activation statistics of static-scheme layers into `states` (see observer)."""
    token = _SETTINGS.set(dataclasses.replace(current(), observer=states))
    try:
        yield states
    finally:
        _SETTINGS.reset(token)


def record(layer: str, w: QArray, path: str) -> None:
    rep = current().report
    if rep is not None:
        rep.rows.append((layer, w.format, path))
