"""The inference scaling law of docs/algorithms.md section 3: fit, predict, optimal visual-token count.

    Y(N, V) = A * N^(-alpha) * V^(-beta) + D,     Y = 1 - score (the error)

`fit(table)` fits all rows in one of two modes. For fixed (alpha, beta) the model is linear in
(A, D), so both start from an exact search: a grid over (alpha, beta) with the box-constrained
least-squares (A, D) solved in closed form at every grid point.
- `mode="lsq"` (default): least squares on Y; `scipy.optimize.least_squares` refines all four
  parameters inside the bounds from the best grid point.
- `mode="huber"`: the robust fit of Chinchilla-style practice (Hoffmann et al. 2022; Besiroglu
  et al. 2024): the Huber loss (delta 1e-3) of log Y_hat - log Y, minimised by bounded L-BFGS
  from the best few grid points (ranked by that loss).
Both report whether the optimiser converged and flag parameters that end on a bound; a
bootstrap over the rows gives 95% percentile intervals (beta / alpha included), and a
leave-one-point-out refit predicts every row from the others (`loo_rms`). Reported parameters
are never rounded.

Units: N as in the table (the paper uses billions of parameters); a FLOPs budget C given to
`optimal_tokens` is in the matching unit, C = 2 N (Q + V).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import scipy.optimize

from vlm_jax.scaling.table import TableError, check_law_table, read_table

PARAMS = ("A", "alpha", "beta", "D")

# "paper": the reference grid of the published fit. "wide" (default): any table with errors in
# [0, 1]; A's upper bound is large so tables with N in raw parameters still fit.
BOUNDS: dict[str, dict[str, tuple[float, float]]] = {
    "wide": {"A": (0.0, 1e6), "alpha": (0.0, 2.0), "beta": (0.0, 2.0), "D": (0.0, 1.0)},
    "paper": {"A": (0.2, 0.7), "alpha": (0.0, 0.2), "beta": (0.0, 0.05), "D": (0.0, 0.3)},
}


class BoundWarning(UserWarning):
    """A fitted parameter sits on a bound, or the table cannot identify a parameter."""


def resolve_bounds(bounds: str | Mapping[str, tuple[float, float]]) -> dict:
    """'wide' | 'paper' | {name: (lo, hi)} (missing names taken from 'wide') -> full dict."""
    if isinstance(bounds, str):
        if bounds not in BOUNDS:
            raise ValueError(f"unknown bounds {bounds!r}; use one of {sorted(BOUNDS)} or a dict "
                             f"{{name: (lo, hi)}} over {list(PARAMS)}")
        return dict(BOUNDS[bounds])
    unknown = set(bounds) - set(PARAMS)
    if unknown:
        raise ValueError(f"bounds name unknown parameter(s) {sorted(unknown)}; known {PARAMS}")
    out = dict(BOUNDS["wide"])
    for name, lohi in bounds.items():
        lo, hi = map(float, lohi)
        if not (0.0 <= lo < hi):
            raise ValueError(f"bounds for {name} must satisfy 0 <= lo < hi, got ({lo}, {hi})")
        out[name] = (lo, hi)
    return out


def _model(x: np.ndarray, log_n: np.ndarray, log_v: np.ndarray) -> np.ndarray:
    a, alpha, beta, d = x
    return a * np.exp(-alpha * log_n - beta * log_v) + d


def _grid_candidates(log_n, log_v, y, bounds, size: int) -> np.ndarray:
    """Every (alpha, beta) grid point with its box-constrained least-squares (A, D).

    Returns `[size * size, 4]` rows (A, alpha, beta, D), (A, D) exact per exponent pair.
    """
    alphas = np.linspace(*bounds["alpha"], size)
    betas = np.linspace(*bounds["beta"], size)
    f = np.exp(-alphas[:, None, None] * log_n - betas[None, :, None] * log_v)  # [a, b, n]
    n = float(y.size)
    sff, sf, sfy = (f * f).sum(-1), f.sum(-1), (f * y).sum(-1)
    sy, syy = y.sum(), (y * y).sum()
    (a_lo, a_hi), (d_lo, d_hi) = bounds["A"], bounds["D"]

    def loss(a, d):  # sum of squared residuals, expanded
        return a * a * sff + 2 * a * d * sf + n * d * d - 2 * a * sfy - 2 * d * sy + syy

    cands = []
    det = sff * n - sf * sf
    with np.errstate(divide="ignore", invalid="ignore"):
        a_in = (n * sfy - sf * sy) / det
        d_in = (sff * sy - sf * sfy) / det
    inside = (det > 1e-12 * sff * n) & (a_in >= a_lo) & (a_in <= a_hi) & (d_in >= d_lo) & (
        d_in <= d_hi)
    a_in, d_in = np.where(inside, a_in, a_lo), np.where(inside, d_in, d_lo)
    cands.append((a_in, d_in))
    for a_fix in (a_lo, a_hi):  # edges of the (A, D) box: 1-D optimum, clipped
        a = np.full_like(sff, a_fix)
        cands.append((a, np.clip((sy - a * sf) / n, d_lo, d_hi)))
    for d_fix in (d_lo, d_hi):
        d = np.full_like(sff, d_fix)
        cands.append((np.clip((sfy - d * sf) / sff, a_lo, a_hi), d))
    losses = np.stack([loss(a, d) for a, d in cands])  # [5, a, b]
    best = np.argmin(losses, axis=0)  # the best (A, D) candidate per exponent pair
    a_best = np.take_along_axis(np.stack([c[0] for c in cands]), best[None], 0)[0]
    d_best = np.take_along_axis(np.stack([c[1] for c in cands]), best[None], 0)[0]
    al, be = np.meshgrid(alphas, betas, indexing="ij")
    return np.stack([a_best, al, be, d_best], axis=-1).reshape(-1, 4)


def _huber_log(x: np.ndarray, log_n, log_v, log_y, delta: float) -> tuple[float, np.ndarray]:
    """Sum of Huber(log Y_hat - log Y) / delta and its gradient in (A, alpha, beta, D)."""
    a, alpha, beta, d = x
    f = np.exp(-alpha * log_n - beta * log_v)
    y_hat = np.maximum(a * f + d, 1e-300)
    r = np.log(y_hat) - log_y
    small = np.abs(r) <= delta
    loss = np.where(small, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta)).sum() / delta
    g = np.clip(r, -delta, delta) / delta / y_hat  # d loss / d y_hat
    grad = np.array([(g * f).sum(), -(g * a * f * log_n).sum(), -(g * a * f * log_v).sum(),
                     g.sum()])
    return float(loss), grad


@dataclasses.dataclass(frozen=True)
class _Solution:
    x: np.ndarray
    loss: float  # the mode's own objective (mean squared residual, or mean Huber / delta)
    converged: bool
    message: str


def _fit_core(n_: np.ndarray, v_: np.ndarray, y: np.ndarray, bounds: dict, grid_size: int,
              mode: str = "lsq", delta: float = 1e-3, starts: int = 5) -> _Solution:
    """Fits (A, alpha, beta, D) in `mode` (see module docstring)."""
    log_n, log_v = np.log(n_), np.log(v_)
    grid = _grid_candidates(log_n, log_v, y, bounds, grid_size)
    lb = np.array([bounds[p][0] for p in PARAMS])
    ub = np.array([bounds[p][1] for p in PARAMS])
    if mode == "huber":
        return _fit_huber(grid, log_n, log_v, np.log(y), lb, ub, delta, starts)
    sse = ((grid[:, 0:1] * np.exp(-grid[:, 1:2] * log_n - grid[:, 2:3] * log_v) + grid[:, 3:4]
            - y) ** 2).sum(1)
    x0 = grid[int(np.argmin(sse))]

    def residuals(x):
        return _model(x, log_n, log_v) - y

    def jac(x):
        f = np.exp(-x[1] * log_n - x[2] * log_v)
        return np.stack([f, -x[0] * f * log_n, -x[0] * f * log_v, np.ones_like(f)], axis=1)

    best, converged, message = x0, False, "grid optimum (the refinement failed)"
    try:
        res = scipy.optimize.least_squares(residuals, np.clip(x0, lb, ub), jac=jac,
                                           bounds=(lb, ub), method="dogbox", x_scale=1.0,
                                           ftol=1e-12, xtol=1e-12, gtol=1e-12, max_nfev=2000)
        converged, message = bool(res.status > 0), str(res.message)
        if np.mean(res.fun**2) <= np.mean(residuals(x0) ** 2):
            best = res.x
    except (ValueError, np.linalg.LinAlgError):  # degenerate table: keep the exact grid optimum
        pass
    return _Solution(best, float(np.mean(residuals(best) ** 2)), converged, message)


def _fit_huber(grid, log_n, log_v, log_y, lb, ub, delta: float, starts: int) -> _Solution:
    """Bounded L-BFGS on the Huber loss of log errors from the `starts` best grid points."""
    r = np.log(np.maximum(grid[:, 0:1] * np.exp(-grid[:, 1:2] * log_n - grid[:, 2:3] * log_v)
                          + grid[:, 3:4], 1e-300)) - log_y
    h = np.where(np.abs(r) <= delta, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta)).sum(1)
    order = np.argsort(h, kind="stable")[:starts]
    best = _Solution(grid[order[0]], float(h[order[0]] / delta / log_y.size), False,
                     "grid optimum (no L-BFGS run improved on it)")
    scale = np.maximum(np.abs(grid[order[0]]), 1e-3)  # L-BFGS sees parameters of order 1
    for i in order:
        fun = lambda z: (lambda lg: (lg[0], lg[1] * scale))(
            _huber_log(z * scale, log_n, log_v, log_y, delta))
        res = scipy.optimize.minimize(fun, np.clip(grid[i], lb, ub) / scale, jac=True,
                                      method="L-BFGS-B", bounds=list(zip(lb / scale, ub / scale)),
                                      options={"maxiter": 2000, "ftol": 1e-15, "gtol": 1e-10})
        loss = float(res.fun) / log_y.size
        if loss < best.loss - 1e-15 or (not best.converged and loss <= best.loss):
            best = _Solution(np.clip(res.x * scale, lb, ub), loss, bool(res.success),
                             str(res.message))
    return best


@dataclasses.dataclass(frozen=True)
class Law:
    """A fitted (or given) law. `predict` returns the error Y = 1 - score."""

    A: float
    alpha: float
    beta: float
    D: float
    loss: float = math.nan  # the mode's objective: mean squared residual / mean Huber / delta
    intervals: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    on_bound: tuple[str, ...] = ()
    n_points: int = 0
    bounds: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    mode: str = "lsq"
    converged: bool = True
    message: str = ""
    rmse: float = math.nan  # root mean squared residual of Y over the fitted rows
    loo_rms: float = math.nan  # RMS of the leave-one-point-out prediction errors of Y
    loo_errors: tuple[float, ...] = ()  # per row: Y predicted without that row - Y
    unidentified: dict[str, str] = dataclasses.field(default_factory=dict)  # param -> why
    ratio_interval: tuple[float, ...] = ()  # 95% bootstrap interval of beta / alpha

    @property
    def ratio(self) -> float:
        """beta / alpha (inf when alpha = 0): above 1, tokens matter more at fixed compute."""
        return self.beta / self.alpha if self.alpha > 0 else math.inf

    @property
    def tokens_matter_more(self) -> bool:
        """beta >= alpha: at fixed FLOPs the error keeps falling with more visual tokens."""
        return self.beta >= self.alpha

    def predict(self, N: Any, V: Any) -> np.ndarray | float:
        """Predicted error for LLM size(s) N and token count(s) V (numpy broadcasting)."""
        y = self.A * np.power(np.asarray(N, float), -self.alpha) * np.power(
            np.asarray(V, float), -self.beta) + self.D
        return float(y) if np.ndim(y) == 0 else y

    def optimal_tokens(self, text_tokens: float, budget: float | None = None,
                       v_range: tuple[float, float] = (1, 4096)) -> float:
        """Compute-optimal V for a query with `text_tokens` (Q) text tokens.

        Closed form `V* = beta Q / (alpha - beta)` (alpha > beta), clipped to `v_range` (so the
        smallest V when Q = 0). When beta >= alpha tokens matter more than parameters: the error
        at fixed FLOPs falls with V, so the largest V of `v_range` is returned (with a warning).
        With a `budget` C the answer comes from `optimal_tokens_numeric` (the same value: V* does
        not depend on C).
        """
        q, (lo, hi) = _check_query(text_tokens, v_range)
        if budget is not None:
            return self.optimal_tokens_numeric(q, budget, v_range)
        if self.tokens_matter_more:
            warnings.warn(f"beta={self.beta:.4g} >= alpha={self.alpha:.4g}: visual tokens matter "
                          "at least as much as parameters; the error at fixed FLOPs does not "
                          f"rise with V, so the largest V of v_range ({hi:g}) is returned",
                          BoundWarning, stacklevel=2)
            return float(hi)
        return float(np.clip(self.beta * q / (self.alpha - self.beta), lo, hi))

    def error_at_budget(self, text_tokens: float, budget: float, V: Any) -> np.ndarray | float:
        """Error with V visual tokens and the largest N the budget allows, N = C / (2 (Q + V))."""
        v = np.asarray(V, float)
        return self.predict(budget / (2.0 * (text_tokens + v)), v)

    def optimal_tokens_numeric(self, text_tokens: float, budget: float,
                               v_range: tuple[float, float] = (1, 4096)) -> float:
        """argmin over V in `v_range` of the error at fixed FLOPs C = `budget` (numeric)."""
        q, (lo, hi) = _check_query(text_tokens, v_range)
        if not budget > 0:
            raise ValueError(f"budget must be a positive FLOPs count, got {budget}")
        g = lambda u: float(self.error_at_budget(q, budget, np.exp(u)))
        u = np.linspace(np.log(lo), np.log(hi), 2001)
        vals = self.error_at_budget(q, budget, np.exp(u))
        i = int(np.argmin(vals))
        best_u, best = u[i], vals[i]
        if 0 < i < u.size - 1:
            r = scipy.optimize.minimize_scalar(g, bounds=(u[i - 1], u[i + 1]), method="bounded",
                                               options={"xatol": 1e-12})
            if r.fun <= best:
                best_u = r.x
        return float(np.exp(best_u))

    def optimal_allocation(self, text_tokens: float, budget: float,
                           v_range: tuple[float, float] = (1, 4096)) -> dict[str, float]:
        """{'V', 'N', 'error'}: the best split of the budget C between LLM size and tokens."""
        v = self.optimal_tokens_numeric(text_tokens, budget, v_range)
        return {"V": v, "N": budget / (2.0 * (text_tokens + v)),
                "error": float(self.error_at_budget(text_tokens, budget, v))}

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (intervals and bounds as [lo, hi] lists)."""
        return {"A": self.A, "alpha": self.alpha, "beta": self.beta, "D": self.D,
                "beta/alpha": _finite_or_none(self.ratio),
                "beta/alpha_interval": [_finite_or_none(r) for r in self.ratio_interval],
                "mode": self.mode, "converged": self.converged,
                "message": self.message, "loss": self.loss, "rmse": self.rmse,
                "loo_rms": self.loo_rms, "loo_errors": list(self.loo_errors),
                "n_points": self.n_points, "on_bound": list(self.on_bound),
                "unidentified": dict(self.unidentified),
                "intervals": {k: [float(a), float(b)] for k, (a, b) in self.intervals.items()},
                "bounds": {k: [float(a), float(b)] for k, (a, b) in self.bounds.items()}}


def _finite_or_none(value: float) -> float | None:
    """JSON has no infinity: beta / alpha with alpha = 0 is written as null."""
    return float(value) if math.isfinite(value) else None


def _check_query(text_tokens: float, v_range) -> tuple[float, tuple[float, float]]:
    lo, hi = map(float, v_range)
    if not 0 < lo <= hi:
        raise ValueError(f"v_range must satisfy 0 < lo <= hi, got {tuple(v_range)}")
    if not text_tokens >= 0:
        raise ValueError(f"text_tokens (Q) must be >= 0, got {text_tokens}")
    return float(text_tokens), (lo, hi)


MODES = ("lsq", "huber")


def fit(table: Any, *, bounds: str | Mapping[str, tuple[float, float]] = "wide",
        mode: str = "lsq", delta: float = 1e-3, n_bootstrap: int = 200, seed: int = 0,
        grid_size: int = 81, leave_one_out: bool = True) -> Law:
    """Fits the law to rows `(N, V, score)` (list, array `[n, 3]`, dicts or CSV path).

    bounds: 'wide' (default), 'paper' (the paper's reference grid, docs/algorithms.md section 3)
    or {name: (lo, hi)}.
    mode: 'lsq' (least squares on Y) or 'huber' (Huber loss, `delta`, on log Y; every error
    must then be positive). n_bootstrap: row resamples for the 95% intervals (0: none).
    leave_one_out: refit without each row and report the RMS of its prediction error.
    Raises `TableError` on a malformed table; warns (`BoundWarning`) when a parameter ends on
    a bound or a table with a single N (or V) cannot identify alpha (or beta).
    """
    if mode not in MODES:
        raise ValueError(f"unknown fit mode {mode!r}; use one of {MODES}")
    if not delta > 0:
        raise ValueError(f"the Huber delta must be positive, got {delta}")
    t = read_table(table)
    check_law_table(t, min_points=len(PARAMS))
    b = resolve_bounds(bounds)
    n_, v_, y = t["N"], t["V"], 1.0 - t["score"]
    if mode == "huber" and np.any(y <= 0):
        i = int(np.flatnonzero(y <= 0)[0])
        raise TableError(f"{t.source}: {t.labels[i]} has score 1 (error 0); the huber mode fits "
                         "log errors, use mode='lsq'")
    unidentified = {}
    for name, col, p in (("N", n_, "alpha"), ("V", v_, "beta")):
        if np.unique(col).size == 1:
            unidentified[p] = (f"every row has the same {name} = {col[0]:g}: {p} is not "
                               "identified by this table (it trades off against A)")
            warnings.warn(unidentified[p], BoundWarning, stacklevel=2)
    core = lambda rows, size: _fit_core(n_[rows], v_[rows], y[rows], b, size, mode, delta)
    sol = core(slice(None), grid_size)
    x = sol.x
    if not sol.converged:
        warnings.warn(f"scaling-law fit ({mode}): the optimiser did not converge ({sol.message})",
                      BoundWarning, stacklevel=2)
    on_bound = []
    for name, val in zip(PARAMS, x):
        lo, hi = b[name]
        tol = 1e-4 * min(hi - lo, 1.0)
        if val - lo <= tol or hi - val <= tol:
            on_bound.append(name)
            side = "lower" if val - lo <= tol else "upper"
            warnings.warn(f"scaling-law fit: {name} = {val:.4g} is on its {side} bound "
                          f"({lo:g}, {hi:g}); the best fit may lie outside the bounds",
                          BoundWarning, stacklevel=2)
    intervals, ratio_interval = {}, ()
    if n_bootstrap > 0:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, len(y), size=(n_bootstrap, len(y)))
        boot = np.stack([core(i, min(grid_size, 41)).x for i in idx])
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(boot[:, 1] > 0, boot[:, 2] / boot[:, 1], np.inf)
        pct = lambda col: tuple(float(q) for q in np.percentile(col, [2.5, 97.5],
                                                                method="inverted_cdf"))
        intervals = {p: pct(col) for p, col in zip(PARAMS, boot.T)}
        ratio_interval = pct(ratio)
    loo = ()
    if leave_one_out and len(y) > len(PARAMS):
        everyone = np.arange(len(y))
        loo = tuple(float(_model(core(everyone != i, min(grid_size, 41)).x, np.log(n_[i]),
                                 np.log(v_[i])) - y[i]) for i in everyone)
    rmse = float(np.sqrt(np.mean((_model(x, np.log(n_), np.log(v_)) - y) ** 2)))
    return Law(*map(float, x), loss=sol.loss, intervals=intervals, on_bound=tuple(on_bound),
               n_points=len(y), bounds=b, mode=mode, converged=sol.converged,
               message=sol.message, rmse=rmse,
               loo_rms=float(np.sqrt(np.mean(np.square(loo)))) if loo else math.nan,
               loo_errors=loo, unidentified=unidentified, ratio_interval=ratio_interval)
