"""tools/check_cuda_binary.py on cuobjdump reports of the shape a fat .so gives (the real tool on
real cubins runs in tests/ops/test_splice_triton_aot.py)."""

import stat
import textwrap

import pytest

from tests.tools.conftest import load_tool

KERNEL = "_ZN15megatron_ponder16copy_rows_kernelI5uint4EEvT_"


def fatbin_usage(stack=0, local=0):
    """``cuobjdump --dump-resource-usage`` of a .so holding the kernel for sm_80 and sm_90;
    ``stack`` and ``local`` are the sm_90 instance's."""
    sections = [(80, 28, 0, 0), (90, 30, stack, local)]
    return "".join(textwrap.dedent(f"""
        Fatbin elf code:
        ================
        arch = sm_{arch}
        code version = [1,8]
        host = linux
        compile_size = 64bit

        Resource usage:
         Common:
          GLOBAL:0
         Function {KERNEL}:
          REG:{registers} STACK:{stack} SHARED:0 LOCAL:{local} CONSTANT[0]:456 TEXTURE:0 SURFACE:0
        """) for arch, registers, stack, local in sections)


FAT_SO_ELF = "ELF file    1: _C.1.sm_80.cubin\nELF file    2: _C.2.sm_90.cubin\n"


@pytest.fixture(scope="module")
def checker():
    return load_tool("check_cuda_binary")


def fake_cuobjdump(tmp_path, usage, elf=FAT_SO_ELF):
    """A cuobjdump stand-in printing ``usage`` for --dump-resource-usage, ``elf`` for
    --list-elf."""
    (tmp_path / "usage.txt").write_text(usage)
    (tmp_path / "elf.txt").write_text(elf)
    tool = tmp_path / "cuobjdump"
    tool.write_text(f'#!/bin/sh\nif [ "$1" = --list-elf ]; then cat {tmp_path}/elf.txt; '
                    f'else cat {tmp_path}/usage.txt; fi\n')
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    binary = tmp_path / "_C.so"
    binary.write_bytes(b"")
    return str(tool), str(binary)


def test_parses_every_kernel_with_its_arch(checker):
    usages = checker.resource_usage(fatbin_usage(local=8))
    assert [(u.arch, u.registers, u.stack, u.local, u.spills) for u in usages] == [
        ("sm_80", 28, 0, 0, False), ("sm_90", 30, 0, 8, True)]
    assert all(u.function == KERNEL for u in usages)
    assert checker.elf_archs(FAT_SO_ELF + "ELF file    3: k.sm_90a.cubin\n") == ["sm_80", "sm_90"]


def test_clean_binary_passes_and_prints_registers(checker, tmp_path, capsys):
    tool, binary = fake_cuobjdump(tmp_path, fatbin_usage())
    assert checker.main([binary, "--arch", "80", "--arch", "90", "--cuobjdump", tool]) == 0
    assert f"sm_90 {KERNEL}: 30 registers, stack 0, shared 0, local 0" in capsys.readouterr().out


def test_spill_and_missing_arch_fail_with_one_line_each(checker, tmp_path, capsys):
    tool, binary = fake_cuobjdump(tmp_path, fatbin_usage(stack=16),
                                  elf="ELF file    1: _C.1.sm_90.cubin\n")
    assert checker.main([binary, "--arch", "80", "--arch", "90", "--cuobjdump", tool]) == 1
    errors = capsys.readouterr().err.splitlines()
    assert errors == [f"error: no sm_80 code in {binary} (has: sm_90)",
                      f"error: sm_90 {KERNEL} spills (stack 16, local 0)"]


def test_missing_binary_is_one_line(checker, tmp_path, capsys):
    assert checker.main([str(tmp_path / "none.so"), "--cuobjdump", "unused"]) == 1
    assert capsys.readouterr().err == f"error: {tmp_path / 'none.so'} is not a file\n"
