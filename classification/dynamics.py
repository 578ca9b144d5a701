"""Per-epoch training-dynamics statistics of §3-4 (Figs. 2, 3, 4b-d) and Appendix G (Fig. 10).

* Train NLL overall / for correctly / incorrectly classified samples, entropy for each group and the mean
  penultimate-feature norm are *running* statistics over the epoch's training batches (the model as it trains, on
  augmented images), kept as a few sums on the device: no host sync per step, so they are cheap enough to leave on.
  The core's CalibrationAccumulator is not used here because it validates every batch with a host sync.
* Test statistics come from the core's :func:`~focal_calibration.calibration.metrics.calibration_metrics` on the test
logits,
  once for all samples and once each for the correctly / incorrectly classified ones.
* Last-layer gradient norms (Fig. 4b-d) use Proposition 1's setting: for a per-sample loss l_i and the last layer
  z = W h + b, dl_i/dW = δ_i h_iᵀ with δ_i = dl_i/dz_i, so ||(dl_i/dW, dl_i/db)|| = ||δ_i|| · sqrt(||h_i||² + 1)
  -- exact per-sample norms from one batched backward to the logits.
"""

from __future__ import annotations

import torch

from focal_calibration.calibration.metrics import calibration_metrics

__all__ = ["RunningTrainStats", "test_statistics", "last_layer_gradient_norms"]


class RunningTrainStats:
    """Device-side sums over training batches; :meth:`compute` makes the one host transfer per epoch."""

    _NAMES = ("n", "correct", "nll", "nll_correct", "entropy", "entropy_correct", "feature_norm")

    def __init__(self, device):
        self.sums = torch.zeros(len(self._NAMES), dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor, features: torch.Tensor) -> None:
        log_p = torch.log_softmax(logits.detach().float(), dim=-1)
        nll = -log_p.gather(1, labels[:, None]).squeeze(1)
        entropy = -(log_p.exp() * log_p).sum(-1)
        correct = (log_p.argmax(-1) == labels).to(log_p.dtype)
        batch = torch.stack([torch.tensor(float(len(labels)), device=log_p.device), correct.sum(), nll.sum(),
                             (nll * correct).sum(), entropy.sum(), (entropy * correct).sum(),
                             features.detach().float().norm(dim=-1).sum()])
        self.sums += batch.to(torch.float64)

    def all_reduce(self) -> None:
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.sums)

    def compute(self) -> dict:
        s = dict(zip(self._NAMES, self.sums.tolist()))
        n, n_correct = s["n"], s["correct"]
        n_wrong = n - n_correct

        def ratio(a, b):
            return a / b if b > 0 else None

        return {
            "train_error": ratio(n_wrong, n),
            "train_nll": ratio(s["nll"], n),
            "train_nll_correct": ratio(s["nll_correct"], n_correct),
            "train_nll_incorrect": ratio(s["nll"] - s["nll_correct"], n_wrong),
            "train_entropy_correct": ratio(s["entropy_correct"], n_correct),
            "train_entropy_incorrect": ratio(s["entropy"] - s["entropy_correct"], n_wrong),
            "train_feature_norm": ratio(s["feature_norm"], n),
        }


def test_statistics(logits: torch.Tensor, labels: torch.Tensor, *, n_bins: int = 15) -> dict:
    """Test error / ECE / NLL / entropy overall and NLL / entropy of the correctly and incorrectly classified samples
    (Figs. 2b-c, 3a-d), all from the core metrics."""
    overall = calibration_metrics(labels, logits=logits, n_bins=n_bins)
    correct = logits.argmax(-1) == labels
    stats = {"test_error": overall["error"], "test_ece": overall["ece"], "test_adaece": overall["adaece"],
             "test_nll": overall["nll"], "test_entropy": overall["entropy"]}
    for name, mask in (("correct", correct), ("incorrect", ~correct)):
        if bool(mask.any()):
            group = calibration_metrics(labels[mask], logits=logits[mask], n_bins=n_bins)
            stats[f"test_nll_{name}"], stats[f"test_entropy_{name}"] = group["nll"], group["entropy"]
        else:
            stats[f"test_nll_{name}"] = stats[f"test_entropy_{name}"] = None
    return stats


def last_layer_gradient_norms(logits: torch.Tensor, features: torch.Tensor, labels: torch.Tensor,
                              criterion_sum) -> torch.Tensor:
    """Per-sample norms of the gradient of each sample's loss w.r.t. the last layer's weight and bias.

    ``criterion_sum`` must reduce with ``"sum"`` (so the gradient of row i is that of sample i's own loss).
    """
    z = logits.detach().float().requires_grad_(True)
    (delta,) = torch.autograd.grad(criterion_sum(z, labels), z)
    return delta.norm(dim=-1) * (features.detach().float().square().sum(-1) + 1.0).sqrt()
