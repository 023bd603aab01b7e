"""The megatron-core versions megatron_ponder runs on, and the one check of the installed one.

Supported: exactly 0.16.1 (the version pyproject.toml pins). The rest of this package adapts to
that release's internals, which megatron-core changes between releases without notice: the
RNG-state helpers and hard-coded CUDA calls the CPU layer replaces, the distributed optimizer's
per-parameter state copy and Adam step handling (``optimizer_state.py``), and the schedule and
``finalize_model_grads`` signatures (``schedules.py``). The test suite validates that version;
moving to another one means re-running it and adding the version here.
"""

SUPPORTED_VERSIONS = ("0.16.1",)

_warned = False


def installed_version() -> str:
    from megatron.core import package_info

    return package_info.__version__


def check_version(strict: bool) -> None:
    """Raise (``strict``: the CPU layer, which replaces functions by name) or warn once (GPU
    runs) when the installed megatron-core is not a supported version."""
    global _warned
    version = installed_version()
    if version in SUPPORTED_VERSIONS:
        return
    message = (f"megatron-core {version} is not supported (supported: "
               f"{', '.join(SUPPORTED_VERSIONS)}); install megatron-core=="
               f"{SUPPORTED_VERSIONS[-1]} or re-validate megatron_ponder/mcore with the tests")
    if strict:
        raise RuntimeError(message)
    if not _warned:
        from megatron_ponder.log import get_logger

        get_logger(__name__).warning(message)
        _warned = True
