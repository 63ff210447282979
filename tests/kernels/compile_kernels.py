"""Compile every Triton kernel ahead of time for a CUDA target, without a GPU.

The interpreter runs kernels as numpy and so misses what only the compiler checks
(constexpr globals, loop-carried types, specialized sizes).  This script lowers each
kernel to a cubin for ``sm_90`` with Triton's bundled toolchain, in float32 and
float16 and with sizes specialized to 1 the way the launcher does.  It is run in a
subprocess by ``test_kernels_compile.py`` (the interpreter must be off for it).

    python tests/kernels/compile_kernels.py [name-filter]
"""

from __future__ import annotations

import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from vitorch.kernels.gamma import triton as gamma
from vitorch.kernels.gaussian import triton as gaussian
from vitorch.kernels.likelihood import triton as likelihood
from vitorch.kernels.logweights import triton as logweights
from vitorch.kernels.mmd import triton as mmd
from vitorch.kernels.planar import triton as planar

TARGET = GPUTarget("cuda", 90, 32)


def _sig(ptrs: dict[str, str], ints: list[str], consts: dict) -> tuple[dict, dict]:
    sig = {k: f"*{v}" for k, v in ptrs.items()}
    sig.update({k: "i32" for k in ints})
    sig.update({k: "constexpr" for k in consts})
    return sig, consts


def cases(t: str) -> list[tuple[str, object, dict, dict]]:
    """``(name, kernel, signature, constexprs)`` for element type ``t`` (``fp32`` or ``fp16``)."""
    strides = [f"{a}s{i}" for a in "xps" for i in range(3)]
    mmd_c = dict(IMQ=True, EXCL=True, NS=2, BI=32, BJ=32, BD=16)
    out = [
        ("gaussian._forward", gaussian._forward,
         *_sig(dict(loc_ptr=t, scale_ptr=t, z_ptr=t, logq_ptr=t), ["seed", "R", "B", "D"], dict(BR=64, BD=32))),
        ("gaussian._backward", gaussian._backward,
         *_sig(dict(scale_ptr=t, gz_ptr=t, gl_ptr=t, dloc_ptr=t, dscale_ptr=t), ["seed", "K", "B", "D"],
               dict(HAS_GZ=True, HAS_GL=True, STOP=True, BLOCK=256))),
        ("gaussian._noise", gaussian._noise, *_sig(dict(eps_ptr="fp32"), ["seed", "N"], dict(BLOCK=1024))),
        ("likelihood._forward", likelihood._forward,
         *_sig(dict(x_ptr=t, p_ptr=t, s_ptr=t, out_ptr=t), ["R", "B", "D", *strides], dict(GAUSS=True, BR=8, BD=256))),
        ("likelihood._backward", likelihood._backward,
         *_sig(dict(x_ptr=t, p_ptr=t, s_ptr=t, g_ptr=t, dp_ptr="fp32", ds_ptr="fp32"), ["R", "B", "D", *strides],
               dict(GAUSS=False, BR=8, BD=256))),
        ("logweights._lse", logweights._lse,
         *_sig(dict(x_ptr=t, out_ptr=t), ["K", "N", "sk", "sn"], dict(BK=16, BN=64))),
        ("logweights._weights", logweights._weights,
         *_sig(dict(x_ptr=t, w_ptr=t, w2_ptr=t, g_ptr=t), ["K", "N", "sk", "sn"], dict(GRAD=True, BK=16, BN=64))),
        ("mmd._pair_sum", mmd._pair_sum,
         *_sig(dict(a_ptr=t, b_ptr=t, scales_ptr="fp32", part_ptr="fp32"), ["n", "m", "D"], mmd_c)),
        ("mmd._pair_grad", mmd._pair_grad,
         *_sig(dict(a_ptr=t, b_ptr=t, scales_ptr="fp32", coef_ptr="fp32", out_ptr="fp32"), ["n", "m", "D"],
               dict(mmd_c, IMQ=False))),
        ("planar._forward", planar._forward,
         *_sig(dict(x_ptr=t, u_ptr=t, w_ptr=t, b_ptr=t, y_ptr=t, y32_ptr="fp32", ladj_ptr=t, h_ptr="fp32"),
               ["N", "D", "L"], dict(SAVE32=t != "fp32", BN=16, BD=32))),
        ("planar._backward", planar._backward,
         *_sig(dict(y_ptr="fp32", u_ptr=t, w_ptr=t, h_ptr="fp32", gy_ptr=t, gl_ptr=t, gx_ptr=t, du_ptr="fp32",
                    dw_ptr="fp32", db_ptr="fp32"), ["N", "D", "L"], dict(BN=16, BD=32))),
    ]  # fmt: skip
    if t == "fp32":  # Gamma takes float32 and float64
        g = dict(B=2, NU=2, AUG=2**30, BLOCK=256)
        out += [
            ("gamma._forward", gamma._forward,
             *_sig(dict(alpha_ptr="fp64", logx_ptr="fp64", eps_ptr="fp64", prop_ptr="i32"), ["seed", "N"], g)),
            ("gamma._backward", gamma._backward,
             *_sig(dict(alpha_ptr=t, eps_ptr=t, g_ptr=t, da_ptr=t), ["seed", "N"], g)),
            ("gamma._aug_noise", gamma._aug_noise,
             *_sig(dict(out_ptr="fp64"), ["seed", "N"], dict(NU=2, AUG=2**30, BLOCK=256))),
        ]  # fmt: skip
    return out


def main(filt: str = "") -> int:
    n = 0
    for t in ("fp32", "fp16"):
        for name, fn, sig, consts in cases(t):
            if filt not in name:
                continue
            # As launched, and with every integer size specialized to 1 (the launcher does that for 1s).
            ones = {k: 1 for k, v in sig.items() if v == "i32" and k not in ("seed",)}
            for extra in ({}, ones):
                s = {k: ("constexpr" if k in extra else v) for k, v in sig.items()}
                triton.compile(ASTSource(fn=fn, signature=s, constexprs={**consts, **extra}), target=TARGET)
                n += 1
            print(f"compiled {name} [{t}]", flush=True)
    print(f"{n} compilations ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
