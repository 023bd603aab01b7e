"""Pipeline parallelism for the multi-pass forward, on megatron-core's interleaved schedule.

Every pass of every micro-batch crosses all stages, and the last stage's final-normed output
returns to stage 0 as the next pass's thoughts. That is megatron's interleaved (virtual) pipeline
with virtual chunk ``c`` = pass ``c`` and every chunk of a rank being the SAME layers: megatron's
p2p "next rank" of the last stage is stage 0, so the output of chunk ``c`` on the last stage
arrives at stage 0 as the input of chunk ``c + 1``, and gradients take the same ring backwards.
The schedule is megatron's own 1F1B over the unrolled (micro-batch, pass) units, so the bubble
shrinks with passes x micro-batches.

How it is wired:

* Parallel state has no virtual size: each rank builds its ``num_layers / PP`` layers once, wraps
  them once in megatron DDP and gives them once to the optimizer. Per step, ``PassChunk``
  objects (one per pass) share that stage module and carry a copy of its config with
  ``virtual_pipeline_model_parallel_size`` = number of chunks.
* p2p runs unbatched with overlap (``batch_p2p_comm=False``, ``overlap_p2p_comm=True``): the
  default batched p2p matched messages into swapped buffers with PP=2 and virtual stages and gave
  silently wrong gradients.
* Passes differ in length (L rows, then up to (K+1) L): every message is padded to the widest
  pass's rows (divided by TP under sequence parallelism) and the receiver slices, so no shape
  handshake is needed.
* The passes are the method's ``PassPlan`` (``megatron_ponder.methods``: PonderLM-2, Pause,
  Loop, vanilla), one pass per chunk, with the driver's own ``pass_inputs`` on stage 0. J
  varies per micro-batch: see ``chunk_plan.py`` (pass-through chunks up to the step's longest).
  K is given per step (0 during --ponder-warmup-iters).
* Passes differ in length: every message of a step is padded to the step's widest pass (K+1
  slots per token for PonderLM-2 and Pause, one for Loop).
* Stage 0 embeds a micro-batch once (pass 0) and feeds those embeddings into every later pass
  that reads them; the last stage applies the final norm where the pass asks for it (every
  PonderLM-2 pass: the thought is the final-normed output; only the last Loop pass) and the
  output layer and loss in the final pass only.
* Passes outside --ponder-grad-passes run without a graph; their output is tied to their input
  by a zero gradient (``_NoGraphOutput``), so the schedule still runs every unit's backward and
  every stage receives the gradient message it waits for (zeros, as the truncated gradient
  of one process).
* Data: chunk ``c`` reads ``data_iterator[c]`` once per micro-batch, in order; all views read one
  cached stream (``microbatch_stream.py``).
* Gradients are reduced once per step, over the single DDP module (not once per chunk).
"""

from typing import Any, Callable, Dict, Iterator, List, Sequence

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.enums import ModelType

from megatron_ponder.mcore.schedules import pass_schedule_config, run_pass_schedule
from megatron_ponder.methods import PassPlan
from megatron_ponder.model.ponder import pass_inputs, select_slot
from megatron_ponder.parallel.chunk_plan import ChunkPlan, plan_step
from megatron_ponder.parallel.microbatch_stream import MicroBatchStream


class _AddLaterPassGradients(torch.autograd.Function):
    """Identity on the embeddings fed to pass 0; its backward adds the gradient the later passes
    left on their detached copy of the same embeddings (see ``_EmbeddedMicroBatch``)."""

    @staticmethod
    def forward(ctx, embeddings, later_passes_copy):
        ctx.later_passes_copy = later_passes_copy
        return embeddings

    @staticmethod
    def backward(ctx, grad):
        later = ctx.later_passes_copy.grad
        ctx.later_passes_copy = None
        return (grad if later is None else grad + later), None


class _NoGraphOutput(torch.autograd.Function):
    """The output of a pass run without a graph (--ponder-grad-passes), attached to an input of
    the unit (``anchor``) with a zero gradient: megatron's schedule runs a backward for every
    (micro-batch, pass) unit and sends its input's gradient upstream, and the one-process
    model's gradient through such a pass is zero."""

    @staticmethod
    def forward(ctx, output, anchor):
        ctx.anchor = (anchor.shape, anchor.dtype)
        return output.detach()

    @staticmethod
    def backward(ctx, grad):
        shape, dtype = ctx.anchor
        return None, grad.new_zeros(shape, dtype=dtype)


class _EmbeddedMicroBatch:
    """The scaled word embeddings of one micro-batch on stage 0, computed once, used by every
    pass.

    megatron's schedule runs one ``torch.autograd.backward`` per (micro-batch, pass) unit, the
    final pass first and pass 0 last (pass 0's input gradient needs every later pass's). A graph
    through the embedding would be freed by the first of those calls, so the later passes splice
    a detached leaf copy and accumulate into its ``.grad``; pass 0 reads the original through
    ``_AddLaterPassGradients``, whose backward adds that sum. The embedding backward (and its
    tensor-parallel reduction) thus runs once per micro-batch, on the gradient summed over
    passes, exactly as in the single-stage model.
    """

    def __init__(self, embeddings: torch.Tensor):
        if torch.is_grad_enabled() and embeddings.requires_grad:
            self.for_later_passes = embeddings.detach().requires_grad_()
            self.for_first_pass = _AddLaterPassGradients.apply(embeddings, self.for_later_passes)
        else:
            self.for_later_passes = self.for_first_pass = embeddings


class PassChunk(torch.nn.Module):
    """Virtual chunk ``index`` of megatron's schedule: that pass of every micro-batch on this
    stage. It owns no parameters (all chunks share the stage module); it carries what the
    schedule keeps per chunk: its config and the tensor received for its next forward."""

    def __init__(self, pipeline: "PonderPipeline", index: int, config):
        super().__init__()
        self.pipeline = pipeline
        self.index = index
        self.config = config
        self.model_type = ModelType.encoder_or_decoder
        self.received = None

    def set_input_tensor(self, tensors) -> None:
        self.received = tensors[0] if isinstance(tensors, (list, tuple)) else tensors

    def forward(self, microbatch: int, batch: Dict[str, Any]) -> torch.Tensor:
        return self.pipeline.run_pass(self.index, self.received, microbatch, batch)


class PonderPipeline:
    """Forward and backward of one step (all micro-batches, all passes) on a pipeline stage.

    ``ddp_model`` is megatron DDP around this stage's ``PonderGPTModel``; its config must carry
    the trainer's ``finalize_model_grads_func``, ``no_sync_func`` and ``grad_scale_func``.
    """

    def __init__(self, ddp_model, seq_length: int, micro_batch_size: int):
        self.ddp_model = ddp_model
        self.stage = ddp_model.module
        self.seq_length = seq_length
        self.micro_batch_size = micro_batch_size
        self.pipeline_size = parallel_state.get_pipeline_model_parallel_world_size()
        self.is_first_stage = parallel_state.is_pipeline_first_stage()
        self.is_last_stage = parallel_state.is_pipeline_last_stage()
        config = self.stage.config
        tp = parallel_state.get_tensor_model_parallel_world_size()
        # Rows of one slot plane on this rank (sequence parallelism cuts at token boundaries).
        self.rows_per_slot = seq_length // tp if config.sequence_parallel else seq_length
        self.max_slots = 1
        self._plans: List[ChunkPlan] = []
        self._embedded: Dict[int, _EmbeddedMicroBatch] = {}

    # --------------------------------------------------------------------------- one step
    def forward_backward(self, data_iterator: Iterator, jacobi_per_microbatch: Sequence[int],
                         num_latent_thoughts: int, prepare: Callable[[Any], Dict[str, Any]],
                         loss_func_for: Callable[[Dict[str, Any]], Callable],
                         forward_only: bool = False) -> List[dict]:
        """Run every pass of ``len(jacobi_per_microbatch)`` micro-batches read from
        ``data_iterator`` with K = ``num_latent_thoughts``; returns the loss reports (last
        stage) as megatron's schedules do.

        ``prepare(raw_batch)`` gives a dict with ``tokens`` and ``labels`` ([B, L], on the
        device); ``loss_func_for(batch)`` the loss function megatron applies to the final
        pass's per-token losses.
        """
        ponder = self.stage.ponder_config
        grad_passes = ponder.ponder_grad_passes if self.stage.training else None
        self._plans = plan_step(ponder.method, num_latent_thoughts, jacobi_per_microbatch,
                                grad_passes=grad_passes)
        self.max_slots = max(plan.passes.max_slots for plan in self._plans)
        num_chunks = len(self._plans[0].pass_in_chunk)
        stream = MicroBatchStream(data_iterator, num_chunks, prepare)
        config = pass_schedule_config(self.stage.config, num_chunks, self.pipeline_size,
                                      self.ddp_model)
        chunks = [PassChunk(self, index, config) for index in range(num_chunks)]

        def forward_step(view, chunk):
            microbatch, batch = next(view)
            return chunk(microbatch, batch), loss_func_for(batch)

        reports = run_pass_schedule(
            forward_step, stream.views(), chunks, num_microbatches=len(self._plans),
            # Every message is padded to the widest pass.
            seq_length=self.max_slots * self.seq_length,
            micro_batch_size=self.micro_batch_size, forward_only=forward_only)
        if self._embedded or stream.cached:
            raise RuntimeError(f"pipeline step ended with {len(self._embedded)} embeddings and "
                               f"{stream.cached} micro-batches still cached")
        return reports

    # --------------------------------------------------------------------------- one unit
    def run_pass(self, chunk: int, received, microbatch: int,
                 batch: Dict[str, Any]) -> torch.Tensor:
        """Chunk ``chunk`` of ``microbatch`` on this stage: the tensor to send on (padded), or
        per-token losses [B, L] for the final pass on the last stage."""
        index = self._plans[microbatch].pass_in_chunk[chunk]
        if index is None:
            # A pass-through chunk (this micro-batch drew a smaller J than the step's longest).
            return received.view_as(received)
        passes = self._plans[microbatch].passes
        step = passes.passes[index]
        if self.is_first_stage:
            embeddings, previous, anchor = self._first_stage_inputs(passes, index, received,
                                                                    microbatch, batch)
            with passes.graph(index):
                hidden = self.stage.stack(pass_inputs(self.stage, step, embeddings, previous),
                                          step.slots, final_norm=step.final_norm)
        else:
            anchor = received[: step.slots * self.rows_per_slot]
            with passes.graph(index):
                hidden = self.stage.stack(anchor, step.slots, final_norm=step.final_norm)
        if not passes.builds_graph(index) and torch.is_grad_enabled():
            hidden = _NoGraphOutput.apply(hidden, anchor)
        if self.is_last_stage and index == passes.final:
            return self.stage.token_losses(select_slot(hidden, step.slots, step.slots - 1),
                                           batch["labels"])
        return self._pad_to_message(hidden)

    def _first_stage_inputs(self, passes: PassPlan, index: int, received, microbatch: int,
                            batch: Dict[str, Any]):
        """(embeddings, previous pass's output, the unit's input tensor) of pass ``index`` on
        stage 0: pass 0 embeds the micro-batch, later passes read the output the last stage
        sent and the embeddings of pass 0."""
        if index == 0:
            embedded = _EmbeddedMicroBatch(self.stage.embed(batch["tokens"]))
            self._embedded[microbatch] = embedded
            embeddings, previous = embedded.for_first_pass, None
            anchor = embeddings
        else:
            embedded = self._embedded[microbatch]
            previous_rows = passes.slots[index - 1] * self.rows_per_slot
            embeddings, previous = embedded.for_later_passes, received[:previous_rows]
            anchor = received
        if index == passes.final:
            # Last use on this stage; the autograd graph keeps what backward needs.
            del self._embedded[microbatch]
        return embeddings, previous, anchor

    def _pad_to_message(self, hidden: torch.Tensor) -> torch.Tensor:
        missing = self.max_slots * self.rows_per_slot - hidden.shape[0]
        return F.pad(hidden, (0, 0, 0, 0, 0, missing)) if missing else hidden
