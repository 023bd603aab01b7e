"""Tiny random Hugging Face models saved to folders, and prompts, for import/parity and
inference tests."""

import json
import os

import torch

from megatron_ponder.hf.prompts import left_pad

VOCAB = 97


def hf_config(arch: str, **overrides):
    import transformers

    if arch == "llama":
        kwargs = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, rope_theta=1000.0,
                      rms_norm_eps=1e-5, tie_word_embeddings=False)
        kwargs.update(overrides)
        return transformers.LlamaConfig(**kwargs)
    kwargs = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, rotary_pct=0.25, use_parallel_residual=True,
                  tie_word_embeddings=False)
    kwargs.update(overrides)
    return transformers.GPTNeoXConfig(**kwargs)


def save_tiny_hf(folder, arch: str, seed: int = 0, ponder_fields=None, std: float = 0.1,
                 **config_overrides):
    """Random tiny HF model -> ``folder``; returns the transformers model (eval, fp32)."""
    import transformers

    torch.manual_seed(seed)
    config = hf_config(arch, **config_overrides)
    config._attn_implementation = "eager"
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, std)
        for name, param in model.named_parameters():  # norms around 1, like trained models
            if "norm" in name and name.endswith("weight"):
                param.add_(1.0)
    model.save_pretrained(str(folder))
    if ponder_fields:
        path = os.path.join(str(folder), "config.json")
        with open(path) as f:
            data = json.load(f)
        data.update(ponder_fields)
        with open(path, "w") as f:
            json.dump(data, f)
    return model


def edit_config(folder, **changes):
    """Rewrite config.json keys (a value of None deletes the key)."""
    path = os.path.join(str(folder), "config.json")
    with open(path) as f:
        data = json.load(f)
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    with open(path, "w") as f:
        json.dump(data, f)


def ponder_fields(k: int, j: int = 3) -> dict:
    """config.json fields of an official PonderLM-2 release with K = k, J = j."""
    return dict(recurrent_model=True, num_latent_thoughts=k, num_jacobi_iterations=j,
                scale_embeds=True, interpolation=False)


def save_tiny_ponder(folder, arch: str, k: int, seed: int = 0) -> str:
    """A random tiny HF folder of a PonderLM-2 model with K = k (k = 0: vanilla) -> its path."""
    save_tiny_hf(folder, arch, seed=seed, ponder_fields=ponder_fields(k) if k else None)
    return str(folder)


def prompt(length: int, seed: int) -> torch.Tensor:
    """Random token ids [length] of the tiny vocabulary."""
    return torch.randint(0, VOCAB, (length,), generator=torch.Generator().manual_seed(seed))


def left_padded(prompts, pad_id: int = 0):
    """1-D prompt tensors -> (ids [B, T], attention_mask [B, T]) padded on the left."""
    return left_pad([p.tolist() for p in prompts], pad_id)


def exact_logits(training_model, ids: torch.Tensor) -> torch.Tensor:
    """The training forward as the exact sequential computation: K*L + 1 Jacobi passes always
    reach the fixed point."""
    k = training_model.ponder_config.thoughts
    with torch.no_grad():
        return training_model(ids, jacobi_iterations=k * ids.shape[1] + 1)


def greedy_recomputation(training_model, ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """``ids`` followed by a greedy continuation, every token chosen by the exact training
    forward of the whole sequence so far (what cached decoding must reproduce)."""
    for _ in range(new_tokens):
        next_ids = exact_logits(training_model, ids)[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, next_ids], dim=1)
    return ids
