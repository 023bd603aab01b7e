"""Planning a training run before renting the machines: FLOPs, per-GPU memory of candidate
layouts, estimated step and run time (``tools/plan_run.py``), and the CPU measurement that
checks the activation-memory model (``--validate``)."""
