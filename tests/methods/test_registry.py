"""The method registry: each method's passes by hand, what is read off them, and that no code
outside the registry dispatches on a method's name."""

import pathlib
import re

import pytest

import megatron_ponder
from megatron_ponder.config import PonderConfig
from megatron_ponder.methods import LOOP, METHODS, PAUSE, PONDERLM2, VANILLA, PassInput, \
    get_method

E, S, P, R = PassInput.EMBEDDINGS, PassInput.SPLICE, PassInput.PAUSE, PassInput.PREVIOUS


@pytest.mark.parametrize("method,k,j,expected", [
    # (slots, input, final norm, Jacobi) of every pass
    (PONDERLM2, 1, 3, [(1, E, True, False)] + [(2, S, True, True)] * 3 + [(2, S, True, False)]),
    (PONDERLM2, 2, 1, [(1, E, True, False), (2, S, True, False), (3, S, True, True),
                       (3, S, True, False)]),
    (PONDERLM2, 3, 0, [(1, E, True, False), (2, S, True, False), (3, S, True, False),
                       (4, S, True, False)]),
    (PAUSE, 2, 3, [(3, P, True, False)]),
    (LOOP, 2, 3, [(1, E, False, False), (1, R, False, False), (1, R, True, False)]),
    (LOOP, 1, 3, [(1, E, False, False), (1, R, True, False)]),
    (VANILLA, 2, 3, [(1, E, True, False)]),
])
def test_passes_by_hand(method, k, j, expected):
    passes = method.passes(k, j)
    assert [(p.slots, p.input, p.final_norm, p.jacobi) for p in passes] == expected


@pytest.mark.parametrize("method", list(METHODS.values()), ids=list(METHODS))
def test_every_method_with_no_thoughts_is_one_ordinary_pass(method):
    assert [(p.slots, p.input, p.final_norm) for p in method.passes(0, 3)] == [(1, E, True)]
    assert method.scale_factor(0) == (0.0 if method is VANILLA else 2.5)
    assert not method.uses_pause_embedding(0) and not method.draws_jacobi(0)


def test_what_is_read_off_the_passes():
    assert [m.scale_factor(1) for m in (PONDERLM2, PAUSE, LOOP, VANILLA)] == [2.5, 1.0, 2.5, 0.0]
    assert [m.uses_pause_embedding(1) for m in (PONDERLM2, PAUSE, LOOP)] == [False, True, False]
    assert [m.draws_jacobi(1) for m in (PONDERLM2, PAUSE, LOOP)] == [True, False, False]
    assert PAUSE.official_config_fields() == {"ponder_method": "pause"}
    assert PONDERLM2.official_config_fields() == {} == VANILLA.official_config_fields()


def test_plans_and_their_hooks():
    plan = PONDERLM2.plan(1, 3, grad_passes=2)
    assert plan.slots == (1, 2, 2, 2, 2) and plan.final == 4 and plan.jacobi_start == 1
    assert [plan.builds_graph(i) for i in range(5)] == [False, False, False, True, True]
    assert LOOP.plan(2, 3).jacobi_start == 2  # no Jacobi pass: the final pass's index
    with pytest.raises(ValueError, match="grad_passes must be >= 1"):
        PONDERLM2.plan(1, 3, grad_passes=0)
    with pytest.raises(ValueError, match="K and J must be >= 0"):
        PONDERLM2.passes(-1, 3)


def test_config_resolves_the_method():
    assert PonderConfig().method is PONDERLM2
    assert PonderConfig(ponder_method="loop").method is LOOP
    assert PonderConfig(ponder_method="pause", vanilla=True).method is VANILLA
    vanilla = PonderConfig(ponder_method="vanilla", num_latent_thoughts=2)
    assert vanilla.vanilla and vanilla.thoughts == 0 and vanilla.embedding_scale_factor == 0.0
    assert PonderConfig(ponder_method="pause", num_latent_thoughts=1).embedding_scale_factor == 1
    with pytest.raises(ValueError, match="unknown ponder method 'nope'; choose one of "
                                         "ponderlm2, pause, loop, vanilla"):
        get_method("nope")
    with pytest.raises(ValueError, match="unknown ponder method"):
        PonderConfig(ponder_method="nope")


# A comparison with a method's name: ``ponder_method == ...`` or ``method == "pause"``.
NAME_DISPATCH = re.compile(r"ponder_method\s*(==|!=|\bin\b)|(?<!\w)method\s*(==|!=)\s*[\"']")


def test_the_name_dispatch_pattern():
    for line in ('if ponder.ponder_method == "pause":', "x = config.ponder_method in names",
                 "if method == 'loop':", 'slots = 1 if ponder.method != "loop" else 2'):
        assert NAME_DISPATCH.search(line), line
    for line in ('need(train.recompute_method != "block")', "if method is LOOP:",
                 "ponder_method = 'pause'"):
        assert not NAME_DISPATCH.search(line), line


def test_no_code_outside_the_registry_dispatches_on_a_method_name():
    package = pathlib.Path(megatron_ponder.__file__).parent
    # hf/remote is the transformers-native model written next to every export: it must run
    # without this package, so it keeps its own dispatch (checked against the registry in
    # tests/hf/test_transformers_native.py).
    exempt = (package / "methods", package / "hf" / "remote")
    found = [f"{path.relative_to(package)}:{number}: {line.strip()}"
             for path in sorted(package.rglob("*.py"))
             if not any(folder in path.parents for folder in exempt)
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if NAME_DISPATCH.search(line)]
    assert not found, "dispatch on the method's passes instead:\n" + "\n".join(found)
