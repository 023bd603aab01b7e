"""Checkpoints on disk, shared by training, conversion, inference and evaluation:

* ``layout``: the directory layout (tracker file, iteration directories); no torch needed.
* ``integrity``: the manifest of every file, and the check that nothing needs unrestricted
  unpickling.
* ``discovery``: which checkpoint to load (verified; the fallback past a damaged newest one).
* ``storage``: writing and reading with megatron-core's dist_checkpointing: the save protocol
  (directory, manifest, then the tracker), the run config a checkpoint stores, a model's
  weights alone.

What a training checkpoint holds besides (optimizer, scheduler, RNG) and resuming a run are
``megatron_ponder.training.checkpointing``'s. Any tensor/pipeline layout can load any other's
model (dist_checkpointing reshards; the sharded keys are global: layer numbers count across
pipeline stages, tensor-parallel shards carry their offsets).
"""
