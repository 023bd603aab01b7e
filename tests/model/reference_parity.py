"""Helpers of the tests that hold the model equal to the independent reference (tests/reference):
a tiny Hugging Face checkpoint as the common weights, token ids, and the gradient comparison in
our parameter names."""

import json

import torch
from safetensors.torch import load_file

from megatron_ponder.hf.adapters import hf_to_megatron
from tests.tiny_models import VOCAB, save_tiny_hf


def reference_checkpoint(folder, arch: str, ponder_fields: dict):
    """A random tiny HF checkpoint in ``folder`` -> (its config.json dict, its state dict)."""
    save_tiny_hf(folder, arch, ponder_fields=ponder_fields)
    with open(folder / "config.json") as f:
        hf_config = json.load(f)
    return hf_config, load_file(str(folder / "model.safetensors"))


def token_ids(length=7, batch=2, high=VOCAB, seed=3):
    return torch.randint(0, high, (batch, length), generator=torch.Generator().manual_seed(seed))


def assert_gradients_match(model, model_config, hf_grads: dict):
    """Every parameter gradient of ``model`` equals the reference's (HF names) mapped to ours."""
    expected = hf_to_megatron(model_config, hf_grads)
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert set(grads) == set(expected)
    for name, grad in grads.items():
        assert grad is not None, name
        torch.testing.assert_close(grad, expected[name], atol=2e-5, rtol=1e-4,
                                   msg=lambda m: f"{name}: {m}")
