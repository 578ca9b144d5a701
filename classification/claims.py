"""The paper's §5.1 claims, checked on a set of runs with seeds, intervals and computed verdicts (``make demo``).

Each claim compares FLSD-53 (or another loss) with cross-entropy at one training-set size. Its statistic is computed
per seed (runs with the same training seed are paired); :func:`focal_calibration.experiments.evidence.claim_result`
gives
mean ± std over seeds, a Student-t 95% interval over seeds and, for test-set metrics, a paired bootstrap 95% interval
over test-set resamples (every run is evaluated on the same 10,000 test images, so each replicate resamples the same
rows for every run), and the verdict: ``holds`` only if both intervals lie inside the claim's region.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from focal_calibration.experiments.evidence import REGIME_NLL_RISE_MIN, REGIME_TRAIN_ERROR_MAX, claim_result

__all__ = ["CLAIMS", "versus_ce_claims", "compute_claims", "claims_markdown", "verdicts_by_size_markdown"]

# (id, text, compared loss, statistic, region, bootstrap metric, scaled by T for the bootstrap)
#   statistic: ("diff", key) = record[key] of the loss minus CE's; ("value", key) = the loss's own record[key]
CLAIMS = (
    ("ece_pre_lower", "FLSD-53 has a lower test ECE than CE before temperature scaling (Table 1)", "flsd-53",
     ("diff", "ece_pre"), {"below": 0.0}, "ece", False),
    ("adaece_pre_lower", "FLSD-53 has a lower test AdaECE than CE before temperature scaling (Table 2)", "flsd-53",
     ("diff", "adaece_pre"), {"below": 0.0}, "adaece", False),
    ("ece_post_lower", "FLSD-53 has a lower test ECE than CE after temperature scaling (Table 1)", "flsd-53",
     ("diff", "ece_post"), {"below": 0.0}, "ece", True),
    ("t_flsd_near_1", "FLSD-53's optimal temperature is near 1 (§5.1: mostly 0.9-1.1)", "flsd-53",
     ("value", "temperature"), {"inside": (0.9, 1.1)}, None, False),
    ("t_ce_above_1", "CE's optimal temperature is above 1 (CE is over-confident)", "ce",
     ("value", "temperature"), {"above": 1.0}, None, False),
    ("error_within_1", "FLSD-53's test error is within 1 point of CE's (Table 4)", "flsd-53",
     ("diff", "error"), {"inside": (-0.01, 0.01)}, "error", False),
    ("nll_misclassified_lower", "FLSD-53's final test NLL on misclassified samples is lower than CE's (Fig. 3c)",
     "flsd-53", ("diff", "nll_misclassified_final"), {"below": 0.0}, None, False),
    ("fl3_ece_pre_lower", "FL-3 has a lower test ECE than CE before temperature scaling (Table 1)", "fl-3",
     ("diff", "ece_pre"), {"below": 0.0}, "ece", False),
)


def versus_ce_claims(loss: str) -> tuple:
    """The same four comparisons for any loss against CE (for losses beyond the paper: AdaFocal, dual focal, ...):
    lower ECE before and after temperature scaling, T near 1, error within 1 point."""
    return (
        (f"{loss}_ece_pre_lower", f"{loss} has a lower test ECE than CE before temperature scaling", loss,
         ("diff", "ece_pre"), {"below": 0.0}, "ece", False),
        (f"{loss}_ece_post_lower", f"{loss} has a lower test ECE than CE after temperature scaling", loss,
         ("diff", "ece_post"), {"below": 0.0}, "ece", True),
        (f"{loss}_t_near_1", f"{loss}'s optimal temperature is near 1 (0.9-1.1)", loss, ("value", "temperature"),
         {"inside": (0.9, 1.1)}, None, False),
        (f"{loss}_error_within_1", f"{loss}'s test error is within 1 point of CE's", loss, ("diff", "error"),
         {"inside": (-0.01, 0.01)}, "error", False),
    )


def _by_seed(records: Sequence[dict], size: int, loss: str) -> dict:
    return {r["seed"]: r for r in records if r["size"] == size and r["loss"] == loss}


def _test_logits(record: dict, scaled: bool) -> tuple[torch.Tensor, torch.Tensor]:
    saved = torch.load(Path(record["run_dir"]) / "logits.pt", weights_only=True)
    logits = saved["test_logits"].double()
    return (logits / record["temperature"] if scaled else logits), saved["test_labels"]


def compute_claims(records: Sequence[dict], size: int, *, bootstrap: Callable | None, n_resamples: int = 1000,
                   claims=CLAIMS) -> dict:
    """The regime of CE at ``size`` and every claim whose two losses were run there with common seeds.

    ``bootstrap(labels, logits=..., n_resamples=..., seed=0) -> {metric: array[R]}`` gives test-set replicates (the
    core's ``bootstrap_samples``); None leaves the test-set interval out (the verdict then rests on the seeds).
    """
    ce = _by_seed(records, size, "ce")
    if not ce:
        raise ValueError(f"no cross-entropy runs at size {size}: the claims compare against CE")
    cache: dict = {}

    def replicates(record, metric, scaled):
        key = (record["run_dir"], scaled)
        if key not in cache:
            logits, labels = _test_logits(record, scaled)
            cache[key] = bootstrap(labels, logits=logits, n_resamples=n_resamples, seed=0)
        return np.asarray(cache[key][metric], dtype=np.float64)

    results = []
    for claim_id, text, loss, (kind, key), region, metric, scaled in claims:
        other = _by_seed(records, size, loss)
        seeds = sorted(set(other) & set(ce)) if kind == "diff" else sorted(other)
        if not seeds:
            continue
        if kind == "diff":
            per_seed = [other[s][key] - ce[s][key] for s in seeds]
        else:
            per_seed = [other[s][key] for s in seeds]
        boot = None
        if metric is not None and bootstrap is not None:
            diffs = [replicates(other[s], metric, scaled) - replicates(ce[s], metric, scaled) for s in seeds]
            boot = np.mean(diffs, axis=0)
        result = claim_result(per_seed, bootstrap=boot, **region)
        results.append({"id": claim_id, "claim": text, "loss": loss, "statistic": f"{kind} {key}",
                        "region": {k: list(v) if isinstance(v, tuple) else v for k, v in region.items()},
                        "seeds": seeds, **result})
    runs = [ce[s] for s in sorted(ce)]
    return {"size": size,
            "regime": {"ce_train_error_per_seed": [r["train_error"] for r in runs],
                       "ce_nll_misclassified_rising_per_seed": [r["nll_misclassified_rising"] for r in runs],
                       "ce_meets_per_seed": [r["regime_criterion_met"] for r in runs],
                       "criterion_held": all(r["regime_criterion_met"] for r in runs),
                       "train_error_max": REGIME_TRAIN_ERROR_MAX, "nll_rise_min": REGIME_NLL_RISE_MIN},
            "claims": results}


# How each statistic is shown: (label, in percentage points?)
_LABELS = {"ece_pre": ("Δ ECE, points", True), "adaece_pre": ("Δ AdaECE, points", True),
           "ece_post": ("Δ post-T ECE, points", True), "error": ("Δ error, points", True),
           "temperature": ("T", False), "nll_misclassified_final": ("Δ NLL", False)}


def _fmt(value, percent: bool) -> str:
    return f"{100 * value:+.2f}" if percent else f"{value:.2f}"


def _interval(interval, percent: bool) -> str:
    if interval is None:
        return "-"
    return f"[{_fmt(interval[0], percent)}, {_fmt(interval[1], percent)}]"


def claims_markdown(main: dict, contrast: dict | None = None) -> str:
    """``claims.md``: one row per claim (mean ± std over seeds, both 95% intervals, verdict), main regime first."""
    lines = ["Δ = the named loss's value minus CE's, per seed (runs with the same seed are paired). Verdicts: "
             "`holds` when both 95% intervals lie inside the claim's region, `does not hold` when both lie outside, "
             "`inconclusive` otherwise.", ""]
    for block, title in ((main, "In the paper's regime"), (contrast, "Contrast")):
        if block is None:
            continue
        regime = block["regime"]
        if block is main and not regime["criterion_held"]:
            title = "The configuration chosen for the paper's regime"  # ... which this run did not reach in every seed
        errors = ", ".join(f"{100 * e:.2f}%" for e in regime["ce_train_error_per_seed"])
        lines += [f"**{title}: {block['size']:,} training images** — CE's final training error per seed {errors}; "
                  f"the §3 criterion (<= {100 * regime['train_error_max']:.1f}% and misclassified test NLL rising) "
                  f"{'held in every seed' if regime['criterion_held'] else 'did NOT hold in every seed'}", "",
                  "| claim | statistic | mean ± std (n) | 95% interval, seeds | 95% interval, test set | verdict |",
                  "|---|---|---|---|---|---|"]
        for c in block["claims"]:
            label, percent = _LABELS.get(c["statistic"].split()[-1], (c["statistic"], False))
            lines.append(f"| {c['claim']} | {label} | {_fmt(c['mean'], percent)} ± "
                         f"{(100 if percent else 1) * c['std']:.2f} (n={c['n']}) | "
                         f"{_interval(c['interval_seeds'], percent)} | {_interval(c['interval_test_set'], percent)} "
                         f"| **{c['verdict']}** |")
        lines.append("")
    return "\n".join(lines)


def verdicts_by_size_markdown(blocks: Sequence[dict]) -> str:
    """The regime study's ``verdicts.md``: one row per claim, one column per training-set size (``compute_claims``
    blocks), each cell the mean over seeds and the computed verdict; the first row says whether CE was in the §3
    regime there, so the verdicts can be read against the regime."""
    sizes = [block["size"] for block in blocks]
    lines = ["Each cell: mean over seeds of the statistic (Δ = loss minus CE, paired by seed) and the verdict from its "
             "95% intervals over seeds and over test-set resamples (as the demo's claims table).", "",
             "| claim | statistic | " + " | ".join(f"{size:,} images" for size in sizes) + " |",
             "|---|---|" + "---|" * len(sizes)]
    regimes = []
    for block in blocks:
        met = sum(block["regime"]["ce_meets_per_seed"])
        regimes.append(f"{'**yes**' if block['regime']['criterion_held'] else 'no'} "
                       f"({met}/{len(block['regime']['ce_meets_per_seed'])} seeds)")
    lines.append("| CE in the §3 regime (every seed) | | " + " | ".join(regimes) + " |")
    rows: dict = {}
    for column, block in enumerate(blocks):
        for c in block["claims"]:
            rows.setdefault((c["id"], c["claim"], c["statistic"]), [None] * len(blocks))[column] = c
    for (_, text, statistic), cells in rows.items():
        label, percent = _LABELS.get(statistic.split()[-1], (statistic, False))
        shown = ["-" if c is None else f"{_fmt(c['mean'], percent)} {c['verdict']}" for c in cells]
        lines.append(f"| {text} | {label} | " + " | ".join(shown) + " |")
    return "\n".join(lines) + "\n"
