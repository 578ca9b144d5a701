"""fairseq criterion ``focal_loss``: focal loss (Mukhoti et al. 2020, §4 and §5.2) over the full vocabulary.

    fairseq-train DATA --user-dir fairseq_focal --criterion focal_loss --gamma 1 ...

* Loss: the core's :func:`focal_calibration.losses.fused.focal_loss_classes_last` (analytic fused backward) on the
  decoder's logits, summed over non-padding target tokens, divided by fairseq as usual (``sample_size`` = tokens, or
  sentences with ``--sentence-avg``). γ = 0 is fairseq's ``cross_entropy`` criterion exactly.
* ``--label-smoothing α`` > 0: focal loss against the smoothed target (the true class 1-α, the others α/(V-1)),
  :func:`focal_calibration.losses.fused_smoothed.focal_label_smoothed_loss_classes_last`; γ = 0 is
  ``label_smoothed_cross_entropy``.
* γ policies (``--gamma-policy``, the core's spec names): ``flsd-53`` (sample-dependent, §4), ``flsd-532``,
  ``flsd-prop2-0.2-0.25`` (Proposition 2), ``flsc-531`` (epoch-scheduled: the γ changes after 100/350 and 250/350 of
  ``--max-epoch``, or at ``--gamma-milestones``).
* Losses beyond the paper (``--loss-spec``, the core's ``build_loss`` names, options in ``--loss-options``):
  ``adafocal``, ``inverse-focal-<γ>``, ``dual-focal-<γ>``, ``poly-<ε>``, ``mbls-<m>-<λ>``. AdaFocal is fed by the
  validation logging outputs: per-bin sums of the top-1 confidence and correctness of the reference tokens on the
  bins in use (exact over batches and GPUs; they give each bin's calibration gap), and a histogram of those
  confidences on ``_HIST_CELLS`` cells of equal width in logit space, whose quantiles place the next equal-mass bins.
  γ is updated after every validation (``task.post_validate``), logged, and kept in a named fairseq metrics
  aggregator, which fairseq saves in every checkpoint and restores on resume.
* ``--fused-linear``: the loss straight from the decoder's features and its output projection
  (:func:`focal_calibration.losses.linear.linear_focal_loss`, in chunks of tokens), so the ``[tokens × vocabulary]``
  logits and their gradient never exist; the same losses, gradients and logged statistics (ECE included) to float
  rounding. Focal loss (any γ policy, ``--label-smoothing``) and ``--loss-spec adafocal``; decoders whose output
  layer is an ``nn.Linear`` ``output_projection`` (fairseq's Transformer decoders, tied embeddings included), not an
  adaptive softmax.
* Logged like fairseq's criteria: ``loss`` (base 2, per ``sample_size``), ``nll_loss`` (base 2, per token), ``ppl``,
  optionally ``accuracy``; plus ``gamma`` (mean γ per target token) and, on validation, ``ece`` (token-level top-1
  ECE in %, eq. 1, ``--calibration-bins`` equal-width bins). ECE is derived from per-bin sums carried in the logging
  outputs, so it is exact over all validation batches and workers (``--best-checkpoint-metric ece`` works).
"""


import inspect
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Optional

import torch
from fairseq import utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass
from fairseq.logging import metrics
from omegaconf import II

from focal_calibration.validation import check_nonnegative_number
from focal_calibration.losses.adafocal import bin_of
from focal_calibration.losses.fused import focal_loss_classes_last
from focal_calibration.losses.fused_smoothed import focal_label_smoothed_loss_classes_last
from focal_calibration.losses.gamma import FixedGamma, GammaPolicy, parse_gamma_policy
from focal_calibration.losses import BEYOND_PAPER_LOSS_SPECS, build_loss, linear_focal_loss
from focal_calibration.calibration.metrics import ece_from_sums, equal_width_sums

logger = logging.getLogger(__name__)

_HIST_CELLS, _HIST_LOGIT_RANGE = 512, (-12.0, 16.0)  # AdaFocal's quantile histogram: 0.055-wide logit cells
_ADAFOCAL_AGGREGATOR = "focal_loss_adafocal"  # a named aggregator: in fairseq's checkpoints (extra_state["metrics"])


@dataclass
class FocalLossCriterionConfig(FairseqDataclass):
    gamma: float = field(default=1.0, metadata={"help": "focal loss gamma (0 = cross-entropy); ignored when "
                                                         "--gamma-policy is set"})
    gamma_policy: Optional[str] = field(default=None, metadata={
        "help": "a gamma policy by its paper name: flsd-53 (5 if p_y < 0.2 else 3), flsd-532, flsd-prop2-0.2-0.25 "
                "(Proposition 2), flsc-531 (epoch-scheduled), fl-<gamma>"})
    gamma_milestones: Optional[str] = field(default=None, metadata={
        "help": "comma-separated 0-based epoch milestones for flsc-* (default for three gammas: 100/350 and 250/350 "
                "of --max-epoch)"})
    gamma_thresholds: Optional[str] = field(default=None, metadata={
        "help": "comma-separated p_y thresholds for flsd-* (default 0.2 / 0.2,0.5)"})
    loss_spec: Optional[str] = field(default=None, metadata={
        "help": "a loss beyond the paper by its build_loss spec, replacing --gamma / --gamma-policy: adafocal, "
                "inverse-focal-<gamma>, dual-focal-<gamma>, poly-<epsilon>, mbls-<margin>-<lambda>"})
    loss_options: Optional[str] = field(default=None, metadata={
        "help": "comma-separated KEY=VALUE build_loss options of --loss-spec, e.g. lam=0.5,n_bins=10 (adafocal), "
                "pj=max-other (dual-focal), normalization=sum (mbls)"})
    label_smoothing: float = field(default=0.0, metadata={
        "help": "epsilon: focal loss against the label-smoothed target (0 = hard targets)"})
    report_accuracy: bool = field(default=False, metadata={"help": "report accuracy metric"})
    ignore_prefix_size: int = field(default=0, metadata={"help": "Ignore first N tokens"})
    calibration_bins: int = field(default=15, metadata={
        "help": "equal-width bins of the token-level validation ECE (0 = do not compute it)"})
    fused_linear: bool = field(default=False, metadata={
        "help": "compute the loss from the decoder's features and its output projection, in chunks of tokens: the "
                "[tokens x vocabulary] logits never exist (focal loss, --label-smoothing, --loss-spec adafocal; "
                "Transformer decoders, no adaptive softmax)"})
    sentence_avg: bool = II("optimization.sentence_avg")
    max_epoch: int = II("optimization.max_epoch")
    save_dir: str = II("checkpoint.save_dir")
    restore_file: str = II("checkpoint.restore_file")
    disable_validation: bool = II("dataset.disable_validation")


def _numbers(text: Optional[str], name: str, kind=float):
    if text is None or str(text).strip() == "":
        return None
    try:
        return tuple(kind(t) for t in str(text).split(","))
    except ValueError:
        raise ValueError(f"--{name} must be comma-separated numbers, got {text!r}") from None


def build_gamma_policy(gamma: float, policy: Optional[str] = None, milestones: Optional[str] = None,
                       thresholds: Optional[str] = None, epochs: Optional[int] = None) -> GammaPolicy:
    """The γ policy of the options: a fixed γ, or a focal spec through the core's parser (one parser for all).
    ``epochs`` (``--max-epoch``, 0 = unlimited) places FLSc's default milestones."""
    if not policy:
        return FixedGamma(check_nonnegative_number(gamma, "--gamma"))
    name = policy.strip().lower()
    if not name.startswith(("fl-", "flsc-", "flsd-")):
        raise ValueError(f"--gamma-policy must name a focal-loss policy (fl-<gamma>, flsc-<gammas>, flsd-<gammas>, "
                         f"flsd-prop2-<p0s>), got {policy!r}")
    try:
        return parse_gamma_policy(policy, milestones=_numbers(milestones, "gamma-milestones", int),
                                  thresholds=_numbers(thresholds, "gamma-thresholds"), epochs=epochs or None)
    except ValueError as error:
        if "needs the run length" in str(error):
            raise ValueError(f"--gamma-policy {policy} needs the run length: set --max-epoch (the γ changes after "
                             f"100/350 and 250/350 of it) or --gamma-milestones") from None
        raise


def _option_value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_loss_options(text: Optional[str]) -> dict:
    """``"lam=0.5,n_bins=10"`` -> {"lam": 0.5, "n_bins": 10} (ints, floats, else strings)."""
    if text is None or str(text).strip() == "":
        return {}
    options = {}
    for item in str(text).split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"--loss-options must be comma-separated KEY=VALUE pairs, got {text!r}")
        options[key.strip()] = _option_value(value.strip())
    return options


def build_criterion_loss(spec: str, options: Optional[str], padding_idx: int, epochs: Optional[int]):
    """The ``--loss-spec`` module (per-token values: reduction none, padding ignored)."""
    if not spec.strip().lower().startswith(("adafocal", "inverse-focal-", "dual-focal-", "poly-", "mbls-")):
        raise ValueError(f"--loss-spec takes a loss beyond the paper ({', '.join(BEYOND_PAPER_LOSS_SPECS)}, ...), "
                         f"got {spec!r}; focal losses use --gamma / --gamma-policy, cross-entropy --gamma 0")
    return build_loss(spec, reduction="none", ignore_index=padding_idx, epochs=epochs, **parse_loss_options(options))


def check_options(*, gamma=1.0, gamma_policy=None, gamma_milestones=None, gamma_thresholds=None, loss_spec=None,
                  loss_options=None, label_smoothing=0.0, ignore_prefix_size=0, calibration_bins=15, max_epoch=0,
                  disable_validation=False, fused_linear=False, padding_idx=1):
    """Check the criterion's options together; returns ``(label smoothing, γ policy or None, --loss-spec module or
    None)`` or raises ``ValueError`` naming the bad option. Run twice: by fairseq's argument parser right after
    parsing (:meth:`FocalLossCriterion.add_args`: one ``error:`` line, exit status 2, before any data or model is
    loaded) and by the criterion's constructor (programmatic and hydra configurations)."""
    eps = check_nonnegative_number(label_smoothing, "label_smoothing")
    if eps >= 1:
        raise ValueError(f"--label-smoothing must lie in [0, 1), got {label_smoothing!r}")
    if ignore_prefix_size < 0:
        raise ValueError(f"--ignore-prefix-size must be >= 0, got {ignore_prefix_size!r}")
    if calibration_bins < 0:
        raise ValueError(f"--calibration-bins must be >= 0, got {calibration_bins!r}")
    if loss_spec:
        if gamma_policy:
            raise ValueError(f"give --loss-spec or --gamma-policy, not both (got {loss_spec!r} and {gamma_policy!r})")
        if eps > 0:
            raise ValueError(f"--label-smoothing applies to focal loss only, not to --loss-spec {loss_spec}")
        loss_module = build_criterion_loss(loss_spec, loss_options, padding_idx, max_epoch or None)
        uses_validation = getattr(loss_module, "uses_validation", False)
        if uses_validation and disable_validation:
            raise ValueError(f"--loss-spec {loss_spec} updates its γ from the validation set: it cannot run with "
                             f"--disable-validation")
        if fused_linear and not uses_validation:
            raise ValueError(f"--fused-linear computes focal loss (--gamma / --gamma-policy, --label-smoothing) and "
                             f"--loss-spec adafocal from the features, not --loss-spec {loss_spec}")
        return eps, None, loss_module
    if loss_options:
        raise ValueError(f"--loss-options {loss_options!r} needs --loss-spec")
    return eps, build_gamma_policy(gamma, gamma_policy, gamma_milestones, gamma_thresholds, max_epoch), None


def _check_after_parsing(parser) -> None:
    """Make ``parser`` (fairseq's) check the focal_loss options as soon as it has parsed them: a bad value or
    combination ends as ONE line ``<prog>: error: <message>`` with exit status 2, instead of a traceback from inside
    the trainer after the data and the model are loaded. fairseq builds criteria from the parsed namespace, so
    this is the one place that sees all options (``--max-epoch`` included) before training starts."""
    if getattr(parser, "_focal_loss_checked", False):
        return
    parse_known_args = parser.parse_known_args

    def parse_and_check(args=None, namespace=None):
        parsed, extra = parse_known_args(args, namespace)
        if getattr(parsed, "criterion", None) == "focal_loss":
            options = {name: getattr(parsed, name) for name in _OPTION_NAMES if hasattr(parsed, name)}
            try:
                check_options(**options)
            except ValueError as error:
                parser.exit(2, f"{parser.prog}: error: {error}\n")
        return parsed, extra

    parser.parse_known_args = parse_and_check
    parser._focal_loss_checked = True


_OPTION_NAMES = tuple(inspect.signature(check_options).parameters)[:-1]  # the options (not padding_idx)


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
    @classmethod
    def add_args(cls, parser):
        """fairseq's options of the config dataclass, checked together right after parsing (see
        :func:`_check_after_parsing`)."""
        super().add_args(parser)
        _check_after_parsing(parser)

    def __init__(self, task, sentence_avg, gamma=1.0, gamma_policy=None, gamma_milestones=None, gamma_thresholds=None,
                 loss_spec=None, loss_options=None, label_smoothing=0.0, report_accuracy=False, ignore_prefix_size=0,
                 calibration_bins=15, max_epoch=0, save_dir=None, restore_file=None, disable_validation=False,
                 fused_linear=False):
        super().__init__(task)
        self.sentence_avg = sentence_avg
        self.eps, self.policy, self.loss_module = check_options(
            gamma=gamma, gamma_policy=gamma_policy, gamma_milestones=gamma_milestones,
            gamma_thresholds=gamma_thresholds, loss_spec=loss_spec, loss_options=loss_options,
            label_smoothing=label_smoothing, ignore_prefix_size=ignore_prefix_size, calibration_bins=calibration_bins,
            max_epoch=max_epoch, disable_validation=disable_validation, fused_linear=fused_linear,
            padding_idx=self.padding_idx)
        self.ignore_prefix_size = ignore_prefix_size
        self.report_accuracy = report_accuracy
        self.calibration_bins = calibration_bins
        self._adafocal = self.loss_module if getattr(self.loss_module, "uses_validation", False) else None
        self.fused_linear = bool(fused_linear)
        self._checkpoint = None  # the checkpoint fairseq resumes from (AdaFocal reads its state there)
        if save_dir:
            self._checkpoint = (os.path.join(save_dir, "checkpoint_last.pt")
                                if restore_file in (None, "checkpoint_last.pt") else restore_file)
        self._epochs_begun = 0
        self._validation_pending = False
        self._hook_task(task)

    def _hook_task(self, task) -> None:
        """fairseq tells the task, not the criterion, when an epoch starts (Trainer.begin_epoch -> task.begin_epoch,
        also after a resume) and when a validation ends (task.post_validate); epoch-scheduled γ (FLSc) and AdaFocal
        need them, so wrap this task instance's hooks."""
        task_begin_epoch = task.begin_epoch

        def begin_epoch(epoch, model):
            self._begin_epoch(epoch)
            return task_begin_epoch(epoch, model)

        task.begin_epoch = begin_epoch
        if self._adafocal is None:
            return
        task_begin_valid_epoch, task_post_validate = task.begin_valid_epoch, getattr(task, "post_validate", None)

        def begin_valid_epoch(epoch, model):
            self._validation_pending = True  # the first subset's statistics update AdaFocal
            return task_begin_valid_epoch(epoch, model)

        def post_validate(model, stats, agg):
            if self._validation_pending:
                self._validation_pending = False
                self.observe_validation_meters(agg)
            if task_post_validate is not None:
                task_post_validate(model, stats, agg)

        task.begin_valid_epoch, task.post_validate = begin_valid_epoch, post_validate

    def _begin_epoch(self, epoch: int) -> None:
        self._epochs_begun += 1
        if self._adafocal is not None and self._epochs_begun == 1:
            self._restore_adafocal(resumed=epoch > 1)
        self.set_epoch(epoch - 1)  # fairseq counts epochs from 1, the core's policies from 0

    def set_epoch(self, epoch: int) -> None:
        (self.policy or self.loss_module).set_epoch(epoch)

    # AdaFocal: state in a named metrics aggregator, which fairseq checkpoints (extra_state["metrics"])

    def _restore_adafocal(self, resumed: bool) -> None:
        meter = metrics.get_meter(_ADAFOCAL_AGGREGATOR, "state")  # restored with the meters on a mid-epoch resume
        state = meter.val if meter is not None else None
        if state is None and resumed:  # at an epoch boundary fairseq does not restore meters: read its checkpoint
            state = self._state_in_checkpoint()
        if state is None:
            if resumed:
                where = f" {self._checkpoint}" if self._checkpoint else ""
                raise ValueError(f"cannot resume AdaFocal: the checkpoint{where} holds no AdaFocal state (fairseq "
                                 f"keeps it with the checkpoint's meters)")
            return
        self._adafocal.load_state_dict({key: value.cpu() for key, value in state.items()})
        logger.info(f"AdaFocal state restored: update {int(self._adafocal.updates)}, {self._gammas_text()}")

    def _state_in_checkpoint(self):
        if self._checkpoint is None or not os.path.isfile(self._checkpoint):
            return None
        checkpoint = torch.load(self._checkpoint, map_location="cpu", weights_only=False, mmap=True)  # no weights read
        saved = checkpoint.get("extra_state", {}).get("metrics", {}).get(_ADAFOCAL_AGGREGATOR, [])
        return next((meter["val"] for _, key, _, meter in saved if key == "state"), None)

    def _store_adafocal(self) -> None:
        with metrics.aggregate(_ADAFOCAL_AGGREGATOR, new_root=True):
            metrics.log_scalar("state", {key: value.clone() for key, value in self._adafocal.state_dict().items()},
                               weight=0)

    def observe_validation_meters(self, agg) -> None:
        """Update AdaFocal from one validation's aggregated logging outputs (all batches, all workers)."""
        if "_adafocal_bins" not in agg:
            return
        sums = agg["_adafocal_bins"].sum.detach().to("cpu", torch.float64).view(3, -1)
        hist = agg["_adafocal_hist"].sum.detach().to("cpu", torch.float64)
        self._adafocal.observe_bin_sums(sums[0], sums[1], sums[2], _histogram_edges(hist, self._adafocal.n_bins))
        self._store_adafocal()
        logger.info(f"AdaFocal update {int(self._adafocal.updates)}: {self._gammas_text()}")

    def _gammas_text(self) -> str:
        return "gamma per bin [" + ", ".join(f"{g:.6g}" for g in self._adafocal.gammas.tolist()) + "]"

    def forward(self, model, sample, reduce=True):
        """Returns (loss, sample_size, logging_output) like fairseq's criteria."""
        if self.fused_linear:
            return self._forward_from_features(model, sample, reduce)
        net_output = model(**sample["net_input"])
        logits, target = self.get_logits_and_target(model, net_output, sample)
        not_pad = target != self.padding_idx
        recorder = None
        if self.loss_module is not None:
            tokens_loss = self.loss_module(logits, target)
            with torch.no_grad():  # a second pass over the logits: these losses do not expose p_y
                z = logits.float()
                tokens_nll = torch.logsumexp(z, dim=-1) - z.gather(1, target.clamp(min=0)[:, None]).squeeze(1)
                tokens_nll = torch.where(not_pad, tokens_nll, torch.zeros_like(tokens_nll))
        elif self.eps > 0:
            recorder = _RecordingPolicy(self.policy)
            tokens_loss, tokens_nll = focal_label_smoothed_loss_classes_last(
                logits, target, recorder, self.eps, reduction="none", ignore_index=self.padding_idx, return_nll=True)
        else:
            recorder = _RecordingPolicy(self.policy)
            tokens_loss = focal_loss_classes_last(logits, target, recorder, reduction="none",
                                                  ignore_index=self.padding_idx)
            with torch.no_grad():
                # -log p_y from the p_y the kernel saw (accurate to rounding while p_y is a normal number); where
                # p_y < eps/4, 1 - p_y rounds to 1, so the token's focal loss *is* -log p_y exactly: use it there.
                p_y = recorder.p_y
                tiny = torch.finfo(p_y.dtype).eps / 4
                tokens_nll = torch.where(p_y >= tiny, -torch.log(p_y), tokens_loss.detach())
                tokens_nll = torch.where(not_pad, tokens_nll, torch.zeros_like(tokens_nll))
        loss = tokens_loss.sum() if reduce else tokens_loss
        sample_size, logging_output = self._logging_output(sample, loss, tokens_nll.sum() if reduce else tokens_nll)
        with torch.no_grad():
            if recorder is not None:
                gamma = recorder.gamma
                logging_output["gamma_sum"] = (gamma * not_pad).sum() if isinstance(gamma, torch.Tensor) \
                    else float(gamma) * not_pad.sum()
                logging_output["gamma_tokens"] = not_pad.sum()
            validation = not model.training and (self.calibration_bins > 0 or self._adafocal is not None)
            if self.report_accuracy or validation:
                self._add_calibration(logits, target, not_pad, logging_output, model.training)
        return loss, sample_size, logging_output

    def _forward_from_features(self, model, sample, reduce):
        """``--fused-linear``: the decoder's features and its output projection into linear_focal_loss, which also
        returns the per-token NLL, γ, top-1 confidence and correctness from the same pass (the logits never exist)."""
        weight, bias = output_projection(model)
        features, extra = model(**sample["net_input"], features_only=True)
        target = self._targets(model, sample, (features, extra))
        if features.shape[:-1] != target.shape:
            raise ValueError(f"decoder features {tuple(features.shape)} do not match the targets "
                             f"{tuple(target.shape)}")
        features, target = features.reshape(-1, features.shape[-1]), target.reshape(-1)
        not_pad = target != self.padding_idx
        if self._adafocal is not None:
            gamma, signed = self._adafocal.gamma_of, True
        else:
            gamma, signed = (self.policy if self.policy.sample_dependent else self.policy(None)), False
        tokens_loss, stats = linear_focal_loss(features, weight, target, bias, gamma=gamma, label_smoothing=self.eps,
                                               signed_gamma=signed, ignore_index=self.padding_idx,
                                               reduction="sum" if reduce else "none", return_stats=True)
        loss = tokens_loss
        sample_size, logging_output = self._logging_output(sample, loss, stats.nll.sum() if reduce else stats.nll)
        with torch.no_grad():
            if self.loss_module is None:
                logging_output["gamma_sum"] = (stats.gamma * not_pad).sum()
                logging_output["gamma_tokens"] = not_pad.sum()
            validation = not model.training and (self.calibration_bins > 0 or self._adafocal is not None)
            if self.report_accuracy or validation:
                self._log_calibration(stats.confidence, stats.correct, not_pad, logging_output, model.training)
        return loss, sample_size, logging_output

    def _logging_output(self, sample, loss, nll_loss):
        """(sample_size, the logging output's sums) like fairseq's criteria."""
        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
        return sample_size, {"loss": loss.data, "nll_loss": nll_loss.data, "ntokens": sample["ntokens"],
                             "nsentences": sample["target"].size(0), "sample_size": sample_size}

    def _targets(self, model, sample, net_output):
        """The targets, with the first --ignore-prefix-size positions masked as padding (not sliced off, which
        would copy the logits)."""
        target = model.get_targets(sample, net_output)
        if self.ignore_prefix_size > 0:
            target = target.clone()
            target[:, : self.ignore_prefix_size] = self.padding_idx
        return target

    def get_logits_and_target(self, model, net_output, sample):
        """Decoder logits [tokens, V] (a view, no copy) and targets; prefix tokens are masked as padding instead of
        sliced off, which would copy the logits."""
        if getattr(model.decoder, "adaptive_softmax", None) is not None:
            raise ValueError("focal_loss needs the full-vocabulary logits; this model uses an adaptive softmax "
                             "(--adaptive-softmax-cutoff), which focal_loss does not support")
        logits = net_output[0]
        target = self._targets(model, sample, net_output)
        if logits.shape[:-1] != target.shape:
            raise ValueError(f"decoder output {tuple(logits.shape)} does not match the targets {tuple(target.shape)}")
        return logits.reshape(-1, logits.shape[-1]), target.reshape(-1)

    def _add_calibration(self, logits, target, not_pad, logging_output, training):
        """Accuracy counts and (on validation) the per-bin sums of top-1 confidence vs correctness, eq. (1), and
        AdaFocal's validation statistics. Row-wise reductions of the logits only: no N×V copy."""
        z_max, prediction = logits.max(dim=-1)
        correct = (prediction == target) & not_pad
        confidence = None
        if not training:
            lse = torch.logsumexp(logits.float(), dim=-1)
            confidence = torch.exp(z_max.float() - lse)  # max softmax probability, float32 for half logits
        self._log_calibration(confidence, correct, not_pad, logging_output, training)

    def _log_calibration(self, confidence, correct, not_pad, logging_output, training):
        """Accuracy counts and (on validation) ECE's and AdaFocal's per-bin sums from the per-token top-1
        confidence and correctness (``correct`` False at padding)."""
        if self.report_accuracy:
            logging_output["n_correct"] = correct.sum()
            logging_output["total"] = not_pad.sum()
        if training:
            return
        confidence, correct = confidence[not_pad], correct[not_pad]
        if self._adafocal is not None:
            logging_output.update(_adafocal_sums(confidence, correct, self._adafocal.inner_edges))
        if self.calibration_bins == 0:
            return
        count, conf_sum, correct_sum = equal_width_sums(confidence, correct, self.calibration_bins)
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

        for key in ("_adafocal_bins", "_adafocal_hist"):  # summed over the validation for post_validate
            if logging_outputs and key in logging_outputs[0]:
                metrics.log_scalar_sum(key, total(key))

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


def output_projection(model):
    """(weight [V, d], bias or None) of the decoder's output layer, for ``--fused-linear``; a clear error for the
    decoders whose logits are not ``output_projection(features)``."""
    from fairseq.models.transformer import TransformerDecoderBase

    decoder = getattr(model, "decoder", None)
    name = type(decoder).__name__
    if getattr(decoder, "adaptive_softmax", None) is not None:
        raise ValueError("--fused-linear needs the full-vocabulary output projection; this model uses an adaptive "
                         "softmax (--adaptive-softmax-cutoff), which focal_loss does not support")
    projection = getattr(decoder, "output_projection", None)
    if not isinstance(projection, torch.nn.Linear):
        raise ValueError(f"--fused-linear needs a decoder whose output layer is an nn.Linear output_projection "
                         f"(fairseq's Transformer decoders); {name} has none: train without --fused-linear")
    if type(decoder).output_layer is not TransformerDecoderBase.output_layer:
        raise ValueError(f"--fused-linear: {name} overrides output_layer, so its logits need not be "
                         f"output_projection(features); train without --fused-linear")
    if "features_only" not in inspect.signature(model.forward).parameters:
        raise ValueError(f"--fused-linear calls the model with features_only=True, which "
                         f"{type(model).__name__}.forward does not take; train without --fused-linear")
    return projection.weight, projection.bias


# ----------------------------------------------------------------------------------------------------------------
# AdaFocal's validation statistics as summable logging outputs

def _logit_cells(confidence: torch.Tensor) -> torch.Tensor:
    """Cell of each confidence in the quantile histogram: equal width in logit(c), clamped at both ends."""
    lo, hi = _HIST_LOGIT_RANGE
    logit = torch.log(confidence) - torch.log1p(-confidence)  # +inf at c = 1: the last cell
    cells = ((logit - lo) * (_HIST_CELLS / (hi - lo))).floor().clamp(0, _HIST_CELLS - 1)
    return cells.long()


def _adafocal_sums(confidence: torch.Tensor, correct: torch.Tensor, inner_edges: torch.Tensor) -> dict:
    """Per-bin (count, confidence sum, number correct) on the bins in use, flattened [3·B], and the quantile
    histogram [_HIST_CELLS]: 1-D tensors, summed over batches by reduce_metrics and over workers by fairseq."""
    edges = inner_edges.to(confidence.device)
    n_bins = edges.numel() + 1
    index = bin_of(confidence, edges)
    sums = torch.zeros(3, n_bins, dtype=torch.float64, device=confidence.device)
    sums[0].index_add_(0, index, torch.ones_like(confidence, dtype=torch.float64))
    sums[1].index_add_(0, index, confidence.to(torch.float64))
    sums[2].index_add_(0, index, correct.to(torch.float64))
    hist = torch.bincount(_logit_cells(confidence), minlength=_HIST_CELLS).to(torch.float64)
    return {"_adafocal_bins": sums.view(-1), "_adafocal_hist": hist}


def _histogram_edges(hist: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Equal-mass inner edges from the quantile histogram: e_b is the lower boundary of the cell that holds rank
    ceil(b·N/B) (the rank that starts bin b), mapped back from logit to confidence; +inf past the end."""
    n = int(hist.sum())
    lo, hi = _HIST_LOGIT_RANGE
    first_rank = (torch.arange(1, n_bins, dtype=torch.float64) * n + n_bins - 1).div(n_bins).floor()
    cell = torch.searchsorted(hist.cumsum(0), first_rank, right=True)  # first cell whose cumulative count > rank
    edges = torch.sigmoid(lo + cell.to(torch.float64) * (hi - lo) / _HIST_CELLS)
    edges = torch.where(cell == 0, torch.zeros_like(edges), edges)  # the first cell also holds everything below lo
    return torch.where(first_rank < n, edges, torch.full_like(edges, float("inf")))
