"""The Pause and Loop baselines (``--ponder-method pause|loop``) equal the definitions of the
PonderLM-2 authors' code, restated in tests/reference (``reference_pause_forward``,
``reference_loop_forward``), for both architectures and K in {1, 2}: the megatron-core model's
per-token losses and every parameter gradient, and the transformers-native model's logits and
loss.

The weights are one tiny Hugging Face checkpoint, as in test_ponder_vs_reference.py. The
official Pause model has no pause parameter of its own: its pause slot is a vocabulary id whose
embedding row it reads. Ours learns a separate ``pause_embedding``; the checkpoint carries it
equal to the row of ``PAUSE_ID``, an id no input token uses, so both models see the same
numbers, and the gradient of that row in the reference is the gradient of our pause embedding.
"""

import pytest
import torch
from safetensors.torch import save_file

from megatron_ponder.hf import load_training_model
from megatron_ponder.hf.adapters import PAUSE_EMBEDDING
from megatron_ponder.hf.export import save_pretrained
from tests.model.reference_parity import assert_gradients_match, reference_checkpoint, token_ids
from tests.reference.ponder_reference import (
    reference_loop_forward,
    reference_loss,
    reference_pause_forward,
    reference_token_losses,
)
from tests.tiny_models import VOCAB

transformers = pytest.importorskip("transformers")
pytestmark = [pytest.mark.usefixtures("single_process"), pytest.mark.filterwarnings("ignore")]

PAUSE_ID = VOCAB - 1  # like the official default, an id of the vocabulary no token maps to
CASES = [(arch, method, k) for arch in ("llama", "gpt_neox") for method in ("pause", "loop")
         for k in (1, 2)]


def _embedding_key(arch):
    return "model.embed_tokens.weight" if arch == "llama" else "gpt_neox.embed_in.weight"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """(arch, method, k) -> (folder, config.json dict, the official model's state dict)."""
    cache = {}

    def get(arch, method, k):
        if (arch, method, k) not in cache:
            folder = tmp_path_factory.mktemp(f"{arch}-{method}{k}")
            hf_config, hf_state = reference_checkpoint(folder, arch, dict(
                recurrent_model=True, num_latent_thoughts=k, scale_embeds=True,
                ponder_method=method))
            if method == "pause":
                pause = hf_state[_embedding_key(arch)][PAUSE_ID].clone()
                save_file({**hf_state, PAUSE_EMBEDDING: pause},
                          str(folder / "model.safetensors"), metadata={"format": "pt"})
            cache[arch, method, k] = str(folder), hf_config, hf_state
        return cache[arch, method, k]

    return get


def _official(method, hf_config, hf_state, ids, k):
    if method == "pause":
        return reference_pause_forward(hf_config, hf_state, ids, k, pause_token_id=PAUSE_ID)
    return reference_loop_forward(hf_config, hf_state, ids, k)


def _reference_gradients(arch, method, ref_state):
    """The reference's gradients under our checkpoint's names: the pause-token row's gradient
    is our pause embedding's, and our word embedding's row of that id gets none."""
    grads = {n: t.grad for n, t in ref_state.items()}
    if method == "pause":
        embedding = grads[_embedding_key(arch)].clone()
        grads[PAUSE_EMBEDDING] = embedding[PAUSE_ID].clone()
        embedding[PAUSE_ID] = 0
        grads[_embedding_key(arch)] = embedding
    return grads


@pytest.mark.parametrize("arch,method,k", CASES)
def test_training_model_losses_and_gradients_equal_the_official_definition(
        checkpoint, arch, method, k):
    folder, hf_config, hf_state = checkpoint(arch, method, k)
    ids = token_ids(high=PAUSE_ID)

    ref_state = {n: t.clone().requires_grad_(True) for n, t in hf_state.items()}
    ref_losses = reference_token_losses(_official(method, hf_config, ref_state, ids, k)["logits"],
                                        ids)
    ref_losses.mean().backward()

    model = load_training_model(folder)  # build_model(..., PonderConfig(ponder_method=...))
    assert (model.ponder_config.ponder_method, model.ponder_config.thoughts) == (method, k)
    # Labels are the targets already shifted; the last position's target is not a real one.
    losses = model(ids, labels=ids.roll(-1, dims=1))[:, :-1]
    losses.mean().backward()

    torch.testing.assert_close(losses, ref_losses.detach(), atol=1e-5, rtol=0)
    assert_gradients_match(model, model.model_config,
                           _reference_gradients(arch, method, ref_state))


@pytest.mark.parametrize("arch,method,k", CASES)
def test_transformers_native_model_equals_the_official_definition(
        checkpoint, tmp_path, arch, method, k):
    folder, hf_config, hf_state = checkpoint(arch, method, k)
    ids = token_ids(high=PAUSE_ID)
    with torch.no_grad():
        ref_logits = _official(method, hf_config, hf_state, ids, k)["logits"]

    save_pretrained(load_training_model(folder), str(tmp_path))
    native = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path), trust_remote_code=True).eval()
    assert (native.config.ponder_method, native.config.thoughts) == (method, k)
    with torch.no_grad():
        out = native(ids, labels=ids)

    torch.testing.assert_close(out.logits, ref_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.loss, reference_loss(ref_logits, ids), atol=1e-5, rtol=0)
