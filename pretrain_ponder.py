"""Pretrain a PonderLM-2 model on megatron-core (the counterpart of Megatron-LM's
pretrain_gpt.py). Run it with torchrun, e.g.

    torchrun --nproc-per-node 2 pretrain_ponder.py --model-preset tiny --mock-data \
        --tokenizer-type NullTokenizer --vocab-size 1000 --train-iters 20

See ``python pretrain_ponder.py --help`` and examples/pretrain_ponder.sh.
"""

from torch.distributed.elastic.multiprocessing.errors import record

from megatron_ponder.training.arguments import parse_args
from megatron_ponder.training.launch import one_line_errors
from megatron_ponder.training.trainer import pretrain


@record  # a crash (not a one-line error) leaves its traceback for torchrun's report
def main() -> None:
    with one_line_errors():
        pretrain(parse_args())


if __name__ == "__main__":  # dist_checkpointing starts helper processes: keep the guard
    main()
