"""Pipeline bubble of the pass-unrolled schedule, in theory (``tools/measure_bubble.py``
measures it).

With P stages, M micro-batches and V passes per micro-batch run as V virtual chunks of
megatron's interleaved 1F1B schedule, and every (micro-batch, pass) unit taking the same time
on every stage, each stage computes for M (t_f + t_b) and idles for (P - 1)(t_f + t_b) / V,
where t_f, t_b are one micro-batch's forward/backward over all its passes (Narayanan et al.,
2021, section 2.2.2). The idle fraction of a step per stage is therefore

    (P - 1) / (V * M + P - 1)

Running all V passes of a micro-batch as one chunk (no interleaving) would give
(P - 1) / (M + P - 1): unrolling the passes divides the bubble by about V.
"""


def interleaved_idle_fraction(pipeline_size: int, num_microbatches: int, passes: int) -> float:
    """Idle time over step time per stage for the pass-interleaved schedule (equal units)."""
    _check(pipeline_size, num_microbatches, passes)
    return (pipeline_size - 1) / (passes * num_microbatches + pipeline_size - 1)


def one_chunk_idle_fraction(pipeline_size: int, num_microbatches: int) -> float:
    """The same for plain 1F1B with each micro-batch's passes run back to back as one unit."""
    _check(pipeline_size, num_microbatches, 1)
    return (pipeline_size - 1) / (num_microbatches + pipeline_size - 1)


def _check(pipeline_size: int, num_microbatches: int, passes: int) -> None:
    if pipeline_size < 1 or num_microbatches < 1 or passes < 1:
        raise ValueError(f"need P, M, V >= 1, got P={pipeline_size}, M={num_microbatches}, "
                         f"V={passes}")
