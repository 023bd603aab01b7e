"""Planning a training run before renting the machines: FLOPs, per-GPU memory of candidate
layouts, the communication of a step, modelled step and run time (``tools/plan_run.py``), and
the checks of those models (``--validate``): CPU runs for memory and bytes, published
Megatron-LM throughput for time."""
