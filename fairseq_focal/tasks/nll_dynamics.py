"""Task ``translation_nll_dynamics``: fairseq's ``translation`` task that also logs, on every validation subset, the
§3 signature of Mukhoti et al. (2020) at token level (teacher forcing, eval mode, padding ignored):

* ``error``: % of target tokens whose top-1 prediction is not the reference token;
* ``nll_incorrect`` / ``nll_correct``: mean NLL (base 2, like fairseq's ``nll_loss``) of the reference token over the
  mispredicted / correctly predicted tokens. §3 (Figure 2): once training error is ~0, CE keeps lowering the training
  NLL while the test NLL of misclassified samples rises: that is the over-fitting regime focal loss addresses.

    fairseq-train DATA --user-dir fairseq_focal --task translation_nll_dynamics --valid-subset valid,valid1 ...

(``valid1``: e.g. the training pairs binarised again with ``fairseq-preprocess --validpref valid,train``, so the
training error and NLL are measured in eval mode, as §3 measures them.) Works with any criterion: the statistics come
from the criterion's own forward pass (captured by a forward hook), not a second one.
"""

from __future__ import annotations

import math

import torch
from fairseq import utils
from fairseq.logging import metrics
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask

__all__ = ["token_nll_sums", "TranslationNllDynamicsTask"]

_SUMS = ("_dyn_tokens", "_dyn_incorrect", "_dyn_nll_incorrect", "_dyn_nll_correct")


def token_nll_sums(logits: torch.Tensor, target: torch.Tensor, pad: int) -> dict[str, torch.Tensor]:
    """0-d sums over the non-pad tokens of ``logits`` [..., V] / ``target`` [...]: token count, mispredicted count,
    and the NLL in nats (-log softmax(z)_y = logsumexp(z) - z_y, float32, no N×V copy) of mispredicted and correctly
    predicted tokens. A tie for the top logit counts as correct only if ``argmax`` picks the reference."""
    if logits.shape[:-1] != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match the targets {tuple(target.shape)}")
    logits = logits.reshape(-1, logits.shape[-1])
    target = target.reshape(-1)
    keep = target != pad
    z, y = logits[keep].float(), target[keep]
    nll = torch.logsumexp(z, dim=-1) - z.gather(1, y.unsqueeze(1)).squeeze(1)
    incorrect = z.argmax(dim=-1) != y
    return {"_dyn_tokens": keep.sum(), "_dyn_incorrect": incorrect.sum(),
            "_dyn_nll_incorrect": torch.where(incorrect, nll, torch.zeros_like(nll)).sum(),
            "_dyn_nll_correct": torch.where(incorrect, torch.zeros_like(nll), nll).sum()}


@register_task("translation_nll_dynamics", dataclass=TranslationConfig)
class TranslationNllDynamicsTask(TranslationTask):
    def valid_step(self, sample, model, criterion):
        outputs = []
        handle = model.register_forward_hook(lambda _module, _inputs, output: outputs.append(output))
        try:
            loss, sample_size, logging_output = super().valid_step(sample, model, criterion)
        finally:
            handle.remove()
        if outputs:  # the criterion's forward pass (generation, if any, calls the decoder directly, not the model)
            net_output = outputs[0]
            with torch.no_grad():
                logging_output.update(token_nll_sums(net_output[0], model.get_targets(sample, net_output),
                                                     self.target_dictionary.pad()))
        return loss, sample_size, logging_output

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        sums = {key: utils.item(sum(log.get(key, 0) for log in logging_outputs)) for key in _SUMS}
        tokens, incorrect = sums["_dyn_tokens"], sums["_dyn_incorrect"]
        if tokens <= 0:  # training steps log nothing here
            return
        metrics.log_scalar("error", 100.0 * incorrect / tokens, tokens, round=3)
        if incorrect > 0:
            metrics.log_scalar("nll_incorrect", sums["_dyn_nll_incorrect"] / incorrect / math.log(2), incorrect,
                               round=3)
        if tokens > incorrect:
            metrics.log_scalar("nll_correct", sums["_dyn_nll_correct"] / (tokens - incorrect) / math.log(2),
                               tokens - incorrect, round=3)
