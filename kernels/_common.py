"""Helpers shared by the kernel packages: platform checks, small integer math, errors."""

from __future__ import annotations

import functools

import jax


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_pow2(n: int) -> int:
    n = int(n)
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def is_pow2(n: int) -> bool:
    return n > 0 and (n & (n - 1)) == 0


@functools.lru_cache(maxsize=None)
def gpu_info() -> tuple[str, str, int] | None:
    """(platform, device_kind, compute capability major*10+minor) of the default device when
    it is an NVIDIA GPU, else None."""
    try:
        dev = jax.devices()[0]
    except RuntimeError:
        return None
    if dev.platform != "gpu":
        return None
    cc = getattr(dev, "compute_capability", None)
    try:
        major, minor = (int(v) for v in str(cc).split("."))
        ccv = major * 10 + minor
    except (TypeError, ValueError):
        ccv = 0
    kind = getattr(dev, "device_kind", "gpu")
    if "AMD" in kind or "Instinct" in kind:
        return None
    return ("cuda", kind, ccv)


def device_kind() -> str:
    """A short name of the default device, used as the autotune cache key."""
    try:
        dev = jax.devices()[0]
    except RuntimeError:
        return "unknown"
    return str(getattr(dev, "device_kind", dev.platform)).replace(" ", "_")


def num_sms(default: int = 132) -> int:
    try:
        dev = jax.devices()[0]
        return int(getattr(dev, "core_count", default) or default)
    except Exception:  # noqa: BLE001 - any backend without the attribute
        return default


class KernelArgumentError(ValueError):
    """A kernel was called with an argument of the wrong shape or dtype."""


class UnsupportedShapeError(ValueError):
    """The Pallas kernel does not support this shape/config; XLA would (see `implementation`)."""
