"""The per-micro-batch pass plan of a pipeline step and the shared micro-batch stream."""

import pytest

from megatron_ponder.methods import LOOP, METHODS, PAUSE, PONDERLM2
from megatron_ponder.parallel.chunk_plan import ChunkPlan, expected_num_chunks, num_chunks, \
    plan_step
from megatron_ponder.parallel.microbatch_stream import MicroBatchStream


def test_chunks_follow_the_longest_micro_batch():
    assert num_chunks(PONDERLM2, 1, [2, 3, 2]) == 1 + 3 + 1
    assert num_chunks(PONDERLM2, 2, [4]) == 2 + 4 + 1
    assert num_chunks(PONDERLM2, 0, [2, 3]) == 1  # no thoughts: one pass whatever J is
    assert num_chunks(PAUSE, 2, [2, 3]) == 1  # one pass over K+1 slots
    assert num_chunks(LOOP, 2, [2, 3]) == 3  # K+1 loops
    with pytest.raises(ValueError):
        num_chunks(PONDERLM2, 1, [])


def test_expected_chunks_count_the_longest_draw_only_where_j_matters():
    assert expected_num_chunks(PONDERLM2, 1, [3], 4) == 1 + 3 + 1
    assert expected_num_chunks(PONDERLM2, 1, [2, 3], 1) == 1 + 2.5 + 1
    assert expected_num_chunks(PONDERLM2, 1, [2, 3], 2) == 1 + 2.75 + 1
    assert expected_num_chunks(LOOP, 2, [2, 3], 2) == 3
    assert expected_num_chunks(PAUSE, 2, [2, 3], 2) == 1


@pytest.mark.parametrize("method", list(METHODS.values()), ids=list(METHODS))
@pytest.mark.parametrize("k", [0, 1, 2, 3])
@pytest.mark.parametrize("jacobi", [[3], [2, 3, 4], [4, 2, 2, 3], [0, 1]])
def test_every_plan_runs_exactly_its_passes_and_ends_with_the_final_pass(method, k, jacobi):
    plans = plan_step(method, k, jacobi)
    assert len({len(plan.pass_in_chunk) for plan in plans}) == 1
    for j, plan in zip(jacobi, plans):
        assert plan.passes == method.plan(k, j)
        real = [index for index in plan.pass_in_chunk if index is not None]
        assert real == list(range(len(plan.passes.slots)))  # every pass once, in order
        assert plan.pass_in_chunk[0] == 0  # embeddings first
        assert plan.pass_in_chunk[-1] == plan.passes.final  # the final pass in the last chunk
        # Pass-throughs only before the Jacobi passes, so the passes before them stay in place.
        start = plan.passes.jacobi_start
        assert list(plan.pass_in_chunk[:start]) == list(range(start))


def test_pass_throughs_sit_after_the_growth_passes():
    plan = ChunkPlan.build(PONDERLM2.plan(2, 1), 2 + 3 + 1)  # K=2, J=1 in a step with J <= 3
    assert plan.pass_in_chunk == (0, 1, None, None, 2, 3)
    assert plan.passes.slots == (1, 2, 3, 3)
    with pytest.raises(ValueError, match="do not fit"):
        ChunkPlan.build(PONDERLM2.plan(2, 4), 6)


def test_each_view_sees_every_micro_batch_once_in_order_and_the_cache_drains():
    read = []

    def source():
        for index in range(4):
            read.append(index)
            yield {"id": index}

    stream = MicroBatchStream(source(), num_views=3, prepare=lambda b: dict(b, prepared=True))
    views = stream.views()
    # The interleaved schedule's access pattern with PP=2: chunk 0 runs ahead of later chunks.
    order = [0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2, 2]
    seen = {view: [] for view in range(3)}
    for view in order:
        index, batch = next(views[view])
        assert batch == {"id": index, "prepared": True}
        seen[view].append(index)
        assert stream.cached <= 2
    assert seen == {0: [0, 1, 2, 3], 1: [0, 1, 2, 3], 2: [0, 1, 2, 3]}
    assert read == [0, 1, 2, 3]  # the source is read once per micro-batch
    assert stream.cached == 0
    with pytest.raises(StopIteration):
        next(views[0])
