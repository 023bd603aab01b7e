#!/usr/bin/env python
"""Convert between training checkpoints and Hugging Face folders.

    # a checkpoint of any TP/PP layout -> a transformers-native HF folder: config.json
    # (model_type ponderlm2, auto_map), model.safetensors, the modeling files, generation and
    # tokenizer files; load it with AutoModelForCausalLM.from_pretrained(DIR,
    # trust_remote_code=True). --format official writes the official PonderLM-2 release layout
    # (LlamaForCausalLM / GPTNeoXForCausalLM plus the PonderLM-2 fields) instead.
    python tools/convert_checkpoint.py to-hf --load runs/ponder-tiny-k1/checkpoints \
        --output exported/ponder-tiny [--iteration N] [--dtype bfloat16] [--format official]

    # an official PonderLM-2 release folder (Llama or GPT-NeoX, recurrent_model fields) -> the
    # transformers-native format
    python tools/convert_checkpoint.py official-to-hf --input PonderLM-2-Pythia-410m \
        --output exported/ponderlm2-410m [--dtype float32]

    # a HF folder (either format above, Pythia, Llama) -> a training checkpoint, then continue
    # pretraining with: pretrain_ponder.py ... --load ckpt/pythia-70m --finetune
    python tools/convert_checkpoint.py from-hf --hf path/to/pythia-70m --save ckpt/pythia-70m \
        [--num-latent-thoughts 1 --vanilla false]
"""

import argparse
import os
import sys
import warnings

warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")

DTYPES = ("float32", "bfloat16", "float16")
FORMATS = ("transformers", "official")


def _bool(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError("expected true or false")
    return text.lower() == "true"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="direction", required=True)
    to_hf = sub.add_parser("to-hf", help="training checkpoint -> Hugging Face folder")
    to_hf.add_argument("--load", required=True, help="checkpoint directory (--save of training)")
    to_hf.add_argument("--output", required=True, help="HF folder to write")
    to_hf.add_argument("--iteration", type=int, default=None, help="default: the latest")
    to_hf.add_argument("--dtype", choices=DTYPES, default=None, help="default: float32")
    to_hf.add_argument("--tokenizer-file", default=None,
                       help="tokenizer.json to copy (default: the run's own tokenizer)")
    to_hf.add_argument("--format", choices=FORMATS, default="transformers",
                       help="transformers (default): model_type ponderlm2 with the modeling "
                            "files (trust_remote_code); official: the official release layout")
    official = sub.add_parser("official-to-hf",
                              help="official PonderLM-2 release folder -> transformers-native")
    official.add_argument("--input", required=True, help="official release folder")
    official.add_argument("--output", required=True, help="HF folder to write")
    official.add_argument("--dtype", choices=DTYPES, default=None,
                          help="default: the release's torch_dtype (else float32)")
    from_hf = sub.add_parser("from-hf", help="Hugging Face folder -> training checkpoint")
    from_hf.add_argument("--hf", required=True, help="HF folder")
    from_hf.add_argument("--save", required=True, help="checkpoint directory to write")
    from_hf.add_argument("--num-latent-thoughts", type=int, default=None)
    from_hf.add_argument("--jacobi-iterations", type=int, default=None)
    from_hf.add_argument("--vanilla", type=_bool, default=None,
                         help="true/false (default: from config.json's recurrent_model)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from megatron_ponder.training.conversion import checkpoint_to_hf, hf_to_checkpoint

    if args.direction == "to-hf":
        dtype = getattr(torch, args.dtype) if args.dtype else None
        folder = checkpoint_to_hf(args.load, args.output, iteration=args.iteration, dtype=dtype,
                                  tokenizer_file=args.tokenizer_file, format=args.format)
        print(f"wrote {folder}")
    elif args.direction == "official-to-hf":
        print(f"wrote {official_to_hf(args.input, args.output, args.dtype)}")
    else:
        overrides = {key: value for key, value in (
            ("num_latent_thoughts", args.num_latent_thoughts),
            ("jacobi_iterations", args.jacobi_iterations), ("vanilla", args.vanilla))
            if value is not None}
        path = hf_to_checkpoint(args.hf, args.save, **overrides)
        print(f"wrote {path}; continue pretraining with --load {args.save} --finetune")
    return 0


def official_to_hf(source: str, output: str, dtype_name=None) -> str:
    """An official release folder (or any folder load_megatron reads) -> the native format,
    with its tokenizer.json; the weights keep the release's dtype unless ``dtype_name``."""
    import torch

    from megatron_ponder.hf import save_pretrained
    from megatron_ponder.hf.loading import load_hf_config, load_megatron

    config = load_hf_config(source)
    if dtype_name is None:
        dtype_name = config.get("torch_dtype") or config.get("dtype") or "float32"
    if dtype_name not in DTYPES:
        raise SystemExit(f"unsupported dtype {dtype_name!r} in {source}; pass --dtype")
    tokenizer = os.path.join(source, "tokenizer.json")
    model = load_megatron(source)
    return save_pretrained(model, output, dtype=getattr(torch, dtype_name),
                           tokenizer_file=tokenizer if os.path.isfile(tokenizer) else None)


if __name__ == "__main__":
    sys.exit(main())
