"""The transformers-native export (hf/remote/*_ponderlm2.py): stock transformers with
trust_remote_code runs the real PonderLM-2 (logits equal our training model's, both
architectures, K in 0..2, Pause and Loop), generate with its KV cache equals uncached
recomputation and greedy recomputation by the training model (padded batches, beam search),
loading without trust_remote_code raises, the round trip ours -> HF -> ours is bit-exact, and the
modeling files need neither megatron nor this project. Generation, padding and Jacobi in more
detail: tests/hf/remote/."""

import json
import math
import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch

from megatron_ponder.config import ModelConfig, PonderConfig
from megatron_ponder.hf import from_pretrained, load_training_model
from megatron_ponder.hf.export import save_pretrained
from megatron_ponder.model import build_model
from tests.tiny_models import greedy_recomputation, left_padded

transformers = pytest.importorskip("transformers")
pytestmark = [pytest.mark.usefixtures("single_process"),
              pytest.mark.filterwarnings("ignore")]
VOCAB = 61
CASES = [(arch, k) for arch in ("llama", "gpt_neox") for k in (0, 1, 2)]


def _model(arch, k, seed=0, **ponder):
    torch.manual_seed(seed)
    groups = 2 if arch == "llama" else None  # GQA exercises the q/k/v split
    ponder.setdefault("jacobi_iterations", 2)
    return build_model(ModelConfig(arch=arch, num_layers=2, hidden_size=32, num_attention_heads=4,
                                   num_query_groups=groups, vocab_size=VOCAB),
                       PonderConfig(num_latent_thoughts=k, vanilla=(k == 0), **ponder)).eval()


def _load(folder, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.AutoModelForCausalLM.from_pretrained(
            str(folder), trust_remote_code=True, **kwargs).eval()


def _ids(batch=2, length=9, seed=1):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def _converged(k, length=12):
    """Adaptive Jacobi to the exact fixed point: cached decoding is then exact."""
    return dict(jacobi_iterations="adaptive", jacobi_tolerance=0.0,
                max_jacobi_iterations=k * length + 1)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(arch, k) -> (our model, export folder), built once per module."""
    cache = {}

    def get(arch, k, **ponder):
        key = (arch, k, tuple(sorted(ponder.items())))
        if key not in cache:
            model = _model(arch, k, **ponder)
            folder = str(tmp_path_factory.mktemp(f"{arch}{k}"))
            save_pretrained(model, folder)
            cache[key] = model, folder
        return cache[key]

    return get


@pytest.mark.parametrize("arch,k", CASES)
def test_logits_equal_ours(exported, arch, k):
    model, folder = exported(arch, k)
    hf = _load(folder)
    assert isinstance(hf, transformers.PreTrainedModel)
    assert type(hf).__name__ == "PonderLM2ForCausalLM"
    assert hf.config.model_type == "ponderlm2" and hf.config.thoughts == k
    assert hf.config.arch == arch
    ids = _ids()
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids), atol=1e-5, rtol=0)
        # A left-padded row scores as the training model scores the row without its padding.
        torch.testing.assert_close(hf(ids, attention_mask=mask).logits[1, 3:],
                                   model(ids[1:, 3:])[0], atol=1e-5, rtol=0)
        out = hf(ids, labels=ids)
        token_losses = model(ids, labels=ids.roll(-1, dims=1))[:, :-1]  # shifted targets
    torch.testing.assert_close(out.loss, token_losses.mean(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch,k", CASES)
def test_round_trip_is_bit_exact(exported, tmp_path, arch, k):
    model, folder = exported(arch, k)
    # ours -> HF folder -> transformers (its own save_pretrained) -> ours
    _load(folder).save_pretrained(str(tmp_path))
    assert {"configuration_ponderlm2.py", "modeling_ponderlm2.py"} <= set(os.listdir(tmp_path))
    back = load_training_model(str(tmp_path))
    assert back.ponder_config.thoughts == k and back.ponder_config.jacobi_iterations == 2
    state = {n: t for n, t in model.state_dict().items() if not n.endswith("_extra_state")}
    for name, tensor in back.state_dict().items():
        if not name.endswith("_extra_state"):
            assert torch.equal(tensor, state[name]), name
    with torch.no_grad():
        torch.testing.assert_close(back(_ids()), model(_ids()), atol=0, rtol=0)


def test_loading_without_trust_remote_code_raises(exported):
    _, folder = exported("llama", 1)
    with pytest.raises(ValueError, match="trust_remote_code"):
        transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=False)
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    assert config["model_type"] == "ponderlm2"
    assert config["architectures"] == ["PonderLM2ForCausalLM"] and config["arch"] == "llama"
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_ponderlm2.PonderLM2ForCausalLM"
    assert os.path.isfile(os.path.join(folder, "generation_config.json"))


def _vanilla_class(arch):
    return transformers.LlamaForCausalLM if arch == "llama" else transformers.GPTNeoXForCausalLM


def _with_loading_info(load, folder, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, info = load(folder, output_loading_info=True, **kwargs)
    return model.eval(), {key: set(info[key]) for key in ("missing_keys", "unexpected_keys",
                                                          "mismatched_keys")}


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_the_vanilla_class_finds_no_decoder_weights_in_a_ponderlm2_export(exported, arch):
    """LlamaForCausalLM / GPTNeoXForCausalLM named explicitly would run a vanilla forward on a
    PonderLM-2's weights: it reports every base-model weight missing instead (the export keeps
    them under ponderlm2.*), while AutoModelForCausalLM loads each weight, none left over."""
    model, folder = exported(arch, 1)
    vanilla, info = _with_loading_info(_vanilla_class(arch).from_pretrained, folder)
    base = vanilla.base_model_prefix
    decoder_weights = {name for name in vanilla.state_dict() if name.startswith(base + ".")}
    assert decoder_weights and decoder_weights <= info["missing_keys"]
    assert info["unexpected_keys"] == {"ponderlm2" + name[len(base):]
                                       for name in decoder_weights}
    native, info = _with_loading_info(transformers.AutoModelForCausalLM.from_pretrained, folder,
                                      trust_remote_code=True)
    assert info == {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set()}
    with torch.no_grad():
        torch.testing.assert_close(native(_ids()).logits, model(_ids()), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_a_vanilla_export_loads_in_the_vanilla_class(exported, arch):
    model, folder = exported(arch, 0)
    vanilla, info = _with_loading_info(_vanilla_class(arch).from_pretrained, folder)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        torch.testing.assert_close(vanilla(_ids()).logits, model(_ids()), atol=1e-5, rtol=0)


def test_an_export_with_vanilla_weight_names_still_loads(exported, tmp_path):
    """Exports written before the ponderlm2.* names (base model under gpt_neox.*) load in our
    loaders as before."""
    from safetensors.torch import load_file, save_file

    model, folder = exported("gpt_neox", 1)
    shutil.copytree(folder, tmp_path, dirs_exist_ok=True)
    weights = str(tmp_path / "model.safetensors")
    old_names = {("gpt_neox." + name[len("ponderlm2."):] if name.startswith("ponderlm2.")
                  else name): tensor for name, tensor in load_file(weights).items()}
    assert "gpt_neox.embed_in.weight" in old_names
    save_file(old_names, weights)
    with torch.no_grad():
        torch.testing.assert_close(from_pretrained(str(tmp_path))(_ids()).logits,
                                   model(_ids()), atol=1e-5, rtol=0)
        torch.testing.assert_close(load_training_model(str(tmp_path))(_ids()), model(_ids()),
                                   atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch,k", CASES)
def test_cached_generate_equals_uncached_and_the_training_model(exported, arch, k):
    model, folder = exported(arch, k)
    hf = _load(folder)
    ids = _ids(batch=1, length=5)
    settings = _converged(k)
    cached = hf.generate(ids, max_new_tokens=6, do_sample=False, **settings)
    uncached = hf.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False, **settings)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached, greedy_recomputation(model, ids, 6))
    assert len(set(cached[0, 5:].tolist())) > 1  # not a degenerate model


def test_cache_buffers_regrown_while_decoding(exported, monkeypatch):
    """The cache's buffers keep spare slots; decoding past them regrows them (copying what
    they hold), and generation still equals recomputation."""
    _, folder = exported("llama", 2)
    hf = _load(folder)
    cache_class = sys.modules[type(hf).__module__].PonderLM2Cache
    grow = cache_class._grown
    capacities = []

    def counting(buffer, filled, capacity, like):
        capacities.append(capacity)
        return grow(buffer, filled, capacity, like)

    monkeypatch.setattr(cache_class, "SLACK", 1)
    monkeypatch.setattr(cache_class, "_grown", staticmethod(counting))
    ids = _ids(batch=2, length=5)
    settings = dict(max_new_tokens=8, do_sample=False, **_converged(2))
    cached = hf.generate(ids, **settings)
    assert len(set(capacities)) >= 3  # the prefill's buffers, then regrown at least twice
    monkeypatch.undo()
    assert torch.equal(cached, hf.generate(ids, use_cache=False, **settings))


@pytest.mark.parametrize("arch,k", [("llama", 2), ("gpt_neox", 1)])
def test_fixed_j_reaches_the_prefill_of_generate(exported, arch, k):
    """generate(jacobi_iterations=J): the prefill runs J Jacobi passes (not converged at J =
    0), so the first new token's logits are the training forward's with that J."""
    model, folder = exported(arch, k)
    hf = _load(folder)
    ids = _ids(batch=2, length=7)
    first_logits = {}
    for j in (0, 1):
        out = hf.generate(ids, max_new_tokens=3, do_sample=False, jacobi_iterations=j,
                          output_logits=True, return_dict_in_generate=True)
        assert out.sequences.shape == (2, 10)
        with torch.no_grad():
            expected = model(ids, jacobi_iterations=j)[:, -1]
        torch.testing.assert_close(out.logits[0], expected, atol=1e-5, rtol=0)
        first_logits[j] = out.logits[0]
    assert not torch.allclose(first_logits[0], first_logits[1], atol=1e-4)


@pytest.mark.parametrize("arch,k", CASES)
def test_padded_batch_generate_equals_one_by_one(exported, arch, k):
    _, folder = exported(arch, k)
    hf = _load(folder)
    prompts = [_ids(1, 6, seed=3)[0], _ids(1, 3, seed=4)[0], _ids(1, 5, seed=5)[0]]
    batch, mask = left_padded(prompts)
    width = batch.shape[1]
    together = hf.generate(batch, attention_mask=mask, max_new_tokens=5, do_sample=False,
                           pad_token_id=0, **_converged(k))
    for row, p in enumerate(prompts):
        alone = hf.generate(p[None], max_new_tokens=5, do_sample=False, pad_token_id=0,
                            **_converged(k))
        assert torch.equal(together[row, width:], alone[0, len(p):])


def test_beam_search_and_sampling_use_the_cache(exported, monkeypatch):
    _, folder = exported("llama", 2)
    hf = _load(folder)
    ids = _ids(batch=2, length=5)
    settings = dict(max_new_tokens=5, num_beams=3, do_sample=False, **_converged(2))
    prefills = []
    original = type(hf)._ponder_prefill

    def counting(self, *args, **kwargs):
        prefills.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(hf), "_ponder_prefill", counting)
    beams = hf.generate(ids, **settings)
    assert len(prefills) == 1  # the cache followed the beams: no recomputation
    monkeypatch.undo()
    assert torch.equal(beams, hf.generate(ids, use_cache=False, **settings))
    torch.manual_seed(0)
    sampled = hf.generate(ids, max_new_tokens=5, do_sample=True, top_k=5)
    torch.manual_seed(0)
    assert torch.equal(sampled, hf.generate(ids, max_new_tokens=5, do_sample=True, top_k=5,
                                            use_cache=False))


def test_adaptive_jacobi_is_the_fixed_j_forward_where_it_stopped(exported):
    model, folder = exported("gpt_neox", 2)
    hf = _load(folder)
    ids = _ids()
    with torch.no_grad():
        out = hf(ids, jacobi_iterations="adaptive", jacobi_tolerance=1e-3)
        stopped = out.jacobi_iterations
        expected = model(ids, jacobi_iterations=stopped)
        # One pass fewer had not reached the tolerance yet: it stopped at the first J that did.
        earlier = hf(ids, jacobi_iterations="adaptive", jacobi_tolerance=1e-3,
                     max_jacobi_iterations=stopped - 1)
    assert stopped >= 2 and out.thought_change <= 1e-3 < earlier.thought_change
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="adaptive"):
        hf(ids, jacobi_tolerance=1e-3)


@pytest.mark.parametrize("method", ["pause", "loop"])
def test_baselines(exported, method):
    model, folder = exported("llama", 2, ponder_method=method)
    hf = _load(folder)
    assert hf.config.forward_method == method
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids), atol=1e-5, rtol=0)
    prompt = ids[:1, :5]
    cached = hf.generate(prompt, max_new_tokens=5, do_sample=False)
    assert torch.equal(cached, hf.generate(prompt, max_new_tokens=5, do_sample=False,
                                           use_cache=False))
    assert torch.equal(cached, greedy_recomputation(model, prompt, 5))


def test_dtype_and_tokenizer_files(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<|endoftext|>", "<|padding|>"] + [f"w{i}" for i in range(VOCAB - 2)]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)},
                                           unk_token="<|endoftext|>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(tmp_path / "tok.json"))
    folder = save_pretrained(_model("gpt_neox", 1), str(tmp_path / "out"),
                             dtype=torch.bfloat16, tokenizer_file=str(tmp_path / "tok.json"))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "generation_config.json", "config.json", "model.safetensors"):
        assert os.path.isfile(os.path.join(folder, name)), name
    with open(os.path.join(folder, "generation_config.json")) as f:
        assert json.load(f) == {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 1}
    auto_tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    assert auto_tokenizer.eos_token == "<|endoftext|>" and auto_tokenizer.pad_token_id == 1
    hf = _load(folder)
    assert hf.dtype == torch.bfloat16
    hf32 = _load(folder, dtype=torch.float32)
    assert hf32.dtype == torch.float32
    inputs = auto_tokenizer("w1 w2 w3", return_tensors="pt")  # the README's five lines
    assert hf32.generate(**inputs, max_new_tokens=3).shape == (1, 6)
    generator = transformers.pipeline("text-generation", model=hf32, tokenizer=auto_tokenizer)
    text = generator("w1 w2 w3", max_new_tokens=4, do_sample=False)[0]["generated_text"]
    assert text.startswith("w1 w2 w3") and len(text.split()) > 3


_STANDALONE = r"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("megatron", "megatron_ponder", "tests"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
sys.path = [p for p in sys.path if p not in ("", ".")]
import torch, transformers
model = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True)
out = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=3, do_sample=False)
assert out.shape == (1, 6), out.shape
assert not any(m.split(".")[0] in ("megatron", "megatron_ponder") for m in sys.modules)
print("ok")
"""


def test_modeling_files_need_only_torch_and_transformers(exported, tmp_path):
    _, folder = exported("gpt_neox", 1)
    env = dict(os.environ, PYTHONPATH="", HF_MODULES_CACHE=str(tmp_path / "modules"))
    result = subprocess.run([sys.executable, "-c", _STANDALONE, folder], cwd=str(tmp_path),
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_official_to_hf(tmp_path, arch):
    """Both parametrizations write folders named "native": transformers then shares one
    dynamic module (and registered class) between the two architectures."""
    from tests.tools.conftest import load_tool

    model = _model(arch, 2)
    official = save_pretrained(model, str(tmp_path / "official"), format="official",
                               dtype=torch.bfloat16)
    with open(os.path.join(official, "config.json")) as f:
        assert json.load(f)["model_type"] == arch  # the old layout, loaded by stock classes
    output = str(tmp_path / "native")
    assert load_tool("convert_checkpoint").main(["official-to-hf", "--input", official,
                                                 "--output", output]) == 0
    hf = _load(output)
    assert hf.config.model_type == "ponderlm2" and hf.dtype == torch.bfloat16
    reference = load_training_model(official)  # float32 of the same bf16 weights
    ids = _ids()
    with torch.no_grad():
        expected = reference(ids)
        torch.testing.assert_close(_load(output, dtype=torch.float32)(ids).logits, expected,
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(load_training_model(output)(ids), expected, atol=0, rtol=0)


def test_dtype_device_map_and_save_pretrained_through_auto(tmp_path):
    """torch_dtype (float32 / bfloat16 / float16 / "auto") and device_map ("cpu", "auto" on a
    CPU-only machine, a dict) of AutoModelForCausalLM, then save_pretrained and reload."""
    model = _model("llama", 1)
    folder = save_pretrained(model, str(tmp_path / "bf16"), dtype=torch.bfloat16)
    reference = load_training_model(folder)  # float32 of the same bf16 weights
    ids = _ids(length=6)
    with torch.no_grad():
        expected = reference(ids)
    cases = [(dict(torch_dtype=torch.float32), torch.float32),
             (dict(torch_dtype="float32"), torch.float32),
             (dict(torch_dtype=torch.bfloat16), torch.bfloat16),
             (dict(torch_dtype=torch.float16), torch.float16),
             (dict(torch_dtype="auto"), torch.bfloat16),
             (dict(torch_dtype=torch.float32, device_map="cpu"), torch.float32),
             (dict(torch_dtype=torch.float32, device_map="auto"), torch.float32),
             (dict(torch_dtype=torch.float32, device_map={"": "cpu"}), torch.float32)]
    for kwargs, dtype in cases:
        hf = _load(folder, **kwargs)
        assert hf.dtype == dtype and hf.device == torch.device("cpu"), kwargs
        with torch.no_grad():
            logits = hf(ids).logits
        assert logits.dtype == torch.float32
        tolerance = 1e-5 if dtype == torch.float32 else 0.15  # half-precision activations
        torch.testing.assert_close(logits, expected, atol=tolerance, rtol=0, msg=str(kwargs))
        assert hf.generate(ids[:1], max_new_tokens=2, do_sample=False).shape == (1, 8)
    # save_pretrained of the loaded model, reloaded: same weights, same logits.
    hf = _load(folder, torch_dtype=torch.float32)
    hf.save_pretrained(str(tmp_path / "saved"))
    again = _load(str(tmp_path / "saved"))
    assert again.dtype == torch.float32 and again.config.num_latent_thoughts == 1
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, hf(ids).logits, atol=0, rtol=0)


def test_the_exported_copy_of_the_method_registry_agrees():
    """The modeling files run without megatron_ponder, so they keep their own copy of each
    method's embedding scale; it must match the registry's."""
    from megatron_ponder.hf.remote import configuration_ponderlm2 as remote
    from megatron_ponder.methods import METHODS

    assert set(remote.PONDER_METHODS) == {name for name, method in METHODS.items()
                                          if not method.thoughtless}
    for name, scale in remote.EMBEDDING_SCALE.items():
        assert METHODS[name].scale_factor(1) == scale
        config = remote.PonderLM2Config(ponder_method=name, num_latent_thoughts=0)
        assert config.embedding_multiplier == pytest.approx(math.sqrt(2.5 * config.hidden_size))
