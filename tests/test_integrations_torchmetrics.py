"""torchmetrics integration: streamed values equal calibration_metrics / binary_calibration_metrics /
multilabel_calibration_metrics on all samples at once and torchmetrics' own MulticlassCalibrationError /
BinaryCalibrationError (label by label); the state is bins (not samples) where the metric allows; two gloo processes
give what one process gives; Lightning's self.log takes them; a missing torchmetrics is one error naming the
extra."""

import importlib
import multiprocessing
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from focal_calibration import binary_calibration_metrics, calibration_metrics, multilabel_calibration_metrics
from focal_calibration.integrations.torchmetrics import (LABEL_AVERAGES, LABEL_METRICS, MULTICLASS_METRICS,
                                                         BinaryCalibrationError, MulticlassCalibrationError,
                                                         MulticlassCalibrationMetrics, MultilabelCalibrationError)

K = 5
L = 4
EXTRAS = ("smece", "ks", "ece_sweep", "debiased_l2_ece")


@pytest.fixture(scope="module")
def batches():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(1000, K, generator=generator) * 2.5
    labels = torch.multinomial((logits / 2).softmax(-1), 1, generator=generator).squeeze(1)
    labels[::17] = -1  # ignored rows
    return logits, labels


@pytest.fixture(scope="module")
def label_batches():
    """Multi-label logits [1000, L] and 0 / 1 targets drawn from σ(z / 2) (over-confident), some pairs -1."""
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(1000, L, generator=generator) * 2.5 + torch.tensor([-1.0, 0.0, 0.5, 1.5])
    targets = (torch.rand(1000, L, generator=generator) < torch.sigmoid(logits / 2)).long()
    targets[torch.rand(1000, L, generator=generator) < 0.05] = -1  # ignored pairs
    return logits, targets


def _stream(metric, logits, labels, sizes=(300, 1, 450, 249)):
    start = 0
    for size in sizes:
        metric.update(logits[start:start + size], labels[start:start + size])
        start += size
    assert start == len(labels)
    return metric.compute()


@pytest.mark.parametrize("name", MULTICLASS_METRICS)
def test_each_metric_streamed_equals_calibration_metrics(batches, name):
    logits, labels = batches
    keep = labels != -1
    expected = calibration_metrics(labels[keep], logits=logits[keep], extra=[name] if name in (
        "smece", "ks", "ece_sweep", "debiased_l2_ece") else ())[name]
    metric = MulticlassCalibrationError(name, num_classes=K, ignore_index=-1)
    value = _stream(metric, logits, labels)
    assert value.dtype == torch.float32 and value.shape == ()
    assert float(value) == pytest.approx(expected, rel=1e-6, abs=1e-7)
    by_probs = MulticlassCalibrationError(name, num_classes=K, ignore_index=-1, input="probs")
    assert float(_stream(by_probs, logits.softmax(-1), labels)) == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_state_is_bins_where_the_metric_allows(batches):
    logits, labels = batches
    for name in ("ece", "mce", "classwise_ece", "smece"):
        metric = MulticlassCalibrationError(name, num_classes=K, ignore_index=-1)
        _stream(metric, logits, labels)
        sizes = {key: value.numel() for key, value in metric.metric_state.items()}
        assert all(not isinstance(value, list) for value in metric.metric_state.values()), name
        fresh = MulticlassCalibrationError(name, num_classes=K).metric_state
        fresh = {key: value.numel() for key, value in fresh.items()}
        assert sizes == fresh, name  # the same before and after the data: memory by bins, not samples
    adaece = MulticlassCalibrationError("adaece", ignore_index=-1)
    _stream(adaece, logits, labels)
    assert sum(part.numel() for part in adaece.confidences) == int((labels != -1).sum())  # AdaECE keeps samples


def test_equals_torchmetrics_own_calibration_error(batches):
    from torchmetrics.classification import MulticlassCalibrationError as Reference

    logits, labels = batches
    keep = labels != -1
    for ours, norm in (("ece", "l1"), ("mce", "max")):
        reference = Reference(num_classes=K, n_bins=15, norm=norm)
        mine = MulticlassCalibrationError(ours, num_classes=K)
        for start in range(0, 1000, 250):
            part = slice(start, start + 250)
            reference.update(logits[part][keep[part]].softmax(-1), labels[part][keep[part]])
            mine.update(logits[part][keep[part]], labels[part][keep[part]])
        assert float(mine.compute()) == pytest.approx(float(reference.compute()), abs=2e-6)


def test_segmentation_shaped_preds_and_the_full_dict(batches):
    logits, labels = batches
    pixels = logits[:960].reshape(4, 12, 20, K).permute(0, 3, 1, 2)  # [N, C, H, W]
    targets = labels[:960].reshape(4, 12, 20)
    metric = MulticlassCalibrationMetrics(num_classes=K, ignore_index=-1)
    metric.update(pixels, targets)
    keep = labels[:960] != -1
    expected = calibration_metrics(labels[:960][keep], logits=logits[:960][keep])
    values = metric.compute()
    assert set(values) == set(expected)
    for name, value in expected.items():
        if value is None:
            assert torch.isnan(values[name])
        else:
            assert float(values[name]) == pytest.approx(value, rel=1e-6, abs=1e-7), name


def test_errors_are_named():
    with pytest.raises(ValueError, match="metric"):
        MulticlassCalibrationError("brier")
    with pytest.raises(ValueError, match="num_classes"):
        MulticlassCalibrationError("classwise_ece")
    metric = MulticlassCalibrationError(num_classes=K)
    with pytest.raises(ValueError, match="no samples"):
        metric.compute()
    with pytest.raises(ValueError, match="num_classes=5"):
        metric.update(torch.randn(3, K + 1), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="class index 7"):
        metric.update(torch.randn(3, K), torch.tensor([0, 7, 1]))
    with pytest.raises(ValueError, match="finite"):
        metric.update(torch.tensor([[float("nan")] * K]), torch.tensor([0]))


def _label_reference(name, scores, targets, average, **options):
    """``name`` from the one-shot functions on all pairs at once (pairs with target -1 dropped)."""
    extra = (name,) if name in EXTRAS else ()
    if average is None:
        return binary_calibration_metrics(targets, logits=scores, ignore_index=-1, extra=extra, **options)[name]
    values = multilabel_calibration_metrics(targets, logits=scores, ignore_index=-1, extra=extra, **options)
    values = values["per_label" if average == "none" else average][name]
    return torch.tensor([float("nan") if v is None else v for v in values]) if average == "none" else values


@pytest.mark.parametrize("name", LABEL_METRICS)
def test_binary_metric_streamed_equals_binary_calibration_metrics(label_batches, name):
    scores, targets = label_batches[0][:, 1], label_batches[1][:, 1]
    expected = _label_reference(name, scores, targets, None)
    streamed = _stream(BinaryCalibrationError(name, ignore_index=-1), scores, targets)
    assert streamed.dtype == torch.float32 and streamed.shape == ()
    assert float(streamed) == pytest.approx(expected, rel=1e-6, abs=1e-7)
    once = BinaryCalibrationError(name, ignore_index=-1)
    once.update(scores, targets)
    assert float(once.compute()) == pytest.approx(float(streamed), rel=1e-6, abs=1e-7)  # several updates == one
    by_probs = BinaryCalibrationError(name, ignore_index=-1, input="probs")
    assert float(_stream(by_probs, torch.sigmoid(scores), targets)) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    top = _stream(BinaryCalibrationError(name, ignore_index=-1, confidence="top_label"), scores, targets)
    assert float(top) == pytest.approx(_label_reference(name, scores, targets, None, confidence="top_label"),
                                       rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("name", LABEL_METRICS)
def test_multilabel_metric_streamed_equals_multilabel_calibration_metrics(label_batches, name):
    scores, targets = label_batches
    for average in LABEL_AVERAGES:
        expected = _label_reference(name, scores, targets, average)
        metric = MultilabelCalibrationError(L, name, average=average, ignore_index=-1)
        streamed = _stream(metric, scores, targets)
        once = MultilabelCalibrationError(L, name, average=average, ignore_index=-1)
        once.update(scores, targets)
        if average == "none":
            assert streamed.shape == (L,)
            torch.testing.assert_close(streamed, expected.float(), rtol=1e-6, atol=1e-7)
        else:
            assert streamed.shape == () and float(streamed) == pytest.approx(expected, rel=1e-6, abs=1e-7)
        torch.testing.assert_close(once.compute(), streamed, rtol=1e-6, atol=1e-7)  # several updates == one


def test_label_metrics_equal_torchmetrics_binary_calibration_error(label_batches):
    """Label by label on the kept pairs: torchmetrics bins [(i-1)/M, i/M) and we bin ((i-1)/M, i/M]
    (docs/guide/binary-multilabel.md); random float32 probabilities lie on no edge, so the two must agree."""
    from torchmetrics.classification import BinaryCalibrationError as Reference

    scores, targets = label_batches
    probs = torch.sigmoid(scores)
    edges = torch.arange(16) / 15
    assert not torch.isin(probs, edges.float()).any()
    for ours, norm in (("ece", "l1"), ("mce", "max")):
        per_label = []
        for label in range(L):
            keep = targets[:, label] != -1
            reference = Reference(n_bins=15, norm=norm)
            reference.update(probs[keep, label], targets[keep, label])
            per_label.append(float(reference.compute()))
            binary = BinaryCalibrationError(ours, input="probs", ignore_index=-1)
            _stream(binary, probs[:, label], targets[:, label])
            assert float(binary.compute()) == pytest.approx(per_label[-1], abs=2e-6), (ours, label)
        each = _stream(MultilabelCalibrationError(L, ours, average="none", ignore_index=-1), scores, targets)
        torch.testing.assert_close(each, torch.tensor(per_label), rtol=0, atol=2e-6)
        macro = _stream(MultilabelCalibrationError(L, ours, ignore_index=-1), scores, targets)
        assert float(macro) == pytest.approx(sum(per_label) / L, abs=2e-6)
        keep = targets != -1  # micro: every kept pair pooled into one binary problem
        pooled = Reference(n_bins=15, norm=norm)
        pooled.update(probs[keep], targets[keep])
        micro = _stream(MultilabelCalibrationError(L, ours, average="micro", ignore_index=-1), scores, targets)
        assert float(micro) == pytest.approx(float(pooled.compute()), abs=2e-6)


def test_multilabel_label_dim_and_mask(label_batches):
    scores, targets = label_batches
    known = targets != -1
    # [N, L, 2] with labels on dim 1 and a mask instead of ignore_index: the pairs of the [2N, L] problem
    preds = torch.stack([scores[:500], scores[500:]], dim=-1)
    target = torch.stack([targets[:500], targets[500:]], dim=-1).clamp(min=0)
    mask = torch.stack([known[:500], known[500:]], dim=-1)
    metric = MultilabelCalibrationError(L, "ece", average="none")
    metric.update(preds, target, mask=mask)
    torch.testing.assert_close(metric.compute(), _label_reference("ece", scores, targets, "none").float(),
                               rtol=1e-6, atol=1e-7)
    last = MultilabelCalibrationError(L, "adaece", average="micro", label_dim=-1, ignore_index=-1)
    last.update(scores[None], targets[None])  # [1, N, L], labels last
    assert float(last.compute()) == pytest.approx(_label_reference("adaece", scores, targets, "micro"), rel=1e-6)


def test_label_metric_state_is_bins_where_the_metric_allows(label_batches):
    scores, targets = label_batches
    for name in ("ece", "mce", "smece"):
        for make in (lambda: BinaryCalibrationError(name, ignore_index=-1),
                     lambda: MultilabelCalibrationError(L, name, ignore_index=-1)):
            metric = make()
            fresh = {key: value.numel() for key, value in metric.metric_state.items()}
            data = (scores, targets) if isinstance(metric, MultilabelCalibrationError) else (scores[:, 0],
                                                                                             targets[:, 0])
            _stream(metric, *data)
            assert all(not isinstance(value, list) for value in metric.metric_state.values()), name
            assert {key: value.numel() for key, value in metric.metric_state.items()} == fresh, name
    multilabel = MultilabelCalibrationError(L, "ece")
    assert multilabel.bin_count.shape == (L, 15, 1)  # per-label bins
    adaece = MultilabelCalibrationError(L, "adaece", ignore_index=-1)
    _stream(adaece, scores, targets)
    assert sum(part.numel() for part in adaece.confidences) == scores.numel()  # AdaECE keeps every pair


def test_label_metric_errors_are_named():
    with pytest.raises(ValueError, match="metric must be one of .* got 'classwise_ece'"):
        BinaryCalibrationError("classwise_ece")
    with pytest.raises(ValueError, match="average must be one of .* got 'weighted'"):
        MultilabelCalibrationError(L, average="weighted")
    with pytest.raises(ValueError, match="num_labels"):
        MultilabelCalibrationError(0)
    with pytest.raises(ValueError, match="input must be one of .* got 'auto'"):
        BinaryCalibrationError(input="auto")
    binary = BinaryCalibrationError()
    with pytest.raises(ValueError, match="no samples"):
        binary.compute()
    with pytest.raises(ValueError, match="labels must be 0 or 1, got 2"):
        binary.update(torch.zeros(3), torch.tensor([0, 2, 1]))
    with pytest.raises(ValueError, match="finite"):
        binary.update(torch.tensor([0.0, float("nan")]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"probs must lie in \[0, 1\], got 1.5"):
        BinaryCalibrationError(input="probs").update(torch.tensor([0.2, 1.5]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="shape mismatch"):
        binary.update(torch.zeros(3), torch.zeros(4))
    multilabel = MultilabelCalibrationError(L)
    with pytest.raises(ValueError, match=r"5 labels on label_dim=1 .* num_labels=4"):
        multilabel.update(torch.zeros(3, L + 1), torch.zeros(3, L + 1))
    with pytest.raises(ValueError, match="label_dim=2 is not a dimension"):
        MultilabelCalibrationError(L, label_dim=2).update(torch.zeros(3, L), torch.zeros(3, L))
    with pytest.raises(ValueError, match="shape mismatch"):
        multilabel.update(torch.zeros(3, L), torch.zeros(2, L))
    with pytest.raises(ValueError, match="labels must be 0 or 1 \\(or ignore_index=-1\\), got 3"):
        MultilabelCalibrationError(L, ignore_index=-1).update(torch.zeros(2, L), torch.full((2, L), 3))
    assert int(binary.n.sum()) == 0 and int(multilabel.n.sum()) == 0  # a refused batch leaves the state alone


SYNCED = ("ece", "classwise_ece", "adaece", "ks")


def _synced_cases(batches, label_batches):
    """(metric class, args, kwargs, preds, target): every kind of state -- sums, cat samples, per label."""
    logits, labels = batches
    scores, targets = label_batches
    cases = [(MulticlassCalibrationError, (name,), {"num_classes": K, "ignore_index": -1}, logits, labels)
             for name in SYNCED]
    cases += [(BinaryCalibrationError, (name,), {"ignore_index": -1}, scores[:, 0], targets[:, 0])
              for name in ("ece", "adaece")]
    cases += [(MultilabelCalibrationError, (L, name), {"average": average, "ignore_index": -1}, scores, targets)
              for name, average in (("ece", "none"), ("mce", "micro"), ("adaece", "macro"), ("ks", "none"))]
    return cases


def _worker(rank, world, folder, cases, bounds):
    dist.init_process_group("gloo", init_method=f"file://{folder}/init", rank=rank, world_size=world)
    try:
        part = slice(*bounds[rank])  # unequal shards: the cat states are padded and trimmed
        values = []
        for metric_class, args, kwargs, preds, target in cases:
            metric = metric_class(*args, **kwargs)
            metric.update(preds[part], target[part])
            values.append(metric.compute())
        torch.save(values, f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_equal_one_process(batches, label_batches, tmp_path):
    cases = _synced_cases(batches, label_batches)
    # forkserver: the children fork from a server that imported torchmetrics once (spawn re-imports it per child)
    multiprocessing.get_context("forkserver").set_forkserver_preload([__name__])
    mp.start_processes(_worker, args=(2, str(tmp_path), cases, [(0, 380), (380, 1000)]), nprocs=2,
                       start_method="forkserver")
    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    for index, (metric_class, args, kwargs, preds, target) in enumerate(cases):
        single = metric_class(*args, **kwargs)
        single.update(preds, target)
        expected = single.compute()
        name = f"{metric_class.__name__}{args}"
        torch.testing.assert_close(results[0][index], expected, rtol=1e-6, atol=1e-7, msg=name)
        assert torch.equal(results[1][index], results[0][index]), name


def test_lightning_self_log_takes_the_metric(batches, tmp_path):
    lightning = pytest.importorskip("lightning.pytorch")
    from torch.utils.data import DataLoader, TensorDataset

    logits, labels = batches
    keep = labels != -1
    val_logits, val_labels = logits[keep][:600], labels[keep][:600]

    class Module(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))
            self.val_ece = MulticlassCalibrationError("ece", num_classes=K)
            self.val_binary_ece = BinaryCalibrationError("ece")  # class 0 against the rest
            self.val_multilabel_ece = MultilabelCalibrationError(K, "ece")  # one-hot targets, macro

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.val_ece.update(x * self.scale, y)
            self.log("val_ece", self.val_ece, on_epoch=True)
            self.val_binary_ece.update(x[:, 0] * self.scale, y == 0)
            self.log("val_binary_ece", self.val_binary_ece, on_epoch=True)
            self.val_multilabel_ece.update(x * self.scale, torch.nn.functional.one_hot(y, K))
            self.log("val_multilabel_ece", self.val_multilabel_ece, on_epoch=True)

    trainer = lightning.Trainer(logger=False, enable_progress_bar=False, enable_checkpointing=False,
                                enable_model_summary=False, default_root_dir=tmp_path)
    trainer.validate(Module(), DataLoader(TensorDataset(val_logits, val_labels), batch_size=128), verbose=False)
    expected = calibration_metrics(val_labels, logits=val_logits)["ece"]
    assert float(trainer.callback_metrics["val_ece"]) == pytest.approx(expected, rel=1e-6)
    binary = binary_calibration_metrics(val_labels == 0, logits=val_logits[:, 0])["ece"]
    assert float(trainer.callback_metrics["val_binary_ece"]) == pytest.approx(binary, rel=1e-6)
    multilabel = multilabel_calibration_metrics(torch.nn.functional.one_hot(val_labels, K), logits=val_logits)
    assert float(trainer.callback_metrics["val_multilabel_ece"]) == pytest.approx(multilabel["macro"]["ece"], rel=1e-6)


def test_missing_torchmetrics_is_one_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchmetrics", None)  # import torchmetrics -> ImportError
    monkeypatch.delitem(sys.modules, "focal_calibration.integrations.torchmetrics")
    with pytest.raises(ImportError, match=r'pip install "focal-calibration\[torchmetrics\]"'):
        importlib.import_module("focal_calibration.integrations.torchmetrics")
