"""Hugging Face ``Trainer``: a BERT-style classifier trained with FLSc-531 (γ = 5, 3, 1 over the run) through
``compute_loss_func``, the schedule driven by ``CalibrationLossCallback``, the eval ECE from ``compute_metrics``, then
a ``TemperatureScaler`` fitted on the eval dataloader (dict batches, ``ModelOutput`` logits).

Shows: ``CalibrationLossFunction("flsc-531", epochs=...)`` (the paper's milestones 100/350 and 250/350 of the run);
the callback calling ``set_epoch`` at each epoch and saving the loss's state in every checkpoint folder;
``callback.compute_metrics(...)`` wrapping your own metrics (it also hands the eval logits to AdaFocal, when that is
the loss); ``TemperatureScaler(model, class_dim=-1)`` on a Hugging Face model. The model is built from a tiny config
(no download), the data is synthetic token sequences, CPU:

    python examples/huggingface_trainer.py
"""

import tempfile
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

from focal_calibration import TemperatureScaler, calibration_metrics
from focal_calibration.integrations.huggingface import CalibrationLossCallback, CalibrationLossFunction

NUM_LABELS, VOCAB, LENGTH = 3, 50, 12


def make_dataset(samples: int, generator: torch.Generator) -> list[dict]:
    """The label is the most frequent of three 'keyword' groups in the sequence (ties broken by noise)."""
    ids = torch.randint(1, VOCAB, (samples, LENGTH), generator=generator)
    counts = torch.stack([(ids % NUM_LABELS == k).sum(1) for k in range(NUM_LABELS)], 1).float()
    labels = (counts + torch.rand(counts.shape, generator=generator) * 2).argmax(1)
    return [{"input_ids": i, "attention_mask": torch.ones(LENGTH, dtype=torch.long), "labels": y}
            for i, y in zip(ids, labels)]


def make_model() -> BertForSequenceClassification:
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=LENGTH, num_labels=NUM_LABELS)
    return BertForSequenceClassification(config)


def ece_metrics(prediction) -> dict:
    metrics = calibration_metrics(torch.as_tensor(prediction.label_ids), logits=torch.as_tensor(prediction.predictions))
    return {"ece": metrics["ece"], "accuracy": metrics["accuracy"]}


class RecordGamma(TrainerCallback):
    """Only for the printout: γ of each epoch."""

    def __init__(self, loss):
        self.loss, self.gammas = loss, []

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.gammas.append(self.loss.policy(None))


def main(samples: int = 1500, epochs: int = 7, output_dir=None, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    train, val = make_dataset(samples * 4 // 5, generator), make_dataset(samples // 5, generator)
    folder = Path(output_dir) if output_dir is not None else Path(tempfile.mkdtemp(prefix="focal_calibration_"))

    loss_fn = CalibrationLossFunction("flsc-531", epochs=epochs)
    callback = CalibrationLossCallback(loss_fn)
    record = RecordGamma(loss_fn.loss)
    args = TrainingArguments(output_dir=str(folder), num_train_epochs=epochs, per_device_train_batch_size=32,
                             per_device_eval_batch_size=128, learning_rate=2e-3, eval_strategy="epoch",
                             save_strategy="epoch", save_total_limit=1, logging_strategy="no", report_to="none",
                             use_cpu=True, disable_tqdm=True, seed=seed)
    trainer = Trainer(model=make_model(), args=args, train_dataset=train, eval_dataset=val, compute_loss_func=loss_fn,
                      compute_metrics=callback.compute_metrics(ece_metrics), callbacks=[callback, record])
    trainer.train()
    evaluation = trainer.evaluate()

    scaler = TemperatureScaler(trainer.model, class_dim=-1).fit(trainer.get_eval_dataloader())
    result = {"gamma_per_epoch": record.gammas, "eval_ece": evaluation["eval_ece"],
              "eval_accuracy": evaluation["eval_accuracy"], "temperature": float(scaler.temperature),
              "eval_ece_at_t": float(scaler.fit_result.ece.min()), "output_dir": str(folder)}
    print(f"FLSc-531 γ per epoch {record.gammas}; eval accuracy {result['eval_accuracy']:.3f}, "
          f"ECE {result['eval_ece']:.4f}; T = {result['temperature']:.1f} fitted on the eval set (its ECE there: "
          f"{result['eval_ece_at_t']:.4f})")
    return result


if __name__ == "__main__":
    main()
