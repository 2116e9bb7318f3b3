"""Soft and fuzzy tokens (Soft Tokens, Hard Truths, arXiv 2509.19170, section "Token representations").

The CoT input is the probability-weighted mixture of embeddings h = softmax(logits / tau) @ E plus
Gaussian noise sigma * N(0, I_d), with sigma = gamma * RMS(E). Fuzzy tokens are the same class at
tau = 1e-4, where the mixture is essentially the argmax embedding.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from soft_tokens.config_types import check_noise_fits
from soft_tokens.representers.base import Replay, Rng, Step, TokenRepresenter
from soft_tokens.representers.deprecated import renamed_tau
from soft_tokens.representers.noise import PlacedAux, PlacedNoise
from soft_tokens.representers.placement import PLACEMENTS, HiddenAux, HiddenNoise, LogitAux, LogitNoise
from soft_tokens.representers.sampling import weighted_rows


def embedding_rms(embedding: Tensor, block: int = 1 << 22) -> Tensor:
    """RMS over all entries of the embedding matrix, sqrt(mean(E**2)), in float32 and detached.

    Summed `block` entries at a time (float32 squares, float64 running total), so that neither a float32
    copy of E nor its squares are ever whole in memory: for a 150k x 2k matrix either is a 1.2 GB temporary.
    """
    flat = embedding.detach().reshape(-1)
    total = torch.zeros((), dtype=torch.float64, device=flat.device)
    for part in flat.split(block):
        total += part.float().pow(2).sum()
    return (total / max(flat.numel(), 1)).sqrt().float()


NOISE_SCALES = ("rms", "centred_rms", "nearest_token")
NEAREST_SAMPLE = 512  # tokens whose nearest-neighbour distance is measured (all of them below this)


def embedding_scale(embedding: Tensor, kind: str = "rms") -> Tensor:
    """The unit of gamma for the isotropic embedding noise, sigma = gamma * scale, float32 and detached
    (docs/method.md, "Noise scale"): `rms` RMS(E) (the paper); `centred_rms` the RMS of E minus its mean row
    (the spread of the tokens around their common mean); `nearest_token` the median distance from a token
    to its nearest other token over sqrt(d), so that the noise's norm, about sigma * sqrt(d), is gamma times
    that distance (measured on NEAREST_SAMPLE tokens drawn with a fixed seed when V is larger)."""
    if kind == "rms":
        return embedding_rms(embedding)
    if kind == "centred_rms":
        # mean((E - m)^2) = mean(E^2) - mean_j(m_j^2): no centred (or float32) copy of E, as in embedding_rms
        mean_row = embedding.detach().sum(0, dtype=torch.float64) / embedding.shape[0]
        return (embedding_rms(embedding).double() ** 2 - mean_row.pow(2).mean()).clamp(min=0).sqrt().float()
    if kind != "nearest_token":
        raise ValueError(f"noise_scale must be one of {', '.join(NOISE_SCALES)}, got {kind!r}")
    E = embedding.detach().float()
    V, d = E.shape
    rows = torch.arange(V, device=E.device)
    if V > NEAREST_SAMPLE:
        pick = torch.randperm(V, generator=torch.Generator().manual_seed(0))[:NEAREST_SAMPLE]
        rows = pick.to(E.device)
    nearest = []
    for part in rows.split(64):
        dist = torch.cdist(E[part], E)  # [64, V]
        dist[torch.arange(len(part)), part] = float("inf")  # not the token itself
        nearest.append(dist.amin(1))
    return torch.cat(nearest).median() / math.sqrt(d)


# exp(x) is exactly 0 in float32 for x < -103.98 (below the smallest subnormal); twice that as a margin.
UNDERFLOW_SPAN = 2 * 104.0


def _sparse_mixture(
    logits: Tensor, embedding: Tensor, tau: float, max_density: float = 1 / 64, min_vocab: int = 8192
) -> tuple[Tensor, Tensor] | None:
    """(softmax(logits / tau) @ E, argmax ids) from the few tokens whose probability is not exactly zero, or
    None when more than `max_density` of them may be nonzero, the vocabulary is under `min_vocab` (then the
    dense matmul is cheaper) or a row's logits are not finite (the dense path propagates them).

    At a small temperature (fuzzy tokens, tau = 1e-4) the float32 softmax is exactly zero outside one or a
    few tokens: exp(z - max z) underflows once a logit is more than 104 * tau below the row's max. The
    candidates, the logits within UNDERFLOW_SPAN * tau of it, are found in one pass with the max; only their
    softmax is computed, so no [N, V] softmax is ever made, and the dense [N, V] x [V, d] matmul, which reads
    all of E to add zeros, becomes a sum over a few rows of E. The terms dropped are exact zeros: the result
    is the dense one bit for bit when one probability is nonzero, else to the rounding of the summation order.
    Differentiable in the logits and E: a token of probability exactly zero has derivative exactly zero in
    the dense softmax too (dh/dz_j = p_j (E_j - h) / tau), so the gradients are the dense ones as well.
    """
    vocab = logits.shape[-1]
    if vocab < min_vocab:
        return None
    flat = logits.reshape(-1, vocab)
    top, ids = flat.detach().max(-1, keepdim=True)
    near = flat.detach() >= top - UNDERFLOW_SPAN * tau
    finite, count = torch.stack([torch.isfinite(top).all(), torch.count_nonzero(near)]).tolist()  # one sync
    if not finite or count > max_density * near.numel():
        return None
    rows, cols = near.nonzero(as_tuple=True)
    # As torch.softmax of z = logits / tau does: z in float32, exp(z - max z) (the max held constant, as its
    # backward does), normalised by the row's sum.
    z = flat[rows, cols].float() / tau
    e = torch.exp(z - (top.float() / tau).squeeze(-1)[rows])
    total = torch.zeros(flat.shape[0], device=flat.device).index_add_(0, rows, e)
    probs = e / total[rows]
    # As the matmul does: probabilities rounded to E's dtype, products summed in float32, result in E's dtype.
    terms = probs.to(embedding.dtype).float().unsqueeze(-1) * embedding[cols].float()
    out = torch.zeros((flat.shape[0], embedding.shape[-1]), dtype=torch.float32, device=embedding.device)
    out = out.index_add_(0, rows, terms).to(embedding.dtype)
    return out.reshape(*logits.shape[:-1], embedding.shape[-1]), ids.reshape(logits.shape[:-1])


def mixture_and_ids(logits: Tensor, embedding: Tensor, tau: float) -> tuple[Tensor, Tensor | None]:
    """(softmax(logits / tau) @ E, the argmax ids or None): one matmul in E's dtype with the softmax in float32,
    or, when nearly all probabilities are exactly zero (fuzzy's tau), the sum over the others (`_sparse_mixture`)."""
    sparse = _sparse_mixture(logits, embedding, tau)
    if sparse is not None:
        return sparse
    probs = torch.softmax(logits.float() / tau, dim=-1)
    return probs.to(embedding.dtype) @ embedding, None


def logits_and_mixture(
    hidden: Tensor, embedding: Tensor, tau: float, block_bytes: int = 1 << 20
) -> tuple[Tensor, Tensor]:
    """(hidden @ E^T, softmax(hidden @ E^T / tau) @ E) for a head tied to E, in one pass over E's rows.

    The online softmax of flash attention: each block of rows of E (about `block_bytes`, to stay in cache)
    gives its logits and, read again while still cached, its share of the mixture; the running sum and
    mixture are rescaled whenever the running max grows. Equal to the two-pass version up to rounding, and
    on a CPU, where both [N, V] x [V, d] products are bound by reading E from memory, about as fast as the
    logits alone. Without gradients (decoding).
    """
    n, d = hidden.shape
    rows = max(64, block_bytes // (d * embedding.element_size()))
    top = torch.full((n, 1), -torch.inf, device=hidden.device)
    total = torch.zeros((n, 1), device=hidden.device)
    acc = torch.zeros((n, d), device=hidden.device)
    parts = []
    for block in embedding.split(rows):
        logits = hidden @ block.T
        parts.append(logits)
        z = logits.float() / tau
        new_top = torch.maximum(top, z.amax(-1, keepdim=True))
        scale = torch.exp(top - new_top)
        p = torch.exp(z - new_top)
        total = total * scale + p.sum(-1, keepdim=True)
        acc = acc * scale + (p.to(embedding.dtype) @ block).float()
        top = new_top
    return torch.cat(parts, dim=-1), (acc / total).to(embedding.dtype)


class SoftRepresenter(TokenRepresenter):
    """Feeds h~ = softmax(logits / tau) @ E + sigma * eps over the full vocabulary; no noise when greedy.

    The returned id is the argmax "shadow" token, used for stop detection and for logging the CoT as text.
    """

    continuous = True
    fuse_min_bytes = 32 << 20  # E from this size on (a 150k x 896 float32 E is 545 MB) gets the fused head

    def __init__(
        self,
        tau: float = 0.5,
        gamma: float = 0.33,
        greedy: bool = False,
        name: str | None = None,
        embedding_grad: bool = True,
        temperature: float | None = None,
        noise_top_k: int | None = None,
        noise_min_entropy: float = 0.0,
        noise_on: str = "embedding",
        noise_logits_top_k: int | None = None,
        noise_scale: str = "rms",
    ) -> None:
        super().__init__(greedy=greedy, name=name)
        # The ranges of tau, gamma and the noise knobs are checked on the config (config_types.RANGES).
        self.tau = float(renamed_tau(tau, temperature, type(self).__name__))
        self.gamma = float(gamma)
        # docs/method.md, "Noise where the choices are"; None: the paper's isotropic noise at every step
        placed = noise_top_k is not None or noise_min_entropy > 0
        self.placed = PlacedNoise(noise_top_k, float(noise_min_entropy), self.gamma) if placed else None
        self.noise_on = str(noise_on)
        self.upstream = upstream_noise(self.noise_on, noise_logits_top_k, placed, self.gamma)
        self.noise_scale = check_noise_scale(str(noise_scale), placed, self.noise_on)
        self._head: torch.nn.Module | None = None  # the LM head `project` last saw (hidden-state noise only)
        self.embedding_grad = embedding_grad  # False: the CoT log-density's mixture treats E as a constant
        self._sigma_key: tuple | None = None
        self._sigma = torch.tensor(0.0)

    @property
    def fast_mixture(self) -> bool:
        """Whether `mixture` is this class's softmax(logits / tau) @ E, which the fast paths (`logits_and_mixture`
        in `project`, `mixture_and_ids` in `step`) compute in its place. Found, not declared: a subclass that
        overrides `mixture` gets its own `mixture` used everywhere."""
        return type(self).mixture is SoftRepresenter.mixture

    def noise_upstream(self) -> bool:
        """Whether a step draws its noise upstream of the mixture (hidden state or logits), not on it."""
        return self.upstream is not None and not self.greedy and self.gamma > 0

    def __getstate__(self) -> dict:
        """The state without the LM head `project` keeps for the next step (a module, not a setting)."""
        return {**self.__dict__, "_head": None}

    def sigma(self, embedding: Tensor) -> Tensor:
        """Noise scale gamma * RMS(E) (or the `noise_scale` unit); recomputed only when E changes (new storage
        or in-place update)."""
        key = (embedding.data_ptr(), embedding._version, embedding.shape, embedding.device)
        if key != self._sigma_key:
            self._sigma = self.gamma * embedding_scale(embedding, self.noise_scale)
            self._sigma_key = key
        return self._sigma

    def prepare(self, embedding: Tensor) -> None:
        """Start of a rollout: forget sigma if E may be under training (it requires grad), since an optimizer
        can update E without bumping its version counter (fused AdamW does, as do writes through `.data`).
        A frozen E keeps its sigma; sigma is computed on first use, so a greedy rollout never pays for it.
        Placed noise is checked against E's shape (the config check does it earlier for a local model)."""
        if self.placed is not None:
            V, d = embedding.shape
            check_noise_fits("representer", self.placed.top_k, self.placed.min_entropy, d, V)
        if embedding.requires_grad:
            self._sigma_key = None

    def project(
        self, hidden: Tensor, head: torch.nn.Module, embedding: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        """Logits and, on CPU with a head tied to E, the mixture made in the same pass (`logits_and_mixture`).

        Elsewhere the plain head: on a GPU a decode step is bound by kernel launches, not by reading E; an E
        under `fuse_min_bytes` stays in cache between the two products anyway; at a tiny temperature (fuzzy)
        the sparse sum after the head is cheaper; an untied head reads a second matrix anyway; and a
        subclass with its own `mixture` (`fast_mixture` False) must have it used. Noise on the logits mixes the
        perturbed logits (the plain head); noise on the hidden state returns the hidden state as `pre` and
        keeps the head for `step`, which maps the perturbed hidden state through it.
        """
        if self.noise_upstream() and self.noise_on == "hidden":
            self._head = head
            return head(hidden), hidden
        weight = getattr(head, "weight", None)
        fuse = (
            hidden.device.type == "cpu"
            and embedding.numel() * embedding.element_size() >= self.fuse_min_bytes
            and self.tau > 1e-3
            and self.fast_mixture
            and not self.noise_upstream()
            and getattr(head, "bias", None) is None
            and weight is not None
            and weight.shape == embedding.shape
            and weight.data_ptr() == embedding.data_ptr()
        )
        if not fuse:
            return super().project(hidden, head, embedding)
        return logits_and_mixture(hidden, embedding, self.tau)

    def _grad_embedding(self, embedding: Tensor) -> Tensor:
        """E as the differentiable log-density and KL see it: detached when `embedding_grad` is off."""
        return embedding if self.embedding_grad else embedding.detach()

    def mixture(self, logits: Tensor, embedding: Tensor) -> Tensor:
        """h = softmax(logits / tau) @ E (`mixture_and_ids`)."""
        return mixture_and_ids(logits, embedding, self.tau)[0]

    def step(
        self, logits: Tensor, embedding: Tensor, generator: Rng = None, pre: Tensor | None = None
    ) -> Step:
        """The mixture (`pre`, when `project` made it with the logits) plus noise, and its log-density."""
        if self.noise_upstream():
            return self._upstream_step(logits, embedding, generator, pre)
        if pre is None and self.fast_mixture:
            h, ids = mixture_and_ids(logits, embedding, self.tau)
        else:  # the mixture `project` made, or a subclass's own
            h, ids = (self.mixture(logits, embedding) if pre is None else pre), None
        ids = logits.argmax(-1) if ids is None else ids
        d = h.shape[-1]
        if self.greedy or self.gamma == 0:
            return Step(embeds=h, ids=ids, logp=torch.zeros(h.shape[:-1], device=h.device))
        sigma = self.sigma(embedding)
        if self.placed is not None:
            noise, logp, aux = self.placed.draw(logits, sigma, embedding, generator)
            return Step(embeds=(h.float() + noise).to(h.dtype), ids=ids, logp=logp, aux=aux)
        eps = torch.randn(h.shape, generator=generator, device=h.device, dtype=torch.float32)
        fed = (h.float() + sigma * eps).to(h.dtype)
        # log N(fed; h, sigma^2 I) evaluated from the noise itself: -|eps|^2 / 2 - d/2 log(2 pi sigma^2).
        logp = -0.5 * eps.pow(2).sum(-1) - 0.5 * d * math.log(2 * math.pi) - d * torch.log(sigma)
        return Step(embeds=fed, ids=ids, logp=logp)

    def _mixture_and_argmax(self, logits: Tensor, embedding: Tensor) -> tuple[Tensor, Tensor]:
        """(softmax(logits / tau) @ E, argmax ids), through the fast paths unless a subclass has its own mixture."""
        if self.fast_mixture:
            h, ids = mixture_and_ids(logits, embedding, self.tau)
        else:
            h, ids = self.mixture(logits, embedding), None
        return h, logits.argmax(-1) if ids is None else ids

    def _upstream_step(self, logits: Tensor, embedding: Tensor, generator: Rng, pre: Tensor | None) -> Step:
        """Noise on the hidden state or the logits (docs/method.md, "Noise placements"): the mixture of the
        perturbed logits, the log-density of the perturbed vector, and that vector in `aux` for the replay.
        The shadow id is the argmax of the perturbed logits, the token the mixture is centred on."""
        if isinstance(self.upstream, HiddenNoise):
            if pre is None or self._head is None:
                raise ValueError(
                    f"{self!r} needs the final hidden state: call project(hidden, head, E) before step, as the "
                    "rollout does"
                )
            noised, sigma, logp = self.upstream.draw(pre, generator)
            h, ids = self._mixture_and_argmax(self._head(noised.to(pre.dtype)), embedding)
            return Step(embeds=h, ids=ids, logp=logp, aux=HiddenAux(noised_hidden=noised, noise_sigma=sigma))
        perturbed, cand, logp = self.upstream.draw(logits, generator)
        if cand is None:
            h, ids = self._mixture_and_argmax(perturbed, embedding)
            return Step(embeds=h, ids=ids, logp=logp, aux=LogitAux(perturbed_logits=perturbed))
        h = weighted_rows(torch.softmax(perturbed / self.tau, dim=-1), cand, embedding)
        ids = cand.gather(-1, perturbed.argmax(-1, keepdim=True)).squeeze(-1)
        return Step(embeds=h, ids=ids, logp=logp, aux=LogitAux(perturbed_logits=perturbed, logit_ids=cand))

    def _upstream_log_prob(self, replay: Replay) -> Tensor:
        """The perturbed vector's Gaussian log-density around the current hidden state or logits."""
        aux = self._aux(replay)
        if isinstance(self.upstream, HiddenNoise):
            return self.upstream.log_density(self._hidden(replay), aux)
        return self.upstream.log_density(replay.logits, aux)

    def _hidden(self, replay: Replay) -> Tensor:
        """The replay's final hidden states, which hidden-state noise is scored around."""
        if replay.hidden is None:
            raise ValueError(f"{self!r} scores the noised hidden state: the Replay needs `hidden`")
        return replay.hidden

    def log_prob(self, replay: Replay) -> Tensor:
        """Gaussian log-density of the fed input around the mixture (docs/method.md, "Log-probabilities").

        log pi(h~ | past) = -|h~ - h|^2 / (2 sigma^2) - d/2 log(2 pi sigma^2). sigma is detached, so the
        constant carries no gradient and cancels in every ratio against another policy with the same sigma;
        it is kept so the value is a true log-density. Differentiable in the logits and in E through h.
        With noise on the hidden state or the logits, the density of the perturbed vector instead.
        """
        if self.upstream is not None:
            if self.gamma == 0:
                raise ValueError(f"{self!r} has gamma = 0: the perturbed {self.noise_on} has no density")
            return self._upstream_log_prob(replay)
        fed = replay.fed_input(self)
        sigma = self.sigma(replay.embedding)
        if sigma == 0:
            raise ValueError(f"{self!r} has sigma = 0 (gamma = 0): the fed input has no density")
        h = self.mixture(replay.logits, self._grad_embedding(replay.embedding)).float()
        if self.placed is not None:
            return self.placed.log_density(fed.float() - h, sigma, replay.embedding, self._aux(replay))
        d = h.shape[-1]
        sq = (fed.float() - h).pow(2).sum(-1)
        return -sq / (2 * sigma**2) - 0.5 * d * math.log(2 * math.pi) - d * torch.log(sigma)

    def kl(self, replay: Replay, ref: Replay) -> Tensor:
        """Exact KL between the two Gaussian input policies of one CoT step.

        Both policies put N(mean, sigma^2 I_d) around their own mixture: h = softmax(z / tau) @ E for the
        policy, h_ref = softmax(z_ref / tau) @ E_ref for the reference, with the same sigma. For two
        Gaussians with equal covariance sigma^2 I,
            KL(N(h, s^2 I) || N(h_ref, s^2 I)) = 1/2 [tr(I) - d + (h_ref - h)^T (s^2 I)^-1 (h_ref - h)
                                                     + log det(s^2 I) / det(s^2 I)]
                                               = |h - h_ref|^2 / (2 sigma^2),
        so the term needs no sample: it is the closed form in the two means (zero iff they coincide).
        The fed input is not used. sigma is the policy's (detached). With noise on the hidden state or the
        logits, the same closed form in the perturbed vector's means (`placement.py`).
        """
        if isinstance(self.upstream, HiddenNoise):
            return self.upstream.kl(self._hidden(replay), ref.hidden, self._aux(replay))
        if self.upstream is not None:
            return self.upstream.kl(replay.logits, ref.logits, self._aux(replay))
        sigma = self.sigma(replay.embedding)
        h = self.mixture(replay.logits, self._grad_embedding(replay.embedding)).float()
        h_ref = self.mixture(ref.logits, ref.embedding).float().detach()
        if self.placed is not None:
            return self.placed.kl(h - h_ref, sigma, replay.embedding, self._aux(replay))
        return (h - h_ref).pow(2).sum(-1) / (2 * sigma**2)

    def _aux(self, replay: Replay) -> PlacedAux | HiddenAux | LogitAux:
        """The stored aux of placed or upstream noise (noisy steps and candidates, perturbed vectors), checked."""
        if isinstance(self.upstream, HiddenNoise):
            return HiddenAux.from_replay(replay, self)
        if self.upstream is not None:
            return LogitAux.from_replay(replay, self, () if self.upstream.top_k is None else ("logit_ids",))
        return PlacedAux.from_replay(replay, self, () if self.placed.top_k is None else ("noise_ids",))

    def knobs(self) -> str:
        """tau, gamma and where the noise goes."""
        placed = "" if self.placed is None else f", noise_top_k={self.placed.top_k}"
        placed += "" if self.placed is None else f", noise_min_entropy={self.placed.min_entropy}"
        placed += "" if self.upstream is None else f", noise_on={self.noise_on}"
        if isinstance(self.upstream, LogitNoise) and self.upstream.top_k is not None:
            placed += f", noise_logits_top_k={self.upstream.top_k}"
        placed += "" if self.noise_scale == "rms" else f", noise_scale={self.noise_scale}"
        return f", tau={self.tau}, gamma={self.gamma}{placed}"


def check_noise_scale(noise_scale: str, placed: bool, noise_on: str) -> str:
    """`noise_scale`, or a ValueError naming the knob: it sets the unit of the isotropic embedding noise only."""
    if noise_scale not in NOISE_SCALES:
        raise ValueError(f"noise_scale must be one of {', '.join(NOISE_SCALES)}, got {noise_scale!r}")
    if noise_scale != "rms" and (placed or noise_on != "embedding"):
        raise ValueError(
            f"noise_scale={noise_scale} sets the unit of the isotropic embedding noise; placed noise (noise_top_k, "
            f"noise_min_entropy) and noise_on={noise_on} have their own units: keep noise_scale=rms with them"
        )
    return noise_scale


def upstream_noise(
    noise_on: str, logits_top_k: int | None, placed: bool, gamma: float
) -> LogitNoise | HiddenNoise | None:
    """The noise of `noise_on` (None: on the input embedding), or a ValueError naming the knob to fix (the
    combinations of knobs; each one's range is checked on the config)."""
    if noise_on not in PLACEMENTS:
        raise ValueError(f"noise_on must be one of {', '.join(PLACEMENTS)}, got {noise_on!r}")
    if noise_on == "top_k_logits" and logits_top_k is None:
        raise ValueError("noise_on=top_k_logits needs noise_logits_top_k (the paper's rows: 5 and 50)")
    if noise_on != "top_k_logits" and logits_top_k is not None:
        raise ValueError(
            f"noise_logits_top_k is for noise_on=top_k_logits (got noise_on={noise_on}): set it null"
        )
    if noise_on != "embedding" and placed:
        raise ValueError(
            f"noise_top_k and noise_min_entropy place the embedding's noise; with noise_on={noise_on} set them to "
            "null and 0"
        )
    if noise_on == "hidden":
        return HiddenNoise(gamma)
    if noise_on in ("logits", "top_k_logits"):
        return LogitNoise(gamma, None if logits_top_k is None else int(logits_top_k))
    return None
