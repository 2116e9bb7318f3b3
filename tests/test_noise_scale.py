"""representer.noise_scale: the unit of gamma for the isotropic embedding noise, checked by hand."""

from __future__ import annotations

import math

import pytest
import torch

from soft_tokens.representers import SoftRepresenter
from soft_tokens.representers.soft import NEAREST_SAMPLE, embedding_scale

E = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])


def test_scales_by_hand():
    # RMS over the 6 entries: sqrt(4 / 6)
    assert float(embedding_scale(E, "rms")) == pytest.approx(math.sqrt(4 / 6))
    # mean row (2/3, 2/3); centred rows (1/3, -2/3), (-2/3, 1/3), (1/3, 1/3): squares 12/9 over 6 entries
    assert float(embedding_scale(E, "centred_rms")) == pytest.approx(math.sqrt(2 / 9))
    # distances: |e0 - e1| = sqrt(2), |e0 - e2| = |e1 - e2| = 1, so every nearest distance is 1; / sqrt(d = 2)
    assert float(embedding_scale(E, "nearest_token")) == pytest.approx(1 / math.sqrt(2))
    with pytest.raises(ValueError, match="noise_scale must be one of rms, centred_rms, nearest_token"):
        embedding_scale(E, "std")


def test_nearest_token_samples_rows_of_a_large_vocabulary():
    V, d = NEAREST_SAMPLE + 88, 3
    emb = torch.randn(V, d, generator=torch.Generator().manual_seed(1))
    rows = torch.randperm(V, generator=torch.Generator().manual_seed(0))[:NEAREST_SAMPLE]
    dist = torch.cdist(emb, emb) + torch.diag(torch.full((V,), float("inf")))
    expected = dist[rows].amin(1).median() / math.sqrt(d)
    assert float(embedding_scale(emb, "nearest_token")) == pytest.approx(float(expected), rel=1e-5)


def test_sigma_follows_the_scale_and_the_default_is_the_papers():
    assert float(SoftRepresenter(gamma=0.5).sigma(E)) == pytest.approx(0.5 * math.sqrt(4 / 6))
    rep = SoftRepresenter(gamma=0.5, noise_scale="centred_rms")
    assert float(rep.sigma(E)) == pytest.approx(0.5 * math.sqrt(2 / 9))
    assert "noise_scale=centred_rms" in repr(rep) and "noise_scale" not in repr(SoftRepresenter())


def test_the_noise_of_a_step_has_the_scaled_sigma():
    """h~ - h over many draws has the standard deviation gamma * scale in every coordinate."""
    rep = SoftRepresenter(gamma=0.5, noise_scale="nearest_token")
    logits = torch.zeros(20000, 3)
    step = rep.step(logits, E, generator=torch.Generator().manual_seed(0))
    noise = step.embeds - E.mean(0)  # uniform logits: the mixture is the mean row
    sigma = 0.5 / math.sqrt(2)
    # the sample SD of 40,000 standard normals is within 4 standard errors (1 / sqrt(2 n)) of 1
    assert float(noise.std()) == pytest.approx(sigma, rel=4 / math.sqrt(2 * 40000))


@pytest.mark.parametrize(
    "knobs",
    [{"noise_top_k": 2}, {"noise_min_entropy": 0.3}, {"noise_on": "logits"}, {"noise_on": "hidden"}],
)
def test_other_noises_keep_their_own_units(knobs):
    with pytest.raises(
        ValueError, match="noise_scale=centred_rms sets the unit of the isotropic embedding noise"
    ):
        SoftRepresenter(noise_scale="centred_rms", **knobs)
