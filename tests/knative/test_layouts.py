"""The repacked Q4_K kernels of the installed llama.cpp build give a row one result whether it
is computed in a block of 4 rows or alone, called straight from llama.cpp's CPU library; and
a model's kernels are probed for the same, in which a call of 8 rows (another class) fails."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

from knative.serving import LlamaCppBackend
from knative.serving._layouts import plain_layouts, repacked, rows_agree

np = pytest.importorskip("numpy")

QK_K = 256
Q4_KX8 = 16 + 16 + 96 + 1024  # d[8], dmin[8] (fp16), scales[96], qs[1024]: 8 rows of 256
Q8_K = 4 + QK_K + 2 * 16  # d, qs[256], bsums[16]
Q8_KX4 = 16 + 4 * QK_K + 2 * 64  # d[4], qs[1024], bsums[64]


def _cpu_lib() -> ctypes.CDLL:
    import llama_cpp

    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-cpu.so"))
    for name in ("ggml_gemv_q4_K_8x8_q8_K", "ggml_gemm_q4_K_8x8_q8_K"):
        fn = getattr(lib, name)
        fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p,
                       ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        fn.restype = None
    for name in ("ggml_quantize_mat_q8_K_4x8", "quantize_row_q8_K"):
        fn = getattr(lib, name)
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        fn.restype = None
    return lib


def _weights(rng, n_blocks: int) -> bytes:
    """Eight interleaved Q4_K rows of ``n_blocks`` super-blocks, random within the format."""
    out = bytearray()
    for _ in range(n_blocks):
        scales = rng.uniform(1e-3, 2e-2, size=16).astype(np.float16)
        out += scales.tobytes() + rng.integers(0, 256, size=96 + 1024, dtype=np.uint8).tobytes()
    assert len(out) == n_blocks * Q4_KX8
    return bytes(out)


@pytest.mark.parametrize("seed", range(4))
def test_a_row_in_a_block_of_four_gives_what_it_gives_alone(seed):
    lib = _cpu_lib()
    rng = np.random.default_rng(seed)
    n = 4 * QK_K
    w = _weights(rng, n // QK_K)
    x = np.ascontiguousarray(rng.standard_normal((4, n)).astype(np.float32))

    packed = ctypes.create_string_buffer(Q8_KX4 * (n // QK_K))
    lib.ggml_quantize_mat_q8_K_4x8(x.ctypes.data, packed, n)
    block = np.zeros((4, 8), dtype=np.float32)
    lib.ggml_gemm_q4_K_8x8_q8_K(n, block.ctypes.data, 8, w, packed, 4, 8)

    for r in range(4):
        row = ctypes.create_string_buffer(Q8_K * (n // QK_K))
        lib.quantize_row_q8_K(x[r].ctypes.data, row, n)
        alone = np.zeros(8, dtype=np.float32)
        lib.ggml_gemv_q4_K_8x8_q8_K(n, alone.ctypes.data, 8, w, row, 1, 8)
        assert np.all(np.isfinite(alone))
        assert np.any(alone != 0)
        differ = int(np.count_nonzero(alone.view(np.uint32) != block[r].view(np.uint32)))
        assert differ == 0, f"row {r}: {differ} of 8 outputs differ from the block kernel's"


@pytest.fixture(scope="module")
def llm():
    backend = LlamaCppBackend(n_ctx=256, n_threads=2, queue_timeout=30, slots=1)
    backend.load()
    return backend.llm


def test_the_replica_keeps_the_repacked_layouts_whose_kernels_agree(llm):
    assert repacked(llm) is True
    assert rows_agree(llm) is True


def test_the_probe_tells_a_call_in_another_class_apart(llm):
    # 8 rows or more take the plain types' other kernels (docs/engine.md): not the lone result
    assert rows_agree(llm, rows=8) is False


def test_plain_layouts_apply_to_the_load_inside_them_alone():
    from llama_cpp import llama_cpp as lib

    with plain_layouts():
        assert lib.llama_model_default_params().use_extra_bufts is False
    with plain_layouts(False):
        assert lib.llama_model_default_params().use_extra_bufts is True
    assert lib.llama_model_default_params().use_extra_bufts is True
