"""Rank functions of the byte-counting tests (importable by the rank processes)."""

import torch
import torch.distributed as dist


def count_plain_collectives():
    """On 2 plain gloo ranks (no megatron): each call kind once, counted."""
    from megatron_ponder.planning.communication_measured import CollectiveCounter

    dist.init_process_group("gloo")
    try:
        world = dist.group.WORLD
        with CollectiveCounter(lambda group: "world" if group.size() == 2 else "other") as c:
            dist.all_reduce(torch.ones(10))                                  # 40 B
            gathered = torch.empty(16)
            dist.all_gather_into_tensor(gathered, torch.ones(8))             # 64 B out
            dist.reduce_scatter_tensor(torch.empty(4), torch.ones(8))        # 32 B in
            dist.broadcast(torch.ones(3, dtype=torch.float64), src=0)        # 24 B
            if dist.get_rank() == 0:
                dist.send(torch.ones(5), dst=1)                              # 20 B sent
            else:
                dist.recv(torch.empty(5), src=0)                             # not counted
        dist.barrier(group=world)
        return {f"{g}/{op}/{n}": (c.calls[(g, op, n)], c.payload[(g, op, n)])
                for g, op, n in c.calls}
    finally:
        dist.destroy_process_group()
