"""Backend selection: auto, explicit argument, environment override, optional triton."""

import sys
import types

import pytest
import torch

import megatron_ponder.ops as ops
from megatron_ponder.ops import (BACKEND_ENV, available_backends, backend_unavailable_reason,
                                 resolve_backend, splice, splice_reference)
from tests.ops.splice_cases import SPLICE_MODULE


def fake(device, dtype=torch.bfloat16):
    """Stands in for a tensor in resolve_backend, which looks only at device and dtype: lets the
    CUDA branches of the selection run on a machine without a GPU."""
    return types.SimpleNamespace(device=torch.device(device), dtype=dtype)


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv(BACKEND_ENV, raising=False)


def with_backends(monkeypatch, cuda: bool, triton: bool):
    real = SPLICE_MODULE._backend_impl

    def impl(name):
        present = {"cuda": cuda, "triton": triton}[name]
        return (object(), None) if present else (None, f"{name} missing in this test")

    monkeypatch.setattr(SPLICE_MODULE, "_backend_impl", impl)
    return real


@pytest.mark.parametrize("cuda,triton,expected", [
    (True, True, "cuda"), (False, True, "triton"), (True, False, "cuda"), (False, False, "torch"),
])
def test_auto_prefers_cuda_then_triton_then_torch(monkeypatch, no_env, cuda, triton, expected):
    with_backends(monkeypatch, cuda, triton)
    assert resolve_backend(fake("cuda")) == expected
    assert resolve_backend(fake("cpu")) == "torch"  # never the interpreter implicitly
    assert resolve_backend(fake("cuda", torch.int64)) == "torch"  # dtype the kernels skip


def test_explicit_unavailable_backend_raises(monkeypatch, no_env):
    with_backends(monkeypatch, cuda=False, triton=False)
    for name in ("cuda", "triton"):
        with pytest.raises(RuntimeError, match=f"{name} missing"):
            resolve_backend(fake("cuda"), name)


def test_explicit_backend_checks_device_and_dtype(no_env):
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        splice(torch.randn(2, 1, 4), torch.randn(2, 1, 4), 2, backend="cuda")
    with pytest.raises(TypeError, match="not supported"):
        resolve_backend(fake("cuda", torch.int32), "triton")


def test_environment_override(monkeypatch):
    emb, prev = torch.randn(2, 1, 4), torch.randn(2, 1, 4)
    monkeypatch.setenv(BACKEND_ENV, "torch")
    assert resolve_backend(emb) == "torch"
    monkeypatch.setenv(BACKEND_ENV, " Cuda ")  # explicit through the environment: no fallback
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        splice(emb, prev, 2)
    assert resolve_backend(emb, backend="torch") == "torch"  # the argument wins
    monkeypatch.setenv(BACKEND_ENV, "fastest")
    with pytest.raises(ValueError, match=BACKEND_ENV):
        splice(emb, prev, 2)
    with pytest.raises(ValueError, match="unknown backend"):
        splice(emb, prev, 2, backend="fastest")


def test_auto_on_cpu_is_the_reference(no_env):
    emb, prev = torch.randn(3, 2, 4), torch.randn(6, 2, 4)
    assert resolve_backend(emb) == "torch"
    assert torch.equal(splice(emb, prev, 2), splice_reference(emb, prev, 2))


def test_missing_triton_falls_back_silently_and_explains(monkeypatch, no_env):
    # Make `import triton` fail as if it were not installed (None in sys.modules raises
    # ImportError), and forget the already imported kernels module.
    monkeypatch.setitem(sys.modules, "triton", None)
    monkeypatch.delitem(sys.modules, "megatron_ponder.ops.splice_triton", raising=False)
    monkeypatch.delattr(ops, "splice_triton", raising=False)
    SPLICE_MODULE._triton_module.cache_clear()
    try:
        reason = backend_unavailable_reason("triton")
        assert reason is not None and "pip install triton" in reason
        assert "triton" not in available_backends("cpu")
        emb, prev = torch.randn(2, 1, 4), torch.randn(2, 1, 4)
        assert torch.equal(splice(emb, prev, 2), splice_reference(emb, prev, 2))
        with pytest.raises(RuntimeError, match="pip install triton"):
            splice(emb, prev, 2, backend="triton")
    finally:
        SPLICE_MODULE._triton_module.cache_clear()  # the next user re-imports the real one


def test_cuda_extension_reports_why_it_is_missing():
    reason = backend_unavailable_reason("cuda")
    if reason is None:
        assert torch.version.cuda is not None, "extension imported on a CPU-only torch"
        pytest.skip("the CUDA extension is built here; its missing-extension path cannot run")
    assert "megatron_ponder._C" in reason and "--no-build-isolation" in reason
    assert "cuda" not in available_backends("cpu")
