"""Scaling law: fit recovery, optimal tokens, table checks, frontier, plots and the CLI."""

import csv
import json
import math
import os
import pathlib
import subprocess
import sys
import warnings

import numpy as np
import pytest

from vlm_jax.scaling import BoundWarning, Law, TableError, fit, pareto_frontier
from vlm_jax.scaling.frontier import inference_flops

REPO = pathlib.Path(__file__).resolve().parents[1]
SIZES = np.array([0.5, 1.8, 4.0, 7.0, 14.0])  # billions, as in the paper
TOKENS = np.array([1, 4, 16, 36, 64, 144, 576])

# (A, alpha, beta, D): paper-like, steeper, and an OCR-like one where tokens matter more.
LAWS = [(0.5, 0.077, 0.015, 0.2), (0.35, 0.2, 0.05, 0.1), (0.6, 0.3, 0.4, 0.05)]


def synthetic(params, noise=0.0, seed=0):
    """Rows (N, V, score) on the SIZES x TOKENS grid from the law, plus Gaussian noise."""
    n, v = (a.ravel() for a in np.meshgrid(SIZES, TOKENS))
    y = Law(*params).predict(n, v) + np.random.default_rng(seed).normal(0, noise, n.size)
    return np.stack([n, v, 1 - y], axis=1)


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.mark.parametrize("params", LAWS)
def test_fit_recovers_exact_law(params):
    law = fit(synthetic(params), n_bootstrap=0)
    got = (law.A, law.alpha, law.beta, law.D)
    np.testing.assert_allclose(got, params, rtol=1e-4, atol=1e-6)
    assert law.loss < 1e-12 and law.n_points == SIZES.size * TOKENS.size
    assert law.on_bound == () and law.intervals == {}


@pytest.mark.parametrize("params,tol", [
    (LAWS[0], dict(alpha=0.02, beta=0.004)),
    (LAWS[1], dict(A=0.03, alpha=0.015, beta=0.005, D=0.02)),
    (LAWS[2], dict(A=0.03, alpha=0.02, beta=0.02, D=0.02)),
])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_recovers_noisy_law(params, tol, seed):
    noise = 0.002
    table = synthetic(params, noise, seed)
    law = fit(table, n_bootstrap=0)
    true = dict(zip(("A", "alpha", "beta", "D"), params))
    for name, t in tol.items():
        assert abs(getattr(law, name) - true[name]) < t, (name, getattr(law, name), true[name])
    # The fitted surface matches the noiseless one to well within the noise level...
    n, v = table[:, 0], table[:, 1]
    assert np.max(np.abs(law.predict(n, v) - Law(*params).predict(n, v))) < 1.5 * noise
    # ... and the loss is the noise variance, not more (the optimiser found the minimum).
    assert law.loss < 1.2 * noise**2


def test_bootstrap_intervals_cover_truth_and_are_reproducible():
    params = LAWS[1]
    table = synthetic(params, 0.002, seed=3)
    law = fit(table, n_bootstrap=60, seed=7)
    for name, true in zip(("A", "alpha", "beta", "D"), params):
        lo, hi = law.intervals[name]
        assert lo <= getattr(law, name) <= hi
        assert lo <= true <= hi, (name, lo, true, hi)
        assert hi - lo < 0.1
    again = fit(table, n_bootstrap=60, seed=7)
    assert again.intervals == law.intervals
    assert fit(table, n_bootstrap=60, seed=8).intervals != law.intervals


def test_fit_flags_parameters_on_bounds():
    table = synthetic((0.4, 0.1, 0.05, 0.0))  # D = 0: the lower bound
    with pytest.warns(BoundWarning, match="D = .* lower bound"):
        law = fit(table, n_bootstrap=0)
    assert law.on_bound == ("D",) and law.D >= 0
    # Paper bounds cap alpha at 0.2: a steeper table pins it there.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        law = fit(synthetic((0.4, 0.5, 0.02, 0.1)), bounds="paper", n_bootstrap=0)
    assert any("alpha = 0.2 is on its upper bound" in str(w.message) for w in caught)
    assert all(w.category is BoundWarning for w in caught)
    assert "alpha" in law.on_bound and law.alpha == pytest.approx(0.2)
    assert law.bounds["alpha"] == (0.0, 0.2)


def test_custom_bounds_and_bad_bounds():
    law = fit(synthetic(LAWS[1]), bounds={"alpha": (0.0, 0.5)}, n_bootstrap=0)
    assert law.bounds["alpha"] == (0.0, 0.5) and law.bounds["D"] == (0.0, 1.0)
    assert law.alpha == pytest.approx(0.2, rel=1e-4)
    with pytest.raises(ValueError, match="unknown bounds 'tight'"):
        fit(synthetic(LAWS[1]), bounds="tight")
    with pytest.raises(ValueError, match="unknown parameter.*gamma"):
        fit(synthetic(LAWS[1]), bounds={"gamma": (0, 1)})
    with pytest.raises(ValueError, match="0 <= lo < hi"):
        fit(synthetic(LAWS[1]), bounds={"beta": (0.3, 0.1)})


def test_single_llm_size_warns_alpha_unidentified():
    rows = [(7.0, v, 1 - (0.3 * v**-0.1 + 0.1)) for v in TOKENS]
    with pytest.warns(BoundWarning, match="same N = 7: alpha is not identified"):
        fit(rows, n_bootstrap=0)


def test_paper_law_optimal_tokens():
    law = Law(A=0.5, alpha=0.077, beta=0.015, D=0.2)
    v50 = law.optimal_tokens(text_tokens=50)
    assert v50 == pytest.approx(0.015 * 50 / (0.077 - 0.015))  # 12.1
    assert 10 < v50 < 16  # "about 14" in the paper (the published exponents are rounded)
    assert law.optimal_tokens(text_tokens=0) == 1.0  # text cached: the smallest V
    assert law.optimal_tokens(0, v_range=(4, 576)) == 4.0
    assert law.optimal_tokens(1e6) == 4096.0  # clipped to v_range
    assert not law.tokens_matter_more


@pytest.mark.parametrize("alpha,beta,q", [(0.077, 0.015, 50), (0.2, 0.05, 10),
                                          (0.3, 0.1, 300), (0.25, 0.05, 20)])
@pytest.mark.parametrize("budget", [1e2, 1e5])
def test_closed_form_matches_numeric_optimum(alpha, beta, q, budget):
    law = Law(0.5, alpha, beta, 0.1)
    closed = law.optimal_tokens(q)
    numeric = law.optimal_tokens_numeric(q, budget)
    assert numeric == pytest.approx(closed, rel=1e-4)
    assert law.optimal_tokens(q, budget=budget) == pytest.approx(closed, rel=1e-4)
    # It is a minimum: moving V either way at the same budget raises the error.
    e = lambda v: law.error_at_budget(q, budget, v)
    assert e(closed) < e(closed * 1.5) and e(closed) < e(closed / 1.5)
    # V* below the range: both clip to its low end.
    assert Law(0.5, 0.5, 0.01, 0.1).optimal_tokens_numeric(7, budget) == pytest.approx(1.0)
    alloc = law.optimal_allocation(q, budget)
    assert 2 * alloc["N"] * (q + alloc["V"]) == pytest.approx(budget)
    assert alloc["error"] == pytest.approx(float(law.predict(alloc["N"], alloc["V"])))


def test_tokens_matter_more_regime():
    law = Law(0.6, 0.05, 0.2, 0.05)  # OCR-like: beta > alpha
    assert law.tokens_matter_more
    with pytest.warns(BoundWarning, match="visual tokens matter"):
        assert law.optimal_tokens(50, v_range=(1, 576)) == 576.0
    assert law.optimal_tokens_numeric(50, 1e4, v_range=(1, 576)) == pytest.approx(576.0)
    assert law.optimal_tokens_numeric(0, 1e4) == pytest.approx(4096.0)
    # alpha > beta with Q = 0: the error rises with V, so both give the smallest V.
    assert Law(0.5, 0.2, 0.05, 0.1).optimal_tokens_numeric(0, 1e4) == pytest.approx(1.0)


def test_law_predict_broadcasts_and_serialises():
    law = fit(synthetic(LAWS[1], 0.001), n_bootstrap=10)
    out = law.predict(np.array([[1.0], [2.0]]), np.array([1, 4, 16]))
    assert out.shape == (2, 3) and isinstance(law.predict(1.0, 4), float)
    assert out[0, 0] == pytest.approx(law.A + law.D)
    d = json.loads(json.dumps(law.to_dict()))
    assert set(d) >= {"A", "alpha", "beta", "D", "loss", "intervals", "on_bound", "n_points"}
    assert d["intervals"]["beta"][0] <= d["beta"] <= d["intervals"]["beta"][1]
    with pytest.raises(ValueError, match="text_tokens"):
        law.optimal_tokens(-1)
    with pytest.raises(ValueError, match="budget"):
        law.optimal_tokens_numeric(10, 0)


def test_table_forms_agree(tmp_path):
    table = synthetic(LAWS[1], 0.001, seed=5)
    dicts = [{"score": s, "N": n, "V": v, "name": f"m{i}"} for i, (n, v, s) in enumerate(table)]
    path = write_csv(tmp_path / "t.csv", ["model", "score", "v", "N"],
                     [[f"m{i}", s, v, n] for i, (n, v, s) in enumerate(table)])
    fits = [fit(t, n_bootstrap=0) for t in (table, table.tolist(), dicts, str(path), path)]
    for f in fits[1:]:
        assert (f.A, f.alpha, f.beta, f.D) == pytest.approx((fits[0].A, fits[0].alpha,
                                                              fits[0].beta, fits[0].D))


@pytest.mark.parametrize("header,rows,match", [
    (["N", "V", "acc"], [[1, 1, 0.5]] * 5, r"missing column\(s\) \['score'\]; found columns "
                                           r"\['N', 'V', 'acc'\]"),
    (["model", "score"], [["a", 0.5]] * 5, r"missing column\(s\) \['N', 'V'\]"),
    (["N", "V", "score"], [[1, 1, 0.5], [2, 1, 0.6], [1, 4, 1.5], [2, 4, 0.7]],
     r"row 2 \(line 4\) has score = 1.5, outside \[0, 1\]"),
    (["N", "V", "score"], [[1, 1, 0.5], [0, 1, 0.6], [1, 4, 0.5], [2, 4, 0.7]],
     r"row 1 \(line 3\) has N = 0; N must be positive"),
    (["N", "V", "score"], [[1, 1, 0.5], [2, 1, 0.6], [1, 4, 0.5], [2, -4, 0.7]],
     r"row 3 \(line 5\) has V = -4; V must be positive"),
    (["N", "V", "score"], [[1, 1, ""], [2, 1, 0.6], [1, 4, 0.5], [2, 4, 0.7]],
     r"row 0 \(line 2\) has a missing / NaN / infinite score"),
    (["N", "V", "score"], [[1, 1, "nan"], [2, 1, 0.6], [1, 4, 0.5], [2, 4, 0.7]],
     r"row 0 \(line 2\) has a missing / NaN"),
    (["N", "V", "score"], [[1, 1, 0.5], [2, 1, 0.6], [1, 4, 0.5]],
     r"3 row\(s\), but fitting the 4-parameter law needs at least 4"),
    (["N", "V", "score"], [[1, 1, 0.5], [2, "x", 0.6], [1, 4, 0.5], [2, 4, 0.7]],
     r"row 1 \(line 3\), column 'V': 'x' is not a number"),
    (["N", "V", "score"], [[1, 1, 0.5], [2, 1]], r"row 1 \(line 3\) has 2 fields"),
])
def test_malformed_csv_rejected(tmp_path, header, rows, match):
    path = write_csv(tmp_path / "bad.csv", header, rows)
    with pytest.raises(TableError, match=match) as e:
        fit(path)
    assert str(path) in str(e.value)


def test_malformed_arrays_rejected(tmp_path):
    with pytest.raises(TableError, match=r"got shape \(4, 2\)"):
        fit(np.ones((4, 2)))
    with pytest.raises(TableError, match="row 2 has score = -0.1"):
        fit([(1, 1, 0.5), (2, 1, 0.6), (1, 4, -0.1), (2, 4, 0.7)])
    with pytest.raises(TableError, match="row 1 is a tuple, expected a mapping"):
        fit([{"N": 1, "V": 1, "score": 0.5}, (1, 2, 3)])
    with pytest.raises(TableError, match="no such file"):
        fit(tmp_path / "absent.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(TableError, match="empty file"):
        fit(tmp_path / "empty.csv")


def test_pareto_frontier_hand_made():
    # Q = 10: cost = 2 N (10 + V). Errors chosen so that a few rows are dominated.
    rows = [
        {"N": 1, "V": 10, "score": 0.50, "name": "a"},   # cost 40,  err 0.50  frontier
        {"N": 1, "V": 30, "score": 0.52, "name": "b"},   # cost 80,  err 0.48  frontier
        {"N": 2, "V": 10, "score": 0.51, "name": "c"},   # cost 80,  err 0.49  same cost, worse
        {"N": 1, "V": 90, "score": 0.53, "name": "d"},   # cost 200, err 0.47  dominated by e
        {"N": 4, "V": 10, "score": 0.60, "name": "e"},   # cost 160, err 0.40  frontier
        {"N": 4, "V": 40, "score": 0.55, "name": "f"},   # cost 400, err 0.45  dominated by e
        {"N": 8, "V": 10, "score": 0.70, "name": "g"},   # cost 320, err 0.30  frontier
    ]
    front = pareto_frontier(rows, text_tokens=10)
    assert [r["name"] for r in front] == ["a", "b", "e", "g"]
    assert [r["flops"] for r in front] == [40, 80, 160, 320]
    assert [r["error"] for r in front] == pytest.approx([0.5, 0.48, 0.4, 0.3])
    # N in billions -> FLOPs; a flops column is used as is; a per-row Q column too.
    front_b = pareto_frontier(rows, text_tokens=10, n_unit=1e9)
    assert [r["flops"] for r in front_b] == pytest.approx([4e10, 8e10, 1.6e11, 3.2e11])
    with_cost = [dict(r, flops=c) for r, c in zip(rows, [5, 1, 2, 3, 4, 6, 7])]
    assert [r["name"] for r in pareto_frontier(with_cost)] == ["b", "d", "e", "g"]
    with_q = [dict(r, Q=0) for r in rows]
    assert pareto_frontier(with_q)[0]["flops"] == 20
    with pytest.raises(TableError, match="pass text_tokens"):
        pareto_frontier(rows)
    assert inference_flops(2, 6, 10) == 64.0


def test_plots_write_pngs(tmp_path):
    from vlm_jax.scaling import plots
    table = synthetic(LAWS[0], 0.002)
    law = fit(table, n_bootstrap=0)
    a = plots.plot_error_vs_flops(table, law, tmp_path / "a" / "err.png", text_tokens=50)
    b = plots.plot_error_vs_flops(table, None, tmp_path / "b.png", text_tokens=50, n_unit=1e9)
    c = plots.plot_optimal_tokens(Law(0.6, 0.05, 0.2, 0.05), tmp_path / "c.png")
    for p in (a, b, c):
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        assert os.path.getsize(p) > 10_000


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "vlm_jax.scaling", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=300)


def test_cli_fit_end_to_end(tmp_path):
    table = synthetic(LAWS[1], 0.001, seed=4)
    path = write_csv(tmp_path / "sweep.csv", ["N", "V", "score", "task"],
                     [[n, v, s, "vqa"] for n, v, s in table])
    plot_dir = tmp_path / "plots"
    r = _cli("fit", path, "--text-tokens", 50, "--budget", 1e4, "--plot-dir", plot_dir,
             "--bootstrap", 20)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["alpha"] == pytest.approx(0.2, abs=0.01)
    assert out["beta"] == pytest.approx(0.05, abs=0.005)
    assert out["n_points"] == len(table) and out["on_bound"] == []
    assert set(out["intervals"]) == {"A", "alpha", "beta", "D"}
    v_star = out["beta"] * 50 / (out["alpha"] - out["beta"])
    assert out["optimal_V"] == pytest.approx(v_star)
    assert out["optimal_V_numeric"] == pytest.approx(v_star, rel=1e-4)
    assert 2 * out["optimal_N"] * (50 + out["optimal_V_numeric"]) == pytest.approx(1e4)
    for p in out["plots"]:
        assert pathlib.Path(p).parent == plot_dir and os.path.getsize(p) > 10_000
    paper = json.loads(_cli("fit", path, "--text-tokens", 0, "--bounds", "paper",
                            "--bootstrap", 0).stdout)
    assert paper["bounds"]["beta"] == [0.0, 0.05] and paper["optimal_V"] == 1.0


def test_cli_rejects_malformed_csv(tmp_path):
    path = write_csv(tmp_path / "bad.csv", ["N", "V", "accuracy"], [[1, 1, 0.5]] * 5)
    r = _cli("fit", path, "--text-tokens", 50)
    assert r.returncode == 2 and r.stdout == ""
    assert "missing column(s) ['score']" in r.stderr and str(path) in r.stderr
    r = _cli("fit", path)  # argparse: --text-tokens is required
    assert r.returncode == 2 and "--text-tokens" in r.stderr


def test_cli_frontier_and_flops(tmp_path):
    path = write_csv(tmp_path / "s.csv", ["N", "V", "score"],
                     [[1, 10, 0.5], [1, 30, 0.52], [4, 10, 0.6], [4, 40, 0.55]])
    out = json.loads(_cli("frontier", path, "--text-tokens", 10).stdout)
    assert [(r["N"], r["V"]) for r in out["frontier"]] == [(1, 10), (1, 30), (4, 10)]
    r = _cli("flops", "llava-tiny", "--text-tokens", 8)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["flops"]["total"] == pytest.approx(math.fsum(
        v for k, v in out["flops"].items() if k != "total"))
    assert out["visual_tokens"] == 16 and out["params"] > 0
