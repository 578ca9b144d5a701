"""Task ``translation_temperature_sweep``: fairseq's ``translation`` task whose generator decodes several
temperatures in one pass (Figure 5 of Mukhoti et al. 2020).

    fairseq-generate DATA --user-dir fairseq_focal --task translation_temperature_sweep \\
        --temperatures 0.5,0.6,0.7,0.8,0.9,1,1.1,1.2,1.3,1.4,1.5 --sweep-output sweep.tsv \\
        --sweep-post-process sentencepiece --path checkpoint_best.pt --beam 4

fairseq-generate prints and scores, as usual, the hypotheses of ``--temperature`` (default 1) when it is in the list,
otherwise of the first listed temperature; every temperature's best hypothesis goes to ``--sweep-output`` as a
tab-separated line ``temperature  sentence-id  score (base 2, as fairseq prints it)  hypothesis``
(``scripts/nmt_sweep.py score`` computes BLEU per temperature from it). The file is written once, atomically, when
fairseq-generate has consumed the last batch: a finished run leaves a complete file, a crashed or interrupted one
leaves none (an older file at that path stays as it was). Without ``--temperatures`` the task is exactly
``translation``.
"""


import logging
import math
from dataclasses import dataclass, field
from typing import Optional

from fairseq.data.iterators import CountingIterator
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask

from fairseq_focal.sweep_generator import TemperatureSweepGenerator
from focal_calibration.experiments.cli import parse_temperatures
from focal_calibration.files import atomic_write

logger = logging.getLogger(__name__)


@dataclass
class TranslationTemperatureSweepConfig(TranslationConfig):
    temperatures: Optional[str] = field(default=None, metadata={
        "help": "comma-separated decoding temperatures, all decoded in one batched beam search (e.g. 0.5,0.75,1)"})
    sweep_output: Optional[str] = field(default=None, metadata={
        "help": "file for every temperature's best hypothesis (TSV: temperature, id, score, hypothesis); written "
                "atomically once the last batch is decoded"})
    sweep_post_process: Optional[str] = field(default=None, metadata={
        "help": "post-process the hypotheses written to --sweep-output, as --post-process (e.g. sentencepiece)"})


class _CallWhenExhausted(CountingIterator):
    """fairseq's batch iterator that calls ``on_exhausted()`` once, when the loop over it asks for the batch after the
    last one: fairseq-generate has then processed every batch (the call precedes the StopIteration)."""

    def __init__(self, iterator: CountingIterator, on_exhausted):
        super().__init__(iterator, start=iterator.n, total=len(iterator))
        self._on_exhausted = on_exhausted

    def __next__(self):
        if not self.has_next() and self._on_exhausted is not None:
            callback, self._on_exhausted = self._on_exhausted, None
            callback()
        return super().__next__()


@register_task("translation_temperature_sweep", dataclass=TranslationTemperatureSweepConfig)
class TranslationTemperatureSweepTask(TranslationTask):
    def __init__(self, cfg, src_dict, tgt_dict):
        super().__init__(cfg, src_dict, tgt_dict)
        self.temperatures = None if cfg.temperatures is None else parse_temperatures(cfg.temperatures)
        self._sweep_lines = []  # TSV lines of the batches decoded so far; written out by _write_sweep_file

    def build_generator(self, models, args, seq_gen_cls=None, extra_gen_cls_kwargs=None, **kwargs):
        if self.temperatures is None or getattr(args, "score_reference", False):
            return super().build_generator(models, args, seq_gen_cls, extra_gen_cls_kwargs, **kwargs)
        if getattr(args, "sampling", False) or getattr(args, "diverse_beam_groups", -1) > 0 or \
                getattr(args, "print_alignment", False):
            raise ValueError("--temperatures supports beam search only (not --sampling, --diverse-beam-groups or "
                             "--print-alignment)")
        extra = dict(extra_gen_cls_kwargs or {}, temperatures=self.temperatures)
        generator = super().build_generator(models, args, seq_gen_cls=TemperatureSweepGenerator,
                                            extra_gen_cls_kwargs=extra, **kwargs)
        logger.info(f"decoding temperatures {list(self.temperatures)} in one pass; fairseq-generate's own output is "
                    f"T={self.temperatures[generator.primary_index]}, all of them go to --sweep-output "
                    f"{self.cfg.sweep_output}")
        return generator

    def inference_step(self, generator, models, sample, prefix_tokens=None, constraints=None):
        if not isinstance(generator, TemperatureSweepGenerator):
            return super().inference_step(generator, models, sample, prefix_tokens, constraints)
        sweep = generator.generate(models, sample, prefix_tokens=prefix_tokens, constraints=constraints)
        if self.cfg.sweep_output:
            self._add_sweep_lines(generator.temperatures, sample["id"].tolist(), sweep)
        return sweep[generator.primary_index]

    def get_batch_iterator(self, *args, **kwargs):
        """fairseq's iterator; with ``--sweep-output``, its epoch iterators write the sweep file when exhausted."""
        epoch_itr = super().get_batch_iterator(*args, **kwargs)
        if self.temperatures is None or not self.cfg.sweep_output or getattr(epoch_itr, "_writes_sweep", False):
            return epoch_itr
        next_epoch_itr = epoch_itr.next_epoch_itr

        def next_epoch_itr_writing_sweep(*a, **kw):
            self._sweep_lines = []
            return _CallWhenExhausted(next_epoch_itr(*a, **kw), self._write_sweep_file)

        epoch_itr.next_epoch_itr = next_epoch_itr_writing_sweep
        epoch_itr._writes_sweep = True
        return epoch_itr

    def _add_sweep_lines(self, temperatures, ids, sweep):
        for temperature, hypos in zip(temperatures, sweep):
            for sample_id, nbest in zip(ids, hypos):
                best = nbest[0]
                text = self.tgt_dict.string(best["tokens"].int().cpu(), self.cfg.sweep_post_process)
                self._sweep_lines.append(f"{temperature:g}\t{sample_id}\t{float(best['score']) / math.log(2):.6f}"
                                         f"\t{text}\n")

    def _write_sweep_file(self):
        lines, self._sweep_lines = self._sweep_lines, []
        atomic_write(self.cfg.sweep_output, lambda handle: handle.writelines(lines), binary=False)
        logger.info(f"wrote {len(lines)} hypotheses to {self.cfg.sweep_output}")
