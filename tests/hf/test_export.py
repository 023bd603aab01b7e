"""save_pretrained: round trip through load_training_model (both architectures, K in {0, 1, 2},
both formats), vanilla official folders load in stock transformers, dtype and tokenizer options.
The transformers-native format itself: test_transformers_native.py."""

import json

import pytest
import torch

from megatron_ponder.config import ModelConfig, PonderConfig
from megatron_ponder.hf import load_training_model
from megatron_ponder.hf.export import save_pretrained
from megatron_ponder.model import build_model

pytestmark = pytest.mark.usefixtures("single_process")
VOCAB = 61


def _model(arch, k, seed=0, **ponder):
    torch.manual_seed(seed)
    groups = 2 if arch == "llama" else None  # GQA exercises the q/k/v split
    return build_model(ModelConfig(arch=arch, num_layers=2, hidden_size=32, num_attention_heads=4,
                                   num_query_groups=groups, vocab_size=VOCAB),
                       PonderConfig(num_latent_thoughts=k, vanilla=(k == 0), **ponder))


def _ids():
    return torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("export_format", ["transformers", "official"])
@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
@pytest.mark.parametrize("k", [0, 1, 2])
def test_round_trip_gives_identical_logits(tmp_path, arch, k, export_format):
    model = _model(arch, k, jacobi_iterations=2)
    save_pretrained(model, str(tmp_path), format=export_format)
    loaded = load_training_model(str(tmp_path))
    assert loaded.ponder_config.thoughts == k
    assert loaded.ponder_config.jacobi_iterations == 2
    with torch.no_grad():
        torch.testing.assert_close(loaded(_ids()), model(_ids()), atol=0, rtol=0)
    with open(tmp_path / "config.json") as f:
        config = json.load(f)
    assert config["recurrent_model"] is (k > 0)
    if k:
        assert config["num_latent_thoughts"] == k and config["scale_embeds"] is True
    from safetensors.torch import load_file

    # The native format keeps the decoder of a model with thoughts away from the vanilla names.
    bases = {name.split(".")[0] for name in load_file(str(tmp_path / "model.safetensors"))}
    vanilla_base = "model" if arch == "llama" else "gpt_neox"
    renamed = k > 0 and export_format == "transformers"
    assert ("ponderlm2" in bases, vanilla_base in bases) == (renamed, not renamed)


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_vanilla_official_folder_loads_in_transformers(tmp_path, arch):
    import transformers

    model = _model(arch, 0)
    save_pretrained(model, str(tmp_path), format="official")
    reference = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(reference(_ids()).logits, model(_ids()), atol=1e-5, rtol=0)


def test_loaded_model_dtype_and_tokenizer(tmp_path):
    folder = save_pretrained(_model("gpt_neox", 1), str(tmp_path / "a"))
    model = load_training_model(str(folder))
    tokenizer = tmp_path / "tokenizer.json"
    tokenizer.write_text('{"not": "checked here"}')
    folder = save_pretrained(model, str(tmp_path / "b"), dtype=torch.bfloat16,
                             tokenizer_file=str(tokenizer), format="official")
    with open(f"{folder}/config.json") as f:
        assert json.load(f)["torch_dtype"] == "bfloat16"
    assert (tmp_path / "b" / "tokenizer.json").read_text() == tokenizer.read_text()
    from safetensors.torch import load_file

    weights = load_file(f"{folder}/model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}
    reloaded = load_training_model(folder)  # loads as float32 from the bf16 file
    with torch.no_grad():
        diff = (reloaded(_ids()) - model(_ids())).abs().max()
    assert 0 < diff < 0.5
    with pytest.raises(ValueError, match="cannot read tokenizer"):  # the native format parses it
        save_pretrained(model, str(tmp_path / "c"), tokenizer_file=str(tokenizer))


def test_rejects_other_objects(tmp_path):
    with pytest.raises(TypeError):
        save_pretrained(torch.nn.Linear(2, 2), str(tmp_path))
    with pytest.raises(ValueError, match="format"):
        save_pretrained(_model("llama", 0), str(tmp_path), format="onnx")


def test_every_exported_file_has_the_same_mode(tmp_path):
    import os
    import stat

    umask = os.umask(0o022)
    try:
        folder = save_pretrained(_model("gpt_neox", 1), str(tmp_path / "a"))
    finally:
        os.umask(umask)
    modes = {name: stat.S_IMODE(os.stat(os.path.join(folder, name)).st_mode)
             for name in os.listdir(folder)}
    assert set(modes.values()) == {0o644}, modes  # safetensors alone writes 0600


def test_committed_result_models_carry_the_current_modeling_files():
    """docs/results/models/ are exports users load with trust_remote_code: their modeling files
    must be today's (copy megatron_ponder/hf/remote/*.py there after changing them, once the
    folders' logits are checked unchanged)."""
    import filecmp
    import glob
    import os

    from megatron_ponder.hf.export import REMOTE_DIR, REMOTE_FILES

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    folders = sorted(glob.glob(os.path.join(repo, "docs", "results", "models", "*", "")))
    assert folders
    for folder in folders:
        for name in REMOTE_FILES:
            assert filecmp.cmp(os.path.join(REMOTE_DIR, name), os.path.join(folder, name),
                               shallow=False), f"{folder}{name} is an old copy"
