"""The robust fit, convergence, leave-one-out, the beta/alpha verdict, family statistics and
the sweep report (fit.json, results.csv) on tables with known answers."""

import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from test_scaling import LAWS, REPO, SIZES, TOKENS, synthetic, write_csv

from vlm_jax.eval.families import family_stats, question_type
from vlm_jax.scaling import BoundWarning, Law, TableError, fit, report


@pytest.mark.parametrize("params", LAWS)
def test_huber_recovers_exact_law_and_converges(params):
    law = fit(synthetic(params), mode="huber", n_bootstrap=0)
    np.testing.assert_allclose((law.A, law.alpha, law.beta, law.D), params, rtol=2e-3,
                               atol=1e-5)
    assert law.mode == "huber" and law.converged and law.on_bound == ()
    assert law.rmse < 1e-5


@pytest.mark.parametrize("seed", [0, 1])
def test_huber_resists_an_outlier_that_pulls_least_squares(seed):
    params = LAWS[1]
    table = synthetic(params, 0.0005, seed)
    table[3, 2] -= 0.15  # one corrupted point (its error is 0.15 too high)
    true = dict(zip(("A", "alpha", "beta", "D"), params))
    lsq, hub = (fit(table, mode=m, n_bootstrap=0) for m in ("lsq", "huber"))
    err = lambda law: max(abs(law.alpha - true["alpha"]), abs(law.beta - true["beta"]))
    assert err(hub) < 0.01 < err(lsq), (err(hub), err(lsq))


def test_leave_one_out_finds_the_corrupted_point():
    table = synthetic(LAWS[0], 0.001, seed=4)
    clean = fit(table, n_bootstrap=0)
    assert len(clean.loo_errors) == len(table) and clean.loo_rms < 0.003
    table[10, 2] += 0.05
    bad = fit(table, n_bootstrap=0)
    assert int(np.argmax(np.abs(bad.loo_errors))) == 10
    assert bad.loo_errors[10] == pytest.approx(0.05, abs=0.01)  # predicted error - measured
    assert bad.loo_rms > 2 * clean.loo_rms
    assert fit(table, n_bootstrap=0, leave_one_out=False).loo_errors == ()


def test_ratio_interval_and_verdict_match_the_truth():
    reasoning = fit(synthetic(LAWS[1], 0.002, seed=1), n_bootstrap=60)
    lo, hi = reasoning.ratio_interval
    assert lo <= 0.25 <= hi and hi < 1  # truth beta / alpha = 0.05 / 0.2
    v = report.verdict(reasoning, "reasoning")
    assert v["matters_more"] == "parameters" and v["matches_paper"] is True
    assert "matches the paper" in v["line"] and "beta/alpha = 0.2" in v["line"]
    assert report.verdict(reasoning, "ocr")["matches_paper"] is False
    assert report.verdict(reasoning, "count")["matches_paper"] is None
    ocr = fit(synthetic(LAWS[2], 0.002, seed=1), n_bootstrap=60)  # beta / alpha = 1.33
    assert ocr.ratio_interval[0] > 1
    assert report.verdict(ocr, "ocr")["matters_more"] == "tokens"
    # Equal exponents and noise: the interval holds 1, so nothing is claimed.
    even = fit(synthetic((0.5, 0.1, 0.1, 0.1), 0.01, seed=2), n_bootstrap=60)
    assert even.ratio_interval[0] < 1 < even.ratio_interval[1]
    tie = report.verdict(even, "reasoning")
    assert tie["matters_more"] == "undetermined" and tie["matches_paper"] is None
    assert report.verdict(fit(synthetic(LAWS[1]), n_bootstrap=0))["matters_more"] == \
        "undetermined"  # no interval, no claim


def test_fit_mode_errors():
    with pytest.raises(ValueError, match="unknown fit mode 'l1'"):
        fit(synthetic(LAWS[0]), mode="l1")
    rows = [(1, 1, 0.5), (2, 1, 0.6), (1, 4, 1.0), (2, 4, 0.7), (3, 3, 0.7)]
    with pytest.raises(TableError, match=r"row 2 has score 1 \(error 0\)"):
        fit(rows, mode="huber")


def test_single_v_table_names_beta_in_json_and_stderr(tmp_path):
    rows = [(n, 16, 1 - (0.3 * n**-0.2 + 0.1)) for n in SIZES]
    with pytest.warns(BoundWarning, match="same V = 16: beta is not identified"):
        law = fit(rows, n_bootstrap=0)
    assert set(law.unidentified) == {"beta"}
    assert report.verdict(law, "reasoning")["matters_more"] == "undetermined"
    path = write_csv(tmp_path / "v16.csv", ["N", "V", "score"], rows)
    r = subprocess.run([sys.executable, "-m", "vlm_jax.scaling", "fit", path, "--text-tokens",
                        "0", "--bootstrap", "0", "--mode", "huber"], capture_output=True,
                       text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert "beta" in out["unidentified"] and "alpha" not in out["unidentified"]
    assert "warning: every row has the same V = 16: beta is not identified" in r.stderr
    assert out["mode"] == "huber" and out["verdict"]["matters_more"] == "undetermined"


def _records(task, family, scores, questions, answers):
    return [{"task": task, "family": family, "score": s, "question": q, "answer": a}
            for s, q, a in zip(scores, questions, answers)]


def test_family_stats_score_stderr_and_blind():
    # attribute: "what color is the X?" is one type; answers red x3, blue x1: blind 0.75.
    attr = _records("attribute", "reasoning", [1, 1, 0, 1],
                    ["what color is the circle?", "what color is the square?",
                     "what color is the circle?", "what color is the star?"],
                    ["red", "red", "blue", "red"])
    exist = _records("exist", "reasoning", [1, 0, 1, 1, 0, 1],
                     ["is there a red circle?"] * 6, ["yes", "no", "yes", "no", "yes", "no"])
    ocr = _records("ocr", "ocr", [0, 1], ["what is written?"] * 2, ["AB", "C1"])
    out = family_stats(attr + exist + ocr, {"attribute": "exact_match", "exist": "yes_no",
                                            "ocr": "exact_match"})
    assert out["score_reasoning"] == pytest.approx((0.75 + 4 / 6) / 2)
    var = np.var([1, 1, 0, 1], ddof=1) / 4 + np.var([1, 0, 1, 1, 0, 1], ddof=1) / 6
    assert out["stderr_reasoning"] == pytest.approx(math.sqrt(var) / 2)
    assert out["blind_reasoning"] == pytest.approx((0.75 + 0.5) / 2)
    assert out["blind_ocr"] == 0.5 and out["n_reasoning"] == 10 and out["n_ocr"] == 2
    words = {"red", "circle", "square", "star"}
    assert question_type("What color is the square?", words) == "what color is the _"
    assert question_type("are there more circles than stars?", words) == "are there more _ than _"
    with pytest.raises(ValueError, match=r"record 0 lacks \['question'\]"):
        family_stats([{"task": "t", "family": "f", "score": 1, "answer": "a"}], {})


def test_report_writes_table_fit_and_plots(tmp_path):
    truth = {"reasoning": LAWS[1], "ocr": LAWS[2]}
    n, v = (a.ravel() for a in np.meshgrid(SIZES[:3], TOKENS[:4]))
    rng = np.random.default_rng(0)
    rows = []
    for i, (ni, vi) in enumerate(zip(n, v)):
        r = {"name": f"p{i}", "llm": "x", "N": float(ni), "V": float(vi), "compressor": "quecc",
             "text_tokens": 5.0, "score": 0.5, "ttft_ms": 1.0, "decode_ms_per_token": 1.0,
             "prefill_gflops": 0.1, "train_loss": 1.0}
        for fam, p in truth.items():
            r[f"score_{fam}"] = float(1 - Law(*p).predict(ni, vi) + rng.normal(0, 0.002))
            r[f"stderr_{fam}"], r[f"blind_{fam}"], r[f"n_{fam}"] = 0.002, 0.1, 1000
        rows.append(r)
    summary = report.tabulate_and_fit(str(tmp_path), rows, ["reasoning", "ocr"], 0.0,
                                      n_bootstrap=40)
    with open(tmp_path / "results.csv") as f:
        got = list(csv.DictReader(f))
    assert len(got) == len(rows)
    assert {"score_ocr", "stderr_ocr", "blind_ocr", "score_reasoning"} <= set(got[0])
    fits = json.loads((tmp_path / "fit.json").read_text())
    for fam in truth:
        f = fits[fam]
        assert set(f["intervals"]) == {"A", "alpha", "beta", "D"}
        assert f["converged"] and f["robust"]["mode"] == "huber"
        assert len(f["loo_errors"]) == len(rows) and f["loo_rms"] < 0.01
        assert (tmp_path / "plots" / f"{fam}_error_vs_flops.png").stat().st_size > 10_000
    assert fits["reasoning"]["verdict"]["matters_more"] == "parameters"
    assert fits["ocr"]["verdict"]["matters_more"] == "tokens"
    text = report.format_summary(summary)
    assert "reasoning: parameters matter more" in text and "ocr: visual tokens matter" in text


def test_single_n_table_names_alpha_in_json_and_stderr(tmp_path):
    rows = [(4e6, v, 1 - (0.3 * 4**-0.2 * v**-0.1 + 0.1)) for v in (1, 4, 16, 64, 144)]
    path = write_csv(tmp_path / "n4m.csv", ["N", "V", "score"], rows)
    r = subprocess.run([sys.executable, "-m", "vlm_jax.scaling", "fit", path, "--text-tokens",
                        "10", "--bootstrap", "0"], capture_output=True, text=True, cwd=REPO,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert "alpha" in out["unidentified"] and "beta" not in out["unidentified"]
    assert "warning: every row has the same N = 4e+06: alpha is not identified" in r.stderr
