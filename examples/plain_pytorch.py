"""A plain PyTorch loop: train with FLSD-53 (the paper's recommended focal loss), fit a temperature on the
validation set with ``TemperatureScaler``, save the calibrated model and load it back.

Shows: ``build_loss("flsd-53")`` as a drop-in for ``nn.CrossEntropyLoss``; ``loss.set_epoch(epoch)`` (a no-op for
FLSD, needed by epoch-scheduled losses such as ``flsc-531``); ``TemperatureScaler(model).fit(val_loader)`` (the
paper's ECE grid over T = 0.1 ... 10.0, in eval mode without gradients); ``calibration_metrics`` before and after;
``state_dict`` save / reload into a fresh model. Synthetic data, a few seconds on a CPU:

    python examples/plain_pytorch.py
"""

from pathlib import Path
import tempfile

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from focal_calibration import TemperatureScaler, build_loss, calibration_metrics

NUM_CLASSES = 4


def make_data(samples: int, seed: int = 0):
    """Four overlapping Gaussian blobs in 8 dimensions (so a model cannot be certain everywhere)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, NUM_CLASSES, (samples,), generator=generator)
    centres = torch.randn(NUM_CLASSES, 8, generator=torch.Generator().manual_seed(123)) * 1.5
    return centres[labels] + torch.randn(samples, 8, generator=generator), labels


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, NUM_CLASSES))


def main(samples: int = 6000, epochs: int = 20, output_dir=None, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    x, y = make_data(samples, seed)
    n_train, n_val = samples * 6 // 10, samples * 2 // 10
    train = DataLoader(TensorDataset(x[:n_train], y[:n_train]), batch_size=128, shuffle=True)
    val = DataLoader(TensorDataset(x[n_train:n_train + n_val], y[n_train:n_train + n_val]), batch_size=512)
    test_x, test_y = x[n_train + n_val:], y[n_train + n_val:]

    model = make_model()
    loss_fn = build_loss("flsd-53")  # γ = 5 where p_y < 0.2, else 3
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for epoch in range(epochs):
        loss_fn.set_epoch(epoch)
        model.train()
        for inputs, targets in train:
            optimizer.zero_grad()
            loss_fn(model(inputs), targets).backward()
            optimizer.step()

    model.eval()
    with torch.no_grad():
        before = calibration_metrics(test_y, logits=model(test_x))
    scaler = TemperatureScaler(model).fit(val)  # the paper's ECE grid
    with torch.no_grad():
        after = calibration_metrics(test_y, logits=scaler(test_x))

    folder = Path(output_dir) if output_dir is not None else Path(tempfile.mkdtemp(prefix="focal_calibration_"))
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(scaler.state_dict(), folder / "calibrated.pt")
    reloaded = TemperatureScaler(make_model())  # a fresh model: the weights and T come from the file
    reloaded.load_state_dict(torch.load(folder / "calibrated.pt", weights_only=True))
    reloaded.eval()
    with torch.no_grad():
        same = torch.equal(reloaded(test_x), scaler(test_x))

    result = {"temperature": float(scaler.temperature), "test_ece_before": before["ece"],
              "test_ece_after": after["ece"], "accuracy": after["accuracy"], "reloaded_equal": same,
              "saved": str(folder / "calibrated.pt")}
    print(f"FLSD-53: accuracy {after['accuracy']:.3f}, test ECE {before['ece']:.4f} -> {after['ece']:.4f} at "
          f"T = {result['temperature']:.1f}; reloaded model equal: {same} ({result['saved']})")
    return result


if __name__ == "__main__":
    main()
