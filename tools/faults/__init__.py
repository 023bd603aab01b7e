"""The faults of tools/fault_injection.py, which alone imports this package (the other tools never
import each other). ``harness``: the runs, the workspace, what a run left and the verdicts;
one module per kind of fault: ``processes`` (kill -9, SIGTERM), ``checkpoints`` (damaged
files), ``numerics`` (NaN), ``disk`` (a full disk), ``data`` (datasets and preprocessing
input), ``layouts`` (flags a run must refuse); ``catalogue``: every fault by name.
"""
