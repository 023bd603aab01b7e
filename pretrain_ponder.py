"""Pretrain a PonderLM-2 model on megatron-core (the counterpart of Megatron-LM's
pretrain_gpt.py). Run it with torchrun, e.g.

    torchrun --nproc-per-node 2 pretrain_ponder.py --model-preset tiny --mock-data \
        --tokenizer-type NullTokenizer --vocab-size 1000 --train-iters 20

See ``python pretrain_ponder.py --help`` and examples/pretrain_ponder.sh.
"""

import os
import sys
import warnings

# Third-party notices (megatron-core, Apex, Transformer Engine, torch): each shown once, by the
# first process only, not once per import site and rank. The missing TE/Apex fallbacks are
# expected (the layers are megatron-core's local ones).
warnings.simplefilter("once" if os.environ.get("RANK", "0") == "0" else "ignore")
warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")

from megatron_ponder.data.config import DataConfigError
from megatron_ponder.errors import FatalRunError
from megatron_ponder.tokenizer import TokenizerError
from megatron_ponder.training.arguments import parse_args
from megatron_ponder.training.trainer import pretrain
from megatron_ponder.training.validation import ConfigError

if __name__ == "__main__":  # dist_checkpointing starts helper processes: keep the guard
    try:
        pretrain(parse_args())
    # One line (on rank 0), not a traceback from every rank: a run that cannot go on, flags
    # that contradict each other, dataset files that are missing or do not fit together, a
    # tokenizer file that does not load.
    except (FatalRunError, ConfigError, DataConfigError, TokenizerError) as error:
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(1)
