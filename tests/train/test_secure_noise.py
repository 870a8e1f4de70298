"""The CSPRNG source of DP-SGD's noise and Poisson sampling (tasks.train.noise)."""

from __future__ import annotations

import math

import pytest
import torch

from tasks.train.noise import CSPRNG, use_csprng


def test_csprng_normals_are_standard_normal():
    x = CSPRNG.normal(200_000)
    assert x.dtype == torch.float64 and x.shape == (200_000,)
    assert abs(float(x.mean())) < 0.01 and abs(float(x.std()) - 1) < 0.01
    # tails: P(|x| > 3) = 0.0027
    assert abs(float((x.abs() > 3).double().mean()) - 0.0027) < 0.0008
    u = CSPRNG.rand(100_000)
    assert float(u.min()) >= 0 and float(u.max()) < 1 and abs(float(u.mean()) - 0.5) < 0.01


def test_hardened_gaussian_has_the_asked_std_shape_and_dtype():
    reference = torch.zeros(300, 400, dtype=torch.float32)
    noise = CSPRNG.gaussian_like(2.5, reference)
    assert noise.shape == reference.shape and noise.dtype == torch.float32
    assert abs(float(noise.double().std()) - 2.5) < 0.02
    torch.manual_seed(0)
    first = CSPRNG.gaussian_like(1.0, reference)
    torch.manual_seed(0)
    assert not torch.equal(first, CSPRNG.gaussian_like(1.0, reference))  # torch's seed does not decide it


def test_opacus_optimizer_and_sampler_draw_from_the_csprng():
    from opacus import PrivacyEngine

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    data = torch.utils.data.TensorDataset(torch.randn(50, 4), torch.randn(50, 1))
    loader = torch.utils.data.DataLoader(data, batch_size=10, generator=torch.Generator().manual_seed(0))
    engine = PrivacyEngine(accountant="prv")
    model, optimizer, loader = engine.make_private(
        module=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        data_loader=loader,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        poisson_sampling=True,
    )
    use_csprng(optimizer, loader)
    assert getattr(loader.batch_sampler, "secure", False) and loader.batch_sampler.generator is None
    first, second = list(loader.batch_sampler), list(loader.batch_sampler)
    assert len(first) == 5 and 20 < sum(map(len, first)) < 80  # Binomial(250, 0.2): 50 ± 6.3
    assert first != second  # no generator state: every pass draws afresh
    for p in model.parameters():  # a zero gradient: what add_noise adds is the noise itself
        p.summed_grad = torch.zeros_like(p)
    optimizer.add_noise()
    noise = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert float(noise.abs().sum()) > 0
    with pytest.raises(TypeError, match="Poisson sampler"):
        use_csprng(optimizer, torch.utils.data.DataLoader(data, batch_size=10))
    assert math.isfinite(float(noise.sum()))
