"""The user-dir's tasks and compatibility fixes: ``translation_nll_dynamics`` (§3 statistics per validation subset)
against per-token cross-entropy computed independently from the saved model; ``translation_temperature_sweep``'s
sweep file written whole or not at all; ``FAIRSEQ_FOCAL_COMPAT``; the docs' criterion option table against the
criterion's dataclass."""

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("fairseq", reason="the [fairseq] extra is not installed")

ROOT = Path(__file__).resolve().parents[1]
USER_DIR = ROOT / "fairseq_focal"
BIN = Path(sys.executable).parent
from fairseq_focal import compat  # noqa: E402  (importing the package registers the tasks)
from fairseq_focal.criterions.focal_loss import FocalLossCriterionConfig  # noqa: E402
from fairseq_focal.tasks.nll_dynamics import token_nll_sums  # noqa: E402
from fairseq_focal.toy_corpus import write_corpus  # noqa: E402

ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
TINY_MODEL = ["--arch", "transformer", "--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "32",
              "--decoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64",
              "--encoder-attention-heads", "2", "--decoder-attention-heads", "2", "--share-all-embeddings"]
N_TEST = 100
EPOCHS = 3


def run(tool, *args, check=True, env=ENV):
    result = subprocess.run([str(BIN / tool), *map(str, args)], capture_output=True, text=True, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"{tool} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def json_records(log: str) -> dict:
    """{(tag, epoch): stats} of fairseq's --log-format json lines ('... | INFO | <tag> | {...}')."""
    records = {}
    for line in log.splitlines():
        match = re.search(r"\| INFO \| (\w+) \| (\{.*\})$", line)
        if match and '"epoch"' in match.group(2):
            stats = json.loads(match.group(2))
            records[match.group(1), stats["epoch"]] = stats
    return records


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny CE model trained with the dynamics task, validated on valid and test (as a second subset)."""
    folder = tmp_path_factory.mktemp("corpus")
    data = write_corpus(folder, n_words=40, seed=0, env=ENV)
    save = folder / "ce"
    result = run("fairseq-train", data, "--user-dir", USER_DIR, *TINY_MODEL, "--task", "translation_nll_dynamics",
                 "--valid-subset", "valid,test", "--criterion", "focal_loss", "--gamma", "0", "--optimizer", "adam",
                 "--lr", "0.01", "--max-tokens", "1000", "--cpu", "--seed", "1", "--no-progress-bar",
                 "--log-format", "json", "--max-epoch", EPOCHS, "--save-dir", save, "--no-epoch-checkpoints")
    return {"folder": folder, "data": data, "checkpoint": save / "checkpoint_last.pt",
            "log": result.stdout + result.stderr}


# ----------------------------------------------------------------------------------------------------------------
# translation_nll_dynamics

def test_token_nll_sums_against_cross_entropy_per_token():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 7, dtype=torch.float64) * 3
    target = torch.randint(2, 7, (3, 5))
    target[0, 3:] = 1  # padding
    logits[1, 2] = 0.0  # an all-tie row: argmax picks index 0, never the (>= 2) target, so it is mispredicted
    sums = token_nll_sums(logits, target, pad=1)
    nll_incorrect = nll_correct = 0.0
    n = n_incorrect = 0
    for i in range(3):
        for j in range(5):
            if target[i, j] == 1:
                continue
            nll = torch.nn.functional.cross_entropy(logits[i, j][None], target[i, j][None]).item()
            wrong = int(torch.argmax(logits[i, j])) != int(target[i, j])
            n, n_incorrect = n + 1, n_incorrect + wrong
            nll_incorrect += nll if wrong else 0.0
            nll_correct += 0.0 if wrong else nll
    assert int(sums["_dyn_tokens"]) == n == 13 and int(sums["_dyn_incorrect"]) == n_incorrect
    assert float(sums["_dyn_nll_incorrect"]) == pytest.approx(nll_incorrect, rel=1e-6)
    assert float(sums["_dyn_nll_correct"]) == pytest.approx(nll_correct, rel=1e-6)
    with pytest.raises(ValueError, match=r"logits \(3, 5, 7\) do not match the targets \(3, 4\)"):
        token_nll_sums(logits, target[:, :4], pad=1)


def test_dynamics_logged_per_subset_match_the_saved_model(trained):
    """The last epoch's logged error / NLLs on each subset equal per-token cross-entropy of checkpoint_last."""
    from fairseq import checkpoint_utils

    records = json_records(trained["log"])
    assert {("valid", e) for e in range(1, EPOCHS + 1)} <= set(records)
    assert {("test", e) for e in range(1, EPOCHS + 1)} <= set(records)
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([str(trained["checkpoint"])],
                                                                    arg_overrides={"data": str(trained["data"])})
    model = models[0].eval()
    pad = task.target_dictionary.pad()
    for subset in ("valid", "test"):
        task.load_dataset(subset)
        nll, wrong = [], []
        with torch.no_grad():
            for sample in task.get_batch_iterator(task.dataset(subset), max_sentences=7).next_epoch_itr(
                    shuffle=False):
                logits, target = model(**sample["net_input"])[0].double(), sample["target"]
                keep = target != pad
                nll.append(torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="none"))
                wrong.append(logits[keep].argmax(-1) != target[keep])
        nll, wrong = torch.cat(nll), torch.cat(wrong)
        stats = records[subset, EPOCHS]
        log2 = torch.log(torch.tensor(2.0, dtype=torch.float64))
        assert float(stats[f"{subset}_error"]) == pytest.approx(100 * wrong.double().mean().item(), abs=1.5e-3)
        assert float(stats[f"{subset}_nll_incorrect"]) == pytest.approx((nll[wrong].mean() / log2).item(), abs=2e-3)
        assert float(stats[f"{subset}_nll_correct"]) == pytest.approx((nll[~wrong].mean() / log2).item(), abs=2e-3)
        # the criterion's own nll_loss (all tokens) is the token-weighted mix of the two
        assert float(stats[f"{subset}_nll_loss"]) == pytest.approx((nll.mean() / log2).item(), abs=2e-3)
    train_lines = [s for (tag, _), s in records.items() if tag == "train"]
    assert train_lines and not any("train_error" in s for s in train_lines)  # training steps log none of it


# ----------------------------------------------------------------------------------------------------------------
# translation_temperature_sweep: the sweep file is complete or absent

def _sweep_task(trained, sweep_output):
    from fairseq import checkpoint_utils
    from fairseq.dataclass.configs import GenerationConfig

    from fairseq_focal.tasks.temperature_sweep import TranslationTemperatureSweepConfig, TranslationTemperatureSweepTask

    cfg = TranslationTemperatureSweepConfig(data=str(trained["data"]), source_lang="src", target_lang="tgt",
                                            temperatures="0.5,1", sweep_output=str(sweep_output),
                                            dataset_impl="mmap", train_subset="train", required_seq_len_multiple=1)
    task = TranslationTemperatureSweepTask.setup_task(cfg)
    models, _ = checkpoint_utils.load_model_ensemble([str(trained["checkpoint"])], task=task)
    task.load_dataset("test")
    generator = task.build_generator(models, GenerationConfig(beam=2))
    batches = task.get_batch_iterator(dataset=task.dataset("test"), max_sentences=16).next_epoch_itr(shuffle=False)
    return task, models, generator, batches


def test_sweep_file_is_written_whole_or_not_at_all(trained, tmp_path):
    path = tmp_path / "sweep.tsv"
    path.write_text("an older, complete file\n")
    task, models, generator, batches = _sweep_task(trained, path)
    with pytest.raises(RuntimeError, match="crash after two batches"):
        for k, sample in enumerate(batches):
            task.inference_step(generator, models, sample)
            if k == 1:
                raise RuntimeError("crash after two batches")
    assert path.read_text() == "an older, complete file\n"  # not truncated, not half-replaced
    assert [p.name for p in tmp_path.iterdir()] == ["sweep.tsv"]  # and no temp file left behind

    task, models, generator, batches = _sweep_task(trained, path)
    for sample in batches:
        task.inference_step(generator, models, sample)
    rows = [line.split("\t") for line in path.read_text().splitlines()]
    assert len(rows) == 2 * N_TEST
    assert sorted((float(t), int(i)) for t, i, _, _ in rows) == [(t, i) for t in (0.5, 1.0) for i in range(N_TEST)]


def test_sweep_file_through_fairseq_generate(trained, tmp_path):
    path = tmp_path / "sweep.tsv"
    run("fairseq-generate", trained["data"], "--user-dir", USER_DIR, "--path", trained["checkpoint"], "--cpu",
        "--beam", "2", "--batch-size", "16", "--gen-subset", "test", "--task", "translation_temperature_sweep",
        "--temperatures", "0.5,1,2", "--sweep-output", path)
    assert len(path.read_text().splitlines()) == 3 * N_TEST


# ----------------------------------------------------------------------------------------------------------------
# compat: logged once, switchable

@pytest.mark.parametrize("setting, expected", [
    (None, ("torch_load_allowlist", "keep_last_partial_batch")), ("all", ("torch_load_allowlist",
                                                                          "keep_last_partial_batch")),
    ("none", ()), ("NONE", ()), ("keep_last_partial_batch", ("keep_last_partial_batch",)),
    (" torch_load_allowlist , keep_last_partial_batch", ("torch_load_allowlist", "keep_last_partial_batch")),
])
def test_compat_selection(setting, expected):
    assert compat.selected_fixes(setting) == expected


@pytest.mark.parametrize("setting", ["nothing", "all,none", ","])
def test_compat_bad_setting_names_the_value(setting):
    with pytest.raises(ValueError, match=re.escape(f"FAIRSEQ_FOCAL_COMPAT must be 'all', 'none' or a comma-separated "
                                                   f"list of torch_load_allowlist, keep_last_partial_batch; got "
                                                   f"{setting!r}")):
        compat.selected_fixes(setting)


_PROBE = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(name)s: %(message)s")
import fairseq_focal, fairseq_focal.compat
from fairseq.data import data_utils
print("PATCHED", getattr(data_utils.batch_by_size, "_keeps_last_batch", False))
"""


@pytest.mark.parametrize("setting, patched, logged", [(None, True, "torch.serialization safe globals"),
                                                      ("none", False, None),
                                                      ("torch_load_allowlist", False, "safe globals")])
def test_compat_applies_and_logs_once_at_import(setting, patched, logged):
    env = {k: v for k, v in ENV.items() if k != compat.ENV_VARIABLE}
    if setting is not None:
        env[compat.ENV_VARIABLE] = setting
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env, check=True).stdout
    lines = [line for line in out.splitlines() if line.startswith("fairseq_focal.compat:")]
    assert f"PATCHED {patched}" in out
    if logged is None:
        assert lines == []
    else:
        assert len(lines) == 1 and logged in lines[0] and "FAIRSEQ_FOCAL_COMPAT=none" in lines[0]
        assert ("batch_by_size" in lines[0]) == patched


# ----------------------------------------------------------------------------------------------------------------
# The docs' criterion options (docs/suites/fairseq.md) are the dataclass's

def _readme_option_table() -> dict:
    text = (ROOT / "docs" / "suites" / "fairseq.md").read_text(encoding="utf-8")
    start = text.index("<!-- focal_loss options: begin -->")
    end = text.index("<!-- focal_loss options: end -->")
    rows = {}
    for line in text[start:end].splitlines():
        match = re.match(r"\| `--([\w-]+)` \| `?([^|`]*)`? \|", line)
        if match:
            rows[match.group(1)] = match.group(2).strip()
    return rows


def _interpolated(field) -> bool:
    """A field whose default is ``II("group.option")``: fairseq's own option, which the criterion reads."""
    return isinstance(field.default, str) and field.default.startswith("${")


def _shown_default(field) -> str:
    default = field.default
    return {None: "none", True: "on", False: "off"}.get(default, str(default)) \
        if isinstance(default, (bool, type(None))) else str(default)


def test_readme_option_table_matches_the_criterion_dataclass():
    table = _readme_option_table()
    all_fields = [f for f in dataclasses.fields(FocalLossCriterionConfig) if not f.name.startswith("_")]
    fields = {f.name.replace("_", "-"): f for f in all_fields if not _interpolated(f)}
    missing, extra = sorted(set(fields) - set(table)), sorted(set(table) - set(fields))
    assert not missing and not extra, (f"the docs' focal_loss option table and FocalLossCriterionConfig differ: "
                                       f"undocumented {missing}, no longer options {extra}")
    wrong = {name: (table[name], _shown_default(f)) for name, f in fields.items() if table[name] != _shown_default(f)}
    assert not wrong, f"docs/suites/fairseq.md shows other defaults than the dataclass (docs, dataclass): {wrong}"
    # fairseq's own options the criterion reads are named right after the table
    text = (ROOT / "docs" / "suites" / "fairseq.md").read_text(encoding="utf-8")
    after = text[text.index("<!-- focal_loss options: end -->"):][:800]
    unnamed = [f.name for f in all_fields if _interpolated(f) and f"`--{f.name.replace('_', '-')}`" not in after]
    assert not unnamed, f"docs/suites/fairseq.md does not name the fairseq options the criterion reads: {unnamed}"
