"""Multi-label: a tiny MLP on multi-hot labels trained with the sigmoid focal loss (FLSD-53 per element), one
temperature per label, and the multi-label calibration metrics -- also as a streaming ``torchmetrics.Metric``.

Shows: ``build_sigmoid_loss("flsd-53")`` (``SigmoidFocalLoss``) as a drop-in for ``nn.BCEWithLogitsLoss``;
``fit_label_temperatures`` (the paper's ECE grid, one T per label) and ``fit.scale(logits)``;
``multilabel_calibration_metrics`` per label / macro / micro; ``MultilabelCalibrationError`` updated batch by batch
over a ``DataLoader`` (state: per-label bin sums) giving the same macro ECE. Synthetic data, CPU:

    python examples/multilabel.py
"""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from focal_calibration import build_sigmoid_loss, fit_label_temperatures, multilabel_calibration_metrics
from focal_calibration.integrations.torchmetrics import MultilabelCalibrationError

NUM_LABELS, FEATURES = 5, 10


def make_data(samples: int, seed: int = 0):
    """Features and multi-hot labels drawn from σ(x·w + b): each label is uncertain, some rare (b < 0)."""
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randn(FEATURES, NUM_LABELS, generator=torch.Generator().manual_seed(123))
    bias, x = torch.linspace(-2.0, 1.0, NUM_LABELS), torch.randn(samples, FEATURES, generator=generator)
    y = (torch.rand(samples, NUM_LABELS, generator=generator) < torch.sigmoid(x @ weights + bias)).float()
    return x, y


def main(samples: int = 4000, epochs: int = 10, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    x, y = make_data(samples, seed)
    n_train, n_val = samples * 6 // 10, samples * 2 // 10
    train = DataLoader(TensorDataset(x[:n_train], y[:n_train]), batch_size=256, shuffle=True)
    val_x, val_y = x[n_train:n_train + n_val], y[n_train:n_train + n_val]
    test = DataLoader(TensorDataset(x[n_train + n_val:], y[n_train + n_val:]), batch_size=256)

    model = nn.Sequential(nn.Linear(FEATURES, 64), nn.ReLU(), nn.Linear(64, NUM_LABELS))
    loss_fn = build_sigmoid_loss("flsd-53")  # γ = 5 where an element's p_t < 0.2, else 3
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    epoch_losses = []
    for epoch in range(epochs):
        loss_fn.set_epoch(epoch)
        total = 0.0
        for inputs, targets in train:
            optimizer.zero_grad()
            loss = loss_fn(model(inputs), targets)  # [B, L] logits, [B, L] multi-hot targets
            loss.backward()
            optimizer.step()
            total += loss.item() * len(inputs)
        epoch_losses.append(total / n_train)

    model.eval()
    with torch.no_grad():
        val_logits = model(val_x)
        fit = fit_label_temperatures(val_logits, val_y)  # one T per label, the paper's ECE grid
        before = multilabel_calibration_metrics(val_y, logits=val_logits)
        after = multilabel_calibration_metrics(val_y, logits=fit.scale(val_logits))
        test_ece, test_logits = MultilabelCalibrationError(NUM_LABELS, "ece"), []  # macro; per-label bin sums
        for inputs, targets in test:
            test_logits.append(fit.scale(model(inputs)))
            test_ece.update(test_logits[-1], targets)
        streamed = float(test_ece.compute())
        whole = multilabel_calibration_metrics(y[n_train + n_val:], logits=torch.cat(test_logits))
    result = {"epoch_losses": epoch_losses, "temperatures": fit.temperature.tolist(),
              **{f"val_{name}_ece_{when}": metrics[name]["ece"] for when, metrics in (("before", before),
                 ("after", after)) for name in ("macro", "per_label")},
              "test_macro_ece": whole["macro"]["ece"], "test_micro_ece": whole["micro"]["ece"],
              "test_macro_ece_streamed": streamed}
    print(f"sigmoid FLSD-53: loss {epoch_losses[0]:.4f} -> {epoch_losses[-1]:.4f}; T per label "
          f"{[round(t, 1) for t in result['temperatures']]}; val macro ECE {before['macro']['ece']:.4f} -> "
          f"{after['macro']['ece']:.4f}; test macro ECE {whole['macro']['ece']:.4f} (streamed metric {streamed:.4f}), "
          f"micro {whole['micro']['ece']:.4f}")
    return result


if __name__ == "__main__":
    main()
