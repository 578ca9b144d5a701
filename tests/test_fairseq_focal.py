"""The fairseq user-dir through fairseq's real CLIs on a tiny corpus this module builds (fairseq-preprocess,
fairseq-train --user-dir fairseq_focal --criterion focal_loss, fairseq-generate with the temperature sweep), plus
in-process checks of the criterion against fairseq's own criteria and independent formulas."""

import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
USER_DIR = ROOT / "fairseq_focal"
BIN = Path(sys.executable).parent

pytest.importorskip("fairseq", reason="the [fairseq] extra is not installed")
import fairseq_focal  # noqa: E402,F401  (registers focal_loss / translation_temperature_sweep, applies the compat fixes)
from fairseq_focal.criterions.focal_loss import FocalLossCriterion  # noqa: E402
from focal_calibration.experiments.cli import parse_temperatures  # noqa: E402
from fairseq_focal.toy_corpus import write_corpus  # noqa: E402

TINY_MODEL = ["--arch", "transformer", "--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "32",
              "--decoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64",
              "--encoder-attention-heads", "2", "--decoder-attention-heads", "2", "--share-all-embeddings"]
TRAIN = ["--task", "translation", "--optimizer", "adam", "--lr", "0.01", "--max-tokens", "1000", "--cpu",
         "--seed", "1", "--no-progress-bar", "--log-interval", "1", "--no-epoch-checkpoints"]
N_TEST = 100  # 100 = 6 batches of 16 + 4: fairseq 0.12 drops the 4 with --required-batch-size-multiple 8
TEMPERATURES = (0.5, 1.0, 2.0)
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def run(tool, *args, check=True):
    result = subprocess.run([str(BIN / tool), *map(str, args)], capture_output=True, text=True, env=ENV)
    if check and result.returncode != 0:
        raise AssertionError(f"{tool} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def train(data, save_dir, *extra, epochs=2):
    result = run("fairseq-train", data, "--user-dir", USER_DIR, *TINY_MODEL, *TRAIN, "--save-dir", save_dir,
                 "--max-epoch", epochs, *extra)
    return result.stdout + result.stderr


def log_values(log: str, kind: str, key: str):
    """Values of `key` in fairseq's `| train |` or `| valid |` epoch lines, in order."""
    lines = [line for line in log.splitlines() if f"| {kind} | epoch" in line]
    return [float(re.search(rf"\| {key} ([-\d.e+na]+)", line).group(1)) for line in lines]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    data = write_corpus(folder, n_words=40, seed=0, env=ENV)
    save = folder / "fl1"
    log = train(data, save, "--criterion", "focal_loss", "--gamma", "1", "--batch-size", "16",
                "--required-batch-size-multiple", "8", epochs=12)
    return {"folder": folder, "data": data, "checkpoint": save / "checkpoint_last.pt", "log": log}


# ----------------------------------------------------------------------------------------------------------------
# Training through the CLI

def test_user_command_trains_and_logs_validation_ece(corpus):
    log = corpus["log"]
    assert "done training" in log
    losses = log_values(log, "train", "loss")
    assert len(losses) == 12 and losses[-1] < losses[0]
    assert log_values(log, "train", "gamma") == [1.0] * 12
    eces = log_values(log, "valid", "ece")
    assert len(eces) == 12 and all(0 <= e <= 100 for e in eces)
    nll, loss = log_values(log, "valid", "nll_loss"), log_values(log, "valid", "loss")
    assert all(n > focal for n, focal in zip(nll, loss))  # focal loss < NLL for γ = 1 whenever p < 1
    assert "ppl" in [line for line in log.splitlines() if "| valid | epoch" in line][0]


def test_gamma_zero_trains_exactly_like_fairseq_cross_entropy(corpus, tmp_path):
    ours = train(corpus["data"], tmp_path / "fl0", "--criterion", "focal_loss", "--gamma", "0", "--no-save")
    theirs = train(corpus["data"], tmp_path / "ce", "--criterion", "cross_entropy", "--no-save")
    for kind in ("train", "valid"):  # logged rounded to 3 (loss) / 2 (ppl) decimals: allow one rounding step
        assert log_values(ours, kind, "loss") == pytest.approx(log_values(theirs, kind, "loss"), abs=1.5e-3)
        assert log_values(ours, kind, "ppl") == pytest.approx(log_values(theirs, kind, "ppl"), abs=1.5e-2)


def test_epoch_scheduled_gamma_reaches_the_criterion(corpus, tmp_path):
    log = train(corpus["data"], tmp_path / "flsc", "--criterion", "focal_loss", "--gamma-policy", "flsc-51",
                "--gamma-milestones", "1", "--no-save")
    assert log_values(log, "train", "gamma") == [5.0, 1.0]


def test_checkpoint_resumes(corpus, tmp_path):
    save = tmp_path / "resume"
    shutil.copytree(corpus["checkpoint"].parent, save)
    log = train(corpus["data"], save, "--criterion", "focal_loss", "--gamma", "1", "--batch-size", "16",
                "--required-batch-size-multiple", "8", epochs=13)
    assert re.search(r"Loaded checkpoint .*checkpoint_last\.pt \(epoch 13 @ \d+ updates\)", log)
    assert len(log_values(log, "train", "loss")) == 1 and "epoch 013" in log


def test_adafocal_trains_and_resumes_exactly_through_the_cli(corpus, tmp_path):
    adafocal = ["--criterion", "focal_loss", "--loss-spec", "adafocal", "--loss-options", "n_bins=5"]

    def updates(log, what=r"update (\d+):"):
        return [(k, [float(g) for g in gammas.split(", ")])
                for k, gammas in re.findall(rf"AdaFocal {what} gamma per bin \[([^\]]*)\]", log)]

    straight = train(corpus["data"], tmp_path / "straight", *adafocal, "--no-save", epochs=2)
    first = train(corpus["data"], tmp_path / "resumed", *adafocal, epochs=1)
    resumed = train(corpus["data"], tmp_path / "resumed", *adafocal, epochs=2)
    assert [k for k, _ in updates(straight)] == ["1", "2"] and [k for k, _ in updates(first)] == ["1"]
    # the resumed run starts from the checkpoint's state (update 1, its γ exactly) and continues with update 2 ...
    assert updates(resumed, r"state restored: update (\d+),") == updates(first)
    assert [k for k, _ in updates(resumed)] == ["2"]
    # ... close to the straight run's (fairseq's own resume is not bit-exact here: with plain FL-1 a resumed epoch's
    # loss differs by ~5e-3, so the model, hence the validation gaps, differ slightly)
    assert updates(resumed)[0][1] == pytest.approx(updates(straight)[1][1], abs=0.01)


def test_bad_criterion_options_fail_clearly(corpus, tmp_path):
    result = run("fairseq-train", corpus["data"], "--user-dir", USER_DIR, *TINY_MODEL, *TRAIN, "--save-dir",
                 tmp_path, "--criterion", "focal_loss", "--gamma", "-1", "--max-epoch", "1", check=False)
    # fairseq's parser checks the options together (issue 17): one error line, status 2, no traceback
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == "fairseq-train: error: --gamma must be a finite number >= 0, got -1.0"


# ----------------------------------------------------------------------------------------------------------------
# The criterion in-process, against fairseq's criteria and formulas

@pytest.fixture(scope="module")
def loaded(corpus):
    from fairseq import checkpoint_utils

    models, _, task = checkpoint_utils.load_model_ensemble_and_task([str(corpus["checkpoint"])],
                                                                    arg_overrides={"data": str(corpus["data"])})
    task.load_dataset("valid")
    batches = list(task.get_batch_iterator(task.dataset("valid"), max_sentences=25).next_epoch_itr(shuffle=False))
    return models[0], task, batches


def step(model, criterion, sample, training=True):
    model.zero_grad()
    model.train(training)
    torch.manual_seed(0)  # the same dropout masks for every criterion
    loss, sample_size, log = criterion(model, sample)
    loss.backward()
    return loss.detach(), sample_size, log, [p.grad.clone() for p in model.parameters()]


def assert_same_step(a, b):
    torch.testing.assert_close(a[0], b[0], rtol=1e-6, atol=1e-5)
    assert a[1] == b[1]
    scale = max(float(g.abs().max()) for g in b[3])
    for ga, gb in zip(a[3], b[3]):  # float32 sums over ~100 tokens, computed in different orders
        torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("sentence_avg", [False, True])
def test_gamma_zero_equals_cross_entropy_criterion(loaded, sentence_avg):
    from fairseq.criterions.cross_entropy import CrossEntropyCriterion

    model, task, batches = loaded
    ours = step(model, FocalLossCriterion(task, sentence_avg, gamma=0.0), batches[0])
    theirs = step(model, CrossEntropyCriterion(task, sentence_avg), batches[0])
    assert_same_step(ours, theirs)
    torch.testing.assert_close(ours[2]["nll_loss"], theirs[2]["loss"], rtol=1e-6, atol=1e-5)


def test_gamma_zero_with_smoothing_equals_label_smoothed_cross_entropy(loaded):
    from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion

    model, task, batches = loaded
    options = dict(label_smoothing=0.1, ignore_prefix_size=1, report_accuracy=True)
    ours = step(model, FocalLossCriterion(task, False, gamma=0.0, **options), batches[0])
    theirs = step(model, LabelSmoothedCrossEntropyCriterion(task, False, **options), batches[0])
    assert_same_step(ours, theirs)
    torch.testing.assert_close(ours[2]["nll_loss"], theirs[2]["nll_loss"], rtol=1e-6, atol=1e-5)
    assert int(ours[2]["n_correct"]) == theirs[2]["n_correct"] and int(ours[2]["total"]) == theirs[2]["total"]


def _naive_focal(model, sample, gamma_of_p, pad):
    with torch.no_grad():
        model.eval()
        log_p = torch.log_softmax(model(**sample["net_input"])[0].double(), -1)
        target = sample["target"]
        log_p_y = log_p.gather(-1, target[..., None]).squeeze(-1)[target != pad]
    p = log_p_y.exp()
    gamma = gamma_of_p(p)
    return (-(1 - p) ** gamma * log_p_y).sum(), -log_p_y.sum(), gamma


@pytest.mark.parametrize("policy, gamma_of_p", [
    (None, lambda p: torch.ones_like(p)),
    ("flsd-53", lambda p: torch.where(p < 0.2, 5.0, 3.0).double()),
])
def test_focal_loss_value_and_policies_against_the_formula(loaded, policy, gamma_of_p):
    model, task, batches = loaded
    criterion = FocalLossCriterion(task, False, gamma=1.0, gamma_policy=policy)
    model.eval()
    loss, _, log = criterion(model, batches[0])
    ref, ref_nll, gamma = _naive_focal(model, batches[0], gamma_of_p, task.target_dictionary.pad())
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(log["nll_loss"].double(), ref_nll, rtol=1e-5, atol=1e-4)
    assert float(log["gamma_sum"]) / float(log["gamma_tokens"]) == pytest.approx(float(gamma.mean()), rel=1e-6)
    if policy:
        assert 3 < float(gamma.mean()) < 5  # both bands are used


def numpy_ece_percent(logits: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Eq. (1) directly: bins ((i-1)/M, i/M] of the top-1 softmax confidence, |sum(correct - conf)| / N."""
    z = logits - logits.max(-1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    conf, correct = probs.max(-1), (probs.argmax(-1) == labels)
    index = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    gaps = np.zeros(n_bins)
    np.add.at(gaps, index, correct - conf)
    return 100 * np.abs(gaps).sum() / len(labels)


def test_validation_ece_is_exact_over_batches(loaded):
    from fairseq.logging import metrics

    model, task, batches = loaded
    criterion = FocalLossCriterion(task, False, gamma=1.0)
    model.eval()
    logs, all_logits, all_labels = [], [], []
    pad = task.target_dictionary.pad()
    with torch.no_grad():
        for sample in batches:
            logs.append(criterion(model, sample)[2])
            keep = sample["target"] != pad
            all_logits.append(model(**sample["net_input"])[0][keep].double().numpy())
            all_labels.append(sample["target"][keep].numpy())
    assert len(batches) > 1
    expected = numpy_ece_percent(np.concatenate(all_logits), np.concatenate(all_labels))
    summed = {key: sum(log[key] for log in logs) for key in logs[0]}  # what fairseq's fast stat sync does
    for outputs in (logs, [summed]):
        with metrics.aggregate(new_root=True) as agg:
            FocalLossCriterion.reduce_metrics(outputs)
            assert agg.get_smoothed_values()["ece"] == pytest.approx(expected, abs=1.5e-3)


@pytest.mark.parametrize("kwargs, message", [
    (dict(gamma=-1.0), "gamma must be a finite number >= 0, got -1.0"),
    (dict(gamma_policy="flsd-5x3"), "unknown loss spec 'flsd-5x3'"),
    (dict(gamma_policy="brier"), "--gamma-policy must name a focal-loss policy"),
    (dict(gamma_policy="flsc-4321"), "need explicit milestones"),
    (dict(gamma_policy="flsc-321", gamma_milestones="2,x"), "--gamma-milestones must be comma-separated"),
    (dict(label_smoothing=1.0), "--label-smoothing must lie in [0, 1), got 1.0"),
    (dict(gamma_policy="flsc-531"), "--gamma-policy flsc-531 needs the run length: set --max-epoch"),
    (dict(gamma_policy="flsc-531", gamma_milestones="100,250", max_epoch=30), "do not fit a run of 30 epochs"),
    (dict(loss_spec="brier"), "--loss-spec takes a loss beyond the paper"),
    (dict(loss_spec="adafocal", gamma_policy="flsd-53"), "give --loss-spec or --gamma-policy, not both"),
    (dict(loss_spec="poly-1", label_smoothing=0.1), "--label-smoothing applies to focal loss only"),
    (dict(loss_options="lam=1"), "--loss-options 'lam=1' needs --loss-spec"),
    (dict(loss_spec="adafocal", loss_options="lam"), "--loss-options must be comma-separated KEY=VALUE pairs"),
    (dict(loss_spec="poly-1", loss_options="lam=1"), "build_loss('poly-1') got unknown option(s) ['lam']"),
    (dict(loss_spec="adafocal", disable_validation=True), "cannot run with --disable-validation"),
])
def test_bad_criterion_arguments(loaded, kwargs, message):
    _, task, _ = loaded
    with pytest.raises(ValueError) as info:
        FocalLossCriterion(task, False, **kwargs)
    assert message in str(info.value)


def test_flsc_follows_max_epoch(loaded):
    _, task, _ = loaded
    criterion = FocalLossCriterion(copy.copy(task), False, gamma_policy="flsc-531", max_epoch=30)
    assert criterion.policy.milestones == (9, 21)  # 100/350 and 250/350 of 30 epochs


@pytest.mark.parametrize("spec", ["poly-2", "inverse-focal-2", "dual-focal-3", "mbls-1-0.5"])
def test_loss_spec_criterion_is_the_cores_loss(loaded, spec):
    from focal_calibration.losses import build_loss

    model, task, batches = loaded
    pad = task.target_dictionary.pad()
    criterion = FocalLossCriterion(copy.copy(task), False, loss_spec=spec)
    model.eval()
    loss, _, log = criterion(model, batches[0])
    with torch.no_grad():
        logits = model(**batches[0]["net_input"])[0].double()
    target = batches[0]["target"]
    core = build_loss(spec, reduction="sum", ignore_index=pad)(logits.movedim(-1, 1), target)  # classes on dim 1
    torch.testing.assert_close(loss.double(), core, rtol=1e-5, atol=1e-4)
    nll = torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), target.view(-1), ignore_index=pad,
                                            reduction="sum")
    torch.testing.assert_close(log["nll_loss"].double(), nll, rtol=1e-5, atol=1e-4)


def test_adafocal_criterion_updates_from_validation_logging_outputs(loaded):
    from fairseq.logging import metrics

    model, task, batches = loaded
    metrics.reset()
    criterion = FocalLossCriterion(copy.copy(task), False, loss_spec="adafocal", loss_options="n_bins=5")
    model.eval()
    criterion.task.begin_epoch(1, model)
    criterion.task.begin_valid_epoch(1, model)
    confidences, corrects = [], []
    with torch.no_grad(), metrics.aggregate(new_root=True) as agg:
        for sample in batches:
            FocalLossCriterion.reduce_metrics([criterion(model, sample)[2]])
            keep = sample["target"] != task.target_dictionary.pad()
            probs = torch.softmax(model(**sample["net_input"])[0].double(), -1)[keep]
            confidences.append(probs.max(-1).values)
            corrects.append(probs.argmax(-1) == sample["target"][keep])
        criterion.task.post_validate(model, {}, agg)
    conf, correct = torch.cat(confidences).numpy(), torch.cat(corrects).numpy()
    # the γ update uses the bins in use: equal width [b/5, (b+1)/5) before the first update; γ = 1 · exp(C_b - A_b)
    bins = np.minimum((conf * 5).astype(int), 4)
    expected = [np.exp(conf[bins == b].mean() - correct[bins == b].mean()) if (bins == b).any() else 1.0
                for b in range(5)]
    adafocal = criterion.loss_module
    assert int(adafocal.updates) == 1 and adafocal.gammas.tolist() == pytest.approx(expected, rel=1e-5)
    # the next bins: equal-mass edges of the validation confidences, from the histogram (0.055 logit resolution)
    exact = np.sort(conf)[[int(np.ceil(b * len(conf) / 5)) for b in range(1, 5)]]
    logit = lambda c: np.log(c) - np.log1p(-c)  # noqa: E731
    gap = logit(exact) - logit(adafocal.inner_edges.numpy())
    assert ((gap >= -1e-9) & (gap <= 28 / 512 + 1e-9)).all(), gap
    # fairseq checkpoints its named metrics aggregators: a resumed run restores the state from them ...
    state = {key: value.clone() for key, value in adafocal.state_dict().items()}
    saved_meters = metrics.state_dict()
    metrics.reset()
    metrics.load_state_dict(saved_meters)
    resumed = FocalLossCriterion(copy.copy(task), False, loss_spec="adafocal", loss_options="n_bins=5")
    resumed.task.begin_epoch(2, model)
    for key, value in resumed.loss_module.state_dict().items():
        assert torch.equal(value, state[key]), key
    # ... and refuses to resume without it (--reset-meters)
    metrics.reset()
    again = FocalLossCriterion(copy.copy(task), False, loss_spec="adafocal", loss_options="n_bins=5")
    with pytest.raises(ValueError, match="cannot resume AdaFocal: the checkpoint holds no AdaFocal state"):
        again.task.begin_epoch(2, model)
    metrics.reset()


# ----------------------------------------------------------------------------------------------------------------
# Compat fixes

def test_last_partial_batch_is_kept(loaded):
    _, task, _ = loaded
    task.load_dataset("test")
    dataset = task.dataset("test")
    batches = task.get_batch_iterator(dataset, max_sentences=16, required_batch_size_multiple=8).frozen_batches
    ids = np.concatenate([np.asarray(b) for b in batches])
    assert sorted(ids.tolist()) == list(range(N_TEST))  # every sentence exactly once (fairseq alone: 96)
    assert [len(b) for b in batches].count(4) == 1


# ----------------------------------------------------------------------------------------------------------------
# Temperature sweep

@pytest.fixture(scope="module")
def generations(corpus):
    """fairseq-generate --temperature T for each T, and one sweep run; all with batches fairseq would cut."""
    common = [corpus["data"], "--user-dir", USER_DIR, "--path", corpus["checkpoint"], "--beam", "3", "--cpu",
              "--batch-size", "16", "--required-batch-size-multiple", "8", "--gen-subset", "test"]
    separate = {t: run("fairseq-generate", *common, "--temperature", t).stdout for t in TEMPERATURES}
    sweep_file = corpus["folder"] / "sweep.tsv"
    sweep = run("fairseq-generate", *common, "--task", "translation_temperature_sweep", "--temperatures",
                ",".join(map(str, TEMPERATURES)), "--sweep-output", sweep_file).stdout
    return separate, sweep, sweep_file


def hypotheses(generate_stdout: str) -> dict:
    out = {}
    for line in generate_stdout.splitlines():
        if line.startswith("H-"):
            head, score, text = line.split("\t")
            out[int(head[2:])] = (float(score), text)
    return out


def test_every_test_sentence_is_translated(generations):
    separate, sweep, _ = generations
    assert sorted(hypotheses(separate[1.0])) == list(range(N_TEST))
    assert sorted(hypotheses(sweep)) == list(range(N_TEST))


def test_sweep_hypotheses_equal_separate_temperature_runs(generations):
    separate, sweep, sweep_file = generations
    rows = [line.split("\t") for line in sweep_file.read_text().splitlines()]
    assert len(rows) == N_TEST * len(TEMPERATURES)
    for t in TEMPERATURES:
        reference = hypotheses(separate[t])
        ours = {int(i): (float(s), h) for temp, i, s, h in rows if float(temp) == t}
        assert {i: h for i, (_, h) in ours.items()} == {i: h for i, (_, h) in reference.items()}
        for i, (score, _) in ours.items():
            assert score == pytest.approx(reference[i][0], abs=1e-5)
    # fairseq-generate's own output in sweep mode is the --temperature (default 1) hypotheses
    at_one = {i: h for i, (_, h) in hypotheses(separate[1.0]).items()}
    assert {i: h for i, (_, h) in hypotheses(sweep).items()} == at_one
    distinct = {tuple(h for _, h in sorted(hypotheses(separate[t]).values())) for t in TEMPERATURES}
    assert len(distinct) > 1  # the temperatures really decode differently


def test_sweep_script_curves_against_independent_references(corpus, generations, tmp_path):
    from scripts import nmt_sweep
    from sacrebleu.metrics import BLEU

    from focal_calibration.calibration.temperature import fit_temperature

    separate, _, sweep_file = generations
    model, task = nmt_sweep.load_model(corpus["checkpoint"], corpus["data"], "cpu")
    refs = (corpus["folder"] / "test.tgt").read_text().splitlines()
    curves, signature, _ = nmt_sweep.sweep_split(model, task, "test", TEMPERATURES, beam=3, max_tokens=300,
                                                  references=refs)
    assert "tok:13a" in signature and curves["n_sentences"] == N_TEST
    pad = task.target_dictionary.pad()
    logits, labels = [], []
    with torch.no_grad():
        for sample in task.get_batch_iterator(task.dataset("test"), max_sentences=7).next_epoch_itr(shuffle=False):
            keep = sample["target"] != pad
            logits.append(model(**sample["net_input"])[0][keep].double())
            labels.append(sample["target"][keep])
    logits, labels = torch.cat(logits), torch.cat(labels)
    assert curves["n_tokens"] == len(labels)
    for k, t in enumerate(TEMPERATURES):
        hyps = hypotheses(separate[t])
        bleu = BLEU().corpus_score([hyps[i][1] for i in range(N_TEST)], [refs]).score
        assert curves["bleu"][k] == pytest.approx(bleu, abs=1e-9)
        assert 100 * curves["ece"][k] == pytest.approx(numpy_ece_percent((logits / t).numpy(), labels.numpy()),
                                                        abs=1e-4)
        nll = torch.nn.functional.cross_entropy(logits / t, labels).item()
        assert curves["nll"][k] == pytest.approx(nll, rel=1e-5)
    # Table 3: T* by ECE over the grid, as the core's temperature fit chooses it
    row = nmt_sweep.table3_row(TEMPERATURES, curves, curves)
    assert row["temperature"] == fit_temperature(logits, labels, "ece", temperatures=list(TEMPERATURES)).temperature
    scores = nmt_sweep.score_file(sweep_file, corpus["folder"] / "test.tgt")["bleu"]
    assert [scores[t] for t in TEMPERATURES] == pytest.approx(curves["bleu"], abs=1e-9)


def test_sweep_run_writes_table_and_figure(corpus, tmp_path):
    import json

    from scripts import nmt_sweep

    out = tmp_path / "out"
    nmt_sweep.main(["run", "--data", str(corpus["data"]), "--checkpoints", f"FL1={corpus['checkpoint']}",
                    "--temperatures", "0.5,1,2", "--beam", "2", "--output-dir", str(out), "--cpu"])
    result = json.loads((out / "sweep.json").read_text())
    assert result["temperatures"] == [0.5, 1.0, 2.0] and result["suite"] == "nmt"
    model = result["models"]["FL1"]
    assert all(len(model[split][c]) == 3 for split in ("valid", "test") for c in ("ece", "adaece", "nll"))
    assert len(model["test"]["bleu"]) == 3 and model["valid"]["bleu"] is None  # valid: teacher forcing only
    assert model["table3"]["temperature"] in (0.5, 1.0, 2.0)
    # the shared result layout, read by scripts/results_table.py like image and text runs
    from focal_calibration.experiments.records import read_results

    (record,) = read_results([out])
    assert (record["suite"], record["loss"], record["seed"]) == ("nmt", "fl-1", 1)
    k = result["temperatures"].index(model["table3"]["temperature"])
    assert record["evaluation"]["post"]["ece"] == pytest.approx(model["test"]["ece"][k])
    assert record["evaluation"]["pre"]["bleu"] == pytest.approx(model["test"]["bleu"][1])
    assert "ECE% Pre T / Post T / T" in (out / "table3.md").read_text()
    assert (out / "figure5.png").stat().st_size > 10_000


@pytest.mark.parametrize("text, message", [
    ("", "at least one value"), (" , ", "at least one value"), ("0,1", "finite number > 0, got 0.0"),
    ("1,-2", "finite number > 0, got -2.0"), ("1,inf", "got inf"), ("a,1", "comma-separated numbers"),
    ("1,1", "distinct"),
])
def test_bad_temperature_lists(text, message):
    with pytest.raises(ValueError) as info:
        parse_temperatures(text)
    assert message in str(info.value)


def test_bad_temperatures_through_fairseq_generate(corpus):
    result = run("fairseq-generate", corpus["data"], "--user-dir", USER_DIR, "--path", corpus["checkpoint"],
                 "--cpu", "--task", "translation_temperature_sweep", "--temperatures", "0,1", check=False)
    assert result.returncode != 0 and "every temperature must be a finite number > 0, got 0.0" in result.stderr


def test_checkpoint_from_another_dictionary(corpus, tmp_path):
    from scripts import nmt_sweep

    other = write_corpus(tmp_path, n_words=60, seed=1, env=ENV)
    with pytest.raises(ValueError, match="trained with another dictionary"):
        nmt_sweep.load_model(corpus["checkpoint"], other, "cpu")
    command = [sys.executable, str(ROOT / "scripts" / "nmt_sweep.py"), "run", "--data", str(corpus["data"]),
               "--checkpoints", f"a={corpus['checkpoint']}", "--output-dir", str(tmp_path / "x")]
    for extra, message in ((["--temperatures", "0.5,2"], "--temperatures must contain 1"),
                           (["--temperatures", "1,x"], "temperatures must be comma-separated numbers, got '1,x'"),
                           (["--beam", "0"], "--beam must be >= 1, got 0"),
                           (["--references", "dev=x.de"], "--references takes valid=PATH and test=PATH, got 'dev'")):
        result = subprocess.run(command + extra, capture_output=True, text=True, env=ENV)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith(f"nmt_sweep.py: error: {message}")
    result = subprocess.run(command[:6] + [f"a={tmp_path / 'missing.pt'}", "--output-dir", str(tmp_path / "x")],
                            capture_output=True, text=True, env=ENV)
    assert result.returncode == 2 and "error: checkpoint" in result.stderr and "does not exist" in result.stderr


class _LogitsModel(torch.nn.Module):
    """Stands in for a fairseq model whose decoder returns the given logits."""

    def __init__(self, logits):
        super().__init__()
        self.logits, self.decoder = logits, torch.nn.Module()

    def forward(self, **_):
        return self.logits, None

    def get_targets(self, sample, net_output):
        return sample["target"]


def test_nll_loss_is_exact_where_p_y_underflows():
    from fairseq.data import Dictionary

    class Task:
        target_dictionary = Dictionary()  # pad = 1

        def begin_epoch(self, epoch, model):
            pass

    logits = torch.zeros(1, 4, 6)
    logits[0, 0, 3], logits[0, 1, 3], logits[0, 2, 3] = 60.0, 200.0, 2.0  # p_y ~ 1e-26, 0 in float32, ~0.2
    target = torch.tensor([[0, 0, 0, 1]])  # the last position is padding
    sample = {"net_input": {}, "target": target, "ntokens": 3}
    for gamma in (0.0, 1.0, 3.0):
        _, _, log = FocalLossCriterion(Task(), False, gamma=gamma)(_LogitsModel(logits), sample)
        expected = torch.nn.functional.cross_entropy(logits[0, :3].double(), target[0, :3], reduction="sum")
        assert float(log["nll_loss"]) == pytest.approx(float(expected), rel=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# --fused-linear: the loss from the decoder's features and its output projection

def _fused_and_materialised(task, sentence_avg=False, **options):
    return (FocalLossCriterion(copy.copy(task), sentence_avg, fused_linear=True, **options),
            FocalLossCriterion(copy.copy(task), sentence_avg, **options))


def _assert_same_logs(ours, theirs):
    assert set(ours) == set(theirs)
    for key, value in theirs.items():
        if key.startswith(("_ece_count", "n_correct", "total", "ntokens", "nsentences", "sample_size")):
            assert float(ours[key]) == float(value), key  # counts: exact
        else:
            torch.testing.assert_close(torch.as_tensor(ours[key]).double(), torch.as_tensor(value).double(),
                                       rtol=1e-5, atol=1e-4, msg=key)


@pytest.mark.parametrize("options", [
    dict(gamma=1.0), dict(gamma=0.0, sentence_avg=True), dict(gamma_policy="flsd-53", report_accuracy=True),
    dict(gamma_policy="flsd-prop2-0.2-0.25"), dict(gamma=1.0, label_smoothing=0.1, ignore_prefix_size=1),
    dict(gamma_policy="flsd-532", label_smoothing=0.1, report_accuracy=True), dict(loss_spec="adafocal"),
], ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_fused_linear_step_equals_the_materialised_criterion(loaded, options):
    """Loss, every parameter's gradient (the tied embedding's included) and every logging output, in training and
    in validation (the ECE's per-bin sums, AdaFocal's statistics), equal to the criterion on the logits."""
    model, task, batches = loaded
    options = dict(options)
    ours, theirs = _fused_and_materialised(task, options.pop("sentence_avg", False), **options)
    if ours._adafocal is not None:  # a mixed state: focal and inverse-focal bins
        for criterion in (ours, theirs):
            criterion._adafocal.gammas.copy_(torch.tensor([3.0, -0.5, 1.0, -1.5, 2.0] * 3, dtype=torch.float64))
            criterion._adafocal._lookup = {}
    for training in (True, False):
        a, b = step(model, ours, batches[1], training), step(model, theirs, batches[1], training)
        assert_same_step(a, b)
        _assert_same_logs(a[2], b[2])
        assert training or "_ece_count_0" in a[2]
    model.eval()
    with torch.no_grad():
        for reduce in (False,):  # per-token losses (fairseq's reduce=False)
            torch.testing.assert_close(ours(model, batches[0], reduce=reduce)[0],
                                       theirs(model, batches[0], reduce=reduce)[0], rtol=1e-5, atol=1e-6)


def test_fused_linear_refuses_what_it_cannot_compute(loaded):
    model, task, _ = loaded
    with pytest.raises(ValueError, match="--fused-linear computes focal loss .* not --loss-spec poly-1"):
        FocalLossCriterion(copy.copy(task), False, fused_linear=True, loss_spec="poly-1")
    criterion = FocalLossCriterion(copy.copy(task), False, fused_linear=True)
    sample = {"net_input": {}, "target": torch.zeros(1, 1, dtype=torch.long), "ntokens": 1}

    class NoProjection(torch.nn.Module):  # e.g. fairseq's LSTM decoder: an fc_out, no output_projection
        adaptive_softmax = None

    class Model(torch.nn.Module):
        def __init__(self, decoder):
            super().__init__()
            self.decoder = decoder

    with pytest.raises(ValueError, match="needs a decoder whose output layer is an nn.Linear output_projection"):
        criterion(Model(NoProjection()), sample)
    adaptive = copy.deepcopy(model)
    adaptive.decoder.adaptive_softmax = torch.nn.Identity()
    with pytest.raises(ValueError, match="this model uses an adaptive softmax"):
        criterion(adaptive, sample)


def _inner_values(log: str, key: str):
    """Per-update values of `key` in fairseq's train_inner lines (--log-interval 1)."""
    lines = [line for line in log.splitlines() if "| train_inner |" in line]
    return [float(re.search(rf" {key}=([-\d.e+na]+)", line).group(1)) for line in lines]


def test_fused_linear_trains_like_the_materialised_criterion(corpus, tmp_path):
    """fairseq-train, same seed, 75 updates (FLSD-53, label smoothing, dropout): the same loss, γ and gradient norm
    at every update and the same validation loss, NLL and ECE at every epoch (to the log's 3 decimals)."""
    options = ["--criterion", "focal_loss", "--gamma-policy", "flsd-53", "--label-smoothing", "0.1",
               "--batch-size", "16", "--no-save"]
    ours = train(corpus["data"], tmp_path / "fused", *options, "--fused-linear", epochs=3)
    theirs = train(corpus["data"], tmp_path / "logits", *options, epochs=3)
    losses = _inner_values(theirs, "loss")
    assert len(losses) >= 60 and _inner_values(ours, "loss") == pytest.approx(losses, abs=1.5e-3)
    for key in ("gamma", "gnorm"):
        assert _inner_values(ours, key) == pytest.approx(_inner_values(theirs, key), abs=1.5e-3)
    for key in ("loss", "nll_loss", "ece"):
        assert log_values(ours, "valid", key) == pytest.approx(log_values(theirs, "valid", key), abs=1.5e-3)
    assert len(log_values(ours, "valid", "ece")) == 3
