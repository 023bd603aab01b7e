"""from_pretrained(engine="megatron"): dtype and device handling (the inference tools' engine)."""

import pytest
import torch

from megatron_ponder.hf import from_pretrained
from megatron_ponder.model.rotary import RotaryAngles
from tests.inference.helpers import prompt, tiny_ponder

pytestmark = pytest.mark.usefixtures("single_process")


def test_bfloat16_keeps_rotary_frequencies_float32(tmp_path):
    folder, full = tiny_ponder(tmp_path, "llama", 1)
    model = from_pretrained(folder, engine="megatron", device="cpu", dtype="bfloat16")
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
        from_pretrained(folder, engine="megatron", dtype="float8")


def test_engine_choice_and_training_checkpoints(tmp_path):
    folder, _ = tiny_ponder(tmp_path / "hf", "llama", 1)
    with pytest.raises(ValueError, match="unknown engine 'jax'"):
        from_pretrained(folder, engine="jax")
    checkpoint = tmp_path / "run"
    checkpoint.mkdir()
    (checkpoint / "latest_checkpointed_iteration.txt").write_text("3")
    with pytest.raises(ValueError, match="apply to Hugging Face folders only"):
        from_pretrained(str(checkpoint), engine="megatron", num_latent_thoughts=2)
    with pytest.raises(ValueError, match="runs on one device"):
        from_pretrained(folder, engine="megatron", device_map={"a": "cpu", "b": "meta"})
