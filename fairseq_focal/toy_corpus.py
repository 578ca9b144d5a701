"""A tiny synthetic "translation" corpus for tests and benchmarks of the fairseq user-dir (no download).

Source sentences are random words ``w0 .. w{n-1}``; the target maps every word one-to-one (``w_i -> v_{7i mod n}``)
and reverses the order, so a small Transformer learns it in a few hundred updates. ``write_corpus`` writes
``{train,valid,test}.{src,tgt}`` and binarises them with ``fairseq-preprocess --joined-dictionary``.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

__all__ = ["write_corpus"]


def write_corpus(folder, n_words: int = 40, seed: int = 0, sizes=(("train", 400), ("valid", 50), ("test", 100)),
                 min_len: int = 3, max_len: int = 9, fairseq_bin=None, env=None) -> Path:
    """Write the raw splits into ``folder`` and binarise them into ``folder/bin`` (returned)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(n_words)]
    mapping = {w: f"v{(7 * i) % n_words}" for i, w in enumerate(words)}
    for split, n in sizes:
        src, tgt = [], []
        for _ in range(n):
            sentence = [rng.choice(words) for _ in range(rng.randint(min_len, max_len))]
            src.append(" ".join(sentence))
            tgt.append(" ".join(mapping[w] for w in reversed(sentence)))
        (folder / f"{split}.src").write_text("\n".join(src) + "\n")
        (folder / f"{split}.tgt").write_text("\n".join(tgt) + "\n")
    tool = Path(fairseq_bin or Path(sys.executable).parent) / "fairseq-preprocess"
    prefixes = [arg for split, _ in sizes for arg in (f"--{split}pref", str(folder / split))]
    result = subprocess.run([str(tool), "--source-lang", "src", "--target-lang", "tgt", *prefixes, "--destdir",
                             str(folder / "bin"), "--joined-dictionary", "--workers", "1"],
                            capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"fairseq-preprocess failed:\n{result.stderr[-3000:]}")
    return folder / "bin"
