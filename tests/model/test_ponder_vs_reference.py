"""The megatron-core model equals the independent reference (tests/reference) of docs/method.md:
logits, loss and every parameter gradient, for both architectures, K in {0,1,2}, J in {0,1,3}."""

import json

import pytest
import torch
from safetensors.torch import load_file

from megatron_ponder.hf import from_pretrained
from megatron_ponder.hf.adapters import hf_to_megatron
from tests.reference.ponder_reference import reference_forward, reference_loss, \
    reference_sequential
from tests.tiny_models import VOCAB, save_tiny_hf

pytestmark = pytest.mark.usefixtures("single_process")

PONDER_FIELDS = dict(recurrent_model=True, num_latent_thoughts=1, num_jacobi_iterations=3,
                     scale_embeds=True, interpolation=False)


@pytest.fixture(scope="module", params=["llama", "gpt_neox"])
def checkpoint(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    save_tiny_hf(folder, request.param, ponder_fields=PONDER_FIELDS)
    with open(folder / "config.json") as f:
        hf_config = json.load(f)
    return str(folder), hf_config, load_file(str(folder / "model.safetensors"))


def _ids(length=7, batch=2):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("k", [0, 1, 2])
@pytest.mark.parametrize("j", [0, 1, 3])
def test_logits_loss_and_gradients_match_reference(checkpoint, k, j):
    folder, hf_config, hf_state = checkpoint
    ids = _ids()

    ref_state = {n: t.clone().requires_grad_(True) for n, t in hf_state.items()}
    ref = reference_forward(hf_config, ref_state, ids, num_latent_thoughts=k,
                            jacobi_iterations=j)
    ref_loss = reference_loss(ref["logits"], ids)
    ref_loss.backward()

    model = from_pretrained(folder, engine="megatron", num_latent_thoughts=k, jacobi_iterations=j)
    out = model(ids, labels=ids)
    out.loss.backward()

    torch.testing.assert_close(out.logits, ref["logits"].detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.loss, ref_loss.detach(), atol=1e-6, rtol=0)

    model_config = model.model_config
    expected_grads = hf_to_megatron(model_config, {n: t.grad for n, t in ref_state.items()})
    grads = {n: p.grad for n, p in model.model.named_parameters()}
    assert set(grads) == set(expected_grads)
    for name, grad in grads.items():
        assert grad is not None, name
        torch.testing.assert_close(grad, expected_grads[name], atol=2e-5, rtol=1e-4,
                                   msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("k", [1, 2])
def test_enough_jacobi_passes_reach_the_sequential_computation(checkpoint, k):
    folder, hf_config, hf_state = checkpoint
    length = 6
    ids = _ids(length=length)
    exact = reference_sequential(hf_config, hf_state, ids, num_latent_thoughts=k)
    errors = []
    # Each Jacobi pass makes (at least) one more slot exact; K*L passes always suffice.
    for j in (0, 1, k * length):
        model = from_pretrained(folder, engine="megatron", num_latent_thoughts=k,
                                jacobi_iterations=j)
        with torch.no_grad():
            errors.append((model(ids).logits - exact).abs().max().item())
    assert errors[0] > 1e-3 and errors[1] > 1e-4, errors
    assert errors[-1] < 1e-5, errors
    assert errors[0] > errors[1] > errors[-1], errors
