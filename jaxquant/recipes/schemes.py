"""User-facing quantization schemes and their resolution against a parameter's shape."""

from __future__ import annotations

import dataclasses
from typing import Literal

from jaxquant.core.spec import ActivationSpec, ArraySpec, Clipping
from jaxquant.errors import FormatError, GranularityError, RecipeError
from jaxquant.formats.registry import get_format

WeightGranularity = Literal["tensor", "channel", "group", "block"]
SCALE_DTYPES = ("float32", "bfloat16")
ACTIVATION_FORMATS = ("int8", "int8_full", "fp8_e4m3", "fp8_e5m2", "int4", "int4_full")


def _divisor_hint(n: int) -> str:
    good = [g for g in (16, 32, 64, 128, 256, 512, 1024) if g <= n and n % g == 0]
    return ", ".join(map(str, good)) if good else f"none of 16..1024 (axis size {n}); use 'channel'"


@dataclasses.dataclass(frozen=True)
class WeightScheme:
    """How a weight is quantized.

    format:       a format name (jaxquant.formats.format_names()).
    granularity:  tensor | channel | group | block. Default: group when group_size is set or the
                  format fixes a block (NF4, MX, NVFP4), else channel.
    group_size:   elements per group along the contraction axis (group granularity).
    block:        2-D block shape over the last two axes (block granularity), e.g. (128, 128).
    axis:         contraction axis of the weight; default 0 (Flax kernels are (in, out)), and the
                  last axis for embeddings.
    channel_axes: axes that keep one scale per index (channel granularity); default all but `axis`.
    scale_dtype:  float32 or bfloat16 (formats with their own scale encoding ignore it).
    clipping:     range selection (min-max, percentile, MSE search).
    double_quant: quantize the scales again (NF4).
    ragged_groups: allow a group/block size that does not divide the axis; the last group is
                  then smaller (e.g. 576 = 4 x 128 + 64). Off: such a size is an error.
    """

    format: str
    granularity: WeightGranularity | None = None
    group_size: int | None = None
    block: tuple[int, ...] | None = None
    axis: int | None = None
    channel_axes: tuple[int, ...] | None = None
    scale_dtype: str = "float32"
    clipping: Clipping = Clipping()
    double_quant: bool = False
    ragged_groups: bool = False

    def __post_init__(self) -> None:
        fmt = get_format(self.format)
        if self.scale_dtype not in SCALE_DTYPES:
            raise RecipeError(f"scale_dtype={self.scale_dtype!r}; use one of {SCALE_DTYPES}")
        if self.group_size is not None and self.group_size <= 0:
            raise GranularityError(f"group_size={self.group_size} must be a positive integer")
        gran = self.resolved_granularity
        if gran not in ("tensor", "channel", "group", "block"):
            raise GranularityError(
                f"granularity={gran!r}; use tensor, channel, group or block"
            )
        if fmt.fixed_group is not None and (
            gran != "group" or self.group_size not in (None, fmt.fixed_group)
        ):
            raise FormatError(
                f"format {fmt.name} fixes blocks of {fmt.fixed_group} elements along the "
                f"contraction axis; drop granularity/group_size or use group_size={fmt.fixed_group}"
            )
        if gran == "block" and not self.block:
            raise GranularityError("granularity='block' needs block=(rows, cols), e.g. (128, 128)")
        if self.double_quant and fmt.name != "nf4":
            raise FormatError(f"double_quant applies to nf4 only, not {fmt.name}")
        if self.clipping.method not in ("minmax", "percentile", "mse"):
            raise RecipeError(
                f"clipping method {self.clipping.method!r}; use minmax, percentile or mse"
            )
        if self.clipping.signed not in (True, False):
            raise RecipeError(f"clipping signed={self.clipping.signed!r} must be true or false")

    @property
    def resolved_granularity(self) -> str:
        if self.granularity is not None:
            return self.granularity
        fmt = get_format(self.format)
        if self.group_size is not None or fmt.fixed_group or fmt.default_group:
            return "group"
        return "channel"

    def resolve(self, shape: tuple[int, ...], default_axis: int, name: str) -> ArraySpec:
        """The ArraySpec for a parameter `name` of `shape`; GranularityError if it cannot tile."""
        ndim = len(shape)
        if ndim == 0:
            raise GranularityError(f"{name}: cannot quantize a scalar; add it to the ignore list")
        axis = self.axis if self.axis is not None else default_axis
        if not -ndim <= axis < ndim:
            raise GranularityError(f"{name}: axis={axis} out of range for shape {shape}")
        axis %= ndim
        gran = self.resolved_granularity
        fmt = get_format(self.format)
        if gran == "tensor":
            block = tuple(shape)
        elif gran == "channel":
            kept = self.channel_axes
            kept = tuple(a % ndim for a in kept) if kept is not None else tuple(
                i for i in range(ndim) if i != axis
            )
            block = tuple(1 if i in kept else s for i, s in enumerate(shape))
        elif gran == "group":
            g = self.group_size or fmt.fixed_group or fmt.default_group
            if g is None:
                raise GranularityError(f"{name}: granularity='group' needs group_size")
            if shape[axis] % g and not self.ragged_groups:
                raise GranularityError(
                    f"{name}: group size {g} does not divide axis {axis} of size {shape[axis]} "
                    f"(shape {tuple(shape)}); group sizes that divide it: "
                    f"{_divisor_hint(shape[axis])}; or set ragged_groups=True for a smaller "
                    "last group"
                )
            block = tuple(g if i == axis else 1 for i in range(ndim))
        else:
            b = tuple(self.block or ())
            if len(b) > ndim:
                raise GranularityError(f"{name}: block {b} has more axes than shape {shape}")
            block = (1,) * (ndim - len(b)) + b
            for i, (s, bi) in enumerate(zip(shape, block)):
                if bi <= 0 or (s % bi and not self.ragged_groups):
                    raise GranularityError(
                        f"{name}: block {b} does not tile shape {tuple(shape)} (axis {i}: {s} % "
                        f"{bi} != 0); block sizes that divide it: {_divisor_hint(s)}"
                    )
        return ArraySpec(
            format=self.format,
            block_shape=block,
            axis=axis,
            granularity=gran,  # type: ignore[arg-type]
            scale_dtype=self.scale_dtype,
            clipping=self.clipping,
            double_quant=self.double_quant,
        )


def activation_scheme(format: str, granularity: str = "token", dynamic: bool = True,
                      clipping: Clipping = Clipping()) -> ActivationSpec:
    """Validated ActivationSpec."""
    if format not in ACTIVATION_FORMATS:
        raise FormatError(
            f"activation format {format!r} is not supported; use one of {ACTIVATION_FORMATS}"
        )
    if granularity not in ("token", "tensor"):
        raise GranularityError(f"activation granularity={granularity!r}; use token or tensor")
    return ActivationSpec(format, granularity, dynamic, clipping)  # type: ignore[arg-type]
