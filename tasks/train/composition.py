"""Tight composition of DP-SGD runs: Opacus's PRV accountant fed every run's mechanism, RDP as fallback.

A DP-SGD run is a Poisson-subsampled Gaussian mechanism repeated: noise multiplier σ, sample rate q,
steps T. Opacus's accountants keep exactly that as `history`, a list of (σ, q, T), and compose it. Running
several trainings on the same records is the same mechanism repeated with other parameters, so the whole
history of a source dataset can be handed to one accountant: its ε at δ is far below the sum of the runs'
ε (basic composition), because privacy loss adds up roughly like a random walk, not linearly.

    compose(mechanisms, delta) -> Composed(epsilon, delta, accountant)

PRV first (Gopi et al. 2021; Opacus returns its upper bound, not the estimate), RDP when PRV raises or
gives a non-finite ε (it can, for tiny noise over many steps); `CompositionError` when neither can
answer, so the caller falls back to basic composition. The accountant that answered is returned.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass

log = logging.getLogger(__name__)

ACCOUNTANTS = ("prv", "rdp")  # tightest first

Mechanism = tuple[float, float, int]  # (noise multiplier σ, sample rate q, steps T): one Opacus history entry


class CompositionError(ArithmeticError):
    """No accountant could compose the history (the caller falls back to basic composition)."""


@dataclass(frozen=True)
class Composed:
    epsilon: float
    delta: float
    accountant: str  # the one that answered: "prv" or "rdp"


def history_of(mechanisms: Iterable[Mechanism]) -> tuple[Mechanism, ...]:
    """Opacus's history for these runs, in their order: runs with the same (σ, q) merged into the first one's
    entry with their summed steps.

    Exact (composition is commutative, and Opacus's own `step()` merges repeated steps the same way), and it
    keeps the PRV accountant's cost in the number of distinct mechanisms, not of runs. The order is kept so
    that the figure is the one Opacus gives for the history as recorded, to the last bit."""
    steps: dict[tuple[float, float], int] = {}
    for sigma, q, t in mechanisms:
        _check_mechanism(sigma, q, t)
        key = (float(sigma), float(q))
        steps[key] = steps.get(key, 0) + int(t)
    return tuple((sigma, q, t) for (sigma, q), t in steps.items())


def _check_mechanism(sigma: float, q: float, t: int) -> None:
    if not (math.isfinite(sigma) and sigma > 0 and 0 < q <= 1 and int(t) == t and t > 0):
        raise ValueError(
            f"a mechanism is (noise multiplier > 0, sample rate in (0, 1], steps > 0), got {(sigma, q, t)}"
        )


def accountant_epsilon(accountant: str, history: Iterable[Mechanism], delta: float) -> float:
    """ε at `delta` of Opacus's `accountant` ("prv", "rdp") holding `history`, exactly as Opacus computes it."""
    from opacus.accountants import create_accountant

    acc = create_accountant(accountant)
    acc.history = list(history)
    return float(acc.get_epsilon(delta))


def compose(mechanisms: Iterable[Mechanism], delta: float) -> Composed:
    """ε at `delta` of all `mechanisms` run on the same records: PRV, else RDP (see the module docstring)."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1) to compose, got {delta!r}")
    history = history_of(mechanisms)
    if not history:
        return Composed(epsilon=0.0, delta=delta, accountant=ACCOUNTANTS[0])
    return _compose(history, float(delta))


@functools.lru_cache(maxsize=256)
def _compose(history: tuple[Mechanism, ...], delta: float) -> Composed:
    # Cached: the ledger composes the same history for its check, its summary and the CLI.
    failures = []
    for name in ACCOUNTANTS:
        try:
            epsilon = accountant_epsilon(name, history, delta)
        except Exception as exc:  # any numerical failure of one accountant; the next one is a valid bound
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        if math.isfinite(epsilon) and epsilon >= 0:
            if failures:
                log.warning("privacy composition fell back to %s (%s)", name, "; ".join(failures))
            return Composed(epsilon=epsilon, delta=delta, accountant=name)
        failures.append(f"{name}: ε = {epsilon}")
    raise CompositionError(f"no accountant could compose {len(history)} mechanism(s): {'; '.join(failures)}")


def clear_cache() -> None:
    """Forget composed histories (for tests that make an accountant fail)."""
    _compose.cache_clear()
