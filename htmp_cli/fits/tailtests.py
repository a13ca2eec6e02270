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
  Where the two laws coincide on the tail (the cut-off at lambda = 0), every ratio is zero to
  rounding, and R and its normalisation are taken as zero, with p = 1 (powerlaw's ratio of two
  rounding errors there gives any number, or NaN).
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
COINCIDE = 1e-12  # pointwise log-likelihoods this close (relative) are the same law
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
    log_rate = math.log(rate)
    # (lambda x)^beta in logs: lambda runs to 1e300 where the law tends to a power law
    return (math.log(beta) + beta * log_rate + (beta - 1.0) * np.log(x)
            + math.exp(beta * (log_rate + math.log(xmin))) - np.exp(beta * (log_rate + np.log(x))))


def truncated_power_law_loglikelihoods(x: np.ndarray, alpha: float, rate: float, xmin: float) -> np.ndarray:
    # Density lambda^(1 - alpha) x^(-alpha) e^(-lambda x) / Gamma(1 - alpha, lambda xmin).
    if rate <= 0.0:  # the cut-off's lambda -> 0 limit: the power law itself
        return power_law_loglikelihoods(x, alpha, xmin) if alpha > 1.0 else np.full(np.shape(x), -math.inf)
    return ((1.0 - alpha) * math.log(rate) - log_upper_gamma(1.0 - alpha, rate * xmin)
            - alpha * np.log(x) - rate * x)


def log_upper_gamma(s: float, z: float) -> float:
    """ln Gamma(s, z), the upper incomplete gamma function, for any real s and z > 0.

    Legendre's continued fraction (modified Lentz) for s <= 0 or z > s + 1, where it converges for
    every s (checked against mpmath to 3e-11 relative for s in [-6, 0.5], z in [0.001, 1]), but
    slowly for small z, where the series of `_upper_gamma_series` takes over; scipy's regularised
    function otherwise. (The recursion Gamma(s, z) = (Gamma(s + 1, z) - z^s e^(-z)) / s
    loses every digit near s = 0 and many at large z.)"""
    from scipy.special import gammaincc, gammaln

    if s >= 1e-5 and z <= s + 1.0:  # (below, Gamma(s) ~ 1/s and the regularised value underflow apart)
        return math.log(float(gammaincc(s, z))) + float(gammaln(s))
    if z < 0.5:  # the fraction needs ~1/z terms there
        return math.log(_upper_gamma_series(s, z))
    tiny = 1e-300
    b = z + 1.0 - s
    c, d = 1.0 / tiny, 1.0 / b
    h = d
    for i in range(1, 1_000_000):
        a = -i * (i - s)
        b += 2.0
        d = a * d + b
        d = tiny if abs(d) < tiny else d
        c = b + a / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        step = d * c
        h *= step
        if abs(step - 1.0) < 1e-16:
            break
    return s * math.log(z) - z + math.log(h)


def _lognormal_ab(u: np.ndarray, logs: np.ndarray, a: float, b: float) -> np.ndarray:
    """The lognormal on [xmin, inf) in coordinates that stay finite at its power-law limit: with
    u = ln(x / xmin), log-density -ln x - b u^2 / 2 - a u - ln Z(a, b), Z the integral of
    exp(-b u^2 / 2 - a u) over u >= 0. (sigma = 1 / sqrt(b), mu = ln xmin - a / b; b -> 0 with
    a = alpha - 1 is the power law, where mu and sigma run off to -inf and inf.)"""
    from scipy.special import erfcx

    if b <= 0.0:
        if a <= 0.0:
            return np.full(u.shape, -math.inf)
        log_z = -math.log(a)
    else:
        t = a / math.sqrt(2.0 * b)
        if t >= -5.0:
            log_erfcx = math.log(float(erfcx(t)))
        else:  # erfcx(t) = 2 e^(t^2) - erfcx(-t): its log without the overflow
            log_erfcx = t * t + math.log(2.0) + math.log1p(-float(erfcx(-t)) * math.exp(-t * t) / 2.0)
        log_z = 0.5 * math.log(math.pi / (2.0 * b)) + log_erfcx
    return -logs - 0.5 * b * u * u - a * u - log_z


def _stretched_kb(u: np.ndarray, logs: np.ndarray, log_k: float, beta: float) -> np.ndarray:
    """The stretched exponential on [xmin, inf) with k = beta (lambda xmin)^beta: log-density
    ln k - ln x + beta u - k (e^(beta u) - 1) / beta, u = ln(x / xmin), finite at its power-law
    limit beta -> 0 (alpha = 1 + k), where lambda runs off to infinity."""
    k = math.exp(log_k)
    growth = u + 0.5 * beta * u * u if beta < 1e-10 else np.expm1(beta * u) / beta
    return log_k - logs + beta * u - k * growth


def _upper_gamma_series(s: float, z: float) -> float:
    """Gamma(s, z) = Gamma(s) - sum_n (-1)^n z^(s+n) / (n! (s+n)) for s < 1e-5 and small z. Near a
    pole s = -m + e of Gamma(s), it and the n = m term are taken together, from their expansions
    (Gamma's Laurent series at -m): (-1)^m / m! (psi(m+1) - ln z + e/2 (pi^2/3 + psi(m+1)^2
    - psi'(m+1) - ln^2 z)) + O(e^2)."""
    from scipy.special import digamma, gamma, polygamma

    pole = round(-s)
    epsilon = s + pole
    near_pole = abs(epsilon) < 1e-5
    total = 0.0 if near_pole else float(gamma(s))
    factorial = 1.0
    for n in range(0, 200):
        if n:
            factorial *= n
        if near_pole and n == pole:
            psi, log_z = float(digamma(pole + 1)), math.log(z)
            total += (-1) ** pole / factorial * (psi - log_z + epsilon / 2 * (
                math.pi ** 2 / 3 + psi * psi - float(polygamma(1, pole + 1)) - log_z * log_z))
            continue
        term = (-1) ** n * z ** (s + n) / (factorial * (s + n))
        total -= term
        if n > pole and abs(term) < 1e-17 * abs(total):
            break
    return total


def _maximise(loglikelihoods: Callable[[np.ndarray], np.ndarray], starts: list[list[float]],
              bounds: list[tuple[float | None, float | None]]) -> np.ndarray:
    """The parameters maximising the summed log-likelihood, by L-BFGS-B within `bounds` from each
    start (the best kept), then from where it stopped until it stops improving."""
    from scipy.optimize import minimize

    def negative(point: np.ndarray) -> float:
        with np.errstate(all="ignore"):
            try:
                value = -float(np.sum(loglikelihoods(point)))
            except (ValueError, OverflowError, ZeroDivisionError):
                return 1e300
        return value if math.isfinite(value) else 1e300

    best = None
    for start in starts:
        result = minimize(negative, np.asarray(start, dtype=np.float64), method="L-BFGS-B", bounds=bounds,
                          options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 2000})
        if best is None or result.fun < best.fun:
            best = result
    assert best is not None
    for _ in range(3):
        again = minimize(negative, best.x, method="L-BFGS-B", bounds=bounds,
                         options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 2000})
        if not again.fun < best.fun - 1e-12:
            break
        best = again
    return best.x


def fit_alternative(name: str, tail: np.ndarray, xmin: float, alpha: float) -> tuple[dict[str, float], np.ndarray]:
    """The maximum-likelihood parameters of one alternative on `tail` (values >= xmin) and its
    pointwise log-likelihoods there. `alpha` (the power law's) starts the fits near its limit.

    The lognormal and the stretched exponential are fitted in coordinates in which their power-law
    limits are finite boundary points (`_lognormal_ab`, `_stretched_kb`): in (mu, sigma) and (lambda,
    beta) a power-law-like tail sends the optimum off to infinity, which an optimiser walks slowly
    and never reaches. Their parameters are reported as (mu, sigma) and (lambda, beta); a value
    that has left float range is infinite."""
    tail = np.asarray(tail, dtype=np.float64)
    logs = np.log(tail)
    u = np.log(tail / xmin)
    if name == "exponential":
        rate = 1.0 / max(float(np.mean(tail)) - xmin, np.finfo(float).tiny)  # closed form
        return {"lambda": rate}, exponential_loglikelihoods(tail, rate, xmin)
    if name == "lognormal":
        spread = max(float(logs.std()), 1e-3)
        moments = [(math.log(xmin) - float(logs.mean())) / spread ** 2, 1.0 / spread ** 2]
        a, b = _maximise(lambda p: _lognormal_ab(u, logs, p[0], p[1]), [moments, [alpha - 1.0, 1e-6]],
                         [(None, None), (0.0, None)])
        mu = math.log(xmin) - a / b if b > 0 else -math.inf
        return ({"mu": mu, "sigma": 1.0 / math.sqrt(b) if b > 0 else math.inf},
                _lognormal_ab(u, logs, float(a), float(b)))
    if name == "stretched_exponential":
        start_k = math.log(max(alpha - 1.0, 1e-3))
        log_k, beta = _maximise(lambda p: _stretched_kb(u, logs, p[0], p[1]),
                                [[start_k, 0.5], [start_k, 1e-4], [math.log(xmin / float(np.mean(tail))), 1.0]],
                                [(None, None), (0.0, None)])
        if beta > 0:
            log_rate = (log_k - math.log(beta)) / beta - math.log(xmin)
            rate = math.exp(log_rate) if log_rate < 709 else math.inf
        else:
            rate = math.inf
        return {"lambda": rate, "beta": float(beta)}, _stretched_kb(u, logs, float(log_k), float(beta))
    if name == "truncated_power_law":
        mean = float(np.mean(tail))
        a, rate = _maximise(lambda p: truncated_power_law_loglikelihoods(tail, p[0], p[1], xmin),
                            [[alpha, 0.0], [alpha, 0.1 / mean], [1.0, 1.0 / mean]], [(None, None), (0.0, None)])
        return {"alpha": float(a), "lambda": float(rate)}, truncated_power_law_loglikelihoods(tail, float(a), float(rate), xmin)
    raise ValueError(f"unknown alternative {name!r} (known: {', '.join(ALTERNATIVES)})")


def likelihood_ratio(first: np.ndarray, second: np.ndarray, nested: bool) -> tuple[float, float, float]:
    """(R, normalised R, p) of pointwise log-likelihoods `first` against `second`."""
    from scipy.special import erfc
    from scipy.stats import chi2

    first, second = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    differences = first - second
    n = differences.size
    if float(np.max(np.abs(differences), initial=0.0)) <= COINCIDE * max(1.0, float(np.max(np.abs(first), initial=0.0))):
        return 0.0, 0.0, 1.0  # the same law on this tail, to rounding: R / sqrt(n var) would be noise over noise
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
