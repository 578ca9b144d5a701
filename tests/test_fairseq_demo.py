"""fairseq_focal/demo.py (``make demo-nmt``)'s pure parts on hand-made inputs: fairseq's JSON log -> epoch records,
the training-pair subset, the §3 regime criterion, the refusal of a run folder that holds another run, and the claims
(Student-t intervals and verdicts computed by hand); and scripts/nmt_demo.py's command line. Its job scheduling is
the grid runner's (tests/test_runner.py)."""

import json
import math

import pytest

from fairseq_focal import demo as nmt_demo

LOG = """\
2026-11-30 08:21:43 | INFO | fairseq_cli.train | begin validation on "valid" subset
2026-11-30 08:21:50 | INFO | valid | {"epoch": 1, "valid_loss": "9.5", "valid_nll_loss": "9.5", "valid_error": "90", \
"valid_nll_incorrect": "10", "valid_nll_correct": "2", "valid_ece": "1.5", "valid_num_updates": "10"}
2026-11-30 08:21:55 | INFO | train_eval | {"epoch": 1, "train_eval_loss": "9", "train_eval_nll_loss": "9", \
"train_eval_error": "80", "train_eval_nll_incorrect": "9.5", "train_eval_num_updates": "10"}
2026-11-30 08:21:56 | INFO | train_inner | {"epoch": 1, "update": 0.5, "loss": "11"}
2026-11-30 08:21:57 | INFO | train | {"epoch": 1, "train_loss": "10.5", "train_lr": "0.001", "train_num_updates": "10"}
2026-11-30 08:22:57 | INFO | train | {"epoch": 2, "train_loss": "8", "train_lr": "0.001", "train_num_updates": "20"}
2026-11-30 08:23:50 | INFO | valid | {"epoch": 3, "valid_loss": "7", "valid_nll_loss": "7", "valid_error": "80", \
"valid_nll_incorrect": "9", "valid_nll_correct": "1", "valid_ece": "3", "valid_num_updates": "30"}
2026-11-30 08:23:55 | INFO | train_eval | {"epoch": 3, "train_eval_loss": "1", "train_eval_nll_loss": "1", \
"train_eval_error": "10", "train_eval_nll_incorrect": "4", "train_eval_num_updates": "30"}
2026-11-30 08:23:57 | INFO | train | {"epoch": 3, "train_loss": "2", "train_lr": "0.001", "train_num_updates": "30"}
2026-11-30 09:00:00 | INFO | train | {"epoch": 3, "train_loss": "2.5", "train_lr": "0.001", "train_num_updates": "30"}
"""


@pytest.mark.parametrize("bare", [False, True])  # the console's lines, or --log-file's bare JSON
def test_fairseq_log_to_epoch_records(bare):
    text = "\n".join(line[line.index("{"):] if bare and "{" in line else line for line in LOG.splitlines())
    records = nmt_demo.parse_fairseq_log(text)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    first, second, third = records
    assert first == {"epoch": 1, "train_loss": 10.5, "num_updates": 10, "valid_error": 0.9, "valid_nll": 9.5,
                     "valid_nll_incorrect": 10.0, "valid_nll_correct": 2.0, "valid_ece": 0.015,
                     "train_error": 0.8, "train_nll": 9.0, "train_nll_incorrect": 9.5}
    assert second == {"epoch": 2, "train_loss": 8.0, "num_updates": 20}  # no validation in epoch 2
    assert third["train_loss"] == 2.5  # a resumed run's later line wins
    assert third["train_error"] == pytest.approx(0.1) and third["valid_nll_incorrect"] == 9.0


def test_training_pairs_depend_on_the_split_seed_only():
    sources = [f"s{i}" for i in range(50)]
    targets = [f"t{i}" for i in range(50)]
    a = nmt_demo.first_pairs(sources, targets, 10, seed=1)
    assert a == sorted(a) and len(set(a)) == 10
    assert a == nmt_demo.first_pairs(sources, targets, 10, seed=1)
    assert a != nmt_demo.first_pairs(sources, targets, 10, seed=2)
    assert set(a) < set(nmt_demo.first_pairs(sources, targets, 20, seed=1))  # larger subsets contain smaller ones
    # the order follows the pairs, not the file: shuffling the file picks the same pairs
    order = list(reversed(range(50)))
    b = nmt_demo.first_pairs([sources[i] for i in order], [targets[i] for i in order], 10, seed=1)
    assert sorted(sources[order[i]] for i in b) == sorted(sources[i] for i in a)
    assert nmt_demo.first_pairs(sources, targets, None, seed=1) == list(range(50))
    with pytest.raises(ValueError, match=r"train_pairs must lie in \[1, 50\], got 51"):
        nmt_demo.first_pairs(sources, targets, 51, seed=1)


def _records(train_errors, nll_incorrect, train_nll=0.1, valid_nll=5.0):
    return [{"epoch": 5 * (i + 1), "train_error": e, "valid_nll_incorrect": n, "train_nll": train_nll,
             "valid_nll": valid_nll} for i, (e, n) in enumerate(zip(train_errors, nll_incorrect))]


@pytest.mark.parametrize("train_errors, nll, train_nll, meets, why", [
    ([0.5, 0.1, 0.009], [9.0, 8.0, 8.5], 0.1, True, None),  # 8.5 / 8 - 1 = 6.25% >= 5%
    ([0.5, 0.1, 0.011], [9.0, 8.0, 8.5], 0.1, False, "near_zero_train_error"),  # 1.1% > 1%
    ([0.5, 0.1, 0.009], [9.0, 8.0, 8.3], 0.1, False, "nll_misclassified_rising"),  # 3.75% < 5%
    ([0.5, 0.1, 0.009], [9.0, 8.0, 8.5], 0.6, False, "nll_far_below"),  # 5 / 0.6 = 8.3 < 10
])
def test_regime_criterion_on_hand_made_logs(train_errors, nll, train_nll, meets, why):
    check = nmt_demo.regime_of(_records(train_errors, nll, train_nll) + [{"epoch": 16, "train_loss": 1.0}])
    assert check["meets"] is meets and check["final_epoch"] == 15
    assert check["nll_ratio"] == pytest.approx(5.0 / train_nll)
    assert check["nll_misclassified_rise"] == pytest.approx(nll[-1] / min(nll) - 1)
    if why is not None:
        assert check[why] is False


def test_regime_needs_evaluated_epochs():
    with pytest.raises(ValueError, match="no evaluated epochs"):
        nmt_demo.regime_of([{"epoch": 1, "train_loss": 3.0}])


def test_a_run_folder_holding_another_run_is_refused(tmp_path):
    definition = nmt_demo.run_definition("regime", nmt_demo.CONFIGS["regime"], "ce", 1, 1)
    nmt_demo.check_run_folder(tmp_path, definition)  # empty folder: a fresh run
    (tmp_path / "args.json").write_text(json.dumps(definition))
    nmt_demo.check_run_folder(tmp_path, json.loads(json.dumps(definition)))  # the same run: resumed
    other = nmt_demo.run_definition("contrast", nmt_demo.CONFIGS["contrast"], "ce", 1, 1)
    with pytest.raises(ValueError, match=r"holds another run \(differs in config, recipe: config='regime' there, "
                                         r"'contrast' asked"):
        nmt_demo.check_run_folder(tmp_path, other)
    with pytest.raises(ValueError, match="differs in seed"):
        nmt_demo.check_run_folder(tmp_path, nmt_demo.run_definition("regime", nmt_demo.CONFIGS["regime"], "ce", 2, 1))


def _t_interval(values):
    """95% Student-t interval of the mean, by hand (t_{0.975, 2} = 4.302652729911275)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = 4.302652729911275 * std / math.sqrt(n)
    return mean - half, mean + half


def test_claims_from_hand_made_rows():
    def row(ece_pre, temperature, bleu_pre, ece_post=1.0):
        return {"ece_pre": ece_pre, "ece_post": ece_post, "temperature": temperature, "bleu_pre": bleu_pre}

    rows = {"ce": {1: row(10.0, 1.4, 20.0), 2: row(12.0, 1.6, 21.0), 3: row(11.0, 1.5, 19.0)},
            "fl1": {1: row(3.0, 1.0, 20.5), 2: row(4.0, 1.1, 20.0), 3: row(2.0, 0.9, 19.5)}}
    claims = {c["id"]: c for c in nmt_demo.compute_claims(rows)}
    assert set(claims) == {"fl_ece_pre_lower_than_ce", "fl_temperature_near_1", "fl_bleu_not_worse_than_ce",
                           "ce_temperature_above_1", "fl_ece_post_lower_than_ce"}  # no LS runs: no LS claim
    ece = claims["fl_ece_pre_lower_than_ce"]
    assert ece["per_seed"] == [-7.0, -8.0, -9.0] and ece["mean"] == pytest.approx(-8.0)
    assert ece["interval_seeds"] == pytest.approx(_t_interval([-7.0, -8.0, -9.0]))
    assert ece["verdict"] == "holds"  # [-10.48, -5.52] < 0
    temperature = claims["fl_temperature_near_1"]
    lo, hi = _t_interval([1.0, 1.1, 0.9])
    assert temperature["interval_seeds"] == pytest.approx((lo, hi)) and lo < 0.9
    assert temperature["verdict"] == "inconclusive"  # [0.75, 1.25] is not inside [0.9, 1.1]
    bleu = claims["fl_bleu_not_worse_than_ce"]
    assert bleu["per_seed"] == [0.5, -1.0, 0.5]
    assert bleu["verdict"] == "inconclusive"  # [-1.65, 1.65] straddles -0.5
    assert claims["ce_temperature_above_1"]["verdict"] == "holds"
    assert claims["fl_ece_post_lower_than_ce"]["verdict"] == "does not hold"  # [0, 0]: entirely outside x < 0


def test_table3_markdown_is_mean_and_std_over_seeds():
    keys = ("ece_pre", "ece_post", "temperature", "bleu_pre", "bleu_post", "adaece_pre", "adaece_post", "error")
    rows = {"ce": {1: dict.fromkeys(keys, 1.0), 2: dict.fromkeys(keys, 3.0)}}
    text = nmt_demo.table3_markdown(rows)
    assert text.splitlines()[0] == "| Metrics | CE (n=2) |"
    assert "| ECE % pre T | 2.00 ± 1.41 |" in text  # std of (1, 3) with ddof = 1 = sqrt(2)


def test_the_script_is_argument_parsing_over_the_demo(tmp_path, capsys):
    from focal_calibration.experiments import runner
    from scripts.nmt_demo import get_args_parser

    args = get_args_parser().parse_args(["--jobs", "3", "--threads", "2", "--launcher", "slurm", "--slurm-time", "60"])
    assert (args.config, args.models, args.seeds, args.jobs) == ("regime", ["ce", "fl1", "ls"], [1, 2, 3], 3)
    launcher = runner.launcher_from_args(args, cpus_per_task=args.threads)
    assert (launcher.kind, launcher.jobs, launcher.time_min, launcher.cpus_per_task) == ("slurm", 3, 60, 2)
    # a bad value is one error line before anything runs (here: no data fetched, no job started)
    with pytest.raises(SystemExit) as info:
        runner.run_cli(get_args_parser(), nmt_demo.main, ["--temperatures", "0.5,2", "--output-dir", str(tmp_path)])
    assert info.value.code == 2 and "error: --temperatures must contain 1" in capsys.readouterr().err
