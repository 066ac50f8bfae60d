"""Build the optional C kernel ``kldiv._kernels`` (fused CPU loss rows); metadata lives in pyproject.toml.

``optional=True``: without a C compiler the package installs without it and the losses use their torch path.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "kldiv._kernels",
            sources=["src/kldiv/_kernels.c"],
            extra_compile_args=["-O3", "-fopenmp-simd", "-fno-math-errno", "-fno-fast-math", "-std=c11"],
            optional=True,
        )
    ]
)
