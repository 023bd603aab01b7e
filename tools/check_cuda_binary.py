"""Check a compiled CUDA binary (the extension's .so, or a cubin) with cuobjdump, no GPU needed.

Fails (exit 1, one line per problem) when code for a requested GPU architecture is missing or
when a kernel uses a stack frame or local memory (register spills); prints each kernel's
registers. ``make gpu-build`` runs it on the extension it builds:

    python tools/check_cuda_binary.py build/gpu-build/lib/megatron_ponder/_C*.so --arch 80 --arch 90

cuobjdump comes from ``--cuobjdump``, else PATH, else Triton's wheel (which ships one).
"""

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from typing import List, NamedTuple, Optional

_ARCH = re.compile(r"^arch = (sm_\w+)")
_FUNCTION = re.compile(r"^\s*Function (\S+):")
_USAGE = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")
_ELF = re.compile(r"\.(sm_\d+)a?\.cubin$")


class KernelUsage(NamedTuple):
    arch: Optional[str]  # None for a bare cubin (cuobjdump prints no arch for it)
    function: str
    registers: int
    stack: int
    shared: int
    local: int

    @property
    def spills(self) -> bool:
        return self.stack > 0 or self.local > 0


def resource_usage(dump: str) -> List[KernelUsage]:
    """Parse ``cuobjdump --dump-resource-usage`` output into one record per kernel."""
    usages, arch, function = [], None, None
    for line in dump.splitlines():
        if match := _ARCH.match(line.strip()):
            arch = match.group(1)
        elif match := _FUNCTION.match(line):
            function = match.group(1)
        elif (match := _USAGE.search(line)) and function is not None:
            usages.append(KernelUsage(arch, function, *map(int, match.groups())))
            function = None
    return usages


def elf_archs(listing: str) -> List[str]:
    """Architectures of the ELF images in ``cuobjdump --list-elf`` output (sm_90a -> sm_90)."""
    return sorted({match.group(1) for line in listing.splitlines()
                   if (match := _ELF.search(line.strip()))})


def find_cuobjdump(explicit: Optional[str] = None) -> str:
    if explicit:
        return explicit
    on_path = shutil.which("cuobjdump")
    if on_path:
        return on_path
    spec = importlib.util.find_spec("triton")  # located, not imported
    if spec and spec.submodule_search_locations:
        bundled = os.path.join(spec.submodule_search_locations[0], "backends", "nvidia", "bin",
                               "cuobjdump")
        if os.path.exists(bundled):
            return bundled
    raise FileNotFoundError("cuobjdump not found: pass --cuobjdump, put it on PATH or install "
                            "triton (its wheel ships one)")


def _cuobjdump(tool: str, option: str, binary: str) -> str:
    return subprocess.run([tool, option, binary], capture_output=True, text=True,
                          check=True).stdout


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("binary", help="a .so with embedded GPU code, or a cubin")
    parser.add_argument("--arch", type=int, action="append", default=[],
                        help="compute capability that must be present, e.g. 80 (repeatable)")
    parser.add_argument("--cuobjdump", help="path of cuobjdump")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.binary):
        print(f"error: {args.binary} is not a file", file=sys.stderr)
        return 1
    tool = find_cuobjdump(args.cuobjdump)

    usages = resource_usage(_cuobjdump(tool, "--dump-resource-usage", args.binary))
    problems = []
    if not usages:
        problems.append(f"no kernels found in {args.binary}")
    present = elf_archs(_cuobjdump(tool, "--list-elf", args.binary))
    problems += [f"no sm_{arch} code in {args.binary} (has: {', '.join(present) or 'none'})"
                 for arch in args.arch if f"sm_{arch}" not in present]
    for usage in usages:
        print(f"{usage.arch or '-'} {usage.function}: {usage.registers} registers, "
              f"stack {usage.stack}, shared {usage.shared}, local {usage.local}")
        if usage.spills:
            problems.append(f"{usage.arch or '-'} {usage.function} spills (stack {usage.stack}, "
                            f"local {usage.local})")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
