"""Beam search at many temperatures in one pass (Figure 5 of Mukhoti et al. 2020: BLEU against temperature).

fairseq's ``--temperature T`` divides the decoder's last-step logits by T before the log-softmax
(``EnsembleModel.forward_decoder``). :class:`TemperatureSweepGenerator` decodes K temperatures of a batch of B
sentences as ONE batched beam search over K·B sentences:

* the encoder runs once on the B sentences and its output is repeated K times (row k·B + b = temperature k,
  sentence b);
* every decoder row carries its own temperature: :class:`TemperatureEnsembleModel` passes fairseq's
  ``forward_decoder`` a ``[rows, 1, 1]`` tensor instead of a number, and re-indexes it whenever fairseq re-indexes the
  encoder output (beam expansion, finished sentences leaving the batch), so rows and temperatures never part;
* everything else is fairseq's own ``SequenceGenerator._generate``: beam search, length limits (a function of the
  batch's source length, which the K copies share), scores and finalisation per sentence.

Each temperature's hypotheses are therefore fairseq's ``--temperature T`` hypotheses (tested token for token on CPU;
on CUDA fairseq divides by a scalar as a multiplication by its reciprocal, so a 1-ulp difference in a logit can, in
rare near-ties, change a hypothesis).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from fairseq.sequence_generator import EnsembleModel, SequenceGenerator

from focal_calibration.experiments.cli import parse_temperatures

__all__ = ["TemperatureEnsembleModel", "TemperatureSweepGenerator"]


def _batch_rows(value, batch_size: int) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch_size


class TemperatureEnsembleModel(EnsembleModel):
    """fairseq's EnsembleModel with one temperature per decoder row (see the module docstring)."""

    def __init__(self, models):
        super().__init__(models)
        self.temperatures = None
        self.batch_size = 0
        self.row_temperature = None

    def prepare(self, temperatures: torch.Tensor, batch_size: int) -> None:
        self.temperatures, self.batch_size = temperatures, batch_size

    def forward_encoder(self, net_input):
        """Encode the B distinct sentences once, then repeat the output for the K temperatures."""
        k = self.temperatures.numel()
        first = next(v for v in net_input.values() if isinstance(v, torch.Tensor))
        self.row_temperature = self.temperatures.to(first.device).repeat_interleave(self.batch_size)
        if not self.has_encoder():
            return None
        distinct = {name: value[: self.batch_size] if _batch_rows(value, k * self.batch_size) else value
                    for name, value in net_input.items()}
        encoder_outs = super().forward_encoder(distinct)
        repeat = torch.arange(self.batch_size, device=first.device).repeat(k)
        return super().reorder_encoder_out(encoder_outs, repeat)

    def reorder_encoder_out(self, encoder_outs, new_order):
        # fairseq re-indexes the encoder output exactly when it re-indexes the decoder rows: follow it.
        self.row_temperature = self.row_temperature.index_select(0, new_order)
        return super().reorder_encoder_out(encoder_outs, new_order)

    def forward_decoder(self, tokens, encoder_outs, incremental_states, temperature: float = 1.0):
        # float32 temperatures, as fairseq's float scalar: the division happens in float32 (half logits included).
        return super().forward_decoder(tokens, encoder_outs, incremental_states, self.row_temperature.view(-1, 1, 1))


class TemperatureSweepGenerator(SequenceGenerator):
    """``generate(models, sample)`` -> ``[K][B]`` lists of hypotheses, one list per temperature (same order)."""

    def __init__(self, models, tgt_dict, temperatures: Sequence[float] = (1.0,), temperature: float = 1.0, **kwargs):
        self.temperatures = parse_temperatures(temperatures)
        if not (math.isfinite(float(temperature)) and temperature > 0):
            raise ValueError(f"--temperature must be a finite number > 0, got {temperature!r}")
        # the temperature whose hypotheses a caller that expects one list (fairseq-generate) receives
        self.primary_index = self.temperatures.index(temperature) if temperature in self.temperatures else 0
        model = models if isinstance(models, TemperatureEnsembleModel) else TemperatureEnsembleModel(models)
        super().__init__(model, tgt_dict, temperature=1.0, **kwargs)

    @torch.no_grad()
    def generate(self, models, sample, prefix_tokens=None, constraints=None, bos_token=None, **kwargs):
        k = len(self.temperatures)
        net_input = sample["net_input"]
        src = net_input.get("src_tokens", next(v for v in net_input.values() if isinstance(v, torch.Tensor)))
        batch_size = src.shape[0]

        def repeat(value):
            if not _batch_rows(value, batch_size):
                return value
            return value.repeat(k, *([1] * (value.dim() - 1)))

        expanded = {name: repeat(value) for name, value in sample.items() if name != "net_input"}  # id, target, ...
        expanded["net_input"] = {name: repeat(value) for name, value in net_input.items()}
        self.model.prepare(torch.tensor(self.temperatures, dtype=torch.float32), batch_size)
        hypos = self._generate(expanded, prefix_tokens=repeat(prefix_tokens), constraints=repeat(constraints),
                               bos_token=bos_token)
        return [hypos[i * batch_size:(i + 1) * batch_size] for i in range(k)]
