"""Benchmark: a temperature sweep of K = 10 temperatures decoded in ONE pass vs K separate decodes (same model, data).

  (a) one `fairseq-generate --task translation_temperature_sweep --temperatures ...` process
      vs K `fairseq-generate --temperature T` processes                         (issue 5 asks for >= 3x)
  (b) in-process: one TemperatureSweepGenerator pass over the test set
      vs K fairseq SequenceGenerator(temperature=T) passes                      (reported)

Hypotheses are checked to be identical in both comparisons. Model and data: a small Transformer trained for a few
epochs on the synthetic corpus of fairseq_focal/toy_corpus.py, or --data/--checkpoint of your own.

    python benchmarks/fairseq_sweep.py [--data BIN --checkpoint ckpt.pt] [--beam 4]
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

import fairseq_focal  # noqa: E402,F401
from fairseq_focal.toy_corpus import write_corpus  # noqa: E402
from fairseq_focal.sweep_generator import TemperatureSweepGenerator  # noqa: E402


BIN = Path(sys.executable).parent
TEMPERATURES = (0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5)


def toy_model(folder: Path):
    data = write_corpus(folder, n_words=40, sizes=(("train", 400), ("valid", 50), ("test", 200)))
    subprocess.run([str(BIN / "fairseq-train"), str(data), "--user-dir", str(ROOT / "fairseq_focal"), "--arch",
                    "transformer", "--encoder-layers", "2", "--decoder-layers", "2", "--encoder-embed-dim", "64",
                    "--decoder-embed-dim", "64", "--encoder-ffn-embed-dim", "128", "--decoder-ffn-embed-dim", "128",
                    "--encoder-attention-heads", "2", "--decoder-attention-heads", "2", "--share-all-embeddings",
                    "--criterion", "focal_loss", "--gamma", "1", "--optimizer", "adam", "--lr", "0.005",
                    "--max-tokens", "1000", "--max-epoch", "8", "--cpu", "--seed", "1", "--no-progress-bar",
                    "--no-epoch-checkpoints", "--save-dir", str(folder / "ckpt")], check=True, capture_output=True)
    return data, folder / "ckpt" / "checkpoint_last.pt"


def hypothesis_lines(stdout: str) -> list:
    return sorted(line.split("\t")[::2] for line in stdout.splitlines() if line.startswith("H-"))


def cli_comparison(data, checkpoint, beam, max_tokens):
    common = [str(BIN / "fairseq-generate"), str(data), "--user-dir", str(ROOT / "fairseq_focal"), "--path",
              str(checkpoint), "--beam", str(beam), "--max-tokens", str(max_tokens), "--gen-subset", "test"]
    if not torch.cuda.is_available():
        common.append("--cpu")
    start = time.perf_counter()
    separate = {t: subprocess.run(common + ["--temperature", str(t)], check=True, capture_output=True,
                                  text=True).stdout for t in TEMPERATURES}
    t_separate = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run(common + ["--task", "translation_temperature_sweep", "--temperatures",
                                 ",".join(map(str, TEMPERATURES)), "--sweep-output", f"{tmp}/sweep.tsv"],
                       check=True, capture_output=True, text=True)
        t_sweep = time.perf_counter() - start
        rows = [line.split("\t") for line in Path(f"{tmp}/sweep.tsv").read_text().splitlines()]
    for t in TEMPERATURES:
        ours = sorted([f"H-{i}", h] for temp, i, _, h in rows if float(temp) == t)
        assert ours == hypothesis_lines(separate[t]), f"hypotheses differ at T={t}"
    return t_separate, t_sweep


def in_process_comparison(data, checkpoint, beam, max_tokens, repeats):
    from fairseq import checkpoint_utils, utils
    from fairseq.sequence_generator import SequenceGenerator

    device = "cuda" if torch.cuda.is_available() else "cpu"
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([str(checkpoint)],
                                                                    arg_overrides={"data": str(data)})
    model = models[0].to(device).eval()
    task.load_dataset("test")
    batches = [utils.move_to_cuda(b) if device == "cuda" else b for b in task.get_batch_iterator(
        task.dataset("test"), max_tokens=max_tokens).next_epoch_itr(shuffle=False)]
    separate = [SequenceGenerator([model], task.target_dictionary, beam_size=beam, temperature=t)
                for t in TEMPERATURES]
    sweep = TemperatureSweepGenerator([model], task.target_dictionary, beam_size=beam, temperatures=TEMPERATURES)

    def run_separate():
        return [[g.generate([model], b) for b in batches] for g in separate]

    def run_sweep():
        return [sweep.generate([model], b) for b in batches]

    times = {"separate": [], "sweep": []}
    for _ in range(repeats):  # alternate, so drift in machine load hits both alike
        for name, fn in (("separate", run_separate), ("sweep", run_sweep)):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            out = fn()
            if device == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
            if name == "separate":
                ref = out
            else:
                for k in range(len(TEMPERATURES)):
                    for b in range(len(batches)):
                        assert [h[0]["tokens"].tolist() for h in out[b][k]] == \
                               [h[0]["tokens"].tolist() for h in ref[k][b]], f"hypotheses differ at T={TEMPERATURES[k]}"
    n_sentences = len(task.dataset("test"))
    return sorted(times["separate"])[repeats // 2], sorted(times["sweep"])[repeats // 2], n_sentences, device


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data")
    p.add_argument("--checkpoint")
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=4000)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.data and args.checkpoint:
            data, checkpoint = Path(args.data), Path(args.checkpoint)
        else:
            data, checkpoint = toy_model(Path(tmp))
        print(f"K = {len(TEMPERATURES)} temperatures, beam {args.beam}, torch threads {torch.get_num_threads()}")
        t_sep, t_sweep = cli_comparison(data, checkpoint, args.beam, args.max_tokens)
        print(f"(a) CLI:        {len(TEMPERATURES)} x fairseq-generate --temperature T: {t_sep:7.2f} s | one sweep "
              f"process: {t_sweep:7.2f} s | speed-up {t_sep / t_sweep:5.2f}x (hypotheses identical)")
        t_sep, t_sweep, n, device = in_process_comparison(data, checkpoint, args.beam, args.max_tokens, args.repeats)
        print(f"(b) in-process ({device}, {n} sentences, median of {args.repeats}): {len(TEMPERATURES)} x "
              f"SequenceGenerator: {t_sep:7.2f} s | one TemperatureSweepGenerator pass: {t_sweep:7.2f} s | "
              f"speed-up {t_sep / t_sweep:5.2f}x (hypotheses identical)")


if __name__ == "__main__":
    main()
