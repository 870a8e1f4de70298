"""Differential privacy for the recipe: the DP-SGD mechanism planned before training (shared with the
launcher, which charges the privacy ledger with it), and Opacus wired the way the recipe runs it.

Accounting: `dp_mechanism(t, n)` gives δ, the sample rate, the noise multiplier (PRV accountant, RDP
fallback), the steps capped at the last one within the target ε, and the ε those steps spend.
`tasks.train.budget.privacy_plan` charges the ledger with exactly this; `planned_mechanism` lets the
recipe reuse it instead of searching again. Engine: `make_private` wraps model, optimizer and loader
(Poisson sampling, per-sample clipping in the chosen grad-sample mode), keeps empty Poisson draws on
every rank, and switches noise and sampling to the OS CSPRNG unless `secure_noise: false`.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings

log = logging.getLogger(__name__)

# The train config fields the mechanism depends on (with the unit count: records, or subjects under privacy_unit
# subject; k only changes packing): a pre-computed one applies while they match.
DP_INPUTS = ("target_epsilon", "target_delta", "batch_size", "epochs")


# ---------------------------------------------------------------- accounting (no model, no data: the launcher uses it)


@functools.lru_cache(maxsize=32)
def noise_for_target(*, target_epsilon: float, delta: float, sample_rate: float, steps: int) -> tuple[float, str]:
    """Noise multiplier from the PRV accountant (tightest); RDP when PRV cannot compute — it raises, or
    gives a non-finite ε, for some tiny-noise / many-step settings. Returns (noise, accountant name).
    Cached: the search is the slowest part of a small run's setup and is deterministic."""
    from opacus.accountants.utils import get_noise_multiplier

    try:
        noise = get_noise_multiplier(
            target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate, steps=steps, accountant="prv"
        )
        if not math.isfinite(epsilon_after(steps, noise=noise, sample_rate=sample_rate, delta=delta, accountant="prv")):
            raise ArithmeticError("PRV epsilon is not finite")
        return noise, "prv"
    except Exception as exc:  # any PRV numerical failure; RDP is a valid (looser) bound
        log.warning("PRV accountant could not compute (%s: %s); falling back to RDP", type(exc).__name__, exc)
        return get_noise_multiplier(
            target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate, steps=steps, accountant="rdp"
        ), "rdp"


@functools.lru_cache(maxsize=256)
def epsilon_after(steps: int, *, noise: float, sample_rate: float, delta: float, accountant: str) -> float:
    """ε after `steps` Poisson-sampled steps, from a fresh accountant of the engine's kind."""
    from opacus.accountants import create_accountant

    if steps <= 0:
        return 0.0
    acc = create_accountant(accountant)
    acc.history = [(noise, sample_rate, steps)]
    return float(acc.get_epsilon(delta))


def max_steps_within(target_epsilon: float, upper: int, **mech) -> int:
    """Largest step count ≤ `upper` whose ε ≤ target (ε grows with steps: binary search)."""
    if epsilon_after(upper, **mech) <= target_epsilon:
        return upper
    lo, hi = 0, upper  # ε(lo) ≤ target < ε(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if epsilon_after(mid, **mech) <= target_epsilon else (lo, mid)
    return lo


def planned_steps_for(t: dict, n: int) -> int:
    """Logical steps the config asks for on `n` records (epochs × batches per epoch), before any ε cap."""
    return max(1, round(t["epochs"] * max(1, math.ceil(n / t["batch_size"]))))


def poisson_sample_rate(batch_size: int, n: int) -> float:
    """The rate Opacus samples at: 1 / len(loader) = 1 / ceil(N / B), slightly below B / N when B does not divide
    N. The accountant must be fed this rate, not B / N, or the charged ε and the run's own ε disagree."""
    return 1.0 / math.ceil(n / batch_size)


def check_sample_rate(loader, charged: float) -> None:
    """The Poisson loader must sample at the rate the ledger was charged for; otherwise the run's ε and the
    charged ε silently differ (the distributed and subject loaders build their own)."""
    actual = getattr(loader, "sample_rate", None)
    if actual is None or not math.isclose(actual, charged, rel_tol=1e-9):
        raise RuntimeError(f"the DP loader samples at {actual}, the accountant was given {charged}")


def dp_mechanism(t: dict, n: int) -> dict:
    """The DP-SGD mechanism a run on `n` privacy units (records, or subjects plus records without one) will use: δ, sample rate, noise (PRV, RDP fallback), steps
    capped at the last one within the target ε, and the ε those steps spend. The recipe runs with it and the
    pipeline charges the privacy ledger with it, so the two can never disagree."""
    delta = t["target_delta"] or 1.0 / (10 * n)
    planned = planned_steps_for(t, n)
    sample_rate = poisson_sample_rate(t["batch_size"], n)
    noise, accountant = noise_for_target(
        target_epsilon=t["target_epsilon"], delta=delta, sample_rate=sample_rate, steps=planned
    )
    mech = {"noise": noise, "sample_rate": sample_rate, "delta": delta, "accountant": accountant}
    steps = max_steps_within(t["target_epsilon"], planned, **mech)
    return {**mech, "planned_steps": planned, "steps": steps, "epsilon": epsilon_after(steps, **mech)}


def planned_mechanism(spec: dict, n: int) -> dict:
    """The mechanism the pipeline computed (and charged to the ledger) for this spec, when it still
    applies: same records and DP inputs. Saves the noise search a second time inside torchrun."""
    pre = spec.get("dp_mechanism") or {}
    t = spec["train"]
    if pre.get("units", pre.get("records")) == n and pre.get("inputs") == {k: t.get(k) for k in DP_INPUTS}:
        return pre["mechanism"]
    return dp_mechanism(t, n)


# ---------------------------------------------------------------- how a run is marked


def privacy_marker(t: dict, epsilon: float, delta: float) -> str:
    """The one-line privacy claim of a run: `NON-PRIVATE`, or DP (ε, δ) per record or per subject, flagged
    when the noise was seeded."""
    if not t["dp"]:
        return "NON-PRIVATE"
    seeded = "" if t.get("secure_noise", True) else ", REPRODUCIBLE seeded noise: not a production guarantee"
    unit = t.get("privacy_unit") or "record"
    return f"DP (epsilon={epsilon:.3f}, delta={delta:.2e}, per {unit}{seeded})"


def noise_source(t: dict) -> str | None:
    """Where the DP noise and Poisson sampling came from: the OS CSPRNG, or a seeded PRNG (tests, benchmarks)."""
    from tasks.train.noise import NOISE_SOURCE_CSPRNG, NOISE_SOURCE_SEEDED

    if not t["dp"]:
        return None
    return NOISE_SOURCE_CSPRNG if t.get("secure_noise", True) else NOISE_SOURCE_SEEDED


# ---------------------------------------------------------------- the private engine (Opacus)


def ghost_supported(model) -> bool:
    """Ghost clipping computes norms without per-sample gradients only for layers with a norm sampler."""
    from opacus.grad_sample import GradSampleModuleFastGradientClipping as GSM

    trainable = [m for m in model.modules() if any(p.requires_grad for p in m.parameters(recurse=False))]
    return bool(trainable) and all(type(m) in GSM.NORM_SAMPLERS for m in trainable)


def resolve_grad_sample_mode(t: dict, model, device, tied: bool) -> str:
    """`auto`: per-sample hooks on CPU, where ghost's second backward pass costs more than it saves
    (measured on the 2-core CI box, 8-layer hidden-64 Llama, LoRA r4 on MLP, batch 16×48 tokens:
    hooks 1.34x a non-private step, ghost 2.42x, functorch 2.38x); ghost on CUDA when every
    trainable layer has a norm sampler (LoRA's nn.Linear does; prefix and tied full FT don't)."""
    mode = t["grad_sample_mode"]
    if mode != "auto":
        return mode
    if device.type != "cuda" or t["method"] == "prefix" or (t["method"] == "full" and tied):
        return "hooks"
    return "ghost" if ghost_supported(model) else "hooks"


def make_private(model, optimizer, loader, *, t: dict, noise: float, accountant: str, mode: str, world: int):
    """Opacus's PrivacyEngine.make_private as the recipe runs it: Poisson sampling at 1 / ceil(N / batch_size), per-sample
    clipping at max_grad_norm in `mode`, noise × max_grad_norm added once per logical step. With several ranks
    the model must already be DPDDP-wrapped, and empty local draws are kept (`keep_empty_sampler_class`).
    `secure_noise` (default) moves noise and sampling to the OS CSPRNG (tasks.train.noise).

    Returns (privacy_engine, model, optimizer, loader, criterion); criterion is the ghost-clipping loss
    wrapper in ghost mode, else None (the loop then uses the plain per-sample mean loss)."""
    import torch
    from opacus import PrivacyEngine

    from tasks.train.distributed import keep_empty_sampler_class

    with warnings.catch_warnings():
        if t.get("secure_noise", True):  # Opacus' own secure_mode needs torchcsprng; ours is tasks.train.noise
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
        privacy_engine = PrivacyEngine(accountant=accountant, secure_mode=False)
    private = privacy_engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=noise,
        max_grad_norm=t["max_grad_norm"],
        poisson_sampling=True,
        grad_sample_mode=mode,
        criterion=torch.nn.CrossEntropyLoss(ignore_index=-100),
    )
    criterion = None
    if mode == "ghost":  # the wrapped criterion runs both backward passes of ghost clipping
        model, optimizer, criterion, loader = private
    else:
        model, optimizer, loader = private
    if world > 1:
        loader.batch_sampler.__class__ = keep_empty_sampler_class()
    if t.get("secure_noise", True):  # production: noise and sampling nobody can regenerate from the seed
        from tasks.train.noise import use_csprng

        use_csprng(optimizer, loader)
    return privacy_engine, model, optimizer, loader, criterion
