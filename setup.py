"""Build script: the Python packages plus the CPU extension ``flashseq._C`` from csrc/cpu/.

The extension needs torch at build time. Build with ``pip install --no-build-isolation`` so the
installed torch (CPU or CUDA) is used; without torch the extension is skipped and flashseq
builds it on first use instead (see flashseq/_jit.py).
"""
import glob
import os

from setuptools import setup

ext_modules, cmdclass = [], {}
try:
    from torch.utils.cpp_extension import BuildExtension, CppExtension
except ImportError:
    print("flashseq: torch not importable at build time; the CPU extension will be built on first use")
else:
    sources = sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    if sources:
        # The C++ standard is left to torch (C++17 on older releases, C++20 on newer ones); the
        # cell headers are plain C++17. Same flags as the first-use build in flashseq/_jit.py.
        ext_modules.append(CppExtension(
            "flashseq._C", sources,
            include_dirs=[os.path.abspath("csrc")],
            depends=sorted(glob.glob(os.path.join("csrc", "cpu", "*.h"))
                           + glob.glob(os.path.join("csrc", "cells", "*.h"))),
            extra_compile_args=["-O3"],
        ))
        cmdclass["build_ext"] = BuildExtension

setup(ext_modules=ext_modules, cmdclass=cmdclass)
