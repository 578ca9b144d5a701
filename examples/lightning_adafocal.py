"""Lightning: AdaFocal (γ learnt from the validation set every epoch) driven by ``CalibrationLossCallback``, the
validation ECE / AdaECE logged with the torchmetrics integration, and a run resumed from its checkpoint.

Shows: the loss as an attribute of the LightningModule (found by the callback); ``validation_step`` returning
``{"logits": ..., "labels": ...}`` for the callback; ``MulticlassCalibrationError`` in ``self.log`` (its state is
per-bin sums for ECE, so it syncs across processes cheaply); the loss's γ saved in the checkpoint and restored by
``fit(ckpt_path=...)``. Without the callback AdaFocal's γ would never move. Synthetic data, CPU:

    python examples/lightning_adafocal.py
"""

import tempfile
from pathlib import Path

import lightning.pytorch as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from focal_calibration import build_loss
from focal_calibration.integrations.lightning import CalibrationLossCallback
from focal_calibration.integrations.torchmetrics import MulticlassCalibrationError

NUM_CLASSES = 5


class Classifier(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, NUM_CLASSES))
        self.criterion = build_loss("adafocal")  # the callback finds it (or: CalibrationLossCallback("criterion"))
        self.val_ece = MulticlassCalibrationError("ece", num_classes=NUM_CLASSES)
        self.val_adaece = MulticlassCalibrationError("adaece", num_classes=NUM_CLASSES)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.criterion(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        self.val_ece.update(logits, y)
        self.val_adaece.update(logits, y)
        self.log_dict({"val_ece": self.val_ece, "val_adaece": self.val_adaece}, on_epoch=True)
        return {"logits": logits, "labels": y}  # AdaFocal's feedback, collected by the callback

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def make_loaders(samples: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, 16, generator=generator)
    weights = torch.randn(16, NUM_CLASSES, generator=torch.Generator().manual_seed(7))
    y = torch.multinomial((x @ weights).softmax(-1), 1, generator=generator).squeeze(1)  # noisy labels
    n_train = samples * 3 // 4
    return (DataLoader(TensorDataset(x[:n_train], y[:n_train]), batch_size=64, shuffle=True),
            DataLoader(TensorDataset(x[n_train:], y[n_train:]), batch_size=256))


def main(samples: int = 4000, epochs: int = 6, output_dir=None, seed: int = 0) -> dict:
    L.seed_everything(seed, verbose=False)
    folder = Path(output_dir) if output_dir is not None else Path(tempfile.mkdtemp(prefix="focal_calibration_"))
    train, val = make_loaders(samples, seed)
    options = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                   devices=1)

    # First run: stops after half the epochs, leaving a checkpoint (as a crash or a time limit would).
    first = Classifier()
    checkpoint = L.callbacks.ModelCheckpoint(dirpath=folder, save_last=True)
    L.Trainer(max_epochs=max(1, epochs // 2), callbacks=[CalibrationLossCallback(), checkpoint], **options).fit(
        first, train, val)
    # Resumed run: a fresh module; the weights, the epoch and the loss's γ come from the checkpoint.
    model = Classifier()
    trainer = L.Trainer(max_epochs=epochs, callbacks=[CalibrationLossCallback(), checkpoint], **options)
    trainer.fit(model, train, val, ckpt_path=folder / "last.ckpt")

    result = {"gammas": model.criterion.gammas.tolist(), "updates": int(model.criterion.updates),
              "val_ece": float(trainer.callback_metrics["val_ece"]),
              "val_adaece": float(trainer.callback_metrics["val_adaece"]), "checkpoint": str(folder / "last.ckpt")}
    print(f"AdaFocal after {result['updates']} validations: γ per bin {[round(g, 2) for g in result['gammas']]}; "
          f"val ECE {result['val_ece']:.4f}, AdaECE {result['val_adaece']:.4f}")
    return result


if __name__ == "__main__":
    main()
