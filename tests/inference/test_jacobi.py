"""Inference passes: fixed J equals the training forward; adaptive Jacobi stops at the fixed
point (the sequential computation) or at its cap, and reports what it ran."""

import json

import pytest
import torch
from safetensors.torch import load_file

from megatron_ponder.inference import JacobiSchedule, KVCache, run_ponder_passes
from megatron_ponder.inference.passes import default_tolerance
from tests.inference.helpers import prompt, tiny_ponder
from tests.reference.ponder_reference import reference_sequential

pytestmark = pytest.mark.usefixtures("single_process")

LENGTH = 6


@pytest.fixture(scope="module", params=[("llama", 2), ("gpt_neox", 1)],
                ids=lambda p: f"{p[0]}-K{p[1]}")
def ponder(request, tmp_path_factory):
    arch, k = request.param
    folder, model = tiny_ponder(tmp_path_factory.mktemp(f"{arch}{k}"), arch, k)
    with open(f"{folder}/config.json") as f:
        hf_config = json.load(f)
    return model, k, hf_config, load_file(f"{folder}/model.safetensors")


def _ids():
    return torch.stack([prompt(LENGTH, seed=1), prompt(LENGTH, seed=2)])


@pytest.mark.parametrize("j", [0, 2])
def test_fixed_j_is_the_training_forward(ponder, j):
    model, k, _, _ = ponder
    ids = _ids()
    with torch.no_grad():
        expected = model.model(ids, jacobi_iterations=j)
        out = model(ids, jacobi_iterations=j)
    torch.testing.assert_close(out.logits, expected.float(), atol=0, rtol=0)
    assert (out.passes.passes, out.passes.jacobi_iterations) == (k + j + 1, j)
    assert out.passes.converged is None


def test_adaptive_reaches_the_sequential_computation(ponder):
    model, k, hf_config, hf_state = ponder
    ids = _ids()
    exact = reference_sequential(hf_config, hf_state, ids, k)
    with torch.no_grad():
        out = model(ids, jacobi_iterations="adaptive", jacobi_tolerance=0.0,
                    max_jacobi_iterations=k * LENGTH + 1)
        three = model(ids, jacobi_iterations=3).logits
    report = out.passes
    assert report.converged and report.thought_change == 0.0
    # Each Jacobi pass fixes at least one more slot, so K*L passes always suffice; the last
    # pass only confirms nothing changed.
    assert 1 <= report.jacobi_iterations <= k * LENGTH + 1
    assert report.passes == k + report.jacobi_iterations + 1
    torch.testing.assert_close(out.logits, exact, atol=1e-5, rtol=0)
    assert (three - exact).abs().max() > 1e-4  # J=3 is not yet exact at this length


def test_adaptive_default_tolerance_stops_early_and_close(ponder):
    model, k, hf_config, hf_state = ponder
    ids = _ids()
    exact = reference_sequential(hf_config, hf_state, ids, k)
    with torch.no_grad():
        out = model(ids, jacobi_iterations="adaptive")
    assert out.passes.converged
    assert out.passes.thought_change <= default_tolerance(torch.float32)
    assert (out.logits - exact).abs().max() < 1e-3


def test_adaptive_stops_at_the_cap(ponder):
    model, k, _, _ = ponder
    with torch.no_grad():
        out = model(_ids(), jacobi_iterations="adaptive", jacobi_tolerance=0.0,
                    max_jacobi_iterations=1)
        fixed = model(_ids(), jacobi_iterations=1).logits
    assert out.passes.converged is False and out.passes.thought_change > 0
    assert (out.passes.jacobi_iterations, out.passes.passes) == (1, k + 2)
    torch.testing.assert_close(out.logits, fixed, atol=0, rtol=0)


def test_loose_tolerance_stops_after_one_jacobi_pass(ponder):
    model, k, _, _ = ponder
    with torch.no_grad():
        out = model(_ids(), jacobi_iterations="adaptive", jacobi_tolerance=1e9)
    assert out.passes.converged and out.passes.jacobi_iterations == 1


def test_only_the_final_pass_writes_the_cache(ponder):
    model, k, _, _ = ponder
    ids = _ids()
    cache = KVCache(2, (k + 1) * LENGTH)  # room for the final pass only
    writes = []
    original_update = cache.update

    def recording_update(layer_number, key, value):
        writes.append(key.shape[0])
        return original_update(layer_number, key, value)

    cache.update = recording_update
    with torch.no_grad():
        hidden, report = run_ponder_passes(model.model, ids, k, JacobiSchedule(3), cache=cache)
    layers = model.model_config.num_layers
    assert report.passes == k + 4
    assert writes == [(k + 1) * LENGTH] * layers
    assert cache.length == (k + 1) * LENGTH
    with torch.no_grad():
        expected = model.model(ids, jacobi_iterations=3)
    torch.testing.assert_close(model.model.output(hidden).transpose(0, 1), expected,
                               atol=1e-5, rtol=0)


def test_vanilla_runs_one_pass(tmp_path):
    model = tiny_ponder(tmp_path, "llama", 0)[1]
    with torch.no_grad():
        out = model(_ids(), jacobi_iterations="adaptive")
    assert (out.passes.passes, out.passes.jacobi_iterations) == (1, 0)


def test_schedule_options():
    assert JacobiSchedule.resolve(None, 3) == JacobiSchedule(3)
    assert JacobiSchedule.resolve("2", 3) == JacobiSchedule(2)
    adaptive = JacobiSchedule.resolve("adaptive", 3, torch.bfloat16, max_iterations=5)
    assert adaptive == JacobiSchedule(5, default_tolerance(torch.bfloat16))
    assert default_tolerance(torch.bfloat16) > default_tolerance(torch.float32)
    with pytest.raises(ValueError, match="adaptive"):
        JacobiSchedule.resolve(3, 3, tolerance=1e-3)
    with pytest.raises(ValueError, match="int or"):
        JacobiSchedule.resolve("often", 3)
    with pytest.raises(ValueError):
        JacobiSchedule(-1)
