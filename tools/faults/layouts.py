"""Flags a run must refuse before it starts anything: parallel layouts that do not divide the
model, the batch or the world size, and flag combinations that cannot work together."""

from typing import List

from tools.faults.harness import TINY_RUN, Outcome, Workspace, clean_stop


def layout_fault(world: int, flags: List[str], named: List[str]):
    """pretrain_ponder.py as one rank of a ``world``-process job with a layout it must
    refuse before starting anything."""

    def inject(ws: Workspace, name: str) -> Outcome:
        run = ws.pretrain(TINY_RUN + flags, RANK="0", LOCAL_RANK="0", WORLD_SIZE=str(world),
                          MASTER_ADDR="127.0.0.1", MASTER_PORT="1")
        survived, detail = clean_stop(run, *named)
        processes = f"{world} process" + ("es" if world != 1 else "")
        return Outcome(name, f"{processes} with {' '.join(flags)}", survived, False, detail)

    return inject


LAYOUTS = {
    "layout-world-size": (3, ["--tensor-model-parallel-size", "2"],
                          ["world size 3", "not divisible by tensor x pipeline parallel"]),
    "layout-tp-heads": (3, ["--tensor-model-parallel-size", "3"],
                        ["--num-attention-heads 4 is not divisible"]),
    "layout-pp-layers": (3, ["--pipeline-model-parallel-size", "3"],
                         ["--num-layers 2 is not divisible"]),
    "layout-global-batch": (2, ["--global-batch-size", "6"],
                            ["--global-batch-size 6 is not divisible"]),
    "layout-pp-microbatches": (2, ["--pipeline-model-parallel-size", "2",
                                   "--global-batch-size", "2"],
                               ["must be a multiple of --pipeline-model-parallel-size 2"]),
    "layout-sp-seq-length": (2, ["--tensor-model-parallel-size", "2", "--sequence-parallel",
                                 "--seq-length", "31"],
                             ["--seq-length 31 must be divisible"]),
    "layout-tp-zero": (1, ["--tensor-model-parallel-size", "0"],
                       ["must be >= 1"]),
    "layout-query-groups": (4, ["--model-arch", "llama", "--num-query-groups", "2",
                                "--ffn-hidden-size", "128", "--tensor-model-parallel-size",
                                "4"],
                            ["--num-query-groups 2 is not divisible"]),
    "layout-ffn": (4, ["--ffn-hidden-size", "90", "--tensor-model-parallel-size", "4"],
                   ["--ffn-hidden-size 90 is not divisible"]),
    "layout-pp-pause": (2, ["--pipeline-model-parallel-size", "2", "--ponder-method",
                            "pause"], ["is not supported with --pipeline-model-parallel-size"]),
    "rollback-without-save": (1, ["--rollback-on-nan"], ["--rollback-on-nan needs --save"]),
}
