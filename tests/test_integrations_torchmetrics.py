"""torchmetrics integration: streamed values equal calibration_metrics on all samples and torchmetrics' own
MulticlassCalibrationError; the state is bins (not samples) where the metric allows; two gloo processes give what one
process gives; Lightning's self.log takes it; a missing torchmetrics is one error naming the extra."""

import importlib
import multiprocessing
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from focal_calibration import calibration_metrics
from focal_calibration.integrations.torchmetrics import (MULTICLASS_METRICS, MulticlassCalibrationError,
                                                         MulticlassCalibrationMetrics)

K = 5


@pytest.fixture(scope="module")
def batches():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(1000, K, generator=generator) * 2.5
    labels = torch.multinomial((logits / 2).softmax(-1), 1, generator=generator).squeeze(1)
    labels[::17] = -1  # ignored rows
    return logits, labels


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


SYNCED = ("ece", "classwise_ece", "adaece", "ks")


def _worker(rank, world, folder, logits, labels, bounds):
    dist.init_process_group("gloo", init_method=f"file://{folder}/init", rank=rank, world_size=world)
    try:
        part = slice(*bounds[rank])  # unequal shards: the cat states are padded and trimmed
        values = []
        for name in SYNCED:
            metric = MulticlassCalibrationError(name, num_classes=K, ignore_index=-1)
            metric.update(logits[part], labels[part])
            values.append(metric.compute())
        torch.save(values, f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_equal_one_process(batches, tmp_path):
    logits, labels = batches
    # forkserver: the children fork from a server that imported torchmetrics once (spawn re-imports it per child)
    multiprocessing.get_context("forkserver").set_forkserver_preload([__name__])
    mp.start_processes(_worker, args=(2, str(tmp_path), logits, labels, [(0, 380), (380, 1000)]), nprocs=2,
                       start_method="forkserver")
    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    for index, name in enumerate(SYNCED):
        single = MulticlassCalibrationError(name, num_classes=K, ignore_index=-1)
        single.update(logits, labels)
        expected = float(single.compute())
        assert float(results[0][index]) == pytest.approx(expected, rel=1e-6), name
        assert float(results[1][index]) == float(results[0][index]), name


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

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.val_ece.update(x * self.scale, y)
            self.log("val_ece", self.val_ece, on_epoch=True)

    trainer = lightning.Trainer(logger=False, enable_progress_bar=False, enable_checkpointing=False,
                                enable_model_summary=False, default_root_dir=tmp_path)
    trainer.validate(Module(), DataLoader(TensorDataset(val_logits, val_labels), batch_size=128), verbose=False)
    expected = calibration_metrics(val_labels, logits=val_logits)["ece"]
    assert float(trainer.callback_metrics["val_ece"]) == pytest.approx(expected, rel=1e-6)


def test_missing_torchmetrics_is_one_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchmetrics", None)  # import torchmetrics -> ImportError
    monkeypatch.delitem(sys.modules, "focal_calibration.integrations.torchmetrics")
    with pytest.raises(ImportError, match=r'pip install "focal-calibration\[torchmetrics\]"'):
        importlib.import_module("focal_calibration.integrations.torchmetrics")
