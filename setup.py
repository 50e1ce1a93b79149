"""Build script: the packages ``flashseq`` and ``constrint`` (with the tuner of autotune/ shipped
as ``flashseq.autotune``, behind the ``flashseq-tune`` command) and the C++ sources.

torch must be installed first and the build must see it (``pip install --no-build-isolation``):
without it this script stops, rather than let pip resolve ``torch`` on its own, which on Linux
means the CUDA build and several GB of nvidia-* packages even on a CPU-only machine. install.sh
does both steps.

The CPU extension ``flashseq._C`` is compiled on first use by default (flashseq/_jit.py, cached
under $FLASHSEQ_CACHE_DIR per torch version and source change). ``FLASHSEQ_BUILD_EXTENSION=1``
compiles it here instead (ninja runs the compiles in parallel when installed).

Editable installs (``pip install -e``) use setuptools' "strict" mode: a folder of links to the
package files goes on sys.path, so ``import flashseq`` finds the package even where the current
folder holds a clone named ``flashseq`` (the default import finder of setuptools answers after
that folder and would return it as an empty namespace package). Files added to the package later
need a re-install to be seen from outside the checkout.
"""
import importlib.util
import os
import shutil
import sys

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

TORCH_MISSING = """
flashseq: torch is not importable while building flashseq, so the build stops here.
Install torch (>= 2.11) first, then build against it without build isolation, or run install.sh,
which does both (and installs a CPU-only torch when none is present):

    pip install torch            # or a CPU-only build, see https://pytorch.org
    pip install --no-build-isolation ".[dev]"

Without --no-build-isolation, pip builds in a fresh environment that has no torch, and if it were
allowed to install one there it would fetch the CUDA build (several GB) even on a CPU-only machine.
"""
MIN_TORCH = (2, 11)

try:
    import torch
except ImportError:
    sys.exit(TORCH_MISSING)
if tuple(int(p) for p in torch.__version__.split(".")[:2]) < MIN_TORCH:
    sys.exit(f"flashseq: needs torch >= {'.'.join(map(str, MIN_TORCH))}; found "
             f"{torch.__version__} (upgrade torch, or run install.sh in a new venv)")

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


class StrictEditable(editable_wheel):
    """``pip install -e``: "strict" mode unless another is asked for (see the module docstring)."""

    def finalize_options(self):
        self.mode = self.mode or "strict"
        super().finalize_options()


def cpu_extension():
    """The CppExtension for flashseq._C: the sources and flags of the first-use build
    (flashseq/_jit.py's ``cpu_extension_spec``), plus the build key it checks on load."""
    from torch.utils.cpp_extension import CppExtension

    # flashseq/_jit.py is loaded by path (it imports only the standard library at the top).
    spec = importlib.util.spec_from_file_location("flashseq_jit", os.path.join("flashseq", "_jit.py"))
    jit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(jit)
    ext = jit.cpu_extension_spec()
    rel = lambda paths: [os.path.relpath(p) for p in paths]  # noqa: E731
    return CppExtension(
        "flashseq._C", rel(ext.sources), include_dirs=list(ext.include_dirs),
        depends=rel(ext.depends), extra_compile_args=list(ext.cflags),
        extra_link_args=list(ext.ldflags),
        # lets flashseq/_jit.py tell this build from a stale one after the sources change
        define_macros=[("FLASHSEQ_SOURCE_KEY", jit.build_key())],
    )


ext_modules = []
cmdclass = {"build_py": BuildPyWithSources, "editable_wheel": StrictEditable}
if os.environ.get("FLASHSEQ_BUILD_EXTENSION") == "1":
    from torch.utils.cpp_extension import BuildExtension

    ext_modules.append(cpu_extension())
    cmdclass["build_ext"] = BuildExtension

setup(
    # Only flashseq and constrint become top-level packages; the tuner's folder is shipped
    # inside flashseq. bench/ and tests/ stay in the repository.
    packages=find_packages(include=["flashseq", "flashseq.*", "constrint", "constrint.*"])
    + ["flashseq.autotune"],
    package_dir={"flashseq.autotune": "autotune"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
