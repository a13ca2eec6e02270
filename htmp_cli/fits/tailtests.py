"""How sure the power-law tail is (math.md section 6b; Clauset, Shalizi, Newman, SIAM Review 2009).

- Goodness of fit (CSN section 4.1): the semi-parametric bootstrap p-value. Each replicate draws as
  many points as the fit saw: with probability n_tail / n a point comes from the fitted power law
  above xmin, otherwise uniformly from the observed points below it; the whole CSN fit is repeated
  on it (the xmin search included) and its KS distance kept. p is the share of replicates whose
  distance is at least the observed one. CSN read p <= 0.1 as ruling the power law out. Seeded.
- Alternatives (CSN section 5): on the same tail (x >= xmin), each alternative fitted by maximum
  likelihood, normalised on [xmin, inf): lognormal, exponential, stretched exponential (Weibull)
  and the power law with an exponential cut-off (truncated power law). R is the sum of the
  pointwise log-likelihood ratios, power law minus alternative (positive: the power law is the more
  likely); its p-value is Vuong's, erfc(|R| / sqrt(2 n var)), var the pointwise ratios' variance,
  and `normalized_R` = R / sqrt(n var). The truncated power law holds the power law as its lambda
  -> 0 case, so its p-value is the nested test's, the chi-squared (1 degree of freedom) tail of 2|R|.
  The `powerlaw` package (`Fit.distribution_compare`, `normalized_ratio=True`) uses the same
  normalisations and statistics; its optimiser (Nelder-Mead, tol 1e-4) can stop short of the
  maximum that these fits reach.
- The verdict (our rule): an alternative is favoured when its R < 0 with p < SIGNIFICANCE (the most
  negative normalised R if several are); the power law is favoured when every non-nested
  alternative has R > 0 with p < SIGNIFICANCE; otherwise it is inconclusive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from htmp_cli.fits.powerlaw import PowerLawFit, fit_power_law

SIGNIFICANCE = 0.1  # CSN's level for the likelihood-ratio tests' p-values
ALTERNATIVES = ("lognormal", "exponential", "stretched_exponential", "truncated_power_law")
NESTED = ("truncated_power_law",)
VERDICTS = ("power_law", "alternative", "inconclusive")


@dataclass(frozen=True)
class Comparison:
    """The power law against one alternative on the fitted tail."""

    alternative: str
    parameters: dict[str, float]  # the alternative's maximum-likelihood parameters
    R: float  # log-likelihood ratio, power law minus alternative
    normalized_R: float  # R / sqrt(n var): Vuong's statistic
    p_value: float
    nested: bool


@dataclass(frozen=True)
class TailTests:
    """The power-law tail's goodness of fit and its comparison with the alternatives."""

    bootstrap_p: float | None  # None when not asked (--bootstrap 0)
    bootstrap_replicates: int
    seed: int
    comparisons: tuple[Comparison, ...]  # empty when not asked (--alternatives off)
    verdict: str | None  # one of VERDICTS (None without comparisons)
    favoured: str | None  # "power_law", the favoured alternative's name, or None when inconclusive

    def comparison(self, alternative: str) -> Comparison:
        for item in self.comparisons:
            if item.alternative == alternative:
                return item
        raise KeyError(f"no comparison with {alternative!r} (have: {', '.join(c.alternative for c in self.comparisons)})")


# --- Goodness of fit ---------------------------------------------------------------------------

def bootstrap_samples(x: np.ndarray, fit: PowerLawFit, replicates: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """The replicates of CSN's semi-parametric bootstrap, one array each (see the module doc)."""
    x = np.sort(np.asarray(x, dtype=np.float64))
    x = x[x > 0]
    assert fit.ok and fit.alpha is not None and fit.xmin is not None and fit.tail_size is not None
    body = x[x < fit.xmin]
    n, share = x.size, fit.tail_size / x.size
    for _ in range(replicates):
        in_tail = int(rng.binomial(n, share)) if body.size else n
        tail = fit.xmin * rng.random(in_tail) ** (-1.0 / (fit.alpha - 1.0))  # inverse CDF of the power law
        yield np.concatenate([rng.choice(body, n - in_tail), tail]) if n > in_tail else tail


def bootstrap_p_value(x: np.ndarray, fit: PowerLawFit, replicates: int, seed: int, min_tail: int = 10,
                      refit: Callable[[np.ndarray, int], PowerLawFit] = fit_power_law) -> float:
    """CSN's goodness-of-fit p-value of a successful `fit` of the positive values `x`."""
    if replicates < 1:
        raise ValueError(f"the bootstrap needs at least 1 replicate, got {replicates}")
    rng = np.random.default_rng([seed, 0xB007])
    at_least = 0
    for sample in bootstrap_samples(x, fit, replicates, rng):
        replicate = refit(sample, min_tail)
        # A replicate the fit cannot handle has no distance: count it as no better than observed.
        at_least += (not replicate.ok) or replicate.D >= fit.D  # type: ignore[operator]
    return at_least / replicates


# --- Likelihood-ratio tests --------------------------------------------------------------------

def power_law_loglikelihoods(x: np.ndarray, alpha: float, xmin: float) -> np.ndarray:
    return math.log(alpha - 1.0) - math.log(xmin) - alpha * np.log(x / xmin)


def exponential_loglikelihoods(x: np.ndarray, rate: float, xmin: float) -> np.ndarray:
    return math.log(rate) - rate * (x - xmin)


def lognormal_loglikelihoods(x: np.ndarray, mu: float, sigma: float, xmin: float) -> np.ndarray:
    from scipy.special import log_ndtr

    # The density on [xmin, inf) is the lognormal's over P(X >= xmin) = Phi((mu - ln xmin) / sigma).
    logs = np.log(x)
    norm = math.log(sigma) + 0.5 * math.log(2 * math.pi) + float(log_ndtr((mu - math.log(xmin)) / sigma))
    return -logs - (logs - mu) ** 2 / (2 * sigma * sigma) - norm


def stretched_exponential_loglikelihoods(x: np.ndarray, rate: float, beta: float, xmin: float) -> np.ndarray:
    return (math.log(beta) + beta * math.log(rate) + (beta - 1.0) * np.log(x)
            + (rate * xmin) ** beta - (rate * x) ** beta)


def truncated_power_law_loglikelihoods(x: np.ndarray, alpha: float, rate: float, xmin: float) -> np.ndarray:
    # Density lambda^(1 - alpha) x^(-alpha) e^(-lambda x) / Gamma(1 - alpha, lambda xmin).
    return ((1.0 - alpha) * math.log(rate) - log_upper_gamma(1.0 - alpha, rate * xmin)
            - alpha * np.log(x) - rate * x)


def log_upper_gamma(s: float, z: float) -> float:
    """ln Gamma(s, z), the upper incomplete gamma function, for any real s and z > 0."""
    from scipy.special import exp1, gammaincc, gammaln

    if z > 40 + 2 * abs(s):
        # Asymptotic series: Gamma(s, z) ~ z^(s-1) e^(-z) sum_k (s-1)(s-2)...(s-k) / z^k.
        term, total = 1.0, 1.0
        for k in range(1, 30):
            term *= (s - k) / z
            total += term
            if abs(term) < 1e-17 * abs(total):
                break
        return (s - 1.0) * math.log(z) - z + math.log(total)
    if s > 0:
        upper = float(gammaincc(s, z))
        if upper > 0:
            return math.log(upper) + float(gammaln(s))
    # Upward recursion Gamma(s, z) = (Gamma(s + 1, z) - z^s e^(-z)) / s from s + k > 0 (or = 0).
    k = max(0, math.ceil(-s))
    top = s + k
    value = float(exp1(z)) if top == 0 else float(gammaincc(top, z)) * math.exp(float(gammaln(top)))
    for step in range(k - 1, -1, -1):
        a = s + step
        value = (value - z ** a * math.exp(-z)) / a
    return math.log(value)


def _maximise(negative: Callable[[np.ndarray], float], start: list[float]) -> np.ndarray:
    """The parameters minimising `negative` (in unbounded coordinates), by Nelder-Mead polished
    by BFGS: robust from a rough start, then converged to the optimum's last digits."""
    from scipy.optimize import minimize

    def guarded(point: np.ndarray) -> float:
        with np.errstate(all="ignore"):
            try:
                value = negative(point)
            except (ValueError, OverflowError, ZeroDivisionError):
                return math.inf
        return value if math.isfinite(value) else math.inf

    rough = minimize(guarded, np.asarray(start, dtype=np.float64), method="Nelder-Mead",
                     options={"xatol": 1e-4, "fatol": 1e-6, "maxiter": 400})
    best = rough
    for _ in range(3):  # BFGS from where the last one stopped: a long valley (a lognormal tending
        # to a power law, mu far below ln xmin) takes it more than one run to walk down
        polished = minimize(guarded, best.x, method="BFGS", options={"gtol": 1e-8})
        if not polished.fun < best.fun - 1e-12:
            break
        best = polished
    return best.x


def fit_alternative(name: str, tail: np.ndarray, xmin: float, alpha: float) -> tuple[dict[str, float], np.ndarray]:
    """The maximum-likelihood parameters of one alternative on `tail` (values >= xmin) and its
    pointwise log-likelihoods there. `alpha` (the power law's) starts the truncated power law."""
    logs = np.log(tail)
    if name == "exponential":
        rate = 1.0 / max(float(np.mean(tail)) - xmin, np.finfo(float).tiny)  # closed form
        return {"lambda": rate}, exponential_loglikelihoods(tail, rate, xmin)
    if name == "lognormal":
        def negative(p: np.ndarray) -> float:
            return -float(np.sum(lognormal_loglikelihoods(tail, p[0], math.exp(p[1]), xmin)))

        mu, log_sigma = _maximise(negative, [float(logs.mean()), math.log(max(float(logs.std()), 1e-3))])
        params = {"mu": float(mu), "sigma": math.exp(log_sigma)}
        return params, lognormal_loglikelihoods(tail, params["mu"], params["sigma"], xmin)
    if name == "stretched_exponential":
        def negative(p: np.ndarray) -> float:
            return -float(np.sum(stretched_exponential_loglikelihoods(tail, math.exp(p[0]), math.exp(p[1]), xmin)))

        log_rate, log_beta = _maximise(negative, [-math.log(float(np.mean(tail))), math.log(0.5)])
        params = {"lambda": math.exp(log_rate), "beta": math.exp(log_beta)}
        return params, stretched_exponential_loglikelihoods(tail, params["lambda"], params["beta"], xmin)
    if name == "truncated_power_law":
        def negative(p: np.ndarray) -> float:
            return -float(np.sum(truncated_power_law_loglikelihoods(tail, p[0], math.exp(p[1]), xmin)))

        a, log_rate = _maximise(negative, [alpha, math.log(0.01 / float(np.mean(tail)))])
        params = {"alpha": float(a), "lambda": math.exp(log_rate)}
        return params, truncated_power_law_loglikelihoods(tail, params["alpha"], params["lambda"], xmin)
    raise ValueError(f"unknown alternative {name!r} (known: {', '.join(ALTERNATIVES)})")


def likelihood_ratio(first: np.ndarray, second: np.ndarray, nested: bool) -> tuple[float, float, float]:
    """(R, normalised R, p) of pointwise log-likelihoods `first` against `second`."""
    from scipy.special import erfc
    from scipy.stats import chi2

    differences = np.asarray(first, dtype=np.float64) - np.asarray(second, dtype=np.float64)
    n = differences.size
    R = float(differences.sum())
    variance = float(np.mean((differences - differences.mean()) ** 2))
    spread = math.sqrt(n * variance)
    if nested:
        p = float(chi2.sf(abs(2 * R), 1))
    else:
        p = float(erfc(abs(R) / (math.sqrt(2) * spread))) if spread > 0 else 1.0
    return R, (R / spread if spread > 0 else 0.0), p


def compare_alternatives(x: np.ndarray, fit: PowerLawFit) -> tuple[Comparison, ...]:
    """The power law of `fit` against every alternative, on its tail of the positive values `x`."""
    assert fit.ok and fit.alpha is not None and fit.xmin is not None
    x = np.asarray(x, dtype=np.float64)
    tail = np.sort(x[x >= fit.xmin])
    own = power_law_loglikelihoods(tail, fit.alpha, fit.xmin)
    comparisons = []
    for name in ALTERNATIVES:
        params, other = fit_alternative(name, tail, fit.xmin, fit.alpha)
        R, normalized, p = likelihood_ratio(own, other, nested=name in NESTED)
        comparisons.append(Comparison(alternative=name, parameters=params, R=R, normalized_R=normalized,
                                      p_value=p, nested=name in NESTED))
    return tuple(comparisons)


def verdict(comparisons: tuple[Comparison, ...]) -> tuple[str, str | None]:
    """(verdict, favoured) by the module's rule."""
    against = [c for c in comparisons if c.R < 0 and c.p_value < SIGNIFICANCE]
    if against:
        return "alternative", min(against, key=lambda c: c.normalized_R).alternative
    plain = [c for c in comparisons if not c.nested]
    if plain and all(c.R > 0 and c.p_value < SIGNIFICANCE for c in plain):
        return "power_law", "power_law"
    return "inconclusive", None


def tail_tests(x: np.ndarray, fit: PowerLawFit, *, bootstrap: int, alternatives: bool, seed: int,
               min_tail: int = 10) -> TailTests | None:
    """The tests asked for, on a successful CSN fit of the positive values `x` (None if it failed)."""
    if not fit.ok:
        return None
    p = bootstrap_p_value(x, fit, bootstrap, seed, min_tail) if bootstrap else None
    comparisons = compare_alternatives(x, fit) if alternatives else ()
    judged, favoured = verdict(comparisons) if comparisons else (None, None)
    return TailTests(bootstrap_p=p, bootstrap_replicates=bootstrap, seed=seed, comparisons=comparisons,
                     verdict=judged, favoured=favoured)
