"""Build the optional C kernel ``kldiv._kernels`` (fused CPU loss rows); metadata lives in pyproject.toml.

``optional=True``: without a C compiler the package installs without it and the losses use their torch path.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "kldiv._kernels",
            sources=["src/kldiv/_kernels.c"],
            # -fno-trapping-math after -fno-fast-math (which turns it on): GCC vectorizes the kernel's loops only
            # without it (see the kernel's comment on SIMD paths); -ffp-contract=off: no fused multiply-add but
            # the explicit ones of the exponentials
            extra_compile_args=[
                "-O3",
                "-fopenmp-simd",
                "-fno-math-errno",
                "-fno-fast-math",
                "-fno-trapping-math",
                "-ffp-contract=off",
                "-std=c11",
            ],
            optional=True,
        )
    ]
)
