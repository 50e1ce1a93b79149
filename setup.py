"""Build script: the Python packages plus the CPU extension ``flashseq._C`` from csrc/cpu/.

The extension needs torch at build time. Build with ``pip install --no-build-isolation`` so the
installed torch (CPU or CUDA) is used; without torch the extension is skipped and flashseq
builds it on first use instead (see flashseq/_jit.py).
"""
import glob
import importlib.util
import os

import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

# The C++/CUDA sources travel inside the package as flashseq/_csrc, so a wheel (not only an
# editable install or a checkout) can build the CPU extension on first use (flashseq/_jit.py).
SOURCE_SUFFIXES = (".h", ".cuh", ".cpp", ".cu")


class BuildPyWithSources(build_py):
    """build_py that also copies csrc/**/*.{h,cuh,cpp,cu} to <build>/flashseq/_csrc."""

    def run(self):
        super().run()
        target = os.path.join(self.build_lib, "flashseq", "_csrc")
        shutil.rmtree(target, ignore_errors=True)
        for root, _, files in os.walk("csrc"):
            for name in sorted(files):
                if name.endswith(SOURCE_SUFFIXES):
                    dest = os.path.join(target, os.path.relpath(root, "csrc"), name)
                    os.makedirs(os.path.dirname(dest), exist_ok=True)
                    self.copy_file(os.path.join(root, name), dest)


ext_modules, cmdclass = [], {"build_py": BuildPyWithSources}
try:
    from torch.utils.cpp_extension import BuildExtension, CppExtension
except ImportError:
    print("flashseq: torch not importable at build time; the CPU extension will be built on first use")
else:
    sources = sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    if sources:
        # Same flags as the first-use build: flashseq/_jit.py (loaded by path, it imports only
        # the standard library at the top) chooses them, AVX2 where the building CPU has it.
        _spec = importlib.util.spec_from_file_location("flashseq_jit", os.path.join("flashseq", "_jit.py"))
        _jit = importlib.util.module_from_spec(_spec)
        _spec.loader.exec_module(_jit)
        ext_modules.append(CppExtension(
            "flashseq._C", sources,
            include_dirs=[os.path.abspath("csrc")],
            depends=sorted(glob.glob(os.path.join("csrc", "cpu", "*.h"))
                           + glob.glob(os.path.join("csrc", "cells", "*.h"))),
            extra_compile_args=list(_jit.compile_flags()),
            # lets flashseq/_jit.py tell this build from a stale one after the sources change
            define_macros=[("FLASHSEQ_SOURCE_KEY", _jit.build_key())],
        ))
        cmdclass["build_ext"] = BuildExtension

setup(ext_modules=ext_modules, cmdclass=cmdclass)
