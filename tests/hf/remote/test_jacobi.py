"""Jacobi passes of the transformers-native model: a fixed J is the training forward with that J;
adaptive Jacobi stops at the fixed point (the sequential computation), within its tolerance, or
at its cap, reports what it ran, and equals the fixed-J forward where it stopped; only the
final pass fills the cache."""

import json

import pytest
import torch
from safetensors.torch import load_file

from megatron_ponder.hf import from_pretrained, load_training_model
from tests.reference.ponder_reference import reference_sequential
from tests.tiny_models import prompt, save_tiny_ponder

pytestmark = [pytest.mark.usefixtures("single_process"), pytest.mark.filterwarnings("ignore")]

LENGTH = 6


@pytest.fixture(scope="module", params=[("llama", 2), ("gpt_neox", 1)],
                ids=lambda p: f"{p[0]}-K{p[1]}")
def ponder(request, tmp_path_factory):
    """(native model, training model, K, exact sequential logits of ``_ids()``)."""
    arch, k = request.param
    folder = save_tiny_ponder(tmp_path_factory.mktemp(f"{arch}{k}"), arch, k)
    with open(f"{folder}/config.json") as f:
        hf_config = json.load(f)
    # The independent reference (tests/reference) of the sequential computation.
    exact = reference_sequential(hf_config, load_file(f"{folder}/model.safetensors"), _ids(), k)
    return from_pretrained(folder), load_training_model(folder), k, exact


def _ids():
    return torch.stack([prompt(LENGTH, seed=1), prompt(LENGTH, seed=2)])


def _score(model, **options):
    options.setdefault("use_cache", False)
    with torch.no_grad():
        return model(_ids(), **options)


@pytest.mark.parametrize("j", [0, 2])
def test_fixed_j_is_the_training_forward(ponder, j):
    native, training, _, _ = ponder
    out = _score(native, jacobi_iterations=j)
    with torch.no_grad():
        expected = training(_ids(), jacobi_iterations=j)
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=0)
    assert out.jacobi_iterations == j and out.thought_change is None


def test_adaptive_reaches_the_sequential_computation(ponder):
    native, training, k, exact = ponder
    out = _score(native, jacobi_iterations="adaptive", jacobi_tolerance=0.0,
                 max_jacobi_iterations=k * LENGTH + 1)
    assert out.thought_change == 0.0
    # Each Jacobi pass fixes at least one more slot, so K*L passes always suffice; the last
    # pass only confirms nothing changed.
    assert 1 <= out.jacobi_iterations <= k * LENGTH + 1
    torch.testing.assert_close(out.logits, exact, atol=1e-5, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(training(_ids(), jacobi_iterations=out.jacobi_iterations),
                                   out.logits, atol=1e-5, rtol=0)
    three = _score(native, jacobi_iterations=3).logits
    assert (three - exact).abs().max() > 1e-4  # J=3 is not yet exact at this length


def test_adaptive_default_tolerance_stops_early_and_close(ponder):
    native, _, k, exact = ponder
    out = _score(native, jacobi_iterations="adaptive")
    to_the_fixed_point = _score(native, jacobi_iterations="adaptive", jacobi_tolerance=0.0,
                                max_jacobi_iterations=k * LENGTH + 1).jacobi_iterations
    assert out.thought_change <= 1e-4  # float32's default tolerance
    assert 1 <= out.jacobi_iterations <= to_the_fixed_point
    assert (out.logits - exact).abs().max() < 1e-3


def test_adaptive_stops_at_the_cap(ponder):
    native, _, k, _ = ponder
    out = _score(native, jacobi_iterations="adaptive", jacobi_tolerance=0.0,
                 max_jacobi_iterations=1)
    assert out.jacobi_iterations == 1 and out.thought_change > 0
    torch.testing.assert_close(out.logits, _score(native, jacobi_iterations=1).logits,
                               atol=0, rtol=0)


def test_loose_tolerance_stops_after_one_jacobi_pass(ponder):
    out = _score(ponder[0], jacobi_iterations="adaptive", jacobi_tolerance=1e9)
    assert out.jacobi_iterations == 1


def test_only_the_final_pass_fills_the_cache(ponder, monkeypatch):
    native, training, k, _ = ponder
    cache_class = type(_score(native, use_cache=True).ponder_cache)
    append = cache_class.append
    written = []

    def recording_append(self, index, key, value):
        written.append(key.shape[2])
        return append(self, index, key, value)

    monkeypatch.setattr(cache_class, "append", recording_append)
    out = _score(native, jacobi_iterations=3, use_cache=True)
    layers = native.config.num_hidden_layers
    assert written == [(k + 1) * LENGTH] * layers  # one write per layer, all slots at once
    assert out.ponder_cache.lengths == [(k + 1) * LENGTH] * layers
    with torch.no_grad():
        torch.testing.assert_close(out.logits, training(_ids(), jacobi_iterations=3),
                                   atol=1e-5, rtol=0)


def test_vanilla_runs_no_jacobi_pass(tmp_path):
    native = from_pretrained(save_tiny_ponder(tmp_path, "llama", 0), jacobi_iterations="adaptive")
    out = _score(native)
    assert out.jacobi_iterations == 0 and out.thought_change is None


def test_schedule_options(ponder, tmp_path):
    native = ponder[0]
    torch.testing.assert_close(_score(native, jacobi_iterations="2").logits,
                               _score(native, jacobi_iterations=2).logits, atol=0, rtol=0)
    with pytest.raises(ValueError, match=">= 0"):
        _score(native, jacobi_iterations=-1)
    with pytest.raises(ValueError, match="adaptive"):
        _score(native, jacobi_iterations=2, max_jacobi_iterations=4)
    folder = save_tiny_ponder(tmp_path, "llama", 1)
    # The default tolerance follows the precision the thoughts are computed in.
    single = from_pretrained(folder, jacobi_iterations="adaptive").config.jacobi_tolerance
    half = from_pretrained(folder, jacobi_iterations="adaptive",
                           dtype="bfloat16").config.jacobi_tolerance
    assert half > single == 1e-4
    capped = from_pretrained(folder, jacobi_iterations="adaptive", max_jacobi_iterations=1)
    with torch.no_grad():
        assert capped(_ids(), use_cache=False, jacobi_tolerance=0.0).jacobi_iterations == 1
