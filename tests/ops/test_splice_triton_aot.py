"""Ahead-of-time compile checks of the Triton splice kernels: no GPU needed.

Every kernel variant the launchers (``splice_triton.forward_into`` / ``backward_into``) can
launch is compiled to a cubin for A100 (sm_80) and H100 (sm_90). The variants are not a table
copied here: the launchers themselves are called, on CPU tensors, with their launch intercepted
and handed to Triton's own JIT as a compile-only warm-up for the target GPU. So the block and
warp count come from the launcher's rule, and the signature and specialisation (pointers on
16-byte alignment, integers on divisibility by 16, integers equal to 1 compiled as constants)
from Triton's launcher, exactly as they would on the GPU. Covered: every dtype the model trains
in, every block the default rule can produce, 16-byte aligned and unaligned inputs, both
kernels, a Jacobi pass and, for aligned inputs, the growth pass with one slot in ``prev``
(``prev_slots == 1``, a constant to Triton).

Each cubin is checked with ``cuobjdump`` (shipped in Triton's wheel, as is ``ptxas``): no stack
frame and no local memory, i.e. no register spills. For aligned inputs every global load and
store must be as wide as the block allows (16 bytes, or the whole per-thread share of a block
when that is smaller), the precondition for reaching copy bandwidth. Unaligned inputs fall back
to element-wide accesses; that they stay correct is tested under the interpreter in
test_splice_kernels.py, and why they do not occur in training is in docs/benchmarks.md.
What none of this checks is speed.
"""

import importlib.util
import os
import re
import subprocess

import pytest
import torch

triton = pytest.importorskip("triton")
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.backends.driver import DriverBase  # noqa: E402
from triton.runtime.driver import driver  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

from megatron_ponder.ops import splice_triton  # noqa: E402

ARCHS = [80, 90]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# (num_slots, prev_slots): a Jacobi pass (any K) and the growth pass of K=1, whose
# prev_slots == 1 Triton specialises into a constant. Other growth passes (prev_slots >= 2)
# specialise like the Jacobi pass; Triton's JIT cache compiles each distinct variant once.
# Unaligned inputs, which training never passes (docs/benchmarks.md), only in the general form:
# each variant costs about 0.1 s of CPU to compile.
SLOTS = {True: [(2, 2), (2, 1), (3, 2)], False: [(2, 2)]}

_ACCESS = re.compile(r"\b(ld|st)\.global\.(?:[\w:]+\.)*?(?:v(\d)\.)?b(\d+)\b")


def _load_checker():
    """tools/check_cuda_binary.py, which parses cuobjdump's report (also for make gpu-build)."""
    path = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "tools",
                        "check_cuda_binary.py")
    spec = importlib.util.spec_from_file_location("check_cuda_binary", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check_cuda_binary = _load_checker()


class _CompileOnlyDriver(DriverBase):
    """The part of a Triton driver its JIT asks for when it only compiles (warm-up): the
    target and a device key. Nothing here can launch."""

    def __init__(self, target: GPUTarget):
        super().__init__()
        self.target = target

    @classmethod
    def is_active(cls):
        return False

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return f"{self.target.backend}:{self.target.arch}"  # one JIT cache per target

    def get_current_stream(self, device):
        return None

    def get_active_torch_device(self):
        raise RuntimeError("compile-only driver: no device")

    def map_python_to_cpp_type(self, ty):
        raise RuntimeError("compile-only driver: no launcher")

    def get_benchmarker(self):
        raise RuntimeError("compile-only driver: no device")


def _block_rules(element_size):
    """Every (block, num_warps) the launcher's default rule gives, over all row lengths."""
    return sorted({splice_triton._launch_params(2 ** i, element_size, None)
                   for i in range(2 * splice_triton._MAX_BLOCK.bit_length())})


def _launch_every_variant(dtype):
    """Call the launchers on CPU tensors covering every variant; yield after each launch
    (what, block, num_warps, aligned)."""
    element_size = torch.empty((), dtype=dtype).element_size()
    for block, num_warps in _block_rules(element_size):
        for aligned in (True, False):
            # Unaligned: one element off a 16-byte boundary and a row length that is no
            # multiple of 16; both lengths get this block from the default rule.
            length, offset = (block, 0) if aligned else (block - 1, 1)
            assert splice_triton._launch_params(length, element_size, None) == (block, num_warps)
            buffer = torch.zeros(16 * length + offset, dtype=dtype)

            def rows(count):
                return buffer[offset: offset + count * length].view(count, 1, length)

            for num_slots, prev_slots in SLOTS[aligned]:
                emb, prev, out = rows(2), rows(2 * prev_slots), rows(2 * num_slots)
                splice_triton.forward_into(emb, prev, out, num_slots, prev_slots)
                yield f"fwd {num_slots}/{prev_slots}", block, num_warps, aligned
                splice_triton.backward_into(out, prev, num_slots, prev_slots)
                yield f"bwd {num_slots}/{prev_slots}", block, num_warps, aligned


def _resources(cubin: bytes, tmp_path):
    path = tmp_path / "kernel.cubin"
    path.write_bytes(cubin)
    dump = subprocess.run([triton.knobs.nvidia.cuobjdump.path, "--dump-resource-usage", str(path)],
                          capture_output=True, text=True, check=True).stdout
    usages = check_cuda_binary.resource_usage(dump)
    assert len(usages) == 1, dump  # one kernel per cubin
    return usages[0]


@pytest.mark.filterwarnings("ignore:TRITON_DEFAULT_FP_FUSION:UserWarning")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("arch", ARCHS)
def test_every_launch_variant_compiles_without_spills(arch, dtype, monkeypatch, tmp_path):
    # Compile-only copies of the kernels (also when TRITON_INTERPRET=1 made the module's
    # kernels interpreted), so the real kernels' JIT caches never see the fake target.
    copies = {kernel.fn: JITFunction(kernel.fn) for kernel in
              (splice_triton._splice_fwd_kernel, splice_triton._splice_bwd_kernel)}
    compiled = []

    class _Warmup:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            return lambda *args, **kwargs: compiled.append(
                self.kernel.warmup(*args, grid=grid, **kwargs))

    monkeypatch.setattr(splice_triton, "_for_device",
                        lambda kernel, device: _Warmup(copies[kernel.fn]))
    # Triton's driver registry; monkeypatch restores whatever it held (None until first use).
    monkeypatch.setattr(driver, "_active", _CompileOnlyDriver(GPUTarget("cuda", arch, 32)))

    element_size = torch.empty((), dtype=dtype).element_size()
    checked = {}
    for what, block, num_warps, aligned in _launch_every_variant(dtype):
        kernel = compiled.pop()
        if kernel.metadata.hash in checked:  # the same variant as an earlier launch
            continue
        assert kernel.metadata.num_warps == num_warps and kernel.metadata.arch == f"sm{arch}"
        usage = _resources(kernel.asm["cubin"], tmp_path)
        accesses = _ACCESS.findall(kernel.asm["ptx"])
        widths = sorted({int(vector or 1) * int(bits) // 8 for _, vector, bits in accesses})
        line = (f"sm_{arch} {dtype} {what} block {block} warps {num_warps} "
                f"{'aligned' if aligned else 'unaligned'}: {usage.registers} registers, "
                f"stack {usage.stack}, local {usage.local}, access bytes {widths}")
        checked[kernel.metadata.hash] = line
        assert not usage.spills, f"register spill: {line}"
        assert {op for op, _, _ in accesses} == {"ld", "st"}, line
        if aligned:
            per_thread = block * element_size // (32 * num_warps)
            assert widths == [min(16, per_thread)], f"narrow access: {line}"
    print("\n" + "\n".join(checked.values()))  # shown with pytest -s
    # Per block the rule gives, each kernel: aligned with prev_slots == 1 or not, unaligned.
    assert len(checked) == len(_block_rules(element_size)) * 2 * 3, len(checked)
