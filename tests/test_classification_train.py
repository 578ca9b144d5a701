"""classification/train.py and evaluate.py end to end on tiny data in the standard formats: every loss, every model,
exact resume after SIGKILL, a 2-process torchrun (gloo) run, bad inputs."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from classification import evaluate as evaluate_script
from classification import train as train_script
from focal_calibration.experiments.checkpoint import load_checkpoint
from focal_calibration.losses import PAPER_LOSS_SPECS
from focal_calibration.calibration.metrics import calibration_metrics
from focal_calibration.calibration.temperature import fit_temperature
from test_classification_data import make_fashion_mnist, make_image_tree

REPO = Path(__file__).resolve().parent.parent
# Matrix scaling's ODIR cross-validation costs 2-10 s of CPU on these tiny validation sets (most of a run's time):
# off, except where a test asks for it (a test's own flags come after these and win).
FAST = ["--eval-batch-size", "256", "--workers", "0", "--progress", "--print-freq", "1000", "--matrix-scaling", "off"]


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    return make_fashion_mnist(tmp_path_factory.mktemp("fmnist"), n_train=360, n_test=100)


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory):
    return make_image_tree(tmp_path_factory.mktemp("tree"), classes=3, per_class=4, size=16)


def run(argv):
    args = train_script.get_args_parser().parse_args(FAST + argv)
    args.progress = False
    return train_script.main(args)


def fmnist_args(fmnist, out, *extra):
    return ["--dataset", "fashion-mnist", "--data-dir", str(fmnist), "--val-size", "60", "--batch-size", "64",
            "--output-dir", str(out), *extra]


def read_log(out):
    return [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("loss", PAPER_LOSS_SPECS + ("ls-torch-0.1",))
def test_every_loss_trains_and_reports(fmnist, tmp_path, loss):
    extra = ["--epochs", "3"] if loss.startswith("flsc") else ["--epochs", "1"]  # FLSc: milestones 1, 2 of 3
    if loss == "ce":  # matrix scaling in the final evaluation (plain: "auto"'s ODIR cross-validation costs ~1 min)
        extra += ["--matrix-scaling", "plain", "--val-size", "120"]  # more samples than its 110 parameters
    record = run(fmnist_args(fmnist, tmp_path, "--loss", loss, "--limit-train", "128", *extra))
    log = read_log(tmp_path)
    assert [line["epoch"] for line in log] == list(range(1, len(log) + 1))
    if loss.startswith("flsc"):  # the schedule follows the run: γ = 5 in epoch 1, 3 in epoch 2, the last γ in 3
        assert [line["gamma"] for line in log] == [5.0, 3.0, float(loss[-1])]
    evaluation = record["evaluation"]
    assert evaluation["pre"]["n"] == 100 and evaluation["val_pre"]["n"] == (120 if loss == "ce" else 60)
    for key in ("ece", "adaece", "mce", "classwise_ece", "nll", "error"):
        assert 0 <= evaluation["post"][key] < float("inf")
    assert (tmp_path / "reliability_pre.png").exists() and (tmp_path / "reliability_post.png").exists()
    if loss == "ce":  # matrix scaling fitted on the validation split, its test metrics reported
        assert evaluation["matrix_scaling"]["n_params"] == 110 and evaluation["matrix_scaling"]["odir"] is None
        assert 0 <= evaluation["post_ms"]["ece"] < 1
    else:
        assert evaluation["matrix_scaling"] == {"skipped": "matrix_scaling='off'"} and evaluation["post_ms"] is None


def test_matrix_scaling_in_the_final_evaluation_is_auto_by_default():
    assert train_script.get_args_parser().parse_args([]).matrix_scaling == "auto"


def test_dynamics_log_and_evaluation_match_the_core_on_saved_logits(fmnist, tmp_path):
    record = run(fmnist_args(fmnist, tmp_path, "--epochs", "3", "--lr-milestones", "2", "--grad-norm-epochs", "3",
                             "--loss", "flsd-53") + ["--batch-size", "16"])
    log = read_log(tmp_path)
    assert [line["lr"] for line in log] == pytest.approx([0.1, 0.1, 0.01])
    assert log[-1]["test_error"] < 0.5  # the learnable fake data is learnt: labels and images stay aligned
    saved = torch.load(tmp_path / "logits.pt", weights_only=True)
    test = calibration_metrics(saved["test_labels"], logits=saved["test_logits"])
    assert record["evaluation"]["pre"] == test
    assert log[-1]["test_ece"] == test["ece"] and log[-1]["test_nll"] == test["nll"]
    t = fit_temperature(saved["val_logits"], saved["val_labels"], objective="ece").temperature
    assert record["evaluation"]["temperature"] == t
    assert record["evaluation"]["post"] == calibration_metrics(saved["test_labels"], logits=saved["test_logits"] / t)
    correct = saved["test_logits"].argmax(1) == saved["test_labels"]
    wrong_nll = calibration_metrics(saved["test_labels"][~correct], logits=saved["test_logits"][~correct])["nll"]
    assert log[-1]["test_nll_incorrect"] == pytest.approx(wrong_nll)
    weight = load_checkpoint(tmp_path / "checkpoint.pt")["model"]["fc.weight"]
    assert log[-1]["last_layer_weight_norm"] == pytest.approx(float(weight.norm()))
    norms = torch.load(tmp_path / "grad_norms_epoch3.pt", weights_only=True)["norms"]
    assert norms.shape == (300,) and bool((norms > 0).all())

    # evaluate.py on the checkpoint reproduces the training run's final numbers
    args = evaluate_script.get_args_parser().parse_args([str(tmp_path / "checkpoint.pt"), "--workers", "0"])
    (again,) = evaluate_script.main(args)
    # (the trainer also reports the training set's metrics, "train"; the evaluator reports validation and test)
    assert again["evaluation"] == {k: v for k, v in record["evaluation"].items() if k != "train"}
    assert (tmp_path / "evaluation" / "results.json").exists()


def test_official_code_options(fmnist, tmp_path):
    """--official-code: summed loss, clipping at 2, scheduler.step() before each epoch (lr drops one epoch early)."""
    record = run(fmnist_args(fmnist, tmp_path, "--official-code", "--epochs", "2", "--lr-milestones", "2",
                             "--limit-train", "64", "--limit-eval", "30"))
    assert (record["args"]["loss_reduction"], record["args"]["clip_grad_norm"]) == ("sum", 2.0)
    assert [line["lr"] for line in read_log(tmp_path)] == pytest.approx([0.1, 0.01])


def test_last_layer_gradient_norms_equal_per_sample_autograd():
    from classification.dynamics import last_layer_gradient_norms
    from focal_calibration.losses import build_loss
    torch.manual_seed(0)
    fc = torch.nn.Linear(5, 4)
    features, labels = torch.randn(6, 5), torch.randint(0, 4, (6,))
    loss = build_loss("flsd-53", reduction="sum")
    norms = last_layer_gradient_norms(fc(features), features, labels, loss)
    for i in range(6):
        fc.zero_grad()
        loss(fc(features[i:i + 1]), labels[i:i + 1]).backward()
        expected = torch.cat([fc.weight.grad.flatten(), fc.bias.grad]).norm()
        assert norms[i] == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("model", ["small_cnn", "mlp", "resnet50", "resnet110", "wide_resnet26_10", "densenet121",
                                   "resnet50_tiny"])
def test_every_model_trains_one_step(image_tree, tmp_path, model):
    record = run(["--dataset", "imagefolder", "--data-dir", str(image_tree), "--image-size", "16", "--val-size", "3",
                  "--model", model, "--epochs", "1", "--batch-size", "9", "--output-dir", str(tmp_path),
                  "--loss", "flsd-53"])
    assert record["model"] == model and record["evaluation"]["pre"]["n"] == 6


def _cli_error(argv, capsys):
    with pytest.raises(SystemExit) as info:
        train_script.run(argv + FAST)
    assert info.value.code == 2
    return capsys.readouterr().err


def test_bad_inputs_are_refused_with_clear_messages(fmnist, tmp_path, capsys):
    base = fmnist_args(fmnist, tmp_path / "run", "--epochs", "1")
    assert "unknown model 'resnet51'" in _cli_error(base + ["--model", "resnet51"], capsys)
    assert "unknown dataset 'imagenet'" in _cli_error(["--dataset", "imagenet"], capsys)
    assert "unknown loss spec 'focal'" in _cli_error(base + ["--loss", "focal"], capsys)
    assert "--batch-size must be >= 1, got 0" in _cli_error(base + ["--batch-size", "0"], capsys)
    assert f"{tmp_path / 'missing'}" in _cli_error(
        fmnist_args(tmp_path / "missing", tmp_path / "run"), capsys)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert "bad.pt' is truncated or corrupted" in _cli_error(base + ["--resume", str(bad)], capsys)

    run(base)
    message = _cli_error(base + ["--resume", "auto", "--loss", "flsd-53", "--lr", "0.05", "--epochs", "2"], capsys)
    assert "cannot resume: --loss was 'ce', now 'flsd-53'; --lr was 0.1, now 0.05" in message
    # every option of the parser is run-defining unless allowed (--n-bins was missing from a hand-written list)
    assert "cannot resume: --n-bins was 15, now 10" in _cli_error(base + ["--resume", "auto", "--n-bins", "10"],
                                                                   capsys)
    assert "already holds a run (checkpoint.pt, results.json): pass --resume auto" in _cli_error(base, capsys)
    run(base + ["--resume", "auto", "--epochs", "2", "--threads", "1"])  # allowed changes: one more epoch
    assert [line["epoch"] for line in read_log(tmp_path / "run")] == [1, 2]


def test_help_states_each_default_once(capsys):
    with pytest.raises(SystemExit):
        train_script.get_args_parser().parse_args(["--help"])
    options = [" ".join(option.split()) for option in capsys.readouterr().out.split("\n  -")[1:]]
    by_flag = {option.split()[0].rstrip(","): option for option in options}
    assert by_flag["-lr"] == "-lr LR default: 0.1"
    assert by_flag["-split-seed"].endswith("(independent of --seed) (default: 1)")
    assert by_flag["-data-dir"].count("default") == 1 and by_flag["-threads"].startswith("-threads N ")
    for option in options:
        assert option.lower().count("default") <= 1, option


def _train_subprocess(fmnist, out, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    command = [sys.executable, str(REPO / "classification" / "train.py"),
               *fmnist_args(fmnist, out, "--epochs", "3", "--batch-size", "8", "--lr-milestones", "2",
                            "--loss", "adafocal", "--print-freq", "1", "--workers", "0", "--no-progress",
                            "--limit-train", "120", "--limit-eval", "50", "--matrix-scaling", "off", *extra)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)


def test_resume_after_sigkill_mid_epoch_is_exact(fmnist, tmp_path):  # with AdaFocal, whose state must resume too
    straight = _train_subprocess(fmnist, tmp_path / "straight")
    output = straight.communicate(timeout=300)[0]
    assert straight.returncode == 0, output

    killed = _train_subprocess(fmnist, tmp_path / "killed")
    for line in killed.stdout:  # kill in the middle of epoch 2 (after epoch 1's checkpoint)
        if line.startswith("epoch 2/3 step 5/"):
            killed.send_signal(signal.SIGKILL)
            break
    killed.wait(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    assert load_checkpoint(tmp_path / "killed" / "checkpoint.pt")["epoch"] == 0  # really mid-epoch 2
    resumed = _train_subprocess(fmnist, tmp_path / "killed", "--resume", "auto")
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0 and "resumed from" in output, output

    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "killed" / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == 2
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in ("optimizer", "scheduler", "criterion"):  # criterion: AdaFocal's γ per bin
        assert str(a[key]) == str(b[key])
    assert int(a["criterion"]["updates"]) == 3
    results = [json.loads((tmp_path / d / "results.json").read_text())["evaluation"] for d in ("straight", "killed")]
    assert results[0] == results[1]
    log_a, log_b = read_log(tmp_path / "straight"), read_log(tmp_path / "killed")
    strip = lambda log: [{k: v for k, v in line.items() if k != "seconds"} for line in log]  # noqa: E731
    assert strip(log_a) == strip(log_b)


def test_torchrun_two_processes_gloo(fmnist, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO / "classification" / "train.py"),
               *fmnist_args(fmnist, tmp_path, "--epochs", "2", "--batch-size", "32", "--loss", "flsd-53",
                            "--workers", "0", "--no-progress", "--matrix-scaling", "off")]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["args"]["world_size"] == 2
    saved = torch.load(tmp_path / "logits.pt", weights_only=True)
    assert len(saved["test_labels"]) == 100 and len(saved["val_labels"]) == 60  # every row once, none padded
    # rows come back in dataset order from both ranks: the labels equal the test file's labels
    from classification.datasets import load_dataset
    data = load_dataset("fashion-mnist", data_dir=fmnist, val_size=60)
    assert torch.equal(saved["test_labels"], data.test.labels) and torch.equal(saved["val_labels"], data.val.labels)
    assert record["evaluation"]["pre"] == calibration_metrics(saved["test_labels"], logits=saved["test_logits"])
    log = read_log(tmp_path)
    assert len(log) == 2 and log[-1]["test_ece"] == record["evaluation"]["pre"]["ece"]
    assert result.stdout.count("final:") == 1  # only rank 0 reports


def test_gradient_norms_under_official_code_brier_are_per_sample_autograd(fmnist, tmp_path):
    """--official-code averages the *training* Brier loss over the batch; the saved per-sample gradient norms must
    still be those of each sample's own loss: autograd of the naive Brier formula, one sample at a time."""
    from classification.batches import Normalize, iterate_batches
    from classification.datasets import load_dataset
    from classification.models import build_model

    run(fmnist_args(fmnist, tmp_path, "--official-code", "--loss", "brier", "--model", "mlp", "--epochs", "1",
                    "--limit-train", "24", "--limit-eval", "20", "--grad-norm-epochs", "1"))
    saved = torch.load(tmp_path / "grad_norms_epoch1.pt", weights_only=True)["norms"]
    data = load_dataset("fashion-mnist", data_dir=fmnist, val_size=60)
    model = build_model("mlp", data.num_classes, data.in_channels, data.image_size)
    model.load_state_dict(load_checkpoint(tmp_path / "checkpoint.pt")["model"])
    model.eval()
    normalize = Normalize(data.mean, data.std, torch.device("cpu"))
    ((images, labels),) = iterate_batches(data.train, torch.arange(24), 24, torch.device("cpu"))
    with torch.no_grad():
        _, features = model(normalize(images), return_features=True)
    expected = []
    for h, y in zip(features, labels):
        model.fc.zero_grad()
        probs = torch.softmax(model.fc(h[None]), dim=1)[0]
        ((probs - torch.nn.functional.one_hot(y, data.num_classes).float()) ** 2).sum().backward()
        expected.append(torch.cat([model.fc.weight.grad.flatten(), model.fc.bias.grad]).norm())
    assert saved.shape == (24,)
    assert saved.tolist() == pytest.approx(torch.stack(expected).tolist(), rel=1e-4)


def test_gradient_norms_are_refused_for_mmce(fmnist, tmp_path, capsys):
    message = _cli_error(fmnist_args(fmnist, tmp_path, "--loss", "mmce-2", "--grad-norm-epochs", "1"), capsys)
    assert "--grad-norm-epochs" in message and "mmce-2" in message and "per-sample" in message
