"""Builds the native CPU kernels (cpu/*.c) into inference.model.backends._cpu; the rest is pyproject.toml.

One build runs on any x86-64: SIMD paths carry per-function `target` attributes and are chosen at run
time (cpu/runtime.c), so no -march flag is passed. `pip install` fails here, with gcc's message, when
the kernels cannot be built.
"""

from pathlib import Path

from setuptools import Extension, setup

CPU = Path("cpu")

setup(
    ext_modules=[
        Extension(
            "inference.model.backends._cpu",
            sources=sorted(str(p) for p in CPU.glob("*.c")),
            depends=sorted(str(p) for p in CPU.glob("*.h")),
            include_dirs=[str(CPU)],
            extra_compile_args=[
                "-O3",
                "-std=gnu11",
                "-fopenmp",
                "-fno-math-errno",
                "-Wall",
                "-Werror=implicit",
            ],
            extra_link_args=["-fopenmp"],
        )
    ]
)
