"""The benchmark's shape selection (the timing itself runs on the GPU)."""

import pytest

from jaxquant.kernels.benchmarks.run import w4a16_shapes
from jaxquant.kernels.w4a16 import arg_specs


def test_default_and_filtered_shapes():
    assert w4a16_shapes([]) == list(arg_specs.BENCH_SHAPES)
    assert all(m <= 16 for m, *_ in w4a16_shapes(["--decode"]))
    assert w4a16_shapes(["--ms", "128"]) == [s for s in arg_specs.BENCH_SHAPES if s[0] == 128]


def test_product_of_ms_and_kn():
    got = w4a16_shapes(["--ms", "1,8", "--kn", "4096x6144,4096x128256"])
    assert got == [(1, 4096, 6144, 128), (8, 4096, 6144, 128), (1, 4096, 128256, 128),
                   (8, 4096, 128256, 128)]
    assert [s[0] for s in w4a16_shapes(["--kn", "14336x4096"])] == list(arg_specs.MS)


@pytest.mark.parametrize("argv", [["--kn", "4096"], ["--kn", "4096xabc"], ["--ms", "one"]])
def test_bad_shape_options(argv):
    with pytest.raises(SystemExit, match="--ms takes|--kn takes"):
        w4a16_shapes(argv)
