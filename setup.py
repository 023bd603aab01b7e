"""Build script for megatron_ponder.

The package itself is pure Python. The optional CUDA splice extension in ``csrc/`` (module
``megatron_ponder._C``) is compiled only when both a CUDA-enabled torch and ``nvcc`` are present;
otherwise it is skipped with a printed reason (visible with ``pip install -v``) and the Triton /
torch backends are used instead. pip's default build isolation hides the installed torch from
this script, so build the extension with ``pip install --no-build-isolation -e .``.
"""

import os
import shutil
import sys

from setuptools import find_packages, setup


def _cuda_extensions():
    """Return the CUDA extension list and build_ext command class, or explain why not."""
    if os.environ.get("MEGATRON_PONDER_SKIP_CUDA_EXT") == "1":
        print("megatron_ponder: skipping CUDA extension (MEGATRON_PONDER_SKIP_CUDA_EXT=1)")
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import (CUDA_HOME, BuildExtension, CUDAExtension,
                                               include_paths)
    except Exception as exc:  # torch absent while building metadata: nothing to compile
        print(f"megatron_ponder: skipping CUDA extension (torch not importable: {exc}; "
              f"pip builds in isolation unless given --no-build-isolation)")
        return [], {}
    if torch.version.cuda is None:
        print("megatron_ponder: skipping CUDA extension (this torch build has no CUDA)")
        return [], {}
    if CUDA_HOME is None or shutil.which("nvcc") is None and not os.path.exists(
        os.path.join(CUDA_HOME or "", "bin", "nvcc")
    ):
        print("megatron_ponder: skipping CUDA extension (nvcc not found; set CUDA_HOME)")
        return [], {}
    sources = [os.path.join("csrc", name) for name in sorted(os.listdir("csrc"))
               if name.endswith((".cpp", ".cu"))]
    if not sources:
        print("megatron_ponder: skipping CUDA extension (no sources in csrc/)")
        return [], {}
    # One module for every kernel in csrc/; megatron_ponder/ops/splice_cuda.py imports it lazily.
    # Target GPUs come from TORCH_CUDA_ARCH_LIST (default: the GPUs visible at build time).
    ext = CUDAExtension(
        name="megatron_ponder._C",
        sources=sources,
        extra_compile_args=_compile_args(torch_include_dirs=include_paths(device_type="cuda")),
    )
    return [ext], {"build_ext": BuildExtension}


def _compile_args(torch_include_dirs):
    """Host compiler and nvcc flags of the extension; the one place they are written.

    The kernels only copy bytes, so no fast-math flags: nothing here may change a value.
    ``MEGATRON_PONDER_WERROR=1`` (set by ``make gpu-build``) turns every warning in our sources
    into an error. Torch's and CUDA's headers are passed as system headers then, so that their
    own warnings do not count; warnings in csrc/ still do.
    """
    args = {"cxx": ["-O3"], "nvcc": ["-O3", "-lineinfo"]}
    if os.environ.get("MEGATRON_PONDER_WERROR") == "1":
        system = [flag for path in torch_include_dirs for flag in ("-isystem", path)]
        args["cxx"] += ["-Wall", "-Wextra", "-Werror", *system]
        args["nvcc"] += ["-Werror", "all-warnings", "-Xcompiler", "-Wall,-Wextra,-Werror",
                         *system]
    return args


ext_modules, cmdclass = _cuda_extensions()

setup(
    packages=find_packages(include=["megatron_ponder", "megatron_ponder.*"]),
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
