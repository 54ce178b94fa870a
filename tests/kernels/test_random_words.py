"""The noise generator's random words: on a CPU with VAES the kernels draw ARS-7 words (AVX-512 or AVX2, several
AES blocks to a register), checked word for word against a reference that encrypts one block at a time."""

import ctypes
from pathlib import Path

import numpy as np
import pytest

from mp_hub import kernels
from mp_hub.kernels import build

ARS_REFERENCE = Path(__file__).parent / "ars_reference.c"
WORDS = ([ctypes.c_void_p, ctypes.c_long, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint32], None)


def has_vaes_words() -> bool:
    """What common.c's random_words is built from on this CPU (-march=native): ARS-7 with VAES and AVX-512 or AVX2."""
    flags = set(build.cpu_flags() or ())
    return {"vaes", "aes"} <= flags and bool({"avx512f", "avx2"} & flags)


@pytest.fixture(scope="module")
def words_lib():
    if not kernels.fused_available():
        pytest.skip(f"fused kernels unavailable here: {build.load_error()}")
    if not has_vaes_words() or "-march=native" not in build.build_info()["flags"]:
        pytest.skip("no VAES, or no native build, here: the kernels draw integer-hash words (see test_fused.py)")
    return build.load_extended(ARS_REFERENCE, {"mp_random_words": WORDS, "mp_ars_words_reference": WORDS})


@pytest.mark.parametrize("count", [32, 64, 544, 2080])  # what normals() asks for: 2 round16((n + 1) / 2)
@pytest.mark.parametrize("plane, keys", [(0, (1, 2)), (123457, (0xDEADBEEF, 7)), (2**32 - 1, (0, 2**32 - 1))])
def test_vaes_words_are_ars7_block_by_block(words_lib, count, plane, keys):
    got, expected = np.zeros(count + 8, np.uint32), np.zeros(count + 8, np.uint32)
    words_lib.mp_random_words(got.ctypes.data, count, plane, *keys)
    words_lib.mp_ars_words_reference(expected.ctypes.data, count, plane, *keys)
    assert np.array_equal(got, expected)
    assert not got[count:].any()  # nothing past the count
    assert len(np.unique(got[:count])) > 0.99 * count  # random words, not a constant or a repeated block
