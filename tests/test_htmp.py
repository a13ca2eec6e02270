"""The HTMP law: normalisation, moments, the fast path against mpmath, the CDF, limits, and the fit."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy import integrate

from htmp_cli.fits import htmp as H
from htmp_cli.synthetic import htmp_sample

GRID = [(kappa, gamma) for kappa in (0.3, 1.0, 4.0, 10.0, 40.0) for gamma in (0.25, 0.5, 0.7)]


def _moment(kappa: float, gamma: float, k: int) -> float:
    # In u = ln x the near-zero power law x^(delta-1) becomes a smooth exponential.
    def integrand(u: float) -> float:
        x = math.exp(u)
        return x ** (k + 1) * H.pdf(np.array([x]), kappa, gamma)[0]

    return integrate.quad(integrand, -700, 8, limit=2000, points=[-1, -0.5, 0, 0.5, 1], epsabs=1e-13, epsrel=1e-12)[0]


@pytest.mark.parametrize("kappa, gamma", GRID)
def test_density_integrates_to_one_with_mean_one_and_known_variance(kappa: float, gamma: float) -> None:
    tol = 1e-7
    m0, m1, m2 = (_moment(kappa, gamma, k) for k in (0, 1, 2))
    assert m0 == pytest.approx(1.0, abs=tol)
    assert m1 == pytest.approx(1.0, abs=tol)
    assert m2 - m1**2 == pytest.approx(gamma * (1 + 2 / kappa), rel=1e-5)


@settings(max_examples=60, deadline=None)
@given(kappa=st.floats(0.05, 100.0), gamma=st.floats(0.05, 0.98), q=st.floats(0.0, 1.0))
@example(kappa=4.4, gamma=0.05, q=0.0)  # c + delta = 44 exactly: scipy's hyp1f1 lost digits there
@example(kappa=3.0, gamma=0.1, q=0.2)  # c + delta = 15
def test_fast_path_matches_mpmath(kappa: float, gamma: float, q: float) -> None:
    """Where Kummer's M is used (delta <= DELTA_CONTOUR), at points across the law's support."""
    _, delta, _ = H.shape_parameters(kappa, gamma)
    if delta > H.DELTA_CONTOUR:
        return  # the contour's own tests below
    sd = math.sqrt(gamma * (1 + 2 / kappa))
    x = max(1e-4, 1 + sd * (8 * q - 3))  # from 3 to 5 standard deviations around the mean
    ours = H.logpdf(np.array([x]), kappa, gamma)[0]
    reference = H.logpdf_mpmath(x, kappa, gamma)
    if reference < -600:
        return  # beyond float64's range either way
    integer_delta = abs(delta - round(delta)) < H._INTEGER_DELTA_GAP
    # Relative error of the density (= absolute error of its log) 1e-10 where it exceeds 1e-12;
    # in the far tails 1e-10 relative on the log-density itself.
    tolerance = 1e-10 if reference > math.log(1e-12) else 1e-10 * abs(reference)
    assert abs(ours - reference) < (5e-8 if integer_delta else tolerance), (ours, reference)


@pytest.mark.parametrize("kappa, gamma", [(4.0, 0.5), (10.0, 0.25), (2.5, 1.0), (7.0, 1.0)])
def test_integer_delta_and_square_matrices(kappa: float, gamma: float) -> None:
    """delta integer (poles of Gamma(+-delta)) and gamma = 1 (delta = 0) go through the extrapolated path."""
    x = np.array([0.05, 0.5, 1.0, 2.0, 4.0])
    ours = H.logpdf(x, kappa, gamma)
    reference = np.array([H.logpdf_mpmath(v, kappa, gamma) for v in x])
    np.testing.assert_allclose(ours, reference, atol=5e-8)


@pytest.mark.parametrize("kappa, gamma", [(10.0, 1.0), (20.0, 1.0), (60.0, 1.0), (23.3, 1.0), (12.0, 0.9), (20.0, 0.95),
                                          (60.0, 0.98)])
def test_large_kappa_near_square_at_small_arguments(kappa: float, gamma: float) -> None:
    """Where U needs M(a, b, z) with a an integer >= 5, 0 < b < 1 and -1 < z < 0: c = kappa / 2 an
    integer, delta in (0, 1) (or 0 -+ gap at gamma = 1), x below 1.4 / s. scipy 1.17.1's hyp1f1 is
    wrong there (the log-density was off by up to 8 before the contiguous-relation route); mpmath
    is the reference."""
    _, delta, s = H.shape_parameters(kappa, gamma)
    x = np.geomspace(0.05 / s, 1.4 / s, 12)
    ours = H.logpdf(x, kappa, gamma)
    reference = np.array([H.logpdf_mpmath(float(v), kappa, gamma) for v in x])
    integer_delta = abs(delta - round(delta)) < H._INTEGER_DELTA_GAP
    np.testing.assert_allclose(ours, reference, rtol=0, atol=5e-8 if integer_delta else 1e-10)
    F = H.cdf(x, kappa, gamma)
    assert np.all(np.diff(F) > 0) and np.all((F > 0) & (F < 1))


@pytest.mark.parametrize("kappa, gamma", [(1.0, 0.25), (4.0, 0.5), (10.0, 0.25), (0.3, 0.7), (40.0, 0.5)])
def test_cdf_matches_the_integrated_density(kappa: float, gamma: float) -> None:
    x = np.array([0.2, 0.6, 1.0, 1.4, 2.5, 5.0])
    ours = H.cdf(x, kappa, gamma)

    def integrand(u: float) -> float:
        v = math.exp(u)
        return v * H.pdf(np.array([v]), kappa, gamma)[0]

    expected = np.array([integrate.quad(integrand, -700, math.log(v), limit=2000)[0] for v in x])
    np.testing.assert_allclose(ours, expected, atol=2e-6)
    assert np.all(np.diff(ours) > 0)


def test_large_kappa_approaches_marchenko_pastur() -> None:
    """L1 distance to MP(gamma = 0.25): 0.38, 0.11, 0.03 at kappa 2, 10, 50 (math.md section 5)."""
    gamma = 0.25
    lo, hi = (1 - math.sqrt(gamma)) ** 2, (1 + math.sqrt(gamma)) ** 2

    def mp(x: float) -> float:
        return math.sqrt(max((hi - x) * (x - lo), 0.0)) / (2 * math.pi * gamma * x)

    distances = []
    for kappa in (2.0, 10.0, 50.0):
        def gap(x: float, kappa: float = kappa) -> float:
            return abs(H.pdf(np.array([x]), kappa, gamma)[0] - mp(x))

        distances.append(integrate.quad(gap, 1e-9, 12, points=[lo, 1, hi], limit=2000)[0])
    assert distances == pytest.approx([0.38, 0.11, 0.03], abs=0.01)


def _mpmath_log_u_by_kummer(c: float, d: float, y: float) -> complex:
    """log U(c, 1-d, -y - i0) by the connection formula in mpmath's arbitrary precision (exact, and
    slow beyond delta of a few thousand: 0.1-2 s a point here)."""
    import mpmath as mp

    with mp.workdps(30):
        c, d, y = mp.mpf(c), mp.mpf(d), mp.mpf(y)
        kw = {"maxterms": 10**6, "maxprec": 10**5}
        a = mp.gamma(d) / mp.gamma(c + d) * mp.hyp1f1(c, 1 - d, -y, **kw)
        b = mp.gamma(-d) / mp.gamma(c) * mp.power(y, d) * mp.hyp1f1(c + d, 1 + d, -y, **kw)
        return complex(mp.log(a + b * mp.exp(-1j * mp.pi * d)))


def _mpmath_log_u_by_quadrature(c: float, d: float, y: float) -> complex:
    """The contour integral of htmp_cli.fits.contour by mpmath's adaptive quadrature in 30 digits, on
    its own cuts (the first leg as (a^c / c) int h(a v^(1/c)) dv, the rest cut into 40 and 80 pieces).
    Within 2e-12 of the connection formula at delta 300-2500, and fast at delta 1e5."""
    import mpmath as mp

    from htmp_cli.fits.contour import _path

    p, split, width = (float(v[0]) for v in _path(c, d, np.array([y])))
    with mp.workdps(30):
        cm, ym, s = mp.mpf(c), mp.mpf(y), mp.mpf(c) + mp.mpf(d)

        def f(t):  # type: ignore[no-untyped-def]
            log_t = mp.log(t) if mp.im(t) != 0 or t > 0 else mp.log(-t) - 1j * mp.pi
            return mp.exp(-ym * t + (cm - 1) * log_t - s * mp.log(1 - t))

        total = mp.mpf(0)
        ends = [0.0] + ([split] if split != 0 else []) + [p]
        for a, b in zip(ends[:-1], ends[1:]):
            if a == 0:
                bm = mp.mpf(b)
                log_b_to_c = cm * mp.log(abs(bm)) - (1j * mp.pi * cm if b < 0 else 0)

                def h(v, bm=bm):  # type: ignore[no-untyped-def]
                    tau = bm * v ** (1 / cm)
                    return mp.exp(-ym * tau - s * mp.log(1 - tau))

                cuts = [mp.mpf(0)] + [mp.mpf(2) ** (-k * cm) for k in range(60, -1, -1)]
                total += mp.exp(log_b_to_c) / cm * mp.quad(h, cuts, maxdegree=8)
            else:
                total += mp.quad(f, [mp.mpf(a * (b / a) ** (k / 40)) for k in range(41)], maxdegree=8)
        cuts = [0.0] + [width * k / 4 for k in range(1, 81)] + [mp.inf]
        total += mp.quad(lambda q: f(mp.mpc(p, -q)) * (-1j), cuts, maxdegree=8)
        return complex(mp.log(total) + 1j * mp.pi * cm - mp.loggamma(cm))


def _contour_against(reference, seed: int, count: int, deltas: tuple[float, float]) -> None:  # type: ignore[no-untyped-def]
    """log U by the contour against a reference at random (c, delta) and x across the bulk and tails."""
    from htmp_cli.fits.contour import log_u

    rng = np.random.default_rng(seed)
    for k in range(count):
        d = float(np.exp(rng.uniform(*np.log(deltas))))
        c = float(np.exp(rng.uniform(np.log(0.01), np.log(50.0))))
        s = c + d
        sd = math.sqrt((c + 1) / s)
        x = 1 + sd * rng.uniform(-5, 5) if k % 2 == 0 else float(np.exp(rng.uniform(np.log(1e-4), np.log(20.0))))
        if x <= 0:
            continue
        ours, expected = log_u(c, d, np.array([s * x]))[0], reference(c, d, s * x)
        # |U| to 1e-11 relative in log|U| (where log|U| is large, 1e-11 of it); the phase to 1e-10.
        assert abs(ours.real - expected.real) <= 1e-11 * max(1.0, abs(expected.real)), (c, d, x, ours, expected)
        assert abs(np.angle(np.exp(1j * (ours.imag - expected.imag)))) <= 1e-10, (c, d, x, ours, expected)


@pytest.mark.slow
def test_the_contour_matches_mpmath_where_kummer_m_is_exact_in_mpmath() -> None:
    """delta 250-2500, c 0.01-50 (measured over 360 points: 7e-13 in log|U|, 2e-12 in the phase)."""
    _contour_against(_mpmath_log_u_by_kummer, seed=1, count=12, deltas=(250.0, 2500.0))


@pytest.mark.slow
def test_the_contour_matches_mpmath_quadrature_up_to_delta_1e5() -> None:
    """delta 1e4-1e5, where mpmath's hyp1f1 takes minutes: mpmath's own quadrature of the integral
    (measured over 16 points: 3.3e-11 in log|U| at the worst, tiny x and large c, where that
    quadrature itself is the less exact of the two; 4e-14 in the phase)."""
    _contour_against(_mpmath_log_u_by_quadrature, seed=2, count=8, deltas=(1e4, 1e5))


@pytest.mark.filterwarnings("ignore::scipy.integrate.IntegrationWarning")  # quad's roundoff note at 1e-12
@pytest.mark.parametrize(("kappa", "gamma"), [(2.0, 0.002), (0.5, 0.0005), (10.0, 0.001), (50.0, 0.00025)])
def test_at_large_delta_the_law_integrates_to_one_with_mean_one_and_known_variance(kappa: float, gamma: float) -> None:
    """delta 499 to 99,975 (the contour): measured 1e-10 or better on the mass and mean, 5e-7 on the
    variance (the quadrature's limit on so narrow a law)."""
    sd = math.sqrt(gamma * (1 + 2 / kappa))

    def moment(k: int) -> float:
        return integrate.quad(lambda x: x**k * H.pdf(np.array([x]), kappa, gamma)[0], max(1e-9, 1 - 40 * sd),
                              1 + 60 * sd, points=[1 + sd * j for j in range(-8, 9)], limit=500,
                              epsabs=1e-14, epsrel=1e-12)[0]

    m0, m1, m2 = moment(0), moment(1), moment(2)
    assert m0 == pytest.approx(1.0, abs=1e-8) and m1 == pytest.approx(1.0, abs=1e-8)
    assert m2 - m1**2 == pytest.approx(gamma * (1 + 2 / kappa), rel=1e-5)
    F = H.cdf(np.array([1 - 3 * sd, 1.0, 1 + 3 * sd, 1 + 50 * sd]), kappa, gamma)
    assert np.all(np.diff(F) >= 0) and F[-1] == pytest.approx(1.0, abs=1e-9) and 0.4 < F[1] < 0.6


@pytest.mark.parametrize(("kappa", "gamma"), [(3.0, 640 / 262144), (1.0, 0.001), (20.0, 0.01)])
def test_the_fit_recovers_kappa_where_delta_is_large(kappa: float, gamma: float) -> None:
    """A 262,144 x 640 embedding's aspect ratio among them: there kappa was capped at 1.2 before
    the contour (delta 250); now only KAPPA_MAX bounds it."""
    _, delta, _ = H.shape_parameters(kappa, gamma)
    assert delta > H.DELTA_CONTOUR
    sample = htmp_sample(3000, kappa, gamma, np.random.default_rng(7))
    fit = H.fit_htmp(sample, gamma)
    assert fit.status == "success" and fit.at_bound is None
    assert fit.kappa == pytest.approx(kappa, rel=0.15)
    assert fit.kappa_low < kappa < fit.kappa_high
    assert fit.ks_htmp < fit.ks_mp and fit.ks_htmp < 0.04


@settings(max_examples=100, deadline=None)
@given(kappa=st.floats(1e-3, 100.0), gamma=st.floats(1e-4, 1.0),
       x=st.lists(st.floats(0.0, 1e3), min_size=1, max_size=5))
def test_no_nan_escapes(kappa: float, gamma: float, x: list[float]) -> None:
    _, delta, _ = H.shape_parameters(kappa, gamma)
    if delta > H.DELTA_MAX:
        with pytest.raises(ValueError, match="validated for delta"):
            H.logpdf(np.array(x), kappa, gamma)
        return
    values = H.logpdf(np.array(x), kappa, gamma)
    assert not np.isnan(values).any()
    F = H.cdf(np.array(x), kappa, gamma)
    assert np.all((F >= 0) & (F <= 1))


@pytest.mark.parametrize("gamma", [0.25, 0.5])
@pytest.mark.parametrize("kappa", [1.0, 4.0, 10.0])
def test_fit_recovers_kappa_on_dumitriu_edelman_samples(kappa: float, gamma: float) -> None:
    sample = htmp_sample(2000, kappa, gamma, np.random.default_rng(int(kappa * 10 + gamma * 100)))
    fit = H.fit_htmp(sample * 3.7, gamma)  # any scale: the fit standardises by the mean
    assert fit.status == "success" and fit.at_bound is None
    assert fit.kappa == pytest.approx(kappa, rel=0.15)
    assert fit.scale == pytest.approx(3.7 * sample.mean())
    assert fit.ks_htmp < fit.ks_mp
    assert fit.ks_htmp < 0.03


def test_grid_likelihood_agrees_with_the_pointwise_likelihood() -> None:
    """The fit interpolates the log-density on a grid; the pointwise maximum is the same kappa."""
    from scipy import optimize

    gamma = 0.4
    x = htmp_sample(1500, 3.0, gamma, np.random.default_rng(9))
    x = x / x.mean()
    fit = H.fit_htmp(x, gamma)
    exact = optimize.minimize_scalar(lambda lk: -H.logpdf(x, math.exp(lk), gamma).sum(),
                                     bounds=(math.log(1e-3), math.log(100)), method="bounded",
                                     options={"xatol": 1e-5})
    assert fit.kappa == pytest.approx(math.exp(exact.x), rel=0.01)


def test_inverse_orientation_reports_the_implied_power_law() -> None:
    gamma = 0.5
    sample = 1.0 / htmp_sample(2000, 4.0, gamma, np.random.default_rng(3))  # lambda ~ inverse law
    inverse = H.fit_htmp(sample, gamma, orientation="inverse")
    direct = H.fit_htmp(sample, gamma, orientation="direct")
    assert inverse.kappa == pytest.approx(4.0, rel=0.15)
    assert inverse.tail_exponent == pytest.approx(1 + inverse.delta)
    assert inverse.ks_htmp < direct.ks_htmp


def test_fit_fails_cleanly() -> None:
    assert H.fit_htmp(np.ones(5), 0.5).status == "failed"
    assert H.fit_htmp(np.full(50, 2.0), 0.5).status == "failed"


def test_large_kappa_switches_to_the_matching_mp_law_without_a_jump() -> None:
    x = np.linspace(0.05, 3.0, 300)
    for gamma in (0.3, 0.7, 1.0):
        below = H.cdf(x, H.KAPPA_MAX, gamma)
        above = H.cdf(x, H.KAPPA_MAX * (1 + 1e-9), gamma)
        assert np.max(np.abs(below - above)) < 0.01
        assert not np.isnan(H.logpdf(x, 500.0, gamma)).any()


def test_inverse_law_density_and_cdf_agree() -> None:
    """The inverse law's CDF is the integral of its density (and its upper tail is the power law)."""
    kappa, gamma = 3.0, 0.4
    z = np.array([0.5, 1.0, 2.0, 4.0])

    def integrand(u: float) -> float:
        v = math.exp(u)
        return v * math.exp(H.inverse_logpdf(np.array([v]), kappa, gamma)[0])

    expected = np.array([integrate.quad(integrand, -30, math.log(v), limit=2000)[0] for v in z])
    np.testing.assert_allclose(H.inverse_cdf(z, kappa, gamma), expected, atol=2e-6)
    _, delta, _ = H.shape_parameters(kappa, gamma)
    far = np.array([1e3, 1e4])
    slope = np.diff(H.inverse_logpdf(far, kappa, gamma)) / np.diff(np.log(far))
    assert slope[0] == pytest.approx(-(1 + delta), rel=0.02)


def test_interpolated_cdf_used_by_the_fit_is_close_to_the_exact_one() -> None:
    x = np.sort(htmp_sample(3000, 5.0, 0.3, np.random.default_rng(4)))
    exact = H.cdf(x, 5.0, 0.3)
    fast = H.cdf(x, 5.0, 0.3, exact_points=False)
    assert np.max(np.abs(exact - fast)) < 1e-4


def test_the_monotone_cubic_of_the_fit_cdf_is_scipys_pchip() -> None:
    """The interpolated CDF's monotone cubic (scipy.interpolate is too heavy an import for a fit) is
    PCHIP: checked on flat runs, steps, non-monotone data and steps of a few ulps."""
    from scipy.interpolate import PchipInterpolator

    rng = np.random.default_rng(8)
    for case in range(200):
        xs = np.unique(rng.uniform(0.0, 10.0, rng.integers(3, 40)))
        if xs.size < 3:
            continue
        ys = np.cumsum(rng.choice([0.0, 1.0, 3.0], xs.size) * rng.exponential(1.0, xs.size))
        if case % 3 == 0:
            ys = rng.normal(size=xs.size)
        x = rng.uniform(xs[0], xs[-1], 50)
        np.testing.assert_allclose(H._monotone_cubic(xs, ys, x, right=1.0), PchipInterpolator(xs, ys)(x),
                                   rtol=0, atol=1e-12 * (1 + np.abs(ys).max()))
    # A rise of one subnormal over a long step (delta underflows to 0) and one over a step of an ulp
    # (w / delta overflows): no floating-point warning, and still monotone.
    for xs, ys in ((np.array([0.0, 1e3, 2e3, 3e3]), np.array([0.0, 5e-324, 0.5, 1.0])),
                   (np.array([1.0, 1.0 + 2.2e-16, 2.0, 3.0]), np.array([0.0, 1e-323, 0.5, 1.0]))):
        with np.errstate(all="raise"):
            values = H._monotone_cubic(xs, ys, np.linspace(xs[0], xs[-1] + 1.0, 40), right=1.0)
        assert np.all(np.diff(values) >= 0) and values[-1] == 1.0


def test_the_bounded_minimiser_finds_what_scipys_finds() -> None:
    """The fit's own Brent minimiser (it spares importing scipy.optimize) against scipy's."""
    import math

    from scipy.optimize import minimize_scalar

    from htmp_cli.fits.htmp import minimize_bounded

    rng = np.random.default_rng(0)
    for _ in range(200):
        centre, curvature, xatol = rng.uniform(-3, 3), rng.uniform(0.2, 3), 10 ** rng.uniform(-6, -2)

        def fn(t: float) -> float:
            return curvature * (t - centre) ** 2 + 0.3 * math.sin(3 * t) + abs(t - centre) ** 1.5

        x, fx = minimize_bounded(fn, (-5.0, 5.0), xatol=xatol)
        reference = minimize_scalar(fn, bounds=(-5.0, 5.0), method="bounded", options={"xatol": xatol})
        assert x == pytest.approx(reference.x, abs=xatol) and fx == pytest.approx(reference.fun, abs=1e-9)


@pytest.mark.parametrize(("kappa", "gamma"), [(1.9, 0.3255), (5.5, 0.5)])
def test_the_kappa_interval_covers_the_true_kappa_at_least_90_percent_of_the_time(kappa: float, gamma: float) -> None:
    covered = 0
    for seed in range(50):
        fit = H.fit_htmp(htmp_sample(400, kappa, gamma, np.random.default_rng(seed)), gamma)
        assert fit.kappa_low is not None and fit.kappa_low < fit.kappa < fit.kappa_high
        covered += fit.kappa_low <= kappa <= fit.kappa_high
    assert covered >= 45  # nominal 95%; measured 49 and 50


def test_the_kappa_interval_is_none_where_the_likelihood_is_flat() -> None:
    # A Marchenko-Pastur sample: kappa runs to the top of its range, where the curvature says nothing.
    W = np.random.default_rng(0).standard_normal((2000, 500))
    fit = H.fit_htmp(np.linalg.eigvalsh(W.T @ W), 0.25)
    assert fit.at_bound == "upper" and fit.kappa_low is None and fit.kappa_high is None
