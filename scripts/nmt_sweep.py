"""BLEU and calibration against temperature for fairseq translation models: Table 3 and Figure 5 of Mukhoti et al.
(NeurIPS 2020, §5.2).

For every checkpoint and split (valid, test), ONE pass over the data computes, for every temperature T of the list:

* BLEU of beam search at T (sacrebleu on detokenised output against the raw references; its signature is printed and
  stored) -- all temperatures decoded together by :class:`fairseq_focal.sweep_generator.TemperatureSweepGenerator`
  (encoder once per batch), hypotheses identical to ``fairseq-generate --temperature T``; on the test split only
  (Table 3 and Figure 5 use test BLEU; ``--valid-bleu`` decodes the validation split too);
* token-level ECE (eq. 1, 15 bins), AdaECE (eq. 3), NLL and accuracy of the model on the references under teacher
  forcing at T: top-1 confidence of softmax(z / T) against the reference token, padding ignored, streamed over the
  set with the core's :class:`~focal_calibration.calibration.metrics.CalibrationAccumulator` (one per T).

Table 3 protocol: T* = the temperature of the list with the lowest VALIDATION ECE (ties -> the smallest T, as
:func:`focal_calibration.calibration.temperature.fit_temperature`); report test ECE and BLEU at T = 1 ("pre T") and at
T*
("post T"). The list must contain 1 and span the optimum (the paper's T* were 1.0-1.2).

    python scripts/nmt_sweep.py run --data DATA-BIN --checkpoints CE=ce/checkpoint_last.pt FL1=fl1/checkpoint_last.pt \\
        --temperatures 0.5,0.6,...,1.5 --beam 4 --post-process sentencepiece \\
        --references valid=valid.de test=test.de --output-dir results/nmt
    python scripts/nmt_sweep.py score --sweep-output sweep.tsv --reference test.de   # fairseq-generate's sweep file
    python scripts/nmt_sweep.py table ce/sweep.json fl1/sweep.json --output-dir results/nmt   # merge separate runs

Outputs in --output-dir: sweep.json (all curves, the Table 3 rows, the sacrebleu signature; ``"suite": "nmt"``),
table3.md, figure5.png, and per checkpoint NAME/results.json in the shared result layout
(:func:`focal_calibration.experiments.records.make_run_record`: suite ``nmt``, dataset, model, loss, seed read from the
checkpoint, ``evaluation = {temperature, pre, post}`` with test ``ece`` / ``adaece`` / ``nll`` / ``error`` as
fractions and ``bleu``), so ``scripts/results_table.py`` reads NMT runs like image and text runs. Bad input: one
``error:`` line, exit status 2 (a truncated checkpoint, one that fairseq did not write, a reference file that is not
UTF-8 included). torch and fairseq are imported after the arguments are parsed: ``--help`` and argument errors answer
at once, without fairseq's start-up messages.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from focal_calibration.experiments import cli
from focal_calibration.files import write_json_atomic, write_text_atomic

N_BINS = 15
CURVES = ("bleu", "ece", "adaece", "nll", "accuracy")
SUITE = "nmt"
SWEEP_FORMAT_VERSION = 1


# ----------------------------------------------------------------------------------------------------------------
# Loading

def _fairseq():
    """Import fairseq with the user-dir registered (criterion, tasks, compat fixes): after argument parsing."""
    import fairseq_focal  # noqa: F401  (registers the criterion / tasks and applies the compat fixes)


def check_fairseq_checkpoint(checkpoint) -> None:
    """Refuse, naming the file, a checkpoint fairseq cannot load as a model: truncated or corrupted, or written by
    another program (e.g. this project's image or text trainer, whose checkpoints hold ``suite``). Reads the file
    memory-mapped, so its tensors are not loaded twice, and weights-only, as fairseq itself does under torch >= 2.6."""
    import torch

    _fairseq()  # fairseq's checkpoints hold argparse objects: fairseq_focal.compat registers them as safe globals
    try:
        try:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "mmap" not in str(error):
                raise
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)  # the legacy (non-zip) format
    except Exception as error:  # torch: RuntimeError / UnpicklingError / EOFError / zipfile errors
        raise ValueError(f"checkpoint {str(checkpoint)!r} is truncated or corrupted and cannot be loaded "
                         f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})") from None
    if isinstance(state, dict) and "suite" in state:
        raise ValueError(f"checkpoint {str(checkpoint)!r} was written by this project's {state['suite']!r} trainer, "
                         f"not by fairseq-train: nmt_sweep.py sweeps fairseq translation checkpoints")
    if not isinstance(state, dict) or "model" not in state or not (state.get("cfg") is not None or
                                                                   hasattr(state.get("args"), "arch")):
        keys = sorted(state)[:8] if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"checkpoint {str(checkpoint)!r} is not a fairseq checkpoint (a fairseq-train checkpoint "
                         f"holds 'model' and 'cfg'; this one holds {keys})")


def load_model(checkpoint, data, device, *, return_cfg=False):
    """(model, task) of a fairseq checkpoint on the binarised data ``data`` (and its config with ``return_cfg``); a
    checkpoint trained with a different dictionary, a truncated one or one fairseq did not write gives a ValueError
    that says so."""
    _fairseq()
    from fairseq import checkpoint_utils

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise cli.DataNotFoundError(f"checkpoint {str(checkpoint)!r} does not exist")
    if not any(Path(data).glob("dict.*.txt")):
        raise cli.DataNotFoundError(f"--data {str(data)!r} is not a fairseq-preprocess folder (no dict.*.txt)")
    check_fairseq_checkpoint(checkpoint)
    try:
        models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(checkpoint)],
                                                                           arg_overrides={"data": str(data)})
    except RuntimeError as error:
        mismatch = [line.strip() for line in str(error).splitlines() if "size mismatch" in line]
        if mismatch:
            raise ValueError(f"checkpoint {checkpoint} was trained with another dictionary than {data} "
                             f"({len(mismatch)} parameters differ in size, e.g. {mismatch[0]})") from None
        raise
    model = models[0].to(device).eval()
    return (model, task, cfg) if return_cfg else (model, task)


def read_text(path, what: str) -> str:
    """The UTF-8 text of ``path``; a missing file or one that is not UTF-8 is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise cli.DataNotFoundError(f"{what} {str(path)!r} does not exist")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        line = path.read_bytes()[:error.start].count(b"\n") + 1
        raise ValueError(f"{what} {str(path)!r} is not UTF-8 text (line {line}, byte {error.start}: "
                         f"{error.reason}); convert it, e.g. iconv -t utf-8") from None


def read_references(path):
    return read_text(path, "reference file").splitlines()


def loss_name(criterion_cfg) -> str:
    """The loss of a fairseq criterion config in the project's spec names: ce, ls-0.1, fl-1, flsd-53, fl-1+ls-0.1."""
    name = getattr(criterion_cfg, "_name", None)
    smoothing = float(getattr(criterion_cfg, "label_smoothing", 0.0) or 0.0)
    if name == "cross_entropy":
        return "ce"
    if name == "label_smoothed_cross_entropy":
        return f"ls-{smoothing:g}" if smoothing > 0 else "ce"
    if name != "focal_loss":
        return str(name)
    policy = getattr(criterion_cfg, "gamma_policy", None)
    gamma = float(getattr(criterion_cfg, "gamma", 0.0))
    focal = policy or ("ce" if gamma == 0 else f"fl-{gamma:g}")
    if smoothing == 0:
        return focal
    return f"ls-{smoothing:g}" if focal == "ce" else f"{focal}+ls-{smoothing:g}"


# ----------------------------------------------------------------------------------------------------------------
# One pass over a split

def _batches(task, split, max_tokens, max_sentences, limit=None):
    """fairseq's batches of the split (all of it, or its first ``limit`` sentences), in a fixed order."""
    import numpy as np

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
                limit=None, decode=True):
    """Curves over ``temperatures`` on one split (see the module docstring) and the decoded hypotheses
    (``decode=False``: teacher-forced curves only; ``bleu`` is None and no hypotheses)."""
    import torch
    from fairseq import utils
    from sacrebleu.metrics import BLEU

    from fairseq_focal.sweep_generator import TemperatureSweepGenerator
    from focal_calibration.calibration.metrics import CalibrationAccumulator

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
            if not decode:
                continue
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
    curves = {name: [] for name in CURVES}
    for k in range(len(temperatures)):
        metrics = accumulators[k].compute()
        for name in ("ece", "adaece", "nll", "accuracy"):
            curves[name].append(float(metrics[name]))
    curves["n_sentences"] = n_sentences
    curves["n_tokens"] = int(accumulators[0].compute()["n"])
    if not decode:
        curves["bleu"] = None
        return curves, None, None
    if references is not None and limit is not None:
        references = references[:limit]
    if references is not None and len(references) != n_sentences:
        raise ValueError(f"{split}: the reference file has {len(references)} lines, the binarised split "
                         f"{n_sentences} sentences")
    refs = references if references is not None else [targets[i] for i in range(n_sentences)]
    if any(len(h) != n_sentences for h in hypotheses):
        raise RuntimeError(f"{split}: {min(len(h) for h in hypotheses)} of {n_sentences} sentences were translated")
    bleu = BLEU()
    curves["bleu"] = [bleu.corpus_score([hypotheses[k][i] for i in range(n_sentences)], [refs]).score
                      for k in range(len(temperatures))]
    return curves, str(bleu.get_signature()), hypotheses


# ----------------------------------------------------------------------------------------------------------------
# Table 3 and Figure 5

def table3_row(temperatures, valid, test):
    """T* by validation ECE (ties -> smallest T); test ECE (%) and BLEU pre (T = 1) and post (T*)."""
    import numpy as np

    temperatures = list(temperatures)
    if 1.0 not in temperatures:
        raise ValueError(f"the temperature list must contain 1 (the 'pre T' numbers), got {temperatures}")
    best = int(np.argmin(np.asarray(valid["ece"])))  # first minimum = smallest T
    pre = temperatures.index(1.0)
    return {"temperature": temperatures[best],
            "ece_pre": 100 * test["ece"][pre], "ece_post": 100 * test["ece"][best],
            "adaece_pre": 100 * test["adaece"][pre], "adaece_post": 100 * test["adaece"][best],
            "nll_pre": test["nll"][pre], "nll_post": test["nll"][best], "error": 100 * (1 - test["accuracy"][pre]),
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
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from focal_calibration.plots import save_figure

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
    save_figure(fig, path)


# ----------------------------------------------------------------------------------------------------------------
# CLI

def _pairs(items, what):
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"{what} must be NAME=PATH, got {item!r}")
        name, path = item.split("=", 1)
        if not name or not path:
            raise ValueError(f"{what} must be NAME=PATH, got {item!r}")
        if name in out:
            raise ValueError(f"{what} names {name!r} twice")
        out[name] = path
    return out


def run_record(name, checkpoint, cfg, row, temperatures, *, dataset, args) -> dict:
    """``NAME/results.json`` of one checkpoint in the shared layout (make_run_record, suite ``nmt``): test metrics
    as fractions at T = 1 (pre) and at T* (post), BLEU as sacrebleu prints it; the checkpoint's path absolute (a
    relative path in a results file is relative to the file's folder)."""
    from focal_calibration.experiments.records import make_run_record
    def metrics(when):
        return {"ece": row[f"ece_{when}"] / 100, "adaece": row[f"adaece_{when}"] / 100, "nll": row[f"nll_{when}"],
                "bleu": row[f"bleu_{when}"], **({"error": row["error"] / 100} if when == "pre" else {})}

    evaluation = {"n_bins": N_BINS, "temperature": row["temperature"], "temperatures": list(temperatures),
                  "pre": metrics("pre"), "post": metrics("post"), "token_level": True}
    return make_run_record(suite=SUITE, dataset=dataset, model=str(getattr(cfg.model, "arch", None) or
                                                                      getattr(cfg.model, "_name", "transformer")),
                           loss=loss_name(cfg.criterion), seed=int(cfg.common.seed), args=args,
                           evaluation=evaluation, paths={"checkpoint": str(Path(checkpoint).resolve())}, name=name)


def sweep_document(temperatures, results, signature, **extra) -> dict:
    """sweep.json: every model's curves and Table 3 row, with the shared layout's ``suite`` and a format version."""
    return {"format_version": SWEEP_FORMAT_VERSION, "suite": SUITE, "temperatures": list(temperatures),
            "n_bins": N_BINS, "sacrebleu_signature": signature, **extra, "models": results}


def run(args):
    temperatures = cli.parse_temperatures(args.temperatures)
    if 1.0 not in temperatures:
        raise ValueError(f"--temperatures must contain 1 (the 'pre T' numbers of Table 3), got {list(temperatures)}")
    checkpoints = _pairs(args.checkpoints, "--checkpoints")
    if not checkpoints:
        raise ValueError("--checkpoints needs at least one NAME=PATH")
    references = _pairs(args.references, "--references")
    unknown = sorted(set(references) - {"valid", "test"})
    if unknown:
        raise ValueError(f"--references takes valid=PATH and test=PATH, got {unknown[0]!r}")
    references = {split: read_references(path) for split, path in references.items()}
    for name, value in (("--beam", args.beam), ("--max-tokens", args.max_tokens)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    import torch  # after the arguments' checks: a bad value is refused in a fraction of a second
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    out = Path(args.output_dir)
    cli.RunFolder(out).lock()  # one sweep writes an output folder at a time
    results, signature = {}, None
    for name, checkpoint in checkpoints.items():
        model, task, cfg = load_model(checkpoint, args.data, device, return_cfg=True)
        result = {"checkpoint": str(checkpoint)}
        for split in ("valid", "test"):
            start = time.perf_counter()
            decode = split == "test" or args.valid_bleu
            curves, split_signature, hypotheses = sweep_split(
                model, task, split, temperatures, beam=args.beam, max_tokens=args.max_tokens,
                post_process=args.post_process, references=references.get(split), device=device, lenpen=args.lenpen,
                max_len_a=args.max_len_a, max_len_b=args.max_len_b, limit=args.limit, decode=decode)
            signature = split_signature or signature
            result[split] = curves
            print(f"{name} {split}: {curves['n_sentences']} sentences, {curves['n_tokens']} tokens, "
                  f"{len(temperatures)} temperatures{'' if decode else ' (teacher forcing only)'} in "
                  f"{time.perf_counter() - start:.1f}s", flush=True)
            if split == "test":
                at_1 = temperatures.index(1.0)
                write_text_atomic(out / name / "test.hyp.T1.txt",
                            "".join(hypotheses[at_1][i] + "\n" for i in range(curves["n_sentences"])))
        result["table3"] = table3_row(temperatures, result["valid"], result["test"])
        results[name] = result
        write_json_atomic(out / name / "results.json",
                          run_record(name, checkpoint, cfg, result["table3"], temperatures, dataset=args.dataset,
                                     args=cli.stored_args({k: v for k, v in vars(args).items() if k != "func"})))
        for t, bleu, ece in zip(temperatures, result["test"]["bleu"], result["valid"]["ece"]):
            print(f"  T={t:<4g} test BLEU {bleu:6.2f}   valid ECE {100 * ece:6.2f}%")
    table = table3_markdown({name: r["table3"] for name, r in results.items()})
    write_json_atomic(out / "sweep.json", sweep_document(temperatures, results, signature, beam=args.beam))
    write_text_atomic(out / "table3.md", table)
    figure5(list(temperatures), results, out / "figure5.png")
    print(f"sacrebleu signature: {signature}")
    print(table)
    print(f"wrote {out / 'sweep.json'}, {out / 'table3.md'}, {out / 'figure5.png'}, NAME/results.json")
    return results


def score_file(sweep_output, reference) -> dict:
    """BLEU per temperature of a fairseq-generate --sweep-output file (TSV: temperature, id, score, hypothesis)."""
    from sacrebleu.metrics import BLEU

    refs = read_references(reference)
    path = Path(sweep_output)
    by_t: dict = {}
    for number, line in enumerate(read_text(path, "sweep file").splitlines(), 1):
        fields = line.split("\t")
        try:
            t, sample_id = float(fields[0]), int(fields[1])
        except (IndexError, ValueError):
            raise ValueError(f"{path}:{number} is not a sweep line (temperature, id, score, hypothesis): "
                             f"{line[:80]!r}") from None
        by_t.setdefault(t, {})[sample_id] = fields[3] if len(fields) > 3 else ""
    bleu = BLEU()
    scores = {}
    for t, hyps in sorted(by_t.items()):
        if sorted(hyps) != list(range(len(refs))):
            raise ValueError(f"T={t:g}: hypotheses for {len(hyps)} sentence ids, the reference has {len(refs)} lines")
        scores[t] = bleu.corpus_score([hyps[i] for i in range(len(refs))], [refs]).score
    return {"bleu": scores, "signature": str(bleu.get_signature())}


def score(args):
    result = score_file(args.sweep_output, args.reference)
    for t, value in result["bleu"].items():
        print(f"T={t:<5g} BLEU {value:.2f}")
    print(f"sacrebleu signature: {result['signature']}")
    return result


def table(args):
    """Merge the sweep.json of separate runs (same temperatures) into one table3.md / figure5.png."""
    cli.RunFolder(args.output_dir).lock()
    merged, temperatures, signature = {}, None, None
    for path in args.sweeps:
        path = Path(path)
        text = read_text(path, "sweep file")
        try:
            sweep = json.loads(text)
            sweep_temperatures, models = sweep["temperatures"], sweep["models"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{path} is not a sweep.json of nmt_sweep.py run ({error})") from None
        if temperatures is not None and sweep_temperatures != temperatures:
            raise ValueError(f"{path} was swept over {sweep_temperatures}, the others over {temperatures}")
        clash = sorted(set(models) & set(merged))
        if clash:
            raise ValueError(f"{path} repeats the model name {clash[0]!r}")
        temperatures, signature = sweep_temperatures, sweep.get("sacrebleu_signature")
        merged.update(models)
    out = Path(args.output_dir)
    write_json_atomic(out / "sweep.json", sweep_document(temperatures, merged, signature))
    text = table3_markdown({name: r["table3"] for name, r in merged.items()})
    write_text_atomic(out / "table3.md", text)
    figure5(temperatures, merged, out / "figure5.png")
    print(text)
    return merged


def get_args_parser():
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=cli.ArgumentParser)
    p = sub.add_parser("run", help="sweep checkpoints: curves, Table 3 rows, Figure 5")
    p.add_argument("--data", required=True, help="fairseq-preprocess output folder")
    p.add_argument("--checkpoints", nargs="+", required=True, help="NAME=checkpoint.pt ...")
    p.add_argument("--temperatures", default="0.5,0.6,0.7,0.8,0.9,1,1.1,1.2,1.3,1.4,1.5",
                   help="comma-separated; must contain 1 and should span the optimum")
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--lenpen", type=float, default=1.0)
    p.add_argument("--max-len-a", type=float, default=0.0, help="as fairseq-generate: max length a * src + b")
    p.add_argument("--max-len-b", type=int, default=200)
    p.add_argument("--limit", type=int, default=None, help="sweep only the first N sentences of each split")
    p.add_argument("--max-tokens", type=int, default=8000)
    p.add_argument("--post-process", default=None, help="as fairseq-generate's --post-process (sentencepiece, ...)")
    p.add_argument("--references", nargs="*", help="valid=raw.de test=raw.de (default: the decoded targets)")
    p.add_argument("--valid-bleu", action="store_true", help="also decode the validation split (BLEU curve)")
    p.add_argument("--dataset", default="translation", help="dataset name recorded in results.json")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--cpu", action="store_true")
    p.set_defaults(func=run)
    s = sub.add_parser("score", help="BLEU per temperature of a fairseq-generate --sweep-output file")
    s.add_argument("--sweep-output", required=True)
    s.add_argument("--reference", required=True)
    s.set_defaults(func=score)
    t = sub.add_parser("table", help="merge sweep.json files of separate runs into one Table 3 / Figure 5")
    t.add_argument("sweeps", nargs="+")
    t.add_argument("--output-dir", required=True)
    t.set_defaults(func=table)
    return parser


def _main(args):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", force=True)
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    return args.func(args)


def main(argv=None) -> int:
    return cli.run_cli(get_args_parser(), _main, argv)


if __name__ == "__main__":
    sys.exit(main())
