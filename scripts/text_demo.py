"""``make demo-text``: the text suite on real data that installs offline, beside the paper's SST / 20NG rows.

    python scripts/text_demo.py --out results/text [--tree-losses ce flsd-53] [--cnn-losses ce flsd-53 ls-0.05]

1. builds (or reuses) the link-grammar parse cache of the 10,568 non-neutral Rotten Tomatoes sentences;
2. trains the Tree-LSTM on them (torch engine; the label is on the root only) and the GP-CNN on TREC questions,
   once per loss, through ``treelstm/train.py`` (results.json + reliability diagrams per run);
3. prints test error, ECE and AdaECE before / after temperature scaling (T cross-validated on ECE) next to the
   paper's Tables 1, 2 and 4 for SST binary / 20 Newsgroups. The data are stand-ins (different sentences / task,
   root-only labels, GloVe 6B-50d), so the numbers are comparable in kind, not in value.

Budget: ~15 minutes on 2 CPU cores with the defaults (parsing ~3 min the first time; then the Tree-LSTM, 10 of the
paper's 25 epochs, and the GP-CNN, the paper's 50 epochs, train side by side on one core each).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from text_prepare_data import get_args_parser as prepare_args  # noqa: E402
from text_prepare_data import main as prepare  # noqa: E402

# Paper, Tables 1 / 2 (ECE / AdaECE %, pre, post, T) and 4 (error %), rows "SST Binary Tree LSTM" and
# "20 Newsgroups Global Pooling CNN".
PAPER = {
    ("treelstm", "ce"): dict(error=12.85, ece=(7.37, 2.62, 1.8), adaece=(7.27, 3.39, 1.8)),
    ("treelstm", "brier"): dict(error=12.85, ece=(9.01, 2.79, 2.5), adaece=(8.12, 2.84, 2.5)),
    ("treelstm", "mmce-8"): dict(error=11.86, ece=(5.03, 4.02, 1.5), adaece=(5.01, 4.32, 1.5)),
    ("treelstm", "ls-0.05"): dict(error=13.23, ece=(4.84, 4.11, 1.2), adaece=(5.14, 4.23, 1.2)),
    ("treelstm", "flsd-53"): dict(error=12.8, ece=(9.19, 1.83, 0.7), adaece=(9.15, 1.92, 0.7)),
    ("gpcnn", "ce"): dict(error=26.68, ece=(17.92, 2.39, 3.4), adaece=(17.91, 2.23, 3.4)),
    ("gpcnn", "brier"): dict(error=27.06, ece=(13.58, 3.22, 2.3), adaece=(13.57, 3.11, 2.3)),
    ("gpcnn", "mmce-8"): dict(error=27.23, ece=(15.48, 6.78, 2.2), adaece=(15.21, 6.47, 2.2)),
    ("gpcnn", "ls-0.05"): dict(error=26.03, ece=(4.79, 2.54, 1.1), adaece=(4.39, 2.63, 1.1)),
    ("gpcnn", "flsd-53"): dict(error=27.98, ece=(6.92, 2.19, 1.5), adaece=(6.92, 2.35, 1.5)),
}
PAPER_DATA = {"treelstm": "SST binary", "gpcnn": "20 Newsgroups"}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/text")
    parser.add_argument("--tree-losses", nargs="+", default=["ce", "flsd-53"])
    parser.add_argument("--cnn-losses", nargs="+", default=["ce", "flsd-53", "ls-0.05"])
    parser.add_argument("--tree-epochs", type=int, default=10)
    parser.add_argument("--cnn-epochs", type=int, default=50)
    parser.add_argument("--parse-cache", default="data/text/link_grammar_parses.jsonl")
    parser.add_argument("--seed", type=int, default=1)
    return parser


def _run_queue(runs, out: Path, results: dict):
    """Train the runs one after another, each in its own single-threaded process (logs in OUT/<run>.log)."""
    for model, loss, epochs in runs:
        run_dir = out / f"{model}_{loss}"
        command = [sys.executable, str(ROOT / "treelstm" / "train.py"), "--model", model, "--loss", loss,
                   "--epochs", str(epochs), "--seed", str(results["seed"]), "--threads", "1",
                   "--parse-cache", results["parse_cache"], "--out", str(run_dir)]
        tick = time.time()
        with open(out / f"{model}_{loss}.log", "w") as log:
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
        status = "done" if code == 0 else f"FAILED (exit {code}, see {out / f'{model}_{loss}.log'})"
        print(f"  {model} / {loss}: {epochs} epochs {status} in {time.time() - tick:.0f}s", flush=True)
        if code == 0:
            results[(model, loss)] = json.loads((run_dir / "results.json").read_text())


def main(args):
    started = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print("1/2 link-grammar trees of the Rotten Tomatoes sentences (cached after the first run)", flush=True)
    prepare(prepare_args().parse_args(["--parse-cache", args.parse_cache, "--seed", str(args.seed)]))

    # The two models train side by side, one core each (the Tree-LSTM's small per-level operations do not profit
    # from a second thread; a second process does).
    print("2/2 training (Tree-LSTM and GP-CNN in parallel, one core each)", flush=True)
    results = {"seed": args.seed, "parse_cache": args.parse_cache}
    queues = [[("treelstm", loss, args.tree_epochs) for loss in args.tree_losses],
              [("gpcnn", loss, args.cnn_epochs) for loss in args.cnn_losses]]
    threads = [threading.Thread(target=_run_queue, args=(queue, out, results)) for queue in queues]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    print(f"\nTest metrics, % (pre T / post T (T), T cross-validated on validation ECE); "
          f"total {time.time() - started:.0f}s")
    header = f"{'model':9} {'data':13} {'loss':8} {'error':>6} {'ECE pre post(T)':>18} {'AdaECE pre post(T)':>19}"
    print(header)
    print("-" * len(header))
    failed = []
    for model, loss, _ in queues[0] + queues[1]:
        record = results.get((model, loss))
        if record is None:
            failed.append(f"{model}/{loss}")
            continue
        ev = record["evaluation"]
        ece = (ev["pre"]["ece"], ev["post"]["ece"], ev["temperature"])
        ada = (ev["pre"]["adaece"], ev["post"]["adaece"], ev["temperature"])
        print(f"{model:9} {record['dataset']:13} {loss:8} {100 * ev['pre']['error']:6.2f} {_cell(ece):>18} "
              f"{_cell(ada):>19}")
        paper = PAPER.get((model, loss))
        if paper:
            print(f"{'  paper':9} {PAPER_DATA[model]:13} {loss:8} {paper['error']:6.2f} "
                  f"{_paper_cell(paper['ece']):>18} {_paper_cell(paper['adaece']):>19}")
    print(f"\nresults.json, reliability diagrams and logs under {out}/")
    if failed:
        raise SystemExit(f"runs failed: {', '.join(failed)}")


def _cell(metrics):
    return f"{100 * metrics[0]:5.2f} {100 * metrics[1]:5.2f}({metrics[2]:.1f})"


def _paper_cell(values):
    return f"{values[0]:5.2f} {values[1]:5.2f}({values[2]:.1f})"


if __name__ == "__main__":
    main(get_args_parser().parse_args())
