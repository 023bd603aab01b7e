"""Training checkpoints <-> Hugging Face folders, and continuing pretraining from HF weights."""

import json
import os

import pytest
import torch

from tests.distributed import run_ranks
from tests.tiny_models import save_tiny_hf
from tests.training.runs import checkpoint_and_hf_logits, convert, native_logits, \
    pretrain_from_flags
from tests.training.test_pretrain import FLAGS

IDS = [[3, 17, 42, 8, 99, 5, 61, 23], [7, 7, 120, 1, 0, 64, 33, 2]]


def test_checkpoint_to_hf_round_trip(tmp_path):
    save, exported = str(tmp_path / "ckpt"), str(tmp_path / "hf")
    run_ranks(pretrain_from_flags, 1, FLAGS + ["--train-iters", "2", "--save", save])
    run_ranks(convert, 1, "to-hf", save, exported)
    config = json.load(open(os.path.join(exported, "config.json")))
    assert config["architectures"] == ["PonderLM2ForCausalLM"] and config["recurrent_model"]
    assert config["num_latent_thoughts"] == 1 and config["random_jacobi_iterations"]
    from_checkpoint, from_hf = run_ranks(checkpoint_and_hf_logits, 1, save, exported,
                                         [row[:6] for row in IDS])[0]
    assert from_checkpoint.shape == (2, 6, 256)  # NullTokenizer 200 (+EOD) padded to 256
    assert torch.equal(from_checkpoint, from_hf)
    # The transformers-native model reads the training checkpoint itself (converted in
    # memory): the exported folder's model, and the training model's logits.
    native, native_from_folder = run_ranks(native_logits, 1, save, exported,
                                           [row[:6] for row in IDS])[0]
    assert torch.equal(native, native_from_folder)
    torch.testing.assert_close(native, from_checkpoint, atol=1e-5, rtol=0)


def test_hf_to_checkpoint_and_finetune(tmp_path):
    hf, save = tmp_path / "hf", str(tmp_path / "ckpt")
    # The training flags' tokenizer (NullTokenizer 255 + EOD) pads to the HF vocabulary of 256.
    save_tiny_hf(hf, "gpt_neox", vocab_size=256, hidden_size=64, num_attention_heads=4,
                 num_hidden_layers=2, intermediate_size=256, rotary_pct=0.25,
                 ponder_fields=dict(recurrent_model=True, num_latent_thoughts=1,
                                    num_jacobi_iterations=3))
    run_ranks(convert, 1, "from-hf", str(hf), save)
    from_checkpoint, from_hf = run_ranks(checkpoint_and_hf_logits, 1, save, str(hf), IDS)[0]
    assert torch.equal(from_checkpoint, from_hf)

    flags = [f for f in FLAGS]
    flags[flags.index("--vocab-size") + 1] = "255"
    finetuned = run_ranks(pretrain_from_flags, 1, flags + [
        "--train-iters", "2", "--load", save, "--finetune"])[0]["train_losses"]
    scratch = run_ranks(pretrain_from_flags, 1, flags + ["--train-iters", "2"])[0]["train_losses"]
    assert finetuned[0] != scratch[0]  # started from the converted weights, not a fresh init
    # Model-only checkpoints refuse a plain resume with a message saying what to do.
    try:
        run_ranks(pretrain_from_flags, 1, flags + ["--train-iters", "2", "--load", save])
    except AssertionError as failure:
        assert "--finetune" in str(failure)
    else:
        raise AssertionError("resuming a model-only checkpoint with optimizer state succeeded")


@pytest.mark.slow
def test_an_export_takes_megatron_cores_hugging_face_tokenizer_along(tmp_path):
    """A run with megatron-core's HuggingFaceTokenizer (a model directory): its transformers
    tokenizer files go into the export, which AutoTokenizer reads to the same ids."""
    from transformers import AutoTokenizer

    from tests.tokenizer.assets import write_hugging_face_folder

    tokenizer_dir = write_hugging_face_folder(str(tmp_path / "tokenizer"))
    flags = [f for f in FLAGS]
    at = flags.index("--tokenizer-type")
    flags[at:at + 4] = ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model",
                        tokenizer_dir]
    save, exported = str(tmp_path / "ckpt"), str(tmp_path / "hf")
    run_ranks(pretrain_from_flags, 1, flags + ["--train-iters", "1", "--eval-iters", "0",
                                               "--save", save])
    run_ranks(convert, 1, "to-hf", save, exported)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert os.path.isfile(os.path.join(exported, name)), os.listdir(exported)
    text = "the quick brown fox"
    assert AutoTokenizer.from_pretrained(exported)(text)["input_ids"] == \
        AutoTokenizer.from_pretrained(tokenizer_dir)(text)["input_ids"]
    config = json.load(open(os.path.join(exported, "config.json")))
    assert config["eos_token_id"] == 0  # <|endoftext|>
