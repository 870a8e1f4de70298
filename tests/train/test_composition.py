"""tasks.train.composition: Opacus's accountants composing a history of DP-SGD runs (PRV, RDP fallback)."""

from __future__ import annotations

import math

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from tasks.train import composition as C


@pytest.fixture(autouse=True)
def fresh_cache():
    C.clear_cache()
    yield
    C.clear_cache()


def _opacus(cls, history, delta):
    acc = cls()
    acc.history = list(history)
    return acc.get_epsilon(delta)


def test_repeated_mechanisms_merge_as_opacus_merges_repeated_steps():
    runs = [(0.9, 0.02, 40), (1.2, 0.01, 100), (0.9, 0.02, 60)]
    assert C.history_of(runs) == ((0.9, 0.02, 100), (1.2, 0.01, 100))  # in order of first use
    stepped = PRVAccountant()  # Opacus's own accountant stepped through the same 200 steps, in this order
    for sigma, q, steps in [(0.9, 0.02, 40), (0.9, 0.02, 60), (1.2, 0.01, 100)]:
        for _ in range(steps):
            stepped.step(noise_multiplier=sigma, sample_rate=q)
    assert stepped.history == [(0.9, 0.02, 100), (1.2, 0.01, 100)]
    composed = C.compose(runs, 3e-5)
    assert composed.accountant == "prv" and composed.delta == 3e-5
    assert composed.epsilon == pytest.approx(stepped.get_epsilon(3e-5), rel=1e-9)


def test_heterogeneous_history_matches_prv_and_falls_back_to_rdp(monkeypatch):
    runs = [(0.8, 0.016, 82), (1.1, 0.01, 150), (0.6, 0.03, 40)]
    prv, rdp = _opacus(PRVAccountant, runs, 1e-4), _opacus(RDPAccountant, runs, 1e-4)
    assert C.compose(runs, 1e-4) == C.Composed(epsilon=prv, delta=1e-4, accountant="prv")
    assert prv < rdp  # PRV is the tighter of the two

    C.clear_cache()
    monkeypatch.setattr(PRVAccountant, "get_epsilon", lambda self, delta, **kw: math.inf)
    assert C.compose(runs, 1e-4) == C.Composed(epsilon=pytest.approx(rdp, rel=1e-9), delta=1e-4, accountant="rdp")

    C.clear_cache()
    monkeypatch.setattr(RDPAccountant, "get_epsilon", lambda self, delta, **kw: 1 / 0)
    with pytest.raises(C.CompositionError, match=r"prv: ε = inf; rdp: ZeroDivisionError"):
        C.compose(runs, 1e-4)


def test_invalid_inputs_are_refused():
    assert C.compose([], 1e-5) == C.Composed(epsilon=0.0, delta=1e-5, accountant="prv")
    with pytest.raises(ValueError, match="delta"):
        C.compose([(1.0, 0.01, 10)], 0.0)
    for bad in [(0.0, 0.01, 10), (1.0, 1.5, 10), (1.0, 0.01, 0), (1.0, 0.01, 2.5), (math.nan, 0.01, 10)]:
        with pytest.raises(ValueError, match="mechanism"):
            C.history_of([bad])
