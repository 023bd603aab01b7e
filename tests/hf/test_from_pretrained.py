"""from_pretrained: vanilla parity with transformers, config spellings, formats, bad input."""

import json
import os

import pytest
import torch
import torch.nn.functional as F

from megatron_ponder.hf import from_pretrained
from megatron_ponder.hf.adapters import ConversionError
from megatron_ponder.hf.config_mapping import UnsupportedConfigError
from tests.tiny_models import VOCAB, edit_config, save_tiny_hf

pytestmark = pytest.mark.usefixtures("single_process")

VARIANTS = {
    "llama_gqa": ("llama", {}),
    "llama_mha_head_dim": ("llama", {"num_key_value_heads": 4, "head_dim": 8}),
    "neox_parallel_rot25": ("gpt_neox", {}),
    "neox_sequential_rot50": ("gpt_neox", {"use_parallel_residual": False, "rotary_pct": 0.5}),
    "neox_full_rotary": ("gpt_neox", {"rotary_pct": 1.0}),
}


def _ids(batch=2, length=13, seed=1):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_vanilla_matches_transformers(tmp_path, variant):
    arch, overrides = VARIANTS[variant]
    reference = save_tiny_hf(tmp_path, arch, **overrides)
    model = from_pretrained(str(tmp_path))
    ids = _ids()
    with torch.no_grad():
        expected = reference(ids).logits
        out = model(ids, labels=ids)
    assert model.ponder_config.vanilla
    assert out.logits.dtype == torch.float32 and out.logits.shape == (2, 13, VOCAB)
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=0)
    expected_loss = F.cross_entropy(expected[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, expected_loss, atol=1e-5, rtol=0)


def test_returned_model_state(tmp_path):
    save_tiny_hf(tmp_path, "llama")
    model = from_pretrained(str(tmp_path))
    assert not model.training
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())
    assert model(_ids()).loss is None


def test_old_config_spellings_give_same_logits(tmp_path):
    save_tiny_hf(tmp_path, "gpt_neox", rotary_pct=0.5, rope_theta=500.0)
    ids = _ids()
    with torch.no_grad():
        new_style = from_pretrained(str(tmp_path))(ids).logits
    # transformers 4.x wrote these at the top level under older names.
    edit_config(tmp_path, rope_parameters=None, rotary_pct=0.5, rotary_emb_base=500.0)
    with torch.no_grad():
        old_style = from_pretrained(str(tmp_path))(ids).logits
    torch.testing.assert_close(old_style, new_style, atol=0, rtol=0)
    edit_config(tmp_path, rotary_pct=None, rotary_emb_base=None, partial_rotary_factor=0.25)
    with torch.no_grad():
        changed = from_pretrained(str(tmp_path))(ids).logits
    assert not torch.allclose(changed, new_style)  # the field is really read


def test_llama_rope_theta_top_level(tmp_path):
    save_tiny_hf(tmp_path, "llama", rope_theta=321.0)
    ids = _ids()
    with torch.no_grad():
        nested = from_pretrained(str(tmp_path))(ids).logits
    edit_config(tmp_path, rope_parameters=None, rope_theta=321.0)
    with torch.no_grad():
        top = from_pretrained(str(tmp_path))(ids).logits
    torch.testing.assert_close(top, nested, atol=0, rtol=0)


def test_pytorch_bin_and_sharded_safetensors(tmp_path):
    from safetensors.torch import save_file

    reference = save_tiny_hf(tmp_path / "orig", "llama")
    ids = _ids()
    with torch.no_grad():
        expected = reference(ids).logits
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    config = (tmp_path / "orig" / "config.json").read_text()

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "config.json").write_text(config)
    torch.save(state, bin_dir / "pytorch_model.bin")

    shard_dir = tmp_path / "sharded"
    shard_dir.mkdir()
    (shard_dir / "config.json").write_text(config)
    names = sorted(state)
    halves = {"model-00001-of-00002.safetensors": names[::2],
              "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in halves.items():
        save_file({k: state[k] for k in keys}, str(shard_dir / shard))
    index = {"weight_map": {k: shard for shard, keys in halves.items() for k in keys}}
    (shard_dir / "model.safetensors.index.json").write_text(json.dumps(index))

    for folder in (bin_dir, shard_dir):
        with torch.no_grad():
            logits = from_pretrained(str(folder))(ids).logits
        torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)


def test_ponder_fields_and_overrides(tmp_path):
    save_tiny_hf(tmp_path, "gpt_neox", ponder_fields=dict(
        recurrent_model=True, num_latent_thoughts=2, num_jacobi_iterations=4,
        random_jacobi_iterations=True, scale_embeds=True, interpolation=False))
    ponder = from_pretrained(str(tmp_path)).ponder_config
    assert (ponder.vanilla, ponder.num_latent_thoughts, ponder.jacobi_iterations) == (False, 2, 4)
    assert ponder.random_jacobi_iterations == (2, 3, 4) and ponder.scale_embeds
    ponder = from_pretrained(str(tmp_path), num_latent_thoughts=1,
                             jacobi_iterations=2).ponder_config
    assert (ponder.num_latent_thoughts, ponder.jacobi_iterations) == (1, 2)


def test_ponder_mode_changes_logits(tmp_path):
    save_tiny_hf(tmp_path, "llama")
    ids = _ids()
    with torch.no_grad():
        vanilla = from_pretrained(str(tmp_path))(ids).logits
        ponder = from_pretrained(str(tmp_path), vanilla=False, num_latent_thoughts=1)(ids).logits
    assert ponder.shape == vanilla.shape and not torch.allclose(ponder, vanilla, atol=1e-3)


# ------------------------------------------------------------------------------- bad input
def test_unknown_architecture(tmp_path):
    save_tiny_hf(tmp_path, "llama")
    edit_config(tmp_path, architectures=["MistralForCausalLM"], model_type="mistral")
    with pytest.raises(UnsupportedConfigError, match="MistralForCausalLM"):
        from_pretrained(str(tmp_path))


def test_missing_weight_file(tmp_path):
    save_tiny_hf(tmp_path, "llama")
    os.remove(tmp_path / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="no weights"):
        from_pretrained(str(tmp_path))


def test_missing_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        from_pretrained(str(tmp_path))


@pytest.mark.parametrize("arch,dropped", [
    ("llama", "model.layers.1.mlp.up_proj.weight"),
    ("gpt_neox", "gpt_neox.layers.0.attention.dense.bias"),
])
def test_missing_weight(tmp_path, arch, dropped):
    from safetensors.torch import load_file, save_file

    save_tiny_hf(tmp_path, arch)
    state = load_file(str(tmp_path / "model.safetensors"))
    del state[dropped]
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ConversionError, match=dropped.replace(".", r"\.")):
        from_pretrained(str(tmp_path))


def test_unexpected_weight(tmp_path):
    from safetensors.torch import load_file, save_file

    save_tiny_hf(tmp_path, "llama")
    state = load_file(str(tmp_path / "model.safetensors"))
    state["model.layers.7.mlp.up_proj.weight"] = torch.zeros(3)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ConversionError, match="layers.7"):
        from_pretrained(str(tmp_path))


def test_shape_mismatch(tmp_path):
    save_tiny_hf(tmp_path, "gpt_neox")
    edit_config(tmp_path, intermediate_size=64)  # the weights have 128
    with pytest.raises(ConversionError, match="shape mismatch.*linear_fc1"):
        from_pretrained(str(tmp_path))


def test_interpolation_refused(tmp_path):
    save_tiny_hf(tmp_path, "llama", ponder_fields=dict(recurrent_model=True, interpolation=True))
    with pytest.raises(UnsupportedConfigError, match="interpolation"):
        from_pretrained(str(tmp_path))


def test_bad_overrides(tmp_path):
    save_tiny_hf(tmp_path, "llama")
    with pytest.raises(TypeError, match="unknown override"):
        from_pretrained(str(tmp_path), num_thoughts=2)
    with pytest.raises(UnsupportedConfigError, match="vanilla=False"):
        from_pretrained(str(tmp_path), num_latent_thoughts=2)


def test_unsupported_rope_scaling(tmp_path):
    save_tiny_hf(tmp_path, "llama")
    edit_config(tmp_path, rope_parameters={"rope_type": "yarn", "factor": 4.0,
                                           "rope_theta": 1000.0})
    with pytest.raises(UnsupportedConfigError, match="yarn"):
        from_pretrained(str(tmp_path))
