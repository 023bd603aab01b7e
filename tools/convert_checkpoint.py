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
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout

from megatron_ponder.hf.config_mapping import DTYPES  # noqa: E402
from megatron_ponder.hf.export import FORMATS  # noqa: E402


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
    to_hf.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: float32")
    to_hf.add_argument("--tokenizer-file", default=None,
                       help="tokenizer.json to copy (default: the run's own tokenizer)")
    to_hf.add_argument("--format", choices=FORMATS, default="transformers",
                       help="transformers (default): model_type ponderlm2 with the modeling "
                            "files (trust_remote_code); official: the official release layout")
    official = sub.add_parser("official-to-hf",
                              help="official PonderLM-2 release folder -> transformers-native")
    official.add_argument("--input", required=True, help="official release folder")
    official.add_argument("--output", required=True, help="HF folder to write")
    official.add_argument("--dtype", choices=sorted(DTYPES), default=None,
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

    from megatron_ponder.hf.conversion import checkpoint_to_hf, hf_to_checkpoint, official_to_hf

    if args.direction == "to-hf":
        dtype = getattr(torch, args.dtype) if args.dtype else None
        folder = checkpoint_to_hf(args.load, args.output, iteration=args.iteration, dtype=dtype,
                                  tokenizer_file=args.tokenizer_file, format=args.format)
        print(f"wrote {folder}")
    elif args.direction == "official-to-hf":
        try:
            print(f"wrote {official_to_hf(args.input, args.output, args.dtype)}")
        except ValueError as error:  # a dtype the folder holds that we do not write
            raise SystemExit(f"{args.input}: {error}; pass --dtype") from None
    else:
        overrides = {key: value for key, value in (
            ("num_latent_thoughts", args.num_latent_thoughts),
            ("jacobi_iterations", args.jacobi_iterations), ("vanilla", args.vanilla))
            if value is not None}
        path = hf_to_checkpoint(args.hf, args.save, **overrides)
        print(f"wrote {path}; continue pretraining with --load {args.save} --finetune")
    return 0


if __name__ == "__main__":
    sys.exit(main())
