"""The model computes the same loss and gradients whichever splice backend builds its passes.

The kernel tests (tests/ops) check the op alone; this checks the op as the model uses it: every
pass after the first, growth and Jacobi passes, gradients summed over passes into the embedding.
On CPU the fused backend is the Triton kernel run by the interpreter and the comparison is bit
for bit; on a GPU it is each fused backend (cuda, triton) against the torch reference, exact in
the forward and within float32 rounding in the backward (GPU attention/embedding backward kernels
may accumulate in a different order from run to run).
"""

import pytest
import torch

from megatron_ponder.config import ModelConfig, PonderConfig
from megatron_ponder.model import build_model
from megatron_ponder.ops import BACKEND_ENV, available_backends

pytestmark = pytest.mark.usefixtures("single_process")
VOCAB = 61
CASES = [("llama", 1, 2), ("gpt_neox", 2, 1), ("llama", 3, 0)]  # (arch, K, J): growth + Jacobi


def _device_backends():
    """(device, fused backend) pairs to compare with the torch reference on this machine."""
    pairs = [pytest.param("cpu", "triton", id="cpu-triton")]
    cuda = torch.cuda.is_available()
    for backend in ("cuda", "triton"):
        present = cuda and backend in available_backends("cuda")
        pairs.append(pytest.param(
            "cuda", backend, id=f"cuda-{backend}",
            marks=pytest.mark.skipif(not present, reason=(
                f"no CUDA device or {backend} backend not built; the cpu-triton case checks "
                f"the same model path on CPU"))))
    return pairs


def _loss_and_grads(model, ids, backend, monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, backend)
    model.zero_grad(set_to_none=True)
    loss = model(ids, labels=ids).mean()
    loss.backward()
    return loss.detach(), {name: p.grad.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("device,backend", _device_backends())
@pytest.mark.parametrize("arch,k,j", CASES)
def test_model_matches_torch_splice(monkeypatch, device, backend, arch, k, j):
    if backend == "triton" and "triton" not in available_backends(device):
        pytest.skip("triton is not importable here (pip install triton)")
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, num_layers=2, hidden_size=32,
                                    num_attention_heads=4, vocab_size=VOCAB),
                        PonderConfig(num_latent_thoughts=k, jacobi_iterations=j)).to(device)
    ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(3)).to(device)

    ref_loss, ref_grads = _loss_and_grads(model, ids, "torch", monkeypatch)
    loss, grads = _loss_and_grads(model, ids, backend, monkeypatch)

    assert torch.isfinite(ref_loss)
    assert torch.equal(loss, ref_loss)  # the forward is a pure copy in every backend
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        if device == "cpu":
            assert torch.equal(grad, ref_grads[name]), name
        else:
            torch.testing.assert_close(grad, ref_grads[name], msg=name)
    # The comparison is meaningful only if gradient reached the fed-back path.
    assert ref_grads["embedding.word_embeddings.weight"].abs().sum() > 0
