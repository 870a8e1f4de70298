"""DP-SGD randomness from the operating system's CSPRNG: the Gaussian noise and the Poisson sampling.

Opacus' `secure_mode=True` needs `torchcsprng`, which is unmaintained and installs for no current
PyTorch. Without it the noise comes from a seeded PRNG, and anyone who knows the seed (it sits in
the config) can regenerate the noise and subtract it: the textbook guarantee then does not hold.
So the recipe draws both from `os.urandom` itself:

- **noise**: 53-bit uniforms from os.urandom, Box–Muller in float64, and Opacus' own defence
  against floating-point attacks on Gaussian samplers (Mironov 2012; Holohan & Braghin 2021, §5.1):
  the sum of 2n = 4 samples scaled by 1/√n, so no single double's low bits reveal the draw;
- **sampling**: each record's inclusion in a step is a CSPRNG uniform compared with the sample
  rate; which records were drawn is as secret as the noise (amplification by subsampling needs it).

`use_csprng(optimizer, loader)` switches one training's optimizer and Poisson sampler over; a run
with `train.secure_noise: false` keeps Opacus' seeded generators (bit-reproducible, for tests and
benchmarks) and is marked as such. Secure mode costs a little time per step
(bench/bench_secure_noise.py). A resumed secure run draws fresh randomness after the checkpoint;
its ε is the same, because the accountant depends on the steps taken, not on the draws.
"""

from __future__ import annotations

import functools
import math
import os

NOISE_SOURCE_CSPRNG = "csprng (os.urandom)"
NOISE_SOURCE_SEEDED = "seeded PRNG (reproducible: tests and benchmarks only)"
_HOLOHAN_N = 2  # 2n Gaussian draws per noise value, as Opacus' secure_mode does


class Csprng:
    """The OS CSPRNG, shaped for what DP-SGD draws: uniforms and Gaussians as torch tensors."""

    def rand(self, n: int):
        """n uniforms in [0, 1) with 53 random bits each (float64)."""
        import numpy as np
        import torch

        bits = np.frombuffer(os.urandom(8 * n), dtype=np.uint64) >> np.uint64(11)
        return torch.from_numpy(bits.astype(np.float64) * 2.0**-53)

    def normal(self, n: int):
        """n standard normals (float64), Box–Muller over CSPRNG uniforms."""
        import torch

        pairs = (n + 1) // 2
        u1 = 1.0 - self.rand(pairs)  # (0, 1]: log(0) never happens
        u2 = self.rand(pairs)
        radius = torch.sqrt(-2.0 * torch.log(u1))
        return torch.cat([radius * torch.cos(2 * math.pi * u2), radius * torch.sin(2 * math.pi * u2)])[:n]

    def gaussian_like(self, std: float, reference):
        """N(0, std²) noise shaped like `reference`, hardened against floating-point attacks."""
        n = reference.numel()
        total = sum(self.normal(n) for _ in range(2 * _HOLOHAN_N)) / math.sqrt(2 * _HOLOHAN_N)
        return (std * total).reshape(reference.shape).to(dtype=reference.dtype, device=reference.device)


CSPRNG = Csprng()


@functools.cache
def _route_opacus_noise() -> None:
    """Opacus' optimizers call a module-level `_generate_noise(std, reference, generator, secure_mode)`:
    route the calls whose generator is CSPRNG to it, and leave every other caller untouched."""
    from opacus.optimizers import optimizer as dp_optimizer
    from opacus.optimizers import optimizer_fast_gradient_clipping as ghost_optimizer

    original = dp_optimizer._generate_noise

    def generate_noise(std, reference, generator=None, secure_mode=False):
        if generator is CSPRNG:
            return CSPRNG.gaussian_like(std, reference)
        return original(std=std, reference=reference, generator=generator, secure_mode=secure_mode)

    for module in (dp_optimizer, ghost_optimizer):
        module._generate_noise = generate_noise


@functools.cache
def _secure_sampler_classes() -> dict:
    """Opacus' Poisson samplers, drawing each record's inclusion from the CSPRNG (no generator state)."""
    from opacus.utils.uniform_sampler import DistributedUniformWithReplacementSampler, UniformWithReplacementSampler

    class CsprngPoissonSampler(UniformWithReplacementSampler):
        secure = True

        def __iter__(self):
            for _ in range(self.steps):
                yield (CSPRNG.rand(self.num_samples) < self.sample_rate).nonzero().reshape(-1).tolist()

    class CsprngDistributedPoissonSampler(DistributedUniformWithReplacementSampler):
        """As tasks.train.distributed's KeepEmptyDistributedSampler: an empty draw on this rank is yielded, not skipped,
        so every rank takes part in every step's all-reduce."""

        secure = True

        def __iter__(self):
            import torch

            if self.shuffle:  # which rank holds which records: public, like the dataset's order
                g = torch.Generator().manual_seed(self.shuffle_seed + self.epoch)
                indices = torch.randperm(self.total_size, generator=g)
            else:
                indices = torch.arange(self.total_size)
            indices = indices[self.rank : self.total_size : self.num_replicas]
            for _ in range(self.num_batches):
                yield indices[(CSPRNG.rand(self.num_samples) < self.sample_rate).nonzero().reshape(-1)]

    return {
        UniformWithReplacementSampler: CsprngPoissonSampler,
        DistributedUniformWithReplacementSampler: CsprngDistributedPoissonSampler,
    }


def use_csprng(optimizer, loader) -> None:
    """Draw this training's DP noise and Poisson batches from the OS CSPRNG (after make_private)."""
    _route_opacus_noise()
    optimizer.generator = CSPRNG
    sampler = loader.batch_sampler
    for base, secure in _secure_sampler_classes().items():
        if isinstance(sampler, base):
            sampler.__class__ = secure
            sampler.generator = None
            return
    raise TypeError(
        f"{type(sampler).__name__}: not an Opacus Poisson sampler; secure sampling needs "
        "make_private(..., poisson_sampling=True)"
    )


def is_secure(sampler) -> bool:
    return getattr(sampler, "secure", False)
