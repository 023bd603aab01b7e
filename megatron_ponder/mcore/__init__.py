"""The boundary around megatron-core: everything that depends on its internals or its version.

* ``version.py``: the supported versions (``SUPPORTED_VERSIONS``) and the one check;
* ``startup.py``: ``init`` / ``shutdown``, the one way a process sets up torch.distributed,
  megatron's parallel groups, the CPU layer and the seeds (training, model loading,
  conversion, tools);
* ``cpu.py``: the CPU layer (megatron-core on machines without CUDA), on only between
  ``init`` and ``shutdown`` or inside ``with cuda_as_cpu():``;
* ``optimizer_state.py``: the distributed optimizer's checkpoint formats and megatron-core
  0.16's optimizer-state edge cases;
* ``schedules.py``: megatron's pipeline schedules and ``finalize_model_grads`` as the pass
  pipeline drives them.

The rest of megatron_ponder uses megatron-core's public API only (tests/test_boundary.py checks).
"""

from megatron_ponder.mcore.cpu import cuda_as_cpu
from megatron_ponder.mcore.startup import init, shutdown
from megatron_ponder.mcore.version import SUPPORTED_VERSIONS

__all__ = ["SUPPORTED_VERSIONS", "cuda_as_cpu", "init", "shutdown"]
