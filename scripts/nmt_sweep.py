"""BLEU and calibration against temperature for fairseq translation models: Table 3 and Figure 5 of Mukhoti et al.
(NeurIPS 2020, §5.2).

For every checkpoint and split (valid, test), ONE pass over the data computes, for every temperature T of the list:

* BLEU of beam search at T (sacrebleu on detokenised output against the raw references; its signature is printed and
  stored) -- all temperatures decoded together by :class:`fairseq_focal.sweep_generator.TemperatureSweepGenerator`
  (encoder once per batch), hypotheses identical to ``fairseq-generate --temperature T``;
* token-level ECE (eq. 1, 15 bins), AdaECE (eq. 3), NLL and accuracy of the model on the references under teacher
  forcing at T: top-1 confidence of softmax(z / T) against the reference token, padding ignored, streamed over the
  set with the core's :class:`~focal_calibration.metrics.CalibrationAccumulator` (one per T).

Table 3 protocol: T* = the temperature of the list with the lowest VALIDATION ECE (ties -> the smallest T, as
:func:`focal_calibration.temperature.fit_temperature`); report test ECE and BLEU at T = 1 ("pre T") and at T*
("post T"). The list must contain 1 and span the optimum (the paper's T* were 1.0-1.2).

    python scripts/nmt_sweep.py run --data DATA-BIN --checkpoints CE=ce/checkpoint_last.pt FL1=fl1/checkpoint_last.pt \\
        --temperatures 0.5,0.6,...,1.5 --beam 4 --post-process sentencepiece \\
        --references valid=valid.de test=test.de --out results/nmt
    python scripts/nmt_sweep.py score --sweep-output sweep.tsv --reference test.de   # fairseq-generate's sweep file
    python scripts/nmt_sweep.py table ce/sweep.json fl1/sweep.json --out results/nmt   # merge separate runs

Outputs in --out: sweep.json (all curves, the Table 3 rows, the sacrebleu signature), table3.md, figure5.png.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch

import fairseq_focal  # noqa: E402,F401  (registers the criterion / task and applies the compat fixes)
from fairseq_focal.sweep_generator import TemperatureSweepGenerator, parse_temperatures  # noqa: E402
from focal_calibration.evaluation import write_json_atomic  # noqa: E402
from focal_calibration.metrics import CalibrationAccumulator  # noqa: E402

N_BINS = 15
CURVES = ("bleu", "ece", "adaece", "nll", "accuracy")


# ----------------------------------------------------------------------------------------------------------------
# Loading

def load_model(checkpoint, data, device):
    """(model, task) of a fairseq checkpoint on the binarised data ``data``; a checkpoint trained with a different
    dictionary gives a ValueError that says so."""
    from fairseq import checkpoint_utils

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    try:
        models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(checkpoint)],
                                                                           arg_overrides={"data": str(data)})
    except RuntimeError as error:
        mismatch = [line.strip() for line in str(error).splitlines() if "size mismatch" in line]
        if mismatch:
            raise ValueError(f"checkpoint {checkpoint} was trained with another dictionary than {data} "
                             f"({len(mismatch)} parameters differ in size, e.g. {mismatch[0]})") from None
        raise
    model = models[0].to(device).eval()
    return model, task


def read_references(path):
    return Path(path).read_text(encoding="utf-8").splitlines()


# ----------------------------------------------------------------------------------------------------------------
# One pass over a split

def _batches(task, split, max_tokens, max_sentences, limit=None):
    """fairseq's batches of the split (all of it, or its first ``limit`` sentences), in a fixed order."""
    task.load_dataset(split)
    dataset = task.dataset(split)
    if limit is None or limit >= len(dataset):
        return dataset, len(dataset), task.get_batch_iterator(
            dataset=dataset, max_tokens=max_tokens, max_sentences=max_sentences, ignore_invalid_inputs=False,
            required_batch_size_multiple=1).next_epoch_itr(shuffle=False)
    if limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    indices = np.array([i for i in dataset.ordered_indices() if i < limit], dtype=np.int64)
    batches = dataset.batch_by_size(indices, max_tokens=max_tokens, max_sentences=max_sentences)
    return dataset, limit, (dataset.collater([dataset[i] for i in batch]) for batch in batches)


def sweep_split(model, task, split, temperatures, *, beam=4, max_tokens=8000, max_sentences=None,
                post_process=None, references=None, device="cpu", lenpen=1.0, max_len_a=0.0, max_len_b=200,
                limit=None):
    """Curves over ``temperatures`` on one split (see the module docstring) and the decoded hypotheses."""
    from fairseq import utils
    from sacrebleu.metrics import BLEU

    tgt_dict = task.target_dictionary
    generator = TemperatureSweepGenerator([model], tgt_dict, temperatures=temperatures, beam_size=beam,
                                          len_penalty=lenpen, max_len_a=max_len_a, max_len_b=max_len_b)
    accumulators = [CalibrationAccumulator(N_BINS, classwise=False) for _ in temperatures]
    dataset, n_sentences, batches = _batches(task, split, max_tokens, max_sentences, limit)
    hypotheses = [dict() for _ in temperatures]
    targets = {}
    pad = tgt_dict.pad()
    with torch.no_grad():
        for sample in batches:
            sample = utils.move_to_cuda(sample, device=device) if device != "cpu" else sample
            # teacher forcing: one forward pass, then every temperature scales the same logits
            logits = model(**sample["net_input"])[0]
            target = sample["target"]
            keep = target != pad
            z, y = logits[keep].float(), target[keep]
            for temperature, accumulator in zip(temperatures, accumulators):
                accumulator.update(y, logits=z / temperature)
            # beam search at every temperature, one batched pass
            sweep = generator.generate([model], sample)
            ids = sample["id"].tolist()
            for k, hypos in enumerate(sweep):
                for sample_id, nbest in zip(ids, hypos):
                    hypotheses[k][sample_id] = tgt_dict.string(nbest[0]["tokens"].int().cpu(), post_process)
            if references is None:
                for sample_id, row in zip(ids, target):
                    targets[sample_id] = tgt_dict.string(utils.strip_pad(row, pad).int().cpu(), post_process,
                                                         escape_unk=True)
    if references is not None and limit is not None:
        references = references[:limit]
    if references is not None and len(references) != n_sentences:
        raise ValueError(f"{split}: the reference file has {len(references)} lines, the binarised split "
                         f"{n_sentences} sentences")
    refs = references if references is not None else [targets[i] for i in range(n_sentences)]
    if any(len(h) != n_sentences for h in hypotheses):
        raise RuntimeError(f"{split}: {min(len(h) for h in hypotheses)} of {n_sentences} sentences were translated")
    bleu = BLEU()
    curves = {name: [] for name in CURVES}
    for k in range(len(temperatures)):
        hyps = [hypotheses[k][i] for i in range(n_sentences)]
        curves["bleu"].append(bleu.corpus_score(hyps, [refs]).score)
        metrics = accumulators[k].compute()
        for name in ("ece", "adaece", "nll", "accuracy"):
            curves[name].append(float(metrics[name]))
    curves["n_sentences"] = n_sentences
    curves["n_tokens"] = int(accumulators[0].compute()["n"])
    return curves, str(bleu.get_signature()), hypotheses


# ----------------------------------------------------------------------------------------------------------------
# Table 3 and Figure 5

def table3_row(temperatures, valid, test):
    """T* by validation ECE (ties -> smallest T); test ECE (%) and BLEU pre (T = 1) and post (T*)."""
    temperatures = list(temperatures)
    if 1.0 not in temperatures:
        raise ValueError(f"the temperature list must contain 1 (the 'pre T' numbers), got {temperatures}")
    best = int(np.argmin(np.asarray(valid["ece"])))  # first minimum = smallest T
    pre = temperatures.index(1.0)
    return {"temperature": temperatures[best],
            "ece_pre": 100 * test["ece"][pre], "ece_post": 100 * test["ece"][best],
            "adaece_pre": 100 * test["adaece"][pre], "adaece_post": 100 * test["adaece"][best],
            "bleu_pre": test["bleu"][pre], "bleu_post": test["bleu"][best],
            "best_test_bleu": max(test["bleu"]),
            "best_test_bleu_temperature": temperatures[int(np.argmax(test["bleu"]))]}


def table3_markdown(rows: dict) -> str:
    names = list(rows)
    lines = ["| Metrics | " + " | ".join(names) + " |", "|---|" + "---|" * len(names),
             "| ECE% Pre T / Post T / T | " + " | ".join(
                 f"{r['ece_pre']:.2f}/{r['ece_post']:.2f}/{r['temperature']:g}" for r in rows.values()) + " |",
             "| BLEU Pre T / Post T | " + " | ".join(
                 f"{r['bleu_pre']:.2f}/{r['bleu_post']:.2f}" for r in rows.values()) + " |",
             "| AdaECE% Pre T / Post T | " + " | ".join(
                 f"{r['adaece_pre']:.2f}/{r['adaece_post']:.2f}" for r in rows.values()) + " |"]
    return "\n".join(lines) + "\n"


def figure5(temperatures, results: dict, path):
    """One panel per model: test BLEU (left axis) and validation ECE % (right axis) against T (the paper's Fig. 5)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(results), 3.4), dpi=100)
    FigureCanvasAgg(fig)
    for i, (name, result) in enumerate(results.items()):
        ax = fig.add_subplot(1, len(results), i + 1)
        ax.plot(temperatures, result["test"]["bleu"], color="#0072B2", marker="o", markersize=3, label="test BLEU")
        ax.set_xlabel("temperature T")
        ax.set_ylabel("test BLEU", color="#0072B2")
        ax.set_title(f"({chr(ord('a') + i)}) {name}")
        ax.grid(True, linestyle=":", alpha=0.5)
        ax_ece = ax.twinx()
        ax_ece.plot(temperatures, 100 * np.asarray(result["valid"]["ece"]), color="#D55E00", marker="s",
                    markersize=3, label="validation ECE (%)")
        ax_ece.set_ylabel("validation ECE (%)", color="#D55E00")
        ax.axvline(result["table3"]["temperature"], color="black", linestyle="--", linewidth=0.8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")


# ----------------------------------------------------------------------------------------------------------------
# CLI

def _pairs(items, what):
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"{what} must be NAME=PATH, got {item!r}")
        name, path = item.split("=", 1)
        out[name] = path
    return out


def run(args):
    temperatures = parse_temperatures(args.temperatures)
    if 1.0 not in temperatures:
        raise ValueError(f"--temperatures must contain 1 (the 'pre T' numbers of Table 3), got {list(temperatures)}")
    checkpoints = _pairs(args.checkpoints, "--checkpoints")
    if not checkpoints:
        raise ValueError("--checkpoints needs at least one NAME=PATH")
    references = {split: read_references(path) for split, path in _pairs(args.references, "--references").items()}
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    out = Path(args.out)
    results, signature = {}, None
    for name, checkpoint in checkpoints.items():
        model, task = load_model(checkpoint, args.data, device)
        result = {"checkpoint": str(checkpoint)}
        for split in ("valid", "test"):
            start = time.perf_counter()
            curves, signature, hypotheses = sweep_split(
                model, task, split, temperatures, beam=args.beam, max_tokens=args.max_tokens,
                post_process=args.post_process, references=references.get(split), device=device, lenpen=args.lenpen,
                max_len_a=args.max_len_a, max_len_b=args.max_len_b, limit=args.limit)
            result[split] = curves
            print(f"{name} {split}: {curves['n_sentences']} sentences, {curves['n_tokens']} tokens, "
                  f"{len(temperatures)} temperatures in {time.perf_counter() - start:.1f}s", flush=True)
            if split == "test":
                at_1 = temperatures.index(1.0)
                hyp_path = out / name / "test.hyp.T1.txt"
                hyp_path.parent.mkdir(parents=True, exist_ok=True)
                hyp_path.write_text("".join(hypotheses[at_1][i] + "\n" for i in range(curves["n_sentences"])),
                                    encoding="utf-8")
        result["table3"] = table3_row(temperatures, result["valid"], result["test"])
        results[name] = result
        for t, bleu, ece in zip(temperatures, result["test"]["bleu"], result["valid"]["ece"]):
            print(f"  T={t:<4g} test BLEU {bleu:6.2f}   valid ECE {100 * ece:6.2f}%")
    table = table3_markdown({name: r["table3"] for name, r in results.items()})
    write_json_atomic(out / "sweep.json", {"temperatures": list(temperatures), "n_bins": N_BINS,
                                           "sacrebleu_signature": signature, "beam": args.beam, "models": results})
    (out / "table3.md").write_text(table, encoding="utf-8")
    figure5(list(temperatures), results, out / "figure5.png")
    print(f"sacrebleu signature: {signature}")
    print(table)
    print(f"wrote {out / 'sweep.json'}, {out / 'table3.md'}, {out / 'figure5.png'}")
    return results


def score(args):
    """BLEU per temperature of a fairseq-generate --sweep-output file (TSV: temperature, id, score, hypothesis)."""
    from sacrebleu.metrics import BLEU

    refs = read_references(args.reference)
    by_t: dict = {}
    for line in Path(args.sweep_output).read_text(encoding="utf-8").splitlines():
        t, sample_id, _score, *hyp = line.split("\t")
        by_t.setdefault(float(t), {})[int(sample_id)] = hyp[0] if hyp else ""
    bleu = BLEU()
    scores = {}
    for t, hyps in sorted(by_t.items()):
        if len(hyps) != len(refs):
            raise ValueError(f"T={t:g}: {len(hyps)} hypotheses for {len(refs)} references")
        scores[t] = bleu.corpus_score([hyps[i] for i in range(len(refs))], [refs]).score
        print(f"T={t:<5g} BLEU {scores[t]:.2f}")
    print(f"sacrebleu signature: {bleu.get_signature()}")
    return scores


def table(args):
    """Merge the sweep.json of separate runs (same temperatures) into one table3.md / figure5.png."""
    import json

    merged, temperatures, signature = {}, None, None
    for path in args.sweeps:
        sweep = json.loads(Path(path).read_text(encoding="utf-8"))
        if temperatures is not None and sweep["temperatures"] != temperatures:
            raise ValueError(f"{path} was swept over {sweep['temperatures']}, the others over {temperatures}")
        temperatures, signature = sweep["temperatures"], sweep["sacrebleu_signature"]
        merged.update(sweep["models"])
    out = Path(args.out)
    write_json_atomic(out / "sweep.json", {"temperatures": temperatures, "n_bins": N_BINS,
                                           "sacrebleu_signature": signature, "models": merged})
    text = table3_markdown({name: r["table3"] for name, r in merged.items()})
    (out / "table3.md").write_text(text, encoding="utf-8")
    figure5(temperatures, merged, out / "figure5.png")
    print(text)
    return merged


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="sweep checkpoints: curves, Table 3 rows, Figure 5")
    p.add_argument("--data", required=True, help="fairseq-preprocess output folder")
    p.add_argument("--checkpoints", nargs="+", required=True, help="NAME=checkpoint.pt ...")
    p.add_argument("--temperatures", default="0.5,0.6,0.7,0.8,0.9,1,1.1,1.2,1.3,1.4,1.5")
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--lenpen", type=float, default=1.0)
    p.add_argument("--max-len-a", type=float, default=0.0, help="as fairseq-generate: max length a * src + b")
    p.add_argument("--max-len-b", type=int, default=200)
    p.add_argument("--limit", type=int, default=None, help="sweep only the first N sentences of each split")
    p.add_argument("--max-tokens", type=int, default=8000)
    p.add_argument("--post-process", default=None, help="as fairseq-generate's --post-process (sentencepiece, ...)")
    p.add_argument("--references", nargs="*", help="valid=raw.de test=raw.de (default: the decoded targets)")
    p.add_argument("--out", required=True)
    p.add_argument("--cpu", action="store_true")
    p.set_defaults(func=run)
    s = sub.add_parser("score", help="BLEU per temperature of a fairseq-generate --sweep-output file")
    s.add_argument("--sweep-output", required=True)
    s.add_argument("--reference", required=True)
    s.set_defaults(func=score)
    t = sub.add_parser("table", help="merge sweep.json files of separate runs into one Table 3 / Figure 5")
    t.add_argument("sweeps", nargs="+")
    t.add_argument("--out", required=True)
    t.set_defaults(func=table)
    return parser


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", force=True)
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}")


if __name__ == "__main__":
    main()
