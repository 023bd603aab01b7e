"""Self-checks of the independent PonderLM-2 reference (tests/reference/ponder_reference.py).

(a) vanilla mode == transformers' LlamaForCausalLM / GPTNeoXForCausalLM;
(b) Jacobi forward with enough passes == exact sequential computation, and not with too few;
(c) pass_lengths traces; (d) causality across slots;
plus a cross-check of the whole ponder loop against transformers' own decoder stack fed with
inputs_embeds and repeated position ids, and of the Pause and Loop baselines against that stack
driven as the authors' modeling files drive it.
"""

from __future__ import annotations

import copy
import math
import re

import pytest
import torch

from .ponder_reference import (
    embedding_scale,
    parse_hf_config,
    reference_forward,
    reference_loop_forward,
    reference_loss,
    reference_pause_forward,
    reference_sequential,
    slot_position_ids,
)

transformers = pytest.importorskip("transformers")

VOCAB = 97


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial weights everywhere (norm gains/biases included) so no term can hide."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.05 * noise)
            else:
                p.copy_(0.08 * noise)


def _llama(seed=0, dtype=torch.float32, **overrides):
    kwargs = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        attn_implementation="eager",
    )
    kwargs.update(overrides)
    config = transformers.LlamaConfig(**kwargs)
    config.architectures = ["LlamaForCausalLM"]
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).to(dtype).eval()
    _randomize(model, seed)
    return model


def _neox(seed=0, dtype=torch.float32, **overrides):
    kwargs = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        rotary_pct=0.25,
        use_parallel_residual=True,
        hidden_act="gelu",
        attn_implementation="eager",
    )
    kwargs.update(overrides)
    config = transformers.GPTNeoXConfig(**kwargs)
    config.architectures = ["GPTNeoXForCausalLM"]
    torch.manual_seed(seed)
    model = transformers.GPTNeoXForCausalLM(config).to(dtype).eval()
    _randomize(model, seed)
    return model


def _ids(batch, length, seed=0):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def _cfg_sd(model):
    return model.config.to_dict(), {k: v.detach() for k, v in model.state_dict().items()}


MODELS = {
    "llama_gqa": lambda **kw: _llama(**kw),
    "llama_bias_headdim": lambda **kw: _llama(attention_bias=True, mlp_bias=True, head_dim=24, **kw),
    "llama_tied": lambda **kw: _llama(tie_word_embeddings=True, **kw),
    "neox_parallel": lambda **kw: _neox(use_parallel_residual=True, **kw),
    "neox_sequential": lambda **kw: _neox(use_parallel_residual=False, **kw),
    "neox_rot50_nobias": lambda **kw: _neox(rotary_pct=0.5, attention_bias=False, **kw),
}


# ------------------------------------------------------------------------------------------
# (a) vanilla == transformers
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODELS))
def test_vanilla_matches_transformers(name):
    model = MODELS[name]()
    cfg, sd = _cfg_sd(model)
    ids = _ids(2, 11)
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        got = reference_forward(cfg, sd, ids, num_latent_thoughts=3, jacobi_iterations=2, vanilla=True)
    assert got["pass_lengths"] == [11]
    assert got["logits"].shape == expected.shape
    assert expected.abs().max() > 0.1  # non-trivial logits
    torch.testing.assert_close(got["logits"], expected, atol=1e-5, rtol=1e-5)


def test_older_config_spellings_give_same_result():
    """rotary_pct / rotary_emb_base / top-level rope_theta (pre-transformers-5 configs)."""
    model = _neox(rotary_pct=0.5, rotary_emb_base=500.0)
    cfg, sd = _cfg_sd(model)
    assert cfg["rope_parameters"]["partial_rotary_factor"] == 0.5
    assert cfg["rope_parameters"]["rope_theta"] == 500.0
    old = copy.deepcopy(cfg)
    del old["rope_parameters"]
    old["rotary_pct"] = 0.5
    old["rotary_emb_base"] = 500.0
    del old["architectures"]  # falls back to model_type
    assert parse_hf_config(old) == parse_hf_config(cfg)
    # transformers 5 in-memory key lm_head.weight vs the on-disk / older name embed_out.weight.
    old_sd = dict(sd)
    old_sd["embed_out.weight"] = old_sd.pop("lm_head.weight")
    ids = _ids(1, 7)
    a = reference_forward(cfg, sd, ids, 1, 1)["logits"]
    b = reference_forward(old, old_sd, ids, 1, 1)["logits"]
    assert torch.equal(a, b)

    llama_cfg, _ = _cfg_sd(_llama(rope_theta=321.0))
    old = copy.deepcopy(llama_cfg)
    del old["rope_parameters"]
    old["rope_theta"] = 321.0
    assert parse_hf_config(old) == parse_hf_config(llama_cfg)
    assert parse_hf_config(old).rope_theta == 321.0


def test_unsupported_rope_type_raises():
    cfg, _ = _cfg_sd(_llama())
    cfg["rope_parameters"] = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    with pytest.raises(NotImplementedError):
        parse_hf_config(cfg)


# ------------------------------------------------------------------------------------------
# Cross-check of the ponder loop with transformers' own stack (inputs_embeds + position_ids)
# ------------------------------------------------------------------------------------------


def _hf_stack(model, x, positions):
    base = model.model if hasattr(model, "model") else model.gpt_neox
    return base(inputs_embeds=x, position_ids=positions[None].expand(x.shape[0], -1)).last_hidden_state


def _hf_ponder(model, ids, K, J):
    """The docs/method.md schedule re-stated with tensor ops, driving transformers' decoder stack."""
    emb = model.get_input_embeddings().weight
    H = emb.shape[1]
    B, L = ids.shape
    e = emb[ids] * embedding_scale(H)
    z = torch.zeros(B, L, 0, H, dtype=e.dtype)  # z[:, t, s-1] = z_t^s
    counts = [k + 1 for k in range(K)] + [K + 1] * (J + 1)
    for n in counts:
        x = torch.cat([e[:, :, None], z], dim=2).reshape(B, L * n, H)
        out = _hf_stack(model, x, slot_position_ids(L, n)).reshape(B, L, n, H)
        z = out[:, :, : min(n, K)]
    return model.get_output_embeddings()(out[:, :, K])


@pytest.mark.parametrize("name", ["llama_gqa", "neox_parallel", "neox_sequential"])
@pytest.mark.parametrize("K,J", [(1, 2), (2, 1)])
def test_ponder_matches_transformers_stack(name, K, J):
    model = MODELS[name]()
    cfg, sd = _cfg_sd(model)
    ids = _ids(2, 6, seed=3)
    with torch.no_grad():
        expected = _hf_ponder(model, ids, K, J)
        got = reference_forward(cfg, sd, ids, K, J)["logits"]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["llama_gqa", "neox_parallel"])
@pytest.mark.parametrize("K", [1, 2])
def test_pause_matches_transformers_stack_fed_pause_token_ids(name, K):
    """The authors' Pause files: the stock decoder over the ids with K pause ids after each token,
    embeddings times sqrt(H), positions repeated, logits at each token's last pause slot."""
    model = MODELS[name]()
    cfg, sd = _cfg_sd(model)
    pause_id, (B, L) = VOCAB - 1, (2, 6)
    ids = _ids(B, L, seed=5)
    slot_ids = torch.full((B, (K + 1) * L), pause_id)
    slot_ids[:, :: K + 1] = ids
    with torch.no_grad():
        x = model.get_input_embeddings()(slot_ids) * math.sqrt(model.config.hidden_size)
        out = _hf_stack(model, x, slot_position_ids(L, K + 1))
        expected = model.get_output_embeddings()(out[:, K :: K + 1])
        got = reference_pause_forward(cfg, sd, ids, K, pause_token_id=pause_id)
    assert torch.equal(got["slot_ids"], slot_ids)
    torch.testing.assert_close(got["logits"], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["llama_gqa", "neox_parallel", "neox_sequential"])
@pytest.mark.parametrize("K", [1, 2])
def test_loop_matches_a_transformers_model_repeating_its_layers(name, K):
    """The authors' Loop files run the layer stack K+1 times and the final norm once: a stock
    model K+1 times as deep whose layer j is layer j mod n, fed sqrt(2.5 H) * E[x]."""
    model = MODELS[name]()
    cfg, sd = _cfg_sd(model)
    layers = model.config.num_hidden_layers
    deep = MODELS[name](num_hidden_layers=layers * (K + 1))
    repeat = lambda key: re.sub(r"layers\.(\d+)\.", lambda m: f"layers.{int(m[1]) % layers}.", key)
    deep.load_state_dict({key: sd[repeat(key)] for key in deep.state_dict()})
    ids = _ids(2, 6, seed=6)
    with torch.no_grad():
        x = deep.get_input_embeddings()(ids) * embedding_scale(model.config.hidden_size)
        expected = deep.get_output_embeddings()(_hf_stack(deep, x, torch.arange(6)))
        got = reference_loop_forward(cfg, sd, ids, K)["logits"]
        one_loop = reference_loop_forward(cfg, sd, ids, 0)["logits"]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert (got - one_loop).abs().max() > 1e-3  # the extra loops matter


# ------------------------------------------------------------------------------------------
# (b) fixed point == sequential
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["llama_gqa", "neox_parallel"])
def test_k1_jacobi_converges_to_sequential_one_token_per_pass(name):
    """K=1: pass p makes z^1 exact for tokens t <= p, so the final logits are exact at t <= J."""
    model = MODELS[name](dtype=torch.float64)
    cfg, sd = _cfg_sd(model)
    L = 6
    ids = _ids(2, L, seed=1)
    exact = reference_sequential(cfg, sd, ids, 1)

    converged = reference_forward(cfg, sd, ids, 1, L - 1)["logits"]
    torch.testing.assert_close(converged, exact, atol=1e-10, rtol=1e-10)

    J = 1
    partial = reference_forward(cfg, sd, ids, 1, J)["logits"]
    torch.testing.assert_close(partial[:, : J + 1], exact[:, : J + 1], atol=1e-10, rtol=1e-10)
    per_token_err = (partial - exact).abs().amax(dim=(0, 2))
    assert (per_token_err[J + 1 :] > 1e-6).all(), per_token_err  # not yet converged there


@pytest.mark.parametrize("K", [2, 3])
def test_larger_k_converges_to_sequential(K):
    model = _neox(dtype=torch.float64, use_parallel_residual=False)
    cfg, sd = _cfg_sd(model)
    L = 4
    ids = _ids(1, L, seed=2)
    exact = reference_sequential(cfg, sd, ids, K)
    converged = reference_forward(cfg, sd, ids, K, K * L)
    torch.testing.assert_close(converged["logits"], exact, atol=1e-10, rtol=1e-10)
    # At the fixed point the thoughts reproduce themselves: z^{s+1} = final-pass output at slot s.
    final = converged["final_hidden"].reshape(1, L, K + 1, -1)
    torch.testing.assert_close(final[:, :, :K], converged["thoughts"], atol=1e-10, rtol=1e-10)
    few = reference_forward(cfg, sd, ids, K, 0)["logits"]
    assert (few - exact).abs().max() > 1e-6


def test_k0_is_one_scaled_plain_pass():
    model = _llama(dtype=torch.float64)
    cfg, sd = _cfg_sd(model)
    ids = _ids(2, 5)
    vanilla = reference_forward(cfg, sd, ids, 0, 0, vanilla=True)["logits"]
    unscaled = reference_forward(cfg, sd, ids, 0, 3, scale_embeds=False)["logits"]
    scaled = reference_forward(cfg, sd, ids, 0, 3)
    torch.testing.assert_close(unscaled, vanilla, atol=0, rtol=0)
    assert (scaled["logits"] - vanilla).abs().max() > 1e-3  # the scale matters
    torch.testing.assert_close(scaled["logits"], reference_sequential(cfg, sd, ids, 0), atol=1e-10, rtol=1e-10)


# ------------------------------------------------------------------------------------------
# (c) pass lengths / shapes
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "K,J,expected",
    [
        (1, 3, [1, 2, 2, 2, 2]),
        (2, 3, [1, 2, 3, 3, 3, 3]),
        (3, 0, [1, 2, 3, 4]),
        (1, 0, [1, 2]),
        (0, 3, [1]),
    ],
)
def test_pass_lengths(K, J, expected):
    model = _llama()
    cfg, sd = _cfg_sd(model)
    B, L = 2, 5
    out = reference_forward(cfg, sd, _ids(B, L), K, J)
    assert out["pass_lengths"] == [m * L for m in expected]
    assert [p.shape[1] for p in out["pass_outputs"]] == out["pass_lengths"]
    assert out["logits"].shape == (B, L, VOCAB)
    assert out["final_hidden"].shape == (B, (K + 1) * L, 64)
    assert out["thoughts"].shape == (B, L, K, 64)
    if K > 0:
        # Chain rule: thoughts fed into the final pass = previous pass's outputs at slots 0..K-1.
        prev = out["pass_outputs"][-2]
        n_prev = prev.shape[1] // L
        prev = prev.reshape(B, L, n_prev, 64)[:, :, :K]
        assert torch.equal(out["thoughts"], prev)
        # Logits come from slot K of the final pass.
        final = out["final_hidden"].reshape(B, L, K + 1, 64)[:, :, K]
        torch.testing.assert_close(out["logits"], final @ sd["lm_head.weight"].t())


def test_slot_position_ids():
    assert slot_position_ids(3, 2).tolist() == [0, 0, 1, 1, 2, 2]
    assert slot_position_ids(2, 3).tolist() == [0, 0, 0, 1, 1, 1]


# ------------------------------------------------------------------------------------------
# (d) causality across slots
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["llama_gqa", "neox_parallel"])
def test_changing_a_token_does_not_affect_earlier_logits(name):
    model = MODELS[name](dtype=torch.float64)
    cfg, sd = _cfg_sd(model)
    L, t = 7, 3
    ids = _ids(2, L, seed=4)
    changed = ids.clone()
    changed[:, t] = (changed[:, t] + 1) % VOCAB
    for fn in (
        lambda x: reference_forward(cfg, sd, x, 2, 1)["logits"],
        lambda x: reference_forward(cfg, sd, x, 1, 3)["logits"],
        lambda x: reference_sequential(cfg, sd, x, 2),
    ):
        a, b = fn(ids), fn(changed)
        torch.testing.assert_close(a[:, :t], b[:, :t], atol=1e-12, rtol=0)
        assert (a[:, t:] - b[:, t:]).abs().amax(dim=(0, 2)).min() > 1e-6


# ------------------------------------------------------------------------------------------
# loss and gradients
# ------------------------------------------------------------------------------------------


def test_loss_matches_cross_entropy_and_transformers():
    model = _neox()
    cfg, sd = _cfg_sd(model)
    ids = _ids(2, 9)
    logits = reference_forward(cfg, sd, ids, 1, 2)["logits"]
    loss = reference_loss(logits, ids)
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(loss, expected)
    with torch.no_grad():
        hf_loss = model(input_ids=ids, labels=ids).loss
    vanilla = reference_forward(cfg, sd, ids, 0, 0, vanilla=True)["logits"]
    torch.testing.assert_close(reference_loss(vanilla, ids), hf_loss, atol=1e-5, rtol=1e-5)


def test_gradients_flow_through_every_pass():
    """Nothing is detached: the word embedding gets gradient via all passes' thoughts."""
    model = _llama(dtype=torch.float64)
    cfg, sd = _cfg_sd(model)
    sd = {k: v.clone().requires_grad_(True) for k, v in sd.items()}
    ids = _ids(1, 4)
    loss = reference_loss(reference_forward(cfg, sd, ids, 1, 2)["logits"], ids)
    loss.backward()
    for key in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "model.norm.weight"):
        assert sd[key].grad is not None and sd[key].grad.abs().sum() > 0
