"""Number formats: element codecs, scale encodings and 4-bit packing."""

from jaxquant.formats.floating import E2M1_VALUES, e8m0_decode, e8m0_encode, e8m0_exponent
from jaxquant.formats.nf4 import NF4_LEVELS
from jaxquant.formats.packing import pack_nibbles, unpack_nibbles
from jaxquant.formats.registry import QuantFormat, format_names, get_format

__all__ = [
    "E2M1_VALUES",
    "NF4_LEVELS",
    "QuantFormat",
    "e8m0_decode",
    "e8m0_encode",
    "e8m0_exponent",
    "format_names",
    "get_format",
    "pack_nibbles",
    "unpack_nibbles",
]
