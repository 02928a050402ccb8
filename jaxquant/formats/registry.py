"""The quantization formats by name: an element codec plus how its block scales are stored.

Scale kinds:
  "float"   a bf16/f32 scale per block; symmetric: scale = amax / qmax (qmax = 7 for int4, 7.5
            for int4_full: see jaxquant.formats.integer); asymmetric formats add a uint8
            zero-point per block (scale = (max - min) / (2^b - 1)).
  "e8m0"    OCP MX: a power-of-two scale per 32-element block stored as a biased E8M0 byte.
  "nvfp4"   an E4M3 scale per 16-element block times one f32 scale per tensor.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Union

from jaxquant.errors import FormatError
from jaxquant.formats.floating import E2M1Codec, FP8Codec
from jaxquant.formats.integer import IntCodec
from jaxquant.formats.nf4 import NF4Codec

Codec = Union[IntCodec, FP8Codec, E2M1Codec, NF4Codec]
ScaleKind = Literal["float", "e8m0", "nvfp4"]


@dataclasses.dataclass(frozen=True)
class QuantFormat:
    """A named format: element codec, scale kind, and any block size the format fixes."""

    name: str
    codec: Codec
    scale_kind: ScaleKind = "float"
    asymmetric: bool = False
    fixed_group: int | None = None
    default_group: int | None = None
    description: str = ""

    @property
    def bits(self) -> int:
        return self.codec.bits


_E4M3 = FP8Codec("float8_e4m3fn", emax=8)
_E5M2 = FP8Codec("float8_e5m2", emax=15)

_FORMATS: dict[str, QuantFormat] = {}


def _register(fmt: QuantFormat) -> None:
    _FORMATS[fmt.name] = fmt


for _b in (8, 4, 3, 2):
    _register(QuantFormat(f"int{_b}", IntCodec(_b, signed=True), description=f"symmetric INT{_b}"))
    _register(
        QuantFormat(
            f"int{_b}_full", IntCodec(_b, signed=True, full_range=True),
            description=f"symmetric INT{_b}, full two's complement range (amax -> 2^{_b - 1} - 0.5)",
        )
    )
    _register(
        QuantFormat(
            f"uint{_b}", IntCodec(_b, signed=False), asymmetric=True,
            description=f"asymmetric UINT{_b} with zero-point",
        )
    )
_register(QuantFormat("fp8_e4m3", _E4M3, description="FP8 E4M3fn, max 448"))
_register(QuantFormat("fp8_e5m2", _E5M2, description="FP8 E5M2, max 57344"))
_register(QuantFormat("fp4_e2m1", E2M1Codec(), description="FP4 E2M1 with float scales"))
_register(QuantFormat("nf4", NF4Codec(), default_group=64, description="NormalFloat4, block absmax"))
_register(
    QuantFormat("mxfp4", E2M1Codec(), "e8m0", fixed_group=32, description="OCP MXFP4: E2M1, E8M0/32")
)
_register(
    QuantFormat("mxfp8", _E4M3, "e8m0", fixed_group=32, description="OCP MXFP8: E4M3, E8M0/32")
)
_register(
    QuantFormat(
        "nvfp4", E2M1Codec(), "nvfp4", fixed_group=16,
        description="NVFP4: E2M1, E4M3 scale/16, f32 tensor scale",
    )
)


def get_format(name: str) -> QuantFormat:
    """Look up a format by name; unknown names raise FormatError listing the known ones."""
    try:
        return _FORMATS[name]
    except KeyError:
        raise FormatError(
            f"unknown format {name!r}; known formats: {', '.join(sorted(_FORMATS))}"
        ) from None


def format_names() -> list[str]:
    return sorted(_FORMATS)
