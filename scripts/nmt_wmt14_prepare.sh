#!/usr/bin/env bash
# WMT14 English-German, the standard way (Vaswani et al. 2017; Mukhoti et al. 2020 §5.2) -- for a machine with the
# internet. Result: ~4.5M training pairs (Europarl v7 + Common Crawl + News Commentary v9), newstest2013 as valid,
# newstest2014 (full, 3003 sentences) as test, a joint sentencepiece vocabulary of 32k, and
# `fairseq-preprocess --joined-dictionary` output in $OUT/bin.
#
#   PY=.venv/bin/python OUT=data/wmt14_en_de bash scripts/nmt_wmt14_prepare.sh
#
# Steps: download -> clean (scripts/nmt_wmt14_clean.py: length <= 250 words, ratio <= 1.5, dedup) -> sentencepiece
# (trained on a 10M-line sample of both sides) -> encode -> binarise. valid/test come from sacrebleu (the exact
# references BLEU is later computed against: $OUT/valid.de, $OUT/test.de).
set -euo pipefail
PY=${PY:-.venv/bin/python}
BIN=$(dirname "$PY")
OUT=${OUT:-data/wmt14_en_de}
VOCAB=${VOCAB:-32000}
HERE=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT/raw"
cd "$OUT"

# 1. download (the three corpora of the WMT14 shared task that Vaswani et al. used)
URLS=(
    "http://www.statmt.org/europarl/v7/de-en.tgz"
    "http://www.statmt.org/wmt13/training-parallel-commoncrawl.tgz"
    "http://www.statmt.org/wmt14/training-parallel-nc-v9.tgz"
)
for url in "${URLS[@]}"; do
    file=raw/$(basename "$url")
    if [ ! -f "$file" ]; then
        wget -q -O "$file.part" "$url"
        mv "$file.part" "$file"
    fi
    tar -xzf "$file" -C raw
done
CORPORA=(raw/europarl-v7.de-en raw/commoncrawl.de-en raw/training/news-commentary-v9.de-en)
cat "${CORPORA[@]/%/.en}" > raw/train.en
cat "${CORPORA[@]/%/.de}" > raw/train.de

# valid = newstest2013, test = newstest2014 (full) -- plain text straight from sacrebleu
"$BIN/sacrebleu" -t wmt13 -l en-de --echo src > valid.en
"$BIN/sacrebleu" -t wmt13 -l en-de --echo ref > valid.de
"$BIN/sacrebleu" -t wmt14/full -l en-de --echo src > test.en
"$BIN/sacrebleu" -t wmt14/full -l en-de --echo ref > test.de

# 2. clean the training data
"$PY" "$HERE/scripts/nmt_wmt14_clean.py" --src raw/train.en --tgt raw/train.de --out-src train.en --out-tgt train.de

# 3. joint sentencepiece model and encoding
"$PY" - "$VOCAB" <<'EOF'
import sys
import sentencepiece as spm

vocab = int(sys.argv[1])
spm.SentencePieceTrainer.train(input="train.en,train.de", model_prefix="spm", vocab_size=vocab,
                               character_coverage=1.0, model_type="unigram", input_sentence_size=10_000_000,
                               shuffle_input_sentence=True, bos_id=-1, eos_id=-1, pad_id=-1, unk_id=0)
sp = spm.SentencePieceProcessor(model_file="spm.model")
for split in ("train", "valid", "test"):
    for lang in ("en", "de"):
        with open(f"{split}.{lang}", encoding="utf-8") as f, open(f"{split}.sp.{lang}", "w", encoding="utf-8") as g:
            for line in f:
                g.write(" ".join(sp.encode(line.rstrip("\n"), out_type=str)) + "\n")
EOF

# 4. binarise with one joined dictionary (shared embeddings)
"$BIN/fairseq-preprocess" --source-lang en --target-lang de --trainpref train.sp --validpref valid.sp \
    --testpref test.sp --destdir bin --joined-dictionary --workers "$(nproc)"
