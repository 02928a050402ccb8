"""Two-operand einsum strings as lax.dot_general dimension numbers plus an output permutation."""

from __future__ import annotations

from jaxquant.errors import JaxquantError


def einsum_dimension_numbers(spec: str, x_ndim: int, w_ndim: int):
    """"...,...->..." -> (dimension_numbers, perm) such that
    jnp.einsum(spec, x, w) == lax.dot_general(x, w, dimension_numbers).transpose(perm)."""
    spec = spec.replace(" ", "")
    if "->" not in spec or "." in spec:
        raise JaxquantError(f"einsum {spec!r}: need an explicit '->' output and no ellipsis")
    ins, out = spec.split("->")
    try:
        a, b = ins.split(",")
    except ValueError:
        raise JaxquantError(f"einsum {spec!r}: quantized einsum takes exactly two operands") from None
    if len(a) != x_ndim or len(b) != w_ndim:
        raise JaxquantError(f"einsum {spec!r} does not match operand ranks {x_ndim}, {w_ndim}")
    batch = [c for c in a if c in b and c in out]
    contract = [c for c in a if c in b and c not in out]
    if any(c not in a and c not in b for c in out) or any(
        c not in b and c not in out for c in a
    ) or any(c not in a and c not in out for c in b):
        raise JaxquantError(f"einsum {spec!r}: summing over an index of one operand is unsupported")
    dims = (
        (tuple(a.index(c) for c in contract), tuple(b.index(c) for c in contract)),
        (tuple(a.index(c) for c in batch), tuple(b.index(c) for c in batch)),
    )
    result = batch + [c for c in a if c not in b] + [c for c in b if c not in a]
    perm = tuple(result.index(c) for c in out)
    return dims, perm
