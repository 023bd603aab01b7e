"""hf/loading.py. ``load_training_model`` (our megatron-core model) and ``from_pretrained`` (the
transformers-native model): vanilla parity with transformers, config spellings, formats,
overrides, bad input. ``from_pretrained``: logits equal the training model's for every folder
format and override, dtype and device options, save_pretrained round trip, no engine choice."""

import json
import os

import pytest
import torch
import torch.nn.functional as F

from megatron_ponder.hf import from_pretrained, load_training_model, save_pretrained
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
    model = load_training_model(str(tmp_path))
    ids = _ids()
    with torch.no_grad():
        expected = reference(ids).logits
        logits = model(ids)
        # Per-token losses of the already shifted targets; the last one has no real target.
        token_losses = model(ids, labels=ids.roll(-1, dims=1))[:, :-1]
        native = from_pretrained(str(tmp_path))(ids, labels=ids)
    assert model.ponder_config.vanilla
    assert logits.dtype == torch.float32 and logits.shape == (2, 13, VOCAB)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(native.logits, expected, atol=1e-5, rtol=0)
    expected_loss = F.cross_entropy(expected[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(token_losses.mean(), expected_loss, atol=1e-5, rtol=0)
    torch.testing.assert_close(native.loss, expected_loss, atol=1e-5, rtol=0)


def test_returned_model_state(tmp_path):
    save_tiny_hf(tmp_path, "llama")
    for model in (load_training_model(str(tmp_path)), from_pretrained(str(tmp_path))):
        assert not model.training
        assert all(p.dtype == torch.float32 and p.device.type == "cpu"
                   for p in model.parameters())
    with torch.no_grad():
        assert model(_ids(), use_cache=False).loss is None  # no labels, no loss


def _both_logits(folder, ids, **overrides):
    """(training model's, native model's) logits of ``folder``: both read its config."""
    with torch.no_grad():
        return (load_training_model(str(folder), **overrides)(ids),
                from_pretrained(str(folder), **overrides)(ids, use_cache=False).logits)


def test_old_config_spellings_give_same_logits(tmp_path):
    save_tiny_hf(tmp_path, "gpt_neox", rotary_pct=0.5, rope_theta=500.0)
    ids = _ids()
    new_style = _both_logits(tmp_path, ids)
    # transformers 4.x wrote these at the top level under older names.
    edit_config(tmp_path, rope_parameters=None, rotary_pct=0.5, rotary_emb_base=500.0)
    old_style = _both_logits(tmp_path, ids)
    edit_config(tmp_path, rotary_pct=None, rotary_emb_base=None, partial_rotary_factor=0.25)
    changed = _both_logits(tmp_path, ids)
    for old, new, other in zip(old_style, new_style, changed):
        torch.testing.assert_close(old, new, atol=0, rtol=0)
        assert not torch.allclose(other, new)  # the field is really read


def test_llama_rope_theta_top_level(tmp_path):
    save_tiny_hf(tmp_path, "llama", rope_theta=321.0)
    ids = _ids()
    nested = _both_logits(tmp_path, ids)
    edit_config(tmp_path, rope_parameters=None, rope_theta=321.0)
    for top, expected in zip(_both_logits(tmp_path, ids), nested):
        torch.testing.assert_close(top, expected, atol=0, rtol=0)


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
            logits = load_training_model(str(folder))(ids)
            native = from_pretrained(str(folder))(ids).logits
        torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(native, expected, atol=1e-5, rtol=0)


def test_ponder_fields_and_overrides(tmp_path):
    save_tiny_hf(tmp_path, "gpt_neox", ponder_fields=dict(
        recurrent_model=True, num_latent_thoughts=2, num_jacobi_iterations=4,
        random_jacobi_iterations=True, scale_embeds=True, interpolation=False))
    ponder = load_training_model(str(tmp_path)).ponder_config
    assert (ponder.vanilla, ponder.num_latent_thoughts, ponder.jacobi_iterations) == (False, 2, 4)
    assert ponder.random_jacobi_iterations == (2, 3, 4) and ponder.scale_embeds
    ponder = load_training_model(str(tmp_path), num_latent_thoughts=1,
                                 jacobi_iterations=2).ponder_config
    assert (ponder.num_latent_thoughts, ponder.jacobi_iterations) == (1, 2)
    config = from_pretrained(str(tmp_path)).config
    assert (config.thoughts, config.num_jacobi_iterations) == (2, 4)
    config = from_pretrained(str(tmp_path), num_latent_thoughts=1, jacobi_iterations=2).config
    assert (config.thoughts, config.num_jacobi_iterations) == (1, 2)


def test_ponder_mode_changes_logits(tmp_path):
    save_tiny_hf(tmp_path, "llama")
    ids = _ids()
    vanilla = _both_logits(tmp_path, ids)
    ponder = _both_logits(tmp_path, ids, vanilla=False, num_latent_thoughts=1)
    for with_thoughts, without in zip(ponder, vanilla):
        assert with_thoughts.shape == without.shape
        assert not torch.allclose(with_thoughts, without, atol=1e-3)


# ------------------------------------------------------------------------------- bad input
@pytest.fixture(params=["native", "training"])
def loader(request):
    """Both loaders check a folder the same way."""
    return from_pretrained if request.param == "native" else load_training_model


def test_unknown_architecture(tmp_path, loader):
    save_tiny_hf(tmp_path, "llama")
    edit_config(tmp_path, architectures=["MistralForCausalLM"], model_type="mistral")
    with pytest.raises(UnsupportedConfigError, match="MistralForCausalLM"):
        loader(str(tmp_path))


def test_missing_weight_file(tmp_path, loader):
    save_tiny_hf(tmp_path, "llama")
    os.remove(tmp_path / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="no weights"):
        loader(str(tmp_path))


def test_missing_config(tmp_path, loader):
    with pytest.raises(FileNotFoundError, match="config.json"):
        loader(str(tmp_path))


@pytest.mark.parametrize("arch,dropped", [
    ("llama", "model.layers.1.mlp.up_proj.weight"),
    ("gpt_neox", "gpt_neox.layers.0.attention.dense.bias"),
])
def test_missing_weight(tmp_path, loader, arch, dropped):
    from safetensors.torch import load_file, save_file

    save_tiny_hf(tmp_path, arch)
    state = load_file(str(tmp_path / "model.safetensors"))
    del state[dropped]
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ConversionError, match=dropped.replace(".", r"\.")):
        loader(str(tmp_path))


def test_unexpected_weight(tmp_path, loader):
    from safetensors.torch import load_file, save_file

    save_tiny_hf(tmp_path, "llama")
    state = load_file(str(tmp_path / "model.safetensors"))
    state["model.layers.7.mlp.up_proj.weight"] = torch.zeros(3)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ConversionError, match="layers.7"):
        loader(str(tmp_path))


def test_shape_mismatch(tmp_path, loader):
    save_tiny_hf(tmp_path, "gpt_neox")
    edit_config(tmp_path, intermediate_size=64)  # the weights have 128
    with pytest.raises(ConversionError, match="shape mismatch.*(linear_fc1|dense_h_to_4h)"):
        loader(str(tmp_path))


def test_interpolation_refused(tmp_path, loader):
    save_tiny_hf(tmp_path, "llama", ponder_fields=dict(recurrent_model=True, interpolation=True))
    with pytest.raises(UnsupportedConfigError, match="interpolation"):
        loader(str(tmp_path))


def test_bad_overrides(tmp_path, loader):
    save_tiny_hf(tmp_path, "llama")
    with pytest.raises(TypeError, match="unknown override"):
        loader(str(tmp_path), num_thoughts=2)
    with pytest.raises(UnsupportedConfigError, match="vanilla=False"):
        loader(str(tmp_path), num_latent_thoughts=2)


def test_unsupported_rope_scaling(tmp_path, loader):
    save_tiny_hf(tmp_path, "llama")
    edit_config(tmp_path, rope_parameters={"rope_type": "yarn", "factor": 4.0,
                                           "rope_theta": 1000.0})
    with pytest.raises(UnsupportedConfigError, match="yarn"):
        loader(str(tmp_path))


# ------------------------------------------------------------ from_pretrained: the native model
def _native_and_training(folder, ids, **overrides):
    native = from_pretrained(folder, **overrides)
    with torch.no_grad():
        training = load_training_model(folder, **overrides)
        return native, native(ids).logits, training(ids)


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_from_pretrained_equals_the_training_model_for_every_format_and_override(tmp_path, arch):
    import transformers

    vanilla, official = tmp_path / "vanilla", tmp_path / "official"
    save_tiny_hf(vanilla, arch)  # a stock LlamaForCausalLM / GPTNeoXForCausalLM folder
    save_tiny_hf(official, arch, ponder_fields=dict(  # the official release layout
        recurrent_model=True, num_latent_thoughts=1, num_jacobi_iterations=3,
        scale_embeds=True, interpolation=False))
    native = tmp_path / "native"  # ours: model_type ponderlm2
    save_pretrained(load_training_model(str(official)), str(native))
    ids = _ids(length=9)
    cases = [(vanilla, {}), (vanilla, dict(vanilla=False, num_latent_thoughts=1)),
             (official, {}), (official, dict(num_latent_thoughts=2, jacobi_iterations=1)),
             (official, dict(num_latent_thoughts=0)), (native, {}),
             (native, dict(jacobi_iterations=0, scale_embeds=False))]
    for folder, overrides in cases:
        model, logits, expected = _native_and_training(str(folder), ids, **overrides)
        assert isinstance(model, transformers.PreTrainedModel), folder
        assert type(model).__name__ == "PonderLM2ForCausalLM" and not model.training
        assert model.config.arch == arch and model.dtype == torch.float32
        torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0,
                                   msg=lambda m: f"{folder.name} {overrides}: {m}")
    config = from_pretrained(str(official), num_latent_thoughts=2, jacobi_iterations=1).config
    assert (config.thoughts, config.num_jacobi_iterations) == (2, 1)
    assert from_pretrained(str(vanilla)).config.thoughts == 0


def test_from_pretrained_adaptive_jacobi_and_generate(tmp_path):
    save_tiny_hf(tmp_path, "gpt_neox", ponder_fields=dict(
        recurrent_model=True, num_latent_thoughts=1, num_jacobi_iterations=3,
        scale_embeds=True, interpolation=False))
    ids = _ids(length=7)
    adaptive = dict(jacobi_iterations="adaptive", jacobi_tolerance=1e-3,
                    max_jacobi_iterations=5)
    model = from_pretrained(str(tmp_path), **adaptive)
    assert model.config.jacobi_tolerance == 1e-3 and model.config.max_jacobi_iterations == 5
    training = load_training_model(str(tmp_path))
    with torch.no_grad():
        out = model(ids)
        # Adaptive Jacobi is the fixed-J forward with the J where it stopped.
        expected = training(ids, jacobi_iterations=out.jacobi_iterations)
    assert 1 <= out.jacobi_iterations < 5 and out.thought_change <= 1e-3
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=0)
    assert from_pretrained(str(tmp_path), jacobi_iterations="adaptive").config.jacobi_tolerance \
        == 1e-4  # float32's default
    # Greedy generation with the cache, its prefill converged to the fixed point (tolerance 0),
    # equals greedy recomputation of the whole sequence by the training model with enough
    # Jacobi passes to be exact (K*L + 1).
    converged = from_pretrained(str(tmp_path), jacobi_iterations="adaptive", jacobi_tolerance=0.0,
                                max_jacobi_iterations=ids.shape[1] + 1)
    prompt = ids[:1]
    generated = converged.generate(prompt, max_new_tokens=4, do_sample=False)
    recomputed = prompt
    with torch.no_grad():
        for _ in range(4):
            logits = training(recomputed, jacobi_iterations=recomputed.shape[1] + 1)[:, -1]
            recomputed = torch.cat([recomputed, logits.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generated, recomputed)
    with pytest.raises(ValueError, match="adaptive"):
        from_pretrained(str(tmp_path), jacobi_tolerance=1e-3)
    with pytest.raises(ValueError, match="int or 'adaptive'"):
        from_pretrained(str(tmp_path), jacobi_iterations="many")


def test_from_pretrained_dtype_and_device(tmp_path):
    save_tiny_hf(tmp_path, "llama")
    edit_config(tmp_path, torch_dtype="bfloat16", dtype=None)
    ids = _ids(length=5)
    with torch.no_grad():
        reference = from_pretrained(str(tmp_path))(ids).logits
    for kwargs, dtype in [(dict(torch_dtype=torch.bfloat16), torch.bfloat16),
                          (dict(torch_dtype="float16"), torch.float16),
                          (dict(dtype="float32"), torch.float32),
                          (dict(torch_dtype="auto"), torch.bfloat16),
                          (dict(device="cpu"), torch.float32),
                          (dict(device_map="cpu"), torch.float32),
                          (dict(device_map="auto"), torch.float32),
                          (dict(device_map={"": "cpu"}), torch.float32)]:
        model = from_pretrained(str(tmp_path), **kwargs)
        assert model.dtype == dtype and model.device == torch.device("cpu"), kwargs
        assert model.config.dtype == dtype
        with torch.no_grad():
            logits = model(ids).logits
        tolerance = 1e-5 if dtype == torch.float32 else 0.1
        torch.testing.assert_close(logits, reference, atol=tolerance, rtol=0)
    with pytest.raises(ValueError, match="unsupported torch_dtype"):
        from_pretrained(str(tmp_path), torch_dtype="int8")
    with pytest.raises(ValueError, match="unsupported torch_dtype 'float8'"):
        from_pretrained(str(tmp_path), dtype="float8")
    with pytest.raises(ValueError, match="not both"):
        from_pretrained(str(tmp_path), dtype="float32", torch_dtype="float32")
    with pytest.raises(ValueError, match="not both"):
        from_pretrained(str(tmp_path), device="cpu", device_map="cpu")
    with pytest.raises(TypeError, match="device_map"):
        from_pretrained(str(tmp_path), device_map=["cpu"])
    with pytest.raises(ValueError, match="empty dict"):
        from_pretrained(str(tmp_path), device_map={})


def test_bfloat16_on_the_cpu_keeps_rotary_angles_float32(tmp_path):
    """bfloat16 weights, rotary angles still computed in float32 (bfloat16 frequencies would
    put far positions off by whole turns): the tables equal the float32 model's, rounded."""
    save_tiny_hf(tmp_path, "llama")
    model = from_pretrained(str(tmp_path), dtype="bfloat16", device="cpu")
    full = from_pretrained(str(tmp_path))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.device == torch.device("cpu")
    positions = torch.arange(2048)[None]
    for half, single in zip(model.base_model.rotary(positions, torch.bfloat16),
                            full.base_model.rotary(positions, torch.float32)):
        assert torch.equal(half, single.to(torch.bfloat16))
    ids = _ids(length=6)
    with torch.no_grad():
        assert (model(ids).logits - full(ids).logits).abs().max() < 0.1


def test_several_devices_go_to_accelerate_and_one_device_does_not(tmp_path, monkeypatch):
    """A device_map naming several devices is handed to accelerate as is (the weights loaded
    on the CPU first); one naming a single device, however spelled, just places the model."""
    from megatron_ponder.hf import loading

    save_tiny_hf(tmp_path, "llama")
    handed = []

    def recording_dispatch(model, device_map):
        handed.append((dict(device_map), model.device))
        return model

    monkeypatch.setattr(loading, "dispatch", recording_dispatch)
    several = {"model.embed_tokens": "cpu", "model.layers": "meta", "model.norm": "cpu",
               "lm_head": "cpu"}
    from_pretrained(str(tmp_path), device_map=several)
    assert handed == [(several, torch.device("cpu"))]
    one = from_pretrained(str(tmp_path), device_map={"model.layers": "cpu", "lm_head": "cpu"})
    assert len(handed) == 1 and one.device == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (CPU counterpart: "
                    "test_several_devices_go_to_accelerate_and_one_device_does_not)")
def test_a_device_map_over_gpu_and_cpu_runs(tmp_path):
    pytest.importorskip("accelerate")
    save_tiny_hf(tmp_path, "llama")
    ids = _ids(length=6)
    with torch.no_grad():
        expected = from_pretrained(str(tmp_path))(ids).logits
        split = from_pretrained(str(tmp_path), device_map={
            "model.embed_tokens": 0, "model.layers": 0, "model.norm": "cpu", "lm_head": "cpu"})
        logits = split(ids.cuda()).logits.cpu()
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)


def test_training_checkpoints_take_jacobi_overrides_only(tmp_path):
    checkpoint = tmp_path / "run"
    checkpoint.mkdir()
    (checkpoint / "latest_checkpointed_iteration.txt").write_text("3")
    with pytest.raises(ValueError, match="apply to Hugging Face folders only"):
        from_pretrained(str(checkpoint), num_latent_thoughts=2)
    with pytest.raises(ValueError, match="apply to Hugging Face folders only"):
        load_training_model(str(checkpoint), jacobi_iterations=2)


def test_engine_is_no_longer_an_option(tmp_path):
    save_tiny_hf(tmp_path, "llama")
    for engine in ("megatron", "transformers"):
        with pytest.raises(TypeError, match="load_training_model"):
            from_pretrained(str(tmp_path), **{"engine": engine})


def test_from_pretrained_save_pretrained_round_trip(tmp_path):
    import transformers

    save_tiny_hf(tmp_path / "official", "gpt_neox", ponder_fields=dict(
        recurrent_model=True, num_latent_thoughts=2, num_jacobi_iterations=1,
        scale_embeds=True, interpolation=False))
    model = from_pretrained(str(tmp_path / "official"))
    saved = tmp_path / "saved"
    model.save_pretrained(str(saved))
    assert {"configuration_ponderlm2.py", "modeling_ponderlm2.py", "config.json",
            "model.safetensors"} <= set(os.listdir(saved))
    with open(saved / "config.json") as f:
        config = json.load(f)
    assert config["model_type"] == "ponderlm2" and config["num_latent_thoughts"] == 2
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_ponderlm2.PonderLM2ForCausalLM"
    ids = _ids(length=6)
    with torch.no_grad():
        expected = model(ids).logits
        auto = transformers.AutoModelForCausalLM.from_pretrained(str(saved),
                                                                 trust_remote_code=True)
        torch.testing.assert_close(auto(ids).logits, expected, atol=0, rtol=0)
        torch.testing.assert_close(from_pretrained(str(saved))(ids).logits, expected,
                                   atol=0, rtol=0)
        torch.testing.assert_close(load_training_model(str(saved))(ids), expected,
                                   atol=1e-5, rtol=0)
