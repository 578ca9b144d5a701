"""Hugging Face Trainer integration with the real transformers on CPU and a tiny BERT built from a config (no
downloads): the loss function equals F.cross_entropy (token-level, shifted, gradient accumulation), FLSc's γ changes
at its milestones, AdaFocal's γ moves after each evaluation exactly as observe_validation on the model's eval logits
(computed independently), a run stopped after epoch 2 and resumed from its checkpoint ends with the γ of an
uninterrupted run, and a missing transformers is one error naming the extra."""

import importlib
import math
import os
import sys

import pytest
import torch
import torch.nn.functional as F

from focal_calibration import AdaFocalLoss, build_loss

transformers = pytest.importorskip("transformers")
from focal_calibration.integrations.huggingface import (STATE_FILE, CalibrationLossCallback,  # noqa: E402
                                                        CalibrationLossFunction)

K = 3


def tiny_bert(seed=0):
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=24, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16, num_labels=K)
    return transformers.BertForSequenceClassification(config)


def _examples(n, generator):
    ids = torch.randint(1, 24, (n, 8), generator=generator)
    labels = ids[:, 1] % K  # learnable from one token
    return [{"input_ids": i, "attention_mask": torch.ones(8, dtype=torch.long), "labels": y}
            for i, y in zip(ids, labels)]


@pytest.fixture(scope="module")
def datasets():
    generator = torch.Generator().manual_seed(0)
    return _examples(32, generator), _examples(16, generator)


def _args(tmp_path, **overrides):
    options = dict(output_dir=str(tmp_path), num_train_epochs=3, per_device_train_batch_size=16,
                   per_device_eval_batch_size=16, learning_rate=5e-3, eval_strategy="epoch", save_strategy="no",
                   logging_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True, seed=0,
                   dataloader_num_workers=0)
    options.update(overrides)
    return transformers.TrainingArguments(**options)


def _trainer(tmp_path, datasets, loss_fn, callbacks, model=None, compute_metrics=None, **overrides):
    train, val = datasets
    return transformers.Trainer(model=model or tiny_bert(), args=_args(tmp_path, **overrides), train_dataset=train,
                                eval_dataset=val, compute_loss_func=loss_fn, compute_metrics=compute_metrics,
                                callbacks=callbacks)


def test_loss_function_is_the_mean_over_the_accumulated_batch():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 6, 7, 5, generator=generator)  # two micro-batches of [B, T, V] logits
    labels = torch.randint(0, 5, (2, 6, 7), generator=generator)
    labels[:, :, :2] = -100
    loss_fn = CalibrationLossFunction("ce", shift_labels=True)
    shifted_logits, shifted_labels = logits[:, :, :-1], labels[:, :, 1:]
    expected = F.cross_entropy(shifted_logits.reshape(-1, 5), shifted_labels.reshape(-1), ignore_index=-100)
    total = (shifted_labels != -100).sum()
    accumulated = sum(loss_fn({"logits": logits[i]}, labels[i], num_items_in_batch=total) for i in range(2))
    assert torch.allclose(accumulated, expected, rtol=1e-6)
    single = loss_fn({"logits": logits[0]}, labels[0])  # no num_items_in_batch: this batch's mean
    assert torch.allclose(single, F.cross_entropy(shifted_logits[0].reshape(-1, 5), shifted_labels[0].reshape(-1)),
                          rtol=1e-6)
    mean_loss = CalibrationLossFunction(build_loss("ce"), shift_labels=True)  # a "mean" loss, rescaled
    assert torch.allclose(sum(mean_loss((logits[i],), labels[i], num_items_in_batch=total) for i in range(2)),
                          expected, rtol=1e-6)
    with pytest.raises(ValueError, match="reduction 'sum' or 'mean'"):
        CalibrationLossFunction(build_loss("ce", reduction="none"))
    with pytest.raises(ValueError, match="options"):
        CalibrationLossFunction(build_loss("ce"), epochs=3)


class RecordGamma(transformers.TrainerCallback):
    def __init__(self, loss):
        self.loss, self.seen = loss, set()

    def on_step_begin(self, args, state, control, **kwargs):
        self.seen.add((math.floor(state.epoch), self.loss.policy(None)))


def test_flsc_gamma_changes_at_its_milestones(tmp_path, datasets):
    loss_fn = CalibrationLossFunction("flsc-531", milestones=(1, 2))
    record = RecordGamma(loss_fn.loss)
    _trainer(tmp_path, datasets, loss_fn, [CalibrationLossCallback(loss_fn), record], eval_strategy="no").train()
    assert sorted(record.seen) == [(0, 5.0), (1, 3.0), (2, 1.0)]


class RecordEvaluation(transformers.TrainerCallback):
    """After the loss's callback: the loss's γ and, independently, the model's logits on the eval set."""

    def __init__(self, loss, val):
        self.loss, self.val, self.after = loss, val, []

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        model.eval()
        with torch.no_grad():
            logits = model(input_ids=torch.stack([e["input_ids"] for e in self.val]),
                           attention_mask=torch.stack([e["attention_mask"] for e in self.val])).logits
        self.after.append((self.loss.gammas.clone(), logits, torch.stack([e["labels"] for e in self.val])))


def test_adafocal_gamma_moves_after_each_evaluation(tmp_path, datasets):
    loss_fn = CalibrationLossFunction("adafocal")
    callback = CalibrationLossCallback(loss_fn)
    record = RecordEvaluation(loss_fn.loss, datasets[1])
    seen_by_user = []
    trainer = _trainer(tmp_path, datasets, loss_fn, [callback, record],
                       compute_metrics=callback.compute_metrics(lambda p: seen_by_user.append(len(p.label_ids))
                                                                or {"n": len(p.label_ids)}))
    trainer.train()
    assert int(loss_fn.loss.updates) == 3 and seen_by_user == [16, 16, 16]
    reference = AdaFocalLoss()
    previous = reference.gammas.clone()
    for gammas, logits, labels in record.after:
        reference.observe_validation(logits, labels)
        assert torch.allclose(gammas, reference.gammas, rtol=1e-5, atol=1e-7)
        assert not torch.equal(gammas, previous)
        previous = gammas
    assert "eval_n" in trainer.evaluate()  # outside train(): the loss is not updated
    assert int(loss_fn.loss.updates) == 3


def test_adafocal_without_the_eval_logits_is_refused(tmp_path, datasets):
    loss_fn = CalibrationLossFunction("adafocal")
    with pytest.raises(RuntimeError, match="compute_metrics=callback.compute_metrics"):
        _trainer(tmp_path, datasets, loss_fn, [CalibrationLossCallback(loss_fn)], num_train_epochs=1).train()


class StopAfter(transformers.TrainerCallback):
    def __init__(self, epochs):
        self.epochs = epochs

    def on_epoch_end(self, args, state, control, **kwargs):
        if round(state.epoch) >= self.epochs:
            control.should_training_stop = True  # the epoch's evaluation and checkpoint still happen


def test_resumed_run_continues_with_the_same_gamma(tmp_path, datasets):
    def run(folder, extra=(), resume=None):
        loss_fn = CalibrationLossFunction("adafocal")
        callback = CalibrationLossCallback(loss_fn)
        trainer = _trainer(folder, datasets, loss_fn, [callback, *extra], compute_metrics=callback.compute_metrics(),
                           save_strategy="epoch")
        trainer.train(resume_from_checkpoint=resume)
        return loss_fn.loss, trainer

    uninterrupted, _ = run(tmp_path / "full")
    stopped, trainer = run(tmp_path / "stopped", [StopAfter(2)])  # "killed" after epoch 2
    assert int(stopped.updates) == 2
    checkpoint = tmp_path / "stopped" / f"checkpoint-{trainer.state.global_step}"
    assert (checkpoint / STATE_FILE).is_file()
    resumed, _ = run(tmp_path / "stopped", resume=True)  # a fresh loss: only the checkpoint has its state
    assert int(resumed.updates) == 3
    assert torch.allclose(resumed.gammas, uninterrupted.gammas, rtol=1e-5, atol=1e-7)
    assert torch.allclose(resumed.inner_edges, uninterrupted.inner_edges, rtol=1e-5)

    os.remove(checkpoint / STATE_FILE)  # a checkpoint without the loss's state cannot be resumed exactly
    with pytest.raises(FileNotFoundError, match=STATE_FILE):
        run(tmp_path / "stopped", resume=str(checkpoint))


def test_missing_transformers_is_one_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    monkeypatch.delitem(sys.modules, "focal_calibration.integrations.huggingface")
    with pytest.raises(ImportError, match=r'pip install "focal-calibration\[hf\]"'):
        importlib.import_module("focal_calibration.integrations.huggingface")
