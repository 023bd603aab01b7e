"""Named model sizes (``--model-preset``): the paper's models plus tiny ones for CPU runs.

Values are ModelConfig / PonderConfig / TrainConfig field names; explicit flags override them.
Pythia sizes follow the Pythia suite (EleutherAI/pythia-*: parallel residual, rotary on 25% of
each head, LayerNorm, GeLU); the Llama sizes are the paper's (docs/method.md, "The paper's recipe").
"""

_PYTHIA = dict(arch="gpt_neox", seq_length=2048)
_LLAMA = dict(arch="llama", seq_length=2048)

PRESETS = {
    # CPU smoke tests and the default example: a real (small) model that trains in minutes.
    "tiny": dict(_PYTHIA, num_layers=4, hidden_size=128, num_attention_heads=4, seq_length=128),
    "tiny-llama": dict(_LLAMA, num_layers=4, hidden_size=128, num_attention_heads=4,
                       num_query_groups=2, ffn_hidden_size=352, seq_length=128),
    "pythia-70m": dict(_PYTHIA, num_layers=6, hidden_size=512, num_attention_heads=8),
    "pythia-160m": dict(_PYTHIA, num_layers=12, hidden_size=768, num_attention_heads=12),
    "pythia-410m": dict(_PYTHIA, num_layers=24, hidden_size=1024, num_attention_heads=16),
    "pythia-1.4b": dict(_PYTHIA, num_layers=24, hidden_size=2048, num_attention_heads=16),
    "pythia-2.8b": dict(_PYTHIA, num_layers=32, hidden_size=2560, num_attention_heads=32),
    "llama-410m": dict(_LLAMA, num_layers=24, hidden_size=1024, num_attention_heads=16,
                       ffn_hidden_size=2752),
    "llama-1.4b": dict(_LLAMA, num_layers=24, hidden_size=2048, num_attention_heads=32,
                       ffn_hidden_size=5504),
}


def get_preset(name: str) -> dict:
    if name not in PRESETS:
        raise ValueError(f"unknown --model-preset {name!r}; choose one of {sorted(PRESETS)}")
    return dict(PRESETS[name])
