"""bitsandbytes' CPU kernels, made its own reference implementation where they disagree with it.

The 4-bit tests compare lorahive with bitsandbytes (and PEFT, which calls it). On CPUs with
AVX-512, bitsandbytes 0.50's native CPU kernels give wrong values for shapes the tests use:
``dequantize_4bit`` with a block longer than a row (block 128-512 on 64 columns: errors of
0.05-0.08 on weights of 0.05, where its generic implementation is exact), and ``Linear4bit``
repacks weights for an AVX-512 BF16 path whose reshape fails on such shapes. On AVX2 CPUs the
native kernels agree with the generic code and nothing here changes. Where they disagree,
bitsandbytes' own generic implementation (``backends.default``) serves the CPU for the
tests, so the comparison stays with the format's definition, not with a kernel's defect.
"""

from __future__ import annotations

import warnings


def generic_dequantize_4bit(A, absmax, blocksize, quant_type, shape, dtype):
    """bitsandbytes' generic ``dequantize_4bit`` (its ``backends.default`` kernel), callable
    without the dispatcher, which would pick the native CPU kernel."""
    import torch
    from bitsandbytes.backends.default import ops as generic
    from bitsandbytes.backends.utils import _get_4bit_code

    A = A if A.dtype == torch.uint8 else A.view(torch.uint8)
    return generic._dequantize_4bit_compute(A.reshape(-1), absmax,
                                            _get_4bit_code(quant_type, A.device),
                                            blocksize, shape, dtype)


def native_dequantize_is_wrong() -> bool:
    """One probe: a block longer than a row, native kernel against the generic code."""
    import bitsandbytes.functional as F
    import torch

    w = torch.linspace(-0.1, 0.1, 96 * 64).reshape(96, 64)
    packed, st = F.quantize_4bit(w, blocksize=256, quant_type="nf4")
    want = generic_dequantize_4bit(packed, st.absmax, 256, "nf4", w.shape, torch.float32)
    return not torch.equal(F.dequantize_4bit(packed, st), want)


def use_generic_kernels_where_native_ones_are_wrong() -> bool:
    """Route bitsandbytes' CPU 4-bit ops to its generic code when the probe fails; True if
    it did."""
    try:
        import bitsandbytes.nn.modules as modules
        import torch
        if not native_dequantize_is_wrong():
            return False
    except Exception:  # bitsandbytes absent or changed: the tests that need it say so
        return False

    def gemv_4bit(A, B, shapeB, absmax, code, blocksize):
        quant_type = "fp4" if code[1] > 0 else "nf4"
        return torch.nn.functional.linear(
            A, generic_dequantize_4bit(B, absmax, blocksize, quant_type, shapeB, A.dtype))

    with warnings.catch_warnings():  # "overriding a previously registered kernel"
        warnings.simplefilter("ignore")
        torch.library.register_kernel("bitsandbytes::dequantize_4bit", "cpu",
                                      generic_dequantize_4bit)
        torch.library.register_kernel("bitsandbytes::gemv_4bit", "cpu", gemv_4bit)
    modules.has_avx512bf16 = lambda: False  # no AVX-512 BF16 weight repacking in Linear4bit
    return True
