"""load_model: device/dtype handling for inference tools."""

import pytest
import torch

from megatron_ponder.inference.loading import load_model
from megatron_ponder.model.rotary import RotaryAngles
from tests.inference.helpers import prompt, tiny_ponder

pytestmark = pytest.mark.usefixtures("single_process")


def test_bfloat16_keeps_rotary_frequencies_float32(tmp_path):
    folder, full = tiny_ponder(tmp_path, "llama", 1)
    model = load_model(folder, device="cpu", dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    rotaries = [m for m in model.modules() if isinstance(m, RotaryAngles)]
    positions = torch.arange(2048)
    assert rotaries
    for rotary in rotaries:  # float32 angles, as a freshly built (never cast) module gives
        fresh = RotaryAngles(rotary.rotary_dim, 1.0, rotary.base)
        assert torch.equal(rotary(positions), fresh(positions))
    ids = prompt(6, seed=1)[None]
    with torch.no_grad():
        assert (model(ids).logits - full(ids).logits).abs().max() < 0.1
    with pytest.raises(ValueError, match="dtype"):
        load_model(folder, dtype="float8")
