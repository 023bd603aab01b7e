"""The megatron-core model equals the independent reference (tests/reference) of docs/method.md:
logits, loss and every parameter gradient, for both architectures, K in {0,1,2}, J in {0,1,3}."""

import pytest
import torch

from megatron_ponder.hf import load_training_model
from tests.model.reference_parity import assert_gradients_match, reference_checkpoint, token_ids
from tests.reference.ponder_reference import reference_forward, reference_loss, \
    reference_sequential

pytestmark = pytest.mark.usefixtures("single_process")

PONDER_FIELDS = dict(recurrent_model=True, num_latent_thoughts=1, num_jacobi_iterations=3,
                     scale_embeds=True, interpolation=False)


@pytest.fixture(scope="module", params=["llama", "gpt_neox"])
def checkpoint(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    return (str(folder),) + reference_checkpoint(folder, request.param, PONDER_FIELDS)


@pytest.mark.parametrize("k", [0, 1, 2])
@pytest.mark.parametrize("j", [0, 1, 3])
def test_logits_loss_and_gradients_match_reference(checkpoint, k, j):
    folder, hf_config, hf_state = checkpoint
    ids = token_ids()

    ref_state = {n: t.clone().requires_grad_(True) for n, t in hf_state.items()}
    ref = reference_forward(hf_config, ref_state, ids, num_latent_thoughts=k,
                            jacobi_iterations=j)
    ref_loss = reference_loss(ref["logits"], ids)
    ref_loss.backward()

    model = load_training_model(folder, num_latent_thoughts=k, jacobi_iterations=j)
    logits = model(ids)
    # Per-token losses of the shifted targets; the last position has no real target.
    loss = model(ids, labels=ids.roll(-1, dims=1))[:, :-1].mean()
    loss.backward()

    torch.testing.assert_close(logits, ref["logits"].detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(loss, ref_loss.detach(), atol=1e-6, rtol=0)

    assert_gradients_match(model, model.model_config,
                           {n: t.grad for n, t in ref_state.items()})


@pytest.mark.parametrize("k", [1, 2])
def test_enough_jacobi_passes_reach_the_sequential_computation(checkpoint, k):
    folder, hf_config, hf_state = checkpoint
    length = 6
    ids = token_ids(length=length)
    exact = reference_sequential(hf_config, hf_state, ids, num_latent_thoughts=k)
    errors = []
    # Each Jacobi pass makes (at least) one more slot exact; K*L passes always suffice.
    for j in (0, 1, k * length):
        model = load_training_model(folder, num_latent_thoughts=k, jacobi_iterations=j)
        with torch.no_grad():
            errors.append((model(ids) - exact).abs().max().item())
    assert errors[0] > 1e-3 and errors[1] > 1e-4, errors
    assert errors[-1] < 1e-5, errors
    assert errors[0] > errors[1] > errors[-1], errors
