"""Lightning's CalibrationLossCallback with the real package on CPU: FLSc's γ changes at its milestones, AdaFocal's γ
moves after every validation exactly as observe_validation on that validation's logits (computed independently), a
run resumed from a checkpoint ends with the γ of an uninterrupted run, and a missing lightning is one error naming
the extra."""

import importlib
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from focal_calibration import AdaFocalLoss, build_loss

L = pytest.importorskip("lightning.pytorch")
from focal_calibration.integrations.lightning import CalibrationLossCallback  # noqa: E402

K = 3
TRAINER = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1)


@pytest.fixture(scope="module")
def loaders():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(96, 4, generator=generator)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    train = DataLoader(TensorDataset(x[:64], y[:64]), batch_size=16)
    val = DataLoader(TensorDataset(x[64:], y[64:]), batch_size=16)
    return train, val


class Module(L.LightningModule):
    def __init__(self, loss, *, submodule=True):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(4, K)
        if submodule:
            self.criterion = loss
        else:  # a plain attribute: its state is not in the module's state_dict, only the callback keeps it
            object.__setattr__(self, "criterion", loss)
        self.seen = []  # (epoch, γ) of every training step

    def training_step(self, batch, batch_idx):
        x, y = batch
        policy = getattr(self.criterion, "policy", None)
        self.seen.append((self.current_epoch, None if policy is None else policy(None)))
        return self.criterion(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        return {"logits": self.net(x), "labels": y}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


class RecordValidation(L.Callback):
    """After the loss's callback: the loss's γ and, independently, the validation logits of the current weights."""

    def __init__(self, val):
        self.val, self.after = val, []

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        with torch.no_grad():
            logits = torch.cat([pl_module.net(x) for x, _ in self.val])
        labels = torch.cat([y for _, y in self.val])
        self.after.append((pl_module.criterion.gammas.clone(), logits, labels))


def test_flsc_gamma_changes_at_its_milestones(loaders):
    train, val = loaders
    module = Module(build_loss("flsc-531", milestones=(1, 2)))
    L.Trainer(max_epochs=3, callbacks=[CalibrationLossCallback()], enable_checkpointing=False, **TRAINER).fit(
        module, train, val)
    assert sorted(set(module.seen)) == [(0, 5.0), (1, 3.0), (2, 1.0)]


def test_adafocal_gamma_moves_after_each_validation_as_observe_validation(loaders):
    train, val = loaders
    loss = build_loss("adafocal")
    record = RecordValidation(val)
    module = Module(loss)
    trainer = L.Trainer(max_epochs=3, callbacks=[CalibrationLossCallback("criterion"), record],
                        enable_checkpointing=False, num_sanity_val_steps=2, **TRAINER)
    trainer.fit(module, train, val)
    assert int(loss.updates) == 3  # one per validation; the sanity check does not count
    trainer.validate(module, val, verbose=False)
    assert int(loss.updates) == 3  # a validation outside fit does not update the loss
    reference = AdaFocalLoss()
    previous = reference.gammas.clone()
    for gammas, logits, labels in record.after:
        reference.observe_validation(logits, labels)
        assert torch.allclose(gammas, reference.gammas, rtol=1e-6, atol=1e-9)
        assert not torch.equal(gammas, previous)  # γ moved
        previous = gammas


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_resumed_run_continues_with_the_same_gamma(loaders, tmp_path):
    train, val = loaders
    uninterrupted = build_loss("adafocal")
    L.Trainer(max_epochs=3, callbacks=[CalibrationLossCallback(uninterrupted)], enable_checkpointing=False,
              **TRAINER).fit(Module(uninterrupted, submodule=False), train, val)

    checkpoints = L.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)
    first = build_loss("adafocal")
    L.Trainer(max_epochs=2, callbacks=[CalibrationLossCallback(), checkpoints], **TRAINER).fit(
        Module(first, submodule=False), train, val)  # "killed" after epoch 2
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)["callbacks"]
    assert [torch.equal(s["loss_state"]["gammas"], first.gammas) for s in saved.values() if "loss_state" in s] == [True]

    resumed = build_loss("adafocal")  # fresh γ: only the checkpoint can bring the state back
    L.Trainer(max_epochs=3, callbacks=[CalibrationLossCallback()], enable_checkpointing=False, **TRAINER).fit(
        Module(resumed, submodule=False), train, val, ckpt_path=tmp_path / "last.ckpt")
    assert int(resumed.updates) == 3
    assert torch.allclose(resumed.gammas, uninterrupted.gammas, rtol=1e-6, atol=1e-9)
    assert torch.allclose(resumed.inner_edges, uninterrupted.inner_edges, rtol=1e-6)


def test_errors_name_what_to_do(loaders):
    train, val = loaders

    class NoLogits(Module):
        def validation_step(self, batch, batch_idx):
            return None

    trainer = L.Trainer(max_epochs=1, callbacks=[CalibrationLossCallback()], enable_checkpointing=False,
                        num_sanity_val_steps=0, **TRAINER)
    with pytest.raises(ValueError, match="validation_step must return.*'logits'"):
        trainer.fit(NoLogits(build_loss("adafocal")), train, val)

    class TwoLosses(Module):
        def __init__(self):
            super().__init__(build_loss("fl-2"))
            self.other = build_loss("ce")

    with pytest.raises(ValueError, match="2 CalibrationLosses .*criterion, other"):
        L.Trainer(max_epochs=1, callbacks=[CalibrationLossCallback()], enable_checkpointing=False,
                  **TRAINER).fit(TwoLosses(), train, val)
    with pytest.raises(ValueError, match="has no attribute 'loss'"):
        L.Trainer(max_epochs=1, callbacks=[CalibrationLossCallback("loss")], enable_checkpointing=False,
                  **TRAINER).fit(Module(build_loss("ce")), train, val)


def test_missing_lightning_is_one_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "lightning", None)
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    monkeypatch.delitem(sys.modules, "focal_calibration.integrations.lightning")
    with pytest.raises(ImportError, match=r'pip install "focal-calibration\[lightning\]"'):
        importlib.import_module("focal_calibration.integrations.lightning")
