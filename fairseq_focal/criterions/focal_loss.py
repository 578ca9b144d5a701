"""fairseq criterion ``focal_loss``: focal loss (Mukhoti et al. 2020, §4 and §5.2) over the full vocabulary.

    fairseq-train DATA --user-dir fairseq_focal --criterion focal_loss --gamma 1 ...

* Loss: the core's :func:`focal_calibration.focal.focal_loss` (analytic fused backward) on the decoder's logits, summed
  over non-padding target tokens, divided by fairseq as usual (``sample_size`` = tokens, or sentences with
  ``--sentence-avg``). γ = 0 is fairseq's ``cross_entropy`` criterion exactly.
* ``--label-smoothing α`` > 0: focal loss against the smoothed target (the true class 1-α, the others α/(V-1)),
  :func:`focal_calibration.focal_smoothing.focal_label_smoothed_loss`; γ = 0 is ``label_smoothed_cross_entropy``.
* γ policies (``--gamma-policy``, the core's spec names): ``flsd-53`` (sample-dependent, §4), ``flsd-532``,
  ``flsd-prop2-0.2-0.25`` (Proposition 2), ``flsc-531`` (epoch-scheduled; ``--gamma-milestones`` in epochs).
* Logged like fairseq's criteria: ``loss`` (base 2, per ``sample_size``), ``nll_loss`` (base 2, per token), ``ppl``,
  optionally ``accuracy``; plus ``gamma`` (mean γ per target token) and, on validation, ``ece`` (token-level top-1
  ECE in %, eq. 1, ``--calibration-bins`` equal-width bins). ECE is derived from per-bin sums carried in the logging
  outputs, so it is exact over all validation batches and workers (``--best-checkpoint-metric ece`` works).
"""


import math
from dataclasses import dataclass, field
from typing import Optional

import torch
from fairseq import utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass
from fairseq.logging import metrics
from omegaconf import II

from focal_calibration._internal import check_nonnegative_number
from focal_calibration.focal import focal_loss
from focal_calibration.focal_smoothing import focal_label_smoothed_loss
from focal_calibration.gamma import FixedGamma, GammaPolicy
from focal_calibration.losses import FocalLoss, build_loss
from focal_calibration.metrics import ece_from_sums, equal_width_sums



@dataclass
class FocalLossCriterionConfig(FairseqDataclass):
    gamma: float = field(default=1.0, metadata={"help": "focal loss gamma (0 = cross-entropy); ignored when "
                                                         "--gamma-policy is set"})
    gamma_policy: Optional[str] = field(default=None, metadata={
        "help": "a gamma policy by its paper name: flsd-53 (5 if p_y < 0.2 else 3), flsd-532, flsd-prop2-0.2-0.25 "
                "(Proposition 2), flsc-531 (epoch-scheduled), fl-<gamma>"})
    gamma_milestones: Optional[str] = field(default=None, metadata={
        "help": "comma-separated epoch milestones for flsc-* (default 100,250 for three gammas)"})
    gamma_thresholds: Optional[str] = field(default=None, metadata={
        "help": "comma-separated p_y thresholds for flsd-* (default 0.2 / 0.2,0.5)"})
    label_smoothing: float = field(default=0.0, metadata={
        "help": "epsilon: focal loss against the label-smoothed target (0 = hard targets)"})
    report_accuracy: bool = field(default=False, metadata={"help": "report accuracy metric"})
    ignore_prefix_size: int = field(default=0, metadata={"help": "Ignore first N tokens"})
    calibration_bins: int = field(default=15, metadata={
        "help": "equal-width bins of the token-level validation ECE (0 = do not compute it)"})
    sentence_avg: bool = II("optimization.sentence_avg")


def _numbers(text: Optional[str], name: str, kind=float):
    if text is None or str(text).strip() == "":
        return None
    try:
        return tuple(kind(t) for t in str(text).split(","))
    except ValueError:
        raise ValueError(f"--{name} must be comma-separated numbers, got {text!r}") from None


def build_gamma_policy(gamma: float, policy: Optional[str] = None, milestones: Optional[str] = None,
                       thresholds: Optional[str] = None) -> GammaPolicy:
    """The γ policy of the options: a fixed γ, or a focal spec of the core's ``build_loss`` (one parser for all)."""
    if not policy:
        return FixedGamma(check_nonnegative_number(gamma, "gamma"))
    loss = build_loss(policy, milestones=_numbers(milestones, "gamma-milestones", int),
                      thresholds=_numbers(thresholds, "gamma-thresholds"))
    if not isinstance(loss, FocalLoss) or type(loss) is not FocalLoss:
        raise ValueError(f"--gamma-policy must name a focal-loss policy (fl-<gamma>, flsc-<gammas>, flsd-<gammas>, "
                         f"flsd-prop2-<p0s>), got {policy!r}")
    return loss.policy


class _RecordingPolicy:
    """Calls the γ policy inside the focal kernel and keeps what it saw: the detached p_y of every row (so the
    criterion logs nll_loss without a second pass over the logits) and the γ it returned (logged as ``gamma``)."""

    def __init__(self, policy: GammaPolicy):
        self.policy = policy
        self.p_y = self.gamma = None

    def __call__(self, p_y: torch.Tensor):
        self.p_y = p_y
        self.gamma = self.policy(p_y)
        return self.gamma


@register_criterion("focal_loss", dataclass=FocalLossCriterionConfig)
class FocalLossCriterion(FairseqCriterion):
    def __init__(self, task, sentence_avg, gamma=1.0, gamma_policy=None, gamma_milestones=None, gamma_thresholds=None,
                 label_smoothing=0.0, report_accuracy=False, ignore_prefix_size=0, calibration_bins=15):
        super().__init__(task)
        self.sentence_avg = sentence_avg
        self.policy = build_gamma_policy(gamma, gamma_policy, gamma_milestones, gamma_thresholds)
        self.eps = check_nonnegative_number(label_smoothing, "label_smoothing")
        if self.eps >= 1:
            raise ValueError(f"--label-smoothing must lie in [0, 1), got {label_smoothing!r}")
        if ignore_prefix_size < 0:
            raise ValueError(f"--ignore-prefix-size must be >= 0, got {ignore_prefix_size!r}")
        if calibration_bins < 0:
            raise ValueError(f"--calibration-bins must be >= 0, got {calibration_bins!r}")
        self.ignore_prefix_size = ignore_prefix_size
        self.report_accuracy = report_accuracy
        self.calibration_bins = calibration_bins
        self._hook_epochs(task)

    def _hook_epochs(self, task) -> None:
        """fairseq tells the task, not the criterion, when an epoch starts (Trainer.begin_epoch -> task.begin_epoch,
        also after a resume); epoch-scheduled γ (FLSc) needs it, so wrap this task instance's begin_epoch."""
        task_begin_epoch = task.begin_epoch

        def begin_epoch(epoch, model):
            self.set_epoch(epoch - 1)  # fairseq counts epochs from 1, the core's policies from 0
            return task_begin_epoch(epoch, model)

        task.begin_epoch = begin_epoch

    def set_epoch(self, epoch: int) -> None:
        self.policy.set_epoch(epoch)

    def forward(self, model, sample, reduce=True):
        """Returns (loss, sample_size, logging_output) like fairseq's criteria."""
        net_output = model(**sample["net_input"])
        logits, target = self.get_logits_and_target(model, net_output, sample)
        not_pad = target != self.padding_idx
        recorder = _RecordingPolicy(self.policy)
        if self.eps > 0:
            tokens_loss, tokens_nll = focal_label_smoothed_loss(logits, target, recorder, self.eps, reduction="none",
                                                                ignore_index=self.padding_idx, return_nll=True)
        else:
            tokens_loss = focal_loss(logits, target, recorder, reduction="none", ignore_index=self.padding_idx)
            with torch.no_grad():
                # -log p_y from the p_y the kernel saw (accurate to rounding while p_y is a normal number); where
                # p_y < eps/4, 1 - p_y rounds to 1, so the token's focal loss *is* -log p_y exactly: use it there.
                p_y = recorder.p_y
                tiny = torch.finfo(p_y.dtype).eps / 4
                tokens_nll = torch.where(p_y >= tiny, -torch.log(p_y), tokens_loss.detach())
                tokens_nll = torch.where(not_pad, tokens_nll, torch.zeros_like(tokens_nll))
        loss = tokens_loss.sum() if reduce else tokens_loss
        nll_loss = tokens_nll.sum() if reduce else tokens_nll
        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
        logging_output = {
            "loss": loss.data,
            "nll_loss": nll_loss.data,
            "ntokens": sample["ntokens"],
            "nsentences": sample["target"].size(0),
            "sample_size": sample_size,
        }
        with torch.no_grad():
            gamma = recorder.gamma
            logging_output["gamma_sum"] = (gamma * not_pad).sum() if isinstance(gamma, torch.Tensor) \
                else float(gamma) * not_pad.sum()
            logging_output["gamma_tokens"] = not_pad.sum()
            if self.report_accuracy or (not model.training and self.calibration_bins > 0):
                self._add_calibration(logits, target, not_pad, logging_output, model.training)
        return loss, sample_size, logging_output

    def get_logits_and_target(self, model, net_output, sample):
        """Decoder logits [tokens, V] (a view, no copy) and targets; prefix tokens are masked as padding instead of
        sliced off, which would copy the logits."""
        if getattr(model.decoder, "adaptive_softmax", None) is not None:
            raise ValueError("focal_loss needs the full-vocabulary logits; this model uses an adaptive softmax "
                             "(--adaptive-softmax-cutoff), which focal_loss does not support")
        logits = net_output[0]
        target = model.get_targets(sample, net_output)
        if self.ignore_prefix_size > 0:
            target = target.clone()
            target[:, : self.ignore_prefix_size] = self.padding_idx
        if logits.shape[:-1] != target.shape:
            raise ValueError(f"decoder output {tuple(logits.shape)} does not match the targets {tuple(target.shape)}")
        return logits.reshape(-1, logits.shape[-1]), target.reshape(-1)

    def _add_calibration(self, logits, target, not_pad, logging_output, training):
        """Accuracy counts and (on validation) the per-bin sums of top-1 confidence vs correctness, eq. (1).
        Row-wise reductions of the logits only: no N×V copy."""
        z_max, prediction = logits.max(dim=-1)
        correct = (prediction == target) & not_pad
        if self.report_accuracy:
            logging_output["n_correct"] = correct.sum()
            logging_output["total"] = not_pad.sum()
        if training or self.calibration_bins == 0:
            return
        lse = torch.logsumexp(logits.float(), dim=-1)
        confidence = torch.exp(z_max.float() - lse)[not_pad]  # max softmax probability, float32 for half logits
        count, conf_sum, correct_sum = equal_width_sums(confidence, correct[not_pad], self.calibration_bins)
        for b in range(self.calibration_bins):  # scalar keys: fairseq's fast stat sync sums 0-d values only
            logging_output[f"_ece_count_{b}"] = count[b]
            logging_output[f"_ece_conf_{b}"] = conf_sum[b]
            logging_output[f"_ece_correct_{b}"] = correct_sum[b]

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        """Aggregate logging outputs from data parallel training (as label_smoothed_cross_entropy, plus γ and ECE)."""
        def total(key):
            return sum(log.get(key, 0) for log in logging_outputs)

        loss_sum, nll_loss_sum = total("loss"), total("nll_loss")
        ntokens, sample_size = total("ntokens"), total("sample_size")
        metrics.log_scalar("loss", loss_sum / sample_size / math.log(2), sample_size, round=3)
        metrics.log_scalar("nll_loss", nll_loss_sum / ntokens / math.log(2), ntokens, round=3)
        metrics.log_derived("ppl", lambda meters: utils.get_perplexity(meters["nll_loss"].avg))
        gamma_tokens = utils.item(total("gamma_tokens"))
        if gamma_tokens > 0:
            metrics.log_scalar("gamma", utils.item(total("gamma_sum")) / gamma_tokens, gamma_tokens, round=3)

        n_total = utils.item(total("total"))
        if n_total > 0:
            metrics.log_scalar("total", n_total)
            metrics.log_scalar("n_correct", utils.item(total("n_correct")))
            metrics.log_derived("accuracy", lambda meters: round(meters["n_correct"].sum * 100.0 / meters["total"].sum,
                                                                 3) if meters["total"].sum > 0 else float("nan"))

        n_bins = sum(1 for key in (logging_outputs[0] if logging_outputs else {}) if key.startswith("_ece_count_"))
        if n_bins > 0:
            for b in range(n_bins):
                for part in ("count", "conf", "correct"):
                    key = f"_ece_{part}_{b}"
                    metrics.log_scalar_sum(key, utils.item(total(key)))

            def ece_percent(meters):
                sums = [torch.tensor([meters[f"_ece_{part}_{b}"].sum for b in range(n_bins)], dtype=torch.float64)
                        for part in ("count", "conf", "correct")]
                if sums[0].sum() == 0:
                    return float("nan")
                ece, _ = ece_from_sums(*sums)
                return round(100.0 * float(ece), 3)

            metrics.log_derived("ece", ece_percent)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        """Every logging output is a 0-d sum (the ECE bins too), so workers' outputs can be summed before
        reduce_metrics."""
        return True
