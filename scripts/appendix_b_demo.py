#!/usr/bin/env python
"""Appendix B of Mukhoti et al. (NeurIPS 2020), end to end: focal loss vs cross-entropy on a 2-parameter linear model.

Data (2-D, binary). Four Gaussian clusters centred on the vertices (±2, ±2) of a square of side 4 centred at the
origin. Class 1 owns the two clusters with x1 > 0, (2, 2) and (2, -2); class 0 owns (-2, 2) and (-2, -2); so the
cluster means are separated by the line x1 = 0 through the origin (the model has no bias). Each point is
x = mean_c + A_c z with z ~ N(0, I_2): A_c is a random 2x2 mixing matrix per cluster (standard normal entries drawn
once from the seed, each row rescaled to unit L2 norm), so every coordinate keeps standard deviation sigma = 1 while
the clusters get a random within-cluster correlation (covariance A_c A_c^T). Clusters are picked uniformly, then
exactly 10% of the labels of each split (chosen uniformly without replacement) are flipped. Splits: 4,000 train,
1,000 test, and a separate 1,000-point validation draw from the same distribution (same means and mixing matrices,
fresh noise and label flips), used only to choose the temperature.

Model. f(x) = σ(w1 x1 + w2 x2), written as the 2-class logits [0, w·x]. Cross-entropy (torch's F.cross_entropy) and
focal loss γ = 1 (focal_calibration.focal_loss, reduction="mean") are trained by full-batch gradient
descent in
float64 from the same initial w (drawn from N(0, 0.1^2 I) with the seed), same learning rate, same number of steps.
Every ``--record-every`` steps we record ||w||_2, the logit norm = mean over the training set of |w·x| (the one
non-zero logit, i.e. the logit margin), and the training loss (Fig. 7).

Evaluation on the test set: confidences of the misclassified points (Fig. 8a), decision regions (Fig. 8b,c),
reliability diagrams, and error / NLL / ECE / AdaECE / MCE before and after temperature scaling, with T chosen on the
validation set by ECE over the paper's grid T = 0.1, 0.2, ..., 10. Writes metrics.md (the Markdown table that is
also printed), report.json (every number) and PNG figures into ``--output-dir``, each file atomically.

Usage:  python scripts/appendix_b_demo.py --output-dir results/appendix_b [--steps 3000] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from focal_calibration import plots
from focal_calibration.experiments import cli
from focal_calibration.files import atomic_write, write_json_atomic
from focal_calibration import focal_loss
from focal_calibration.calibration.metrics import calibration_metrics, reliability_bins
from focal_calibration.calibration.temperature import fit_temperature

CLUSTER_MEANS = np.array([[2.0, 2.0], [2.0, -2.0], [-2.0, 2.0], [-2.0, -2.0]])
CLUSTER_LABELS = np.array([1, 1, 0, 0])
LOSS_NAMES = {"ce": "Cross-entropy", "fl": "Focal loss"}
TABLE_KEYS = ("error", "nll", "ece", "adaece", "mce")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output-dir", default="results/appendix_b",
                   help="output folder (figures, metrics.md, report.json)")
    p.add_argument("--steps", type=int, default=3000, help="full-batch gradient-descent steps per loss")
    p.add_argument("--lr", type=float, default=0.02, help="learning rate (both losses)")
    p.add_argument("--record-every", type=int, default=10, help="record ||w|| and the logit norm every k steps")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, the mixing matrices and the initial w")
    p.add_argument("--gamma", type=float, default=1.0, help="focal loss γ (the paper uses 1)")
    p.add_argument("--n-train", type=int, default=4000)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--n-val", type=int, default=1000, help="separate validation draw for temperature scaling")
    p.add_argument("--label-noise", type=float, default=0.1, help="fraction of labels flipped in every split")
    p.add_argument("--n-bins", type=int, default=15, help="bins of ECE / AdaECE / MCE / reliability diagrams")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads while training (the problem is tiny: 1 thread is fastest and does not "
                        "slow down 100x when the cores are shared)")
    p.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    args = p.parse_args(argv)
    if args.steps < 1 or args.record_every < 1 or args.threads < 1:
        p.error("--steps, --record-every and --threads must be >= 1")
    if not 0.0 <= args.label_noise <= 0.5:
        p.error("--label-noise must lie in [0, 0.5]")
    return args


# ----------------------------------------------------------------------------------------------------------------
# Data

def mixing_matrices(rng: np.random.Generator) -> np.ndarray:
    """One 2x2 mixing matrix per cluster, rows of unit norm so each coordinate keeps unit variance."""
    a = rng.standard_normal((len(CLUSTER_MEANS), 2, 2))
    return a / np.linalg.norm(a, axis=2, keepdims=True)


def sample(n: int, mixing: np.ndarray, label_noise: float, rng: np.random.Generator):
    """n points of the 4-cluster distribution; returns (x [n, 2] float64, noisy y [n] int64, cluster [n])."""
    cluster = rng.integers(0, len(CLUSTER_MEANS), size=n)
    z = rng.standard_normal((n, 2))
    x = CLUSTER_MEANS[cluster] + np.einsum("nij,nj->ni", mixing[cluster], z)
    y = CLUSTER_LABELS[cluster].astype(np.int64)
    flip = rng.permutation(n)[: int(round(label_noise * n))]
    y[flip] = 1 - y[flip]
    return x, y, cluster


def make_data(args):
    seeds = np.random.SeedSequence(args.seed).spawn(5)
    mixing = mixing_matrices(np.random.default_rng(seeds[0]))
    splits = {}
    for name, n, ss in (("train", args.n_train, seeds[1]), ("val", args.n_val, seeds[2]),
                        ("test", args.n_test, seeds[3])):
        x, y, cluster = sample(n, mixing, args.label_noise, np.random.default_rng(ss))
        splits[name] = (torch.from_numpy(x), torch.from_numpy(y), cluster)
    w0 = 0.1 * np.random.default_rng(seeds[4]).standard_normal(2)
    return mixing, splits, torch.from_numpy(w0)


# ----------------------------------------------------------------------------------------------------------------
# Model and training

def logits_of(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """2-class logits [0, w·x] of the bias-free logistic model σ(w·x) = softmax([0, w·x])[1]."""
    z = x @ w
    return torch.stack([torch.zeros_like(z), z], dim=1)


def train(x, y, w0, loss_name, *, gamma, lr, steps, record_every):
    """Full-batch gradient descent; returns (final w, history dict of recorded quantities)."""
    if loss_name == "ce":
        def loss_fn(logits):
            return F.cross_entropy(logits, y)
    else:
        def loss_fn(logits):
            return focal_loss(logits, y, gamma=gamma, reduction="mean")

    record_steps = np.unique(np.concatenate([np.arange(0, steps + 1, record_every), [steps]]))
    hist_w = torch.empty((len(record_steps), 2), dtype=w0.dtype)
    hist_loss = torch.empty(len(record_steps), dtype=w0.dtype)
    w = w0.clone().requires_grad_(True)
    slot = 0
    for step in range(steps + 1):
        loss = loss_fn(logits_of(w, x))
        if step == record_steps[slot]:  # record the state *before* the update of this step
            hist_w[slot] = w.detach()
            hist_loss[slot] = loss.detach()
            slot += 1
        if step == steps:
            break
        (grad,) = torch.autograd.grad(loss, w)
        with torch.no_grad():
            w -= lr * grad
    w = w.detach()
    weight_norm = hist_w.norm(dim=1)
    logit_norm = (x @ hist_w.T).abs().mean(dim=0)  # mean over the training set of |w·x| at every recorded step
    history = {"step": record_steps.tolist(), "w": hist_w.tolist(), "weight_norm": weight_norm.tolist(),
               "logit_norm": logit_norm.tolist(), "train_loss": hist_loss.tolist()}
    return w, history


# ----------------------------------------------------------------------------------------------------------------
# Evaluation

def _clean(d: dict) -> dict:
    return {k: (None if v is None else (int(v) if isinstance(v, (int, np.integer)) else float(v)))
            for k, v in d.items()}


def evaluate(w, splits, args):
    x_val, y_val, _ = splits["val"]
    x_te, y_te, _ = splits["test"]
    test_logits = logits_of(w, x_te)
    fit = fit_temperature(logits_of(w, x_val), y_val, objective="ece", n_bins=args.n_bins)
    pre = _clean(calibration_metrics(y_te, logits=test_logits, n_bins=args.n_bins))
    post = _clean(calibration_metrics(y_te, logits=fit.scale(test_logits), n_bins=args.n_bins))
    probs = torch.softmax(test_logits, dim=1)
    conf, pred = probs.max(dim=1)
    wrong = pred != y_te
    mis_conf = conf[wrong].numpy()
    bins = reliability_bins(y_te, logits=test_logits, n_bins=args.n_bins)
    return {
        "fit": fit,
        "bins": bins,
        "misclassified_confidence": mis_conf,
        "summary": {
            "w": w.tolist(),
            "weight_norm": float(w.norm()),
            "test_logit_norm": float((x_te @ w).abs().mean()),
            "temperature": float(fit.temperature),
            "pre_temperature": pre,
            "post_temperature": post,
            "misclassified": {
                "count": int(wrong.sum()),
                "mean_confidence": float(mis_conf.mean()) if mis_conf.size else None,
                "median_confidence": float(np.median(mis_conf)) if mis_conf.size else None,
                "fraction_above_0.9": float((mis_conf > 0.9).mean()) if mis_conf.size else None,
            },
            "correct_mean_confidence": float(conf[~wrong].mean()) if bool((~wrong).any()) else None,
            "reliability_test": {"edges": np.asarray(bins.edges).tolist(), "counts": np.asarray(bins.counts).tolist(),
                                 "confidence": _nan_to_none(bins.confidence), "accuracy": _nan_to_none(bins.accuracy)},
            "temperature_curve_val": {"temperatures": np.asarray(fit.temperatures).tolist(),
                                      "ece": np.asarray(fit.ece).tolist(), "adaece": np.asarray(fit.adaece).tolist(),
                                      "nll": np.asarray(fit.nll).tolist()},
        },
    }


def _nan_to_none(a):
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(a, dtype=np.float64)]


def markdown_tables(results: dict, args) -> str:
    lines = [
        f"Appendix B linear model, test set (n = {args.n_test}); temperature chosen by ECE on a separate validation "
        f"draw (n = {args.n_val}) over T = 0.1, 0.2, ..., 10. Error, ECE, AdaECE, MCE in %; {args.n_bins} bins.",
        "",
        "| Loss | T | Error (%) | NLL | ECE (%) | AdaECE (%) | MCE (%) |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, r in results.items():
        s = r["summary"]
        for stage, t in (("pre_temperature", 1.0), ("post_temperature", s["temperature"])):
            m = s[stage]
            label = LOSS_NAMES[key] + (f" (γ = {args.gamma:g})" if key == "fl" else "")
            label += ", pre-T" if stage == "pre_temperature" else ", post-T"
            lines.append(f"| {label} | {t:.1f} | {100 * m['error']:.2f} | {m['nll']:.4f} | {100 * m['ece']:.2f} | "
                         f"{100 * m['adaece']:.2f} | {100 * m['mce']:.2f} |")
    lines += [
        "",
        "| Loss | w | ‖w‖ | mean abs(w·x), train | misclassified (test) | mean conf. misclassified | "
        "misclassified with conf. > 0.9 | mean conf. correct |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, r in results.items():
        s = r["summary"]
        mis = s["misclassified"]
        mean_mis = "n/a" if mis["mean_confidence"] is None else f"{mis['mean_confidence']:.4f}"
        frac = "n/a" if mis["fraction_above_0.9"] is None else f"{100 * mis['fraction_above_0.9']:.1f}%"
        corr = "n/a" if s["correct_mean_confidence"] is None else f"{s['correct_mean_confidence']:.4f}"
        lines.append(f"| {LOSS_NAMES[key]} | ({s['w'][0]:.4f}, {s['w'][1]:.4f}) | {s['weight_norm']:.4f} | "
                     f"{r['history']['logit_norm'][-1]:.4f} | {mis['count']} | {mean_mis} | {frac} | {corr} |")
    return "\n".join(lines) + "\n"


def make_figures(out, results, splits, args) -> list:
    figures = []

    def save(fig, name):
        plots.save_figure(fig, os.path.join(out, name))  # atomic, as every file a run writes
        figures.append(name)

    steps = results["ce"]["history"]["step"]
    save(plots.line_curves(steps, [
        ("(a) Norm of logits", "mean |w·x| over the training set",
         {LOSS_NAMES[k]: r["history"]["logit_norm"] for k, r in results.items()}),
        ("(b) Norm of weights", "‖w‖₂", {LOSS_NAMES[k]: r["history"]["weight_norm"] for k, r in results.items()}),
    ], xlabel="gradient-descent step"), "fig7_norms.png")
    save(plots.confidence_histogram(
        {LOSS_NAMES[k]: r["misclassified_confidence"] for k, r in results.items()}, bins=10, range=(0.5, 1.0),
        title="(a) Confidence of misclassified test points", xlabel="confidence (max probability)"),
        "fig8a_misclassified_confidence.png")
    x_te, y_te, _ = splits["test"]
    save(plots.linear_decision_regions(x_te.numpy(), y_te.numpy(),
                                       {LOSS_NAMES[k]: r["summary"]["w"] for k, r in results.items()}),
         "fig8bc_decision_regions.png")
    for k, r in results.items():
        save(plots.reliability_diagram(r["bins"], title=f"{LOSS_NAMES[k]}, test set (before temperature scaling)"),
             f"reliability_{k}.png")
        save(plots.temperature_curves(r["fit"], title=f"{LOSS_NAMES[k]}: temperature scaling on the validation set"),
             f"temperature_{k}.png")
    save(plots.g_curves(), "fig4a_g.png")
    save(plots.optimal_confidence_curves(), "fig6_optimal_confidence.png")
    return figures


# ----------------------------------------------------------------------------------------------------------------

def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(previous_threads)


def _run(args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    os.makedirs(args.output_dir, exist_ok=True)
    mixing, splits, w0 = make_data(args)
    x_tr, y_tr, _ = splits["train"]

    results = {}
    for key in ("ce", "fl"):
        w, history = train(x_tr, y_tr, w0, key, gamma=args.gamma, lr=args.lr, steps=args.steps,
                           record_every=args.record_every)
        results[key] = {"history": history, **evaluate(w, splits, args)}
    train_time = time.perf_counter() - t0

    w_ce = np.asarray(results["ce"]["summary"]["w"])
    w_fl = np.asarray(results["fl"]["summary"]["w"])
    x_te = splits["test"][0].numpy()
    comparison = {
        "cosine_w_ce_w_fl": float(w_ce @ w_fl / (np.linalg.norm(w_ce) * np.linalg.norm(w_fl))),
        "test_prediction_agreement": float(np.mean((x_te @ w_ce > 0) == (x_te @ w_fl > 0))),
        "weight_norm_ratio_ce_over_fl": float(np.linalg.norm(w_ce) / np.linalg.norm(w_fl)),
        "ce_weight_norm_larger": bool(np.linalg.norm(w_ce) > np.linalg.norm(w_fl)),
    }
    mis_ce = results["ce"]["summary"]["misclassified"]["mean_confidence"]
    mis_fl = results["fl"]["summary"]["misclassified"]["mean_confidence"]
    comparison["ce_misclassified_more_confident"] = (None if mis_ce is None or mis_fl is None
                                                     else bool(mis_ce > mis_fl))

    table = markdown_tables(results, args)
    print(table)
    print(f"cos(w_CE, w_FL) = {comparison['cosine_w_ce_w_fl']:.5f}; test predictions agree on "
          f"{100 * comparison['test_prediction_agreement']:.1f}%; ||w_CE|| / ||w_FL|| = "
          f"{comparison['weight_norm_ratio_ce_over_fl']:.3f}")
    atomic_write(os.path.join(args.output_dir, "metrics.md"), lambda handle: handle.write(table), binary=False)

    figures = [] if args.no_figures else make_figures(args.output_dir, results, splits, args)
    elapsed = time.perf_counter() - t0

    report = {
        "config": {k: v for k, v in vars(args).items()},
        "data": {
            "cluster_means": CLUSTER_MEANS.tolist(),
            "cluster_labels": CLUSTER_LABELS.tolist(),
            "separating_line": "x1 = 0 (class 1 has the clusters with x1 > 0)",
            "mixing_matrices": mixing.tolist(),
            "cluster_covariances": np.einsum("cij,ckj->cik", mixing, mixing).tolist(),
            "sizes": {k: int(v[0].shape[0]) for k, v in splits.items()},
            "label_noise": args.label_noise,
            "initial_w": w0.tolist(),
        },
        "losses": {"ce": "torch.nn.functional.cross_entropy",
                   "fl": f"focal_calibration.focal_loss(gamma={args.gamma:g}, reduction='mean')"},
        "results": {k: {"history": r["history"], **r["summary"]} for k, r in results.items()},
        "comparison": comparison,
        "figures": figures,
        "seconds": {"train_and_evaluate": train_time, "total": elapsed},
    }
    # report.json, not results.json: that name belongs to run records (make_run_record) that results_table reads
    write_json_atomic(os.path.join(args.output_dir, "report.json"), report)
    print(f"wrote {args.output_dir}/metrics.md, report.json" + (", " + ", ".join(figures) if figures else "")
          + f" in {elapsed:.1f} s")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
