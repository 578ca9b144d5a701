"""Segmentation-shaped logits: a tiny fully convolutional net trained with FLSD-53 on ``[N, C, H, W]`` logits, the
calibration of its pixels, and a ``TemperatureScaler`` fitted on the validation images.

Shows: ``build_loss("flsd-53", ignore_index=255, weight=...)`` with ``nn.CrossEntropyLoss``'s contract (classes on
dim 1, unlabelled pixels ignored, per-class weights: the weighted mean divides by the labelled pixels' weights);
``calibration_metrics`` over the flattened labelled pixels; ``TemperatureScaler(model).fit(val_loader,
ignore_index=255)`` collecting ``[N, C, H, W]`` logits (``class_dim=1``, the default). Synthetic data, CPU:

    python examples/segmentation.py
"""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from focal_calibration import TemperatureScaler, build_loss, calibration_metrics

NUM_CLASSES, IGNORE = 3, 255


def make_data(images: int, size: int = 16, seed: int = 0):
    """Noisy images whose pixel class is the brightest of three smooth channels; the border is unlabelled (255)."""
    generator = torch.Generator().manual_seed(seed)
    smooth = nn.functional.avg_pool2d(torch.randn(images, NUM_CLASSES, size, size, generator=generator), 5, 1, 2)
    labels = smooth.argmax(1)
    labels[:, 0, :] = labels[:, :, 0] = IGNORE
    return smooth * 4 + torch.randn(smooth.shape, generator=generator), labels  # noise: neighbours help


def pixel_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """``calibration_metrics`` of every labelled pixel: ``[N, C, H, W]`` logits flattened to ``[N·H·W, C]``."""
    return calibration_metrics(labels.reshape(-1), logits=logits.movedim(1, -1).reshape(-1, NUM_CLASSES),
                               ignore_index=IGNORE)


def main(images: int = 240, epochs: int = 15, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    x, y = make_data(images, seed=seed)
    n_train, n_val = images // 2, images // 4
    train = DataLoader(TensorDataset(x[:n_train], y[:n_train]), batch_size=16, shuffle=True)
    val = DataLoader(TensorDataset(x[n_train:n_train + n_val], y[n_train:n_train + n_val]), batch_size=32)
    val_x, val_y = x[n_train:n_train + n_val], y[n_train:n_train + n_val]

    labelled = y[:n_train][y[:n_train] != IGNORE]
    weight = labelled.numel() / (NUM_CLASSES * torch.bincount(labelled, minlength=NUM_CLASSES).float())
    model = nn.Sequential(nn.Conv2d(NUM_CLASSES, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                          nn.ReLU(), nn.Conv2d(16, NUM_CLASSES, 1))
    loss_fn = build_loss("flsd-53", ignore_index=IGNORE, weight=weight)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    epoch_losses = []
    for epoch in range(epochs):
        loss_fn.set_epoch(epoch)
        model.train()
        total = 0.0
        for inputs, targets in train:
            optimizer.zero_grad()
            loss = loss_fn(model(inputs), targets)  # [B, C, H, W] logits, [B, H, W] targets
            loss.backward()
            optimizer.step()
            total += loss.item() * len(inputs)
        epoch_losses.append(total / n_train)

    model.eval()
    with torch.no_grad():
        before = pixel_metrics(model(val_x), val_y)
    scaler = TemperatureScaler(model).fit(val, ignore_index=IGNORE)  # the paper's ECE grid over the val pixels
    with torch.no_grad():
        after = pixel_metrics(scaler(val_x), val_y)
        test = pixel_metrics(scaler(x[n_train + n_val:]), y[n_train + n_val:])
    result = {"epoch_losses": epoch_losses, "temperature": float(scaler.temperature), "val_ece_before": before["ece"],
              "val_ece_after": after["ece"], "test_ece": test["ece"], "test_accuracy": test["accuracy"],
              "val_pixels": before["n"]}
    print(f"FLSD-53 on [N, {NUM_CLASSES}, H, W]: loss {epoch_losses[0]:.3f} -> {epoch_losses[-1]:.3f}; pixel accuracy "
          f"{test['accuracy']:.3f}; val ECE {before['ece']:.4f} -> {after['ece']:.4f} at T = "
          f"{result['temperature']:.1f}; test ECE {test['ece']:.4f}")
    return result


if __name__ == "__main__":
    main()
