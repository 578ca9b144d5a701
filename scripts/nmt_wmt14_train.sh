#!/usr/bin/env bash
# Table 3 / Figure 5 on WMT14 En-De with the paper's settings (§5.2: "exactly the same as ... Vaswani et al. 2017",
# Transformer base): 6+6 layers, d=512, ffn 2048, 8 heads, dropout 0.1, shared embeddings, Adam β=(0.9, 0.98)
# ε=1e-9, Vaswani's schedule lr = d^-0.5 · min(step^-0.5, step · 4000^-1.5) (= fairseq inverse_sqrt, peak 7e-4 at
# 4,000 warm-up updates), ~25k target tokens per update, 100k updates; beam 4, length penalty 0.6.
# Three models: CE (γ=0, α=0), LS (γ=0, α=0.1), FL (γ=1). Then the sweep (Table 3 rows, Figure 5).
#
#   PY=.venv/bin/python DATA=data/wmt14_en_de OUT=results/wmt14 GPUS=8 bash scripts/nmt_wmt14_train.sh
#
# Needs GPUs (fp16); ~12 h per model on 8 V100 as in Vaswani et al. The per-update batch is kept at ~25k target
# tokens for any GPU count: --max-tokens 3584 × --update-freq (8 / GPUS) × GPUS ≈ 28.7k incl. padding.
set -euo pipefail
PY=${PY:-.venv/bin/python}
BIN=$(dirname "$PY")
DATA=${DATA:-data/wmt14_en_de}
OUT=${OUT:-results/wmt14}
GPUS=${GPUS:-8}
UPDATE_FREQ=$(( (8 + GPUS - 1) / GPUS ))
HERE=$(cd "$(dirname "$0")/.." && pwd)

declare -A LOSS=([CE]="--gamma 0" [LS]="--gamma 0 --label-smoothing 0.1" [FL1]="--gamma 1")
for model in CE LS FL1; do
    # shellcheck disable=SC2086
    "$BIN/fairseq-train" "$DATA/bin" --user-dir "$HERE/fairseq_focal" --task translation \
        --arch transformer_wmt_en_de --share-all-embeddings --dropout 0.1 \
        --criterion focal_loss ${LOSS[$model]} \
        --optimizer adam --adam-betas '(0.9,0.98)' --adam-eps 1e-9 --clip-norm 0.0 \
        --lr 7e-4 --lr-scheduler inverse_sqrt --warmup-updates 4000 --warmup-init-lr 1e-7 \
        --max-tokens 3584 --update-freq "$UPDATE_FREQ" --max-update 100000 --fp16 \
        --save-dir "$OUT/$model" --save-interval-updates 5000 --keep-interval-updates 5 --no-epoch-checkpoints \
        --log-format simple --log-interval 100 2>&1 | tee "$OUT/$model.train.log"
done

"$PY" "$HERE/scripts/nmt_sweep.py" run --data "$DATA/bin" \
    --checkpoints CE="$OUT/CE/checkpoint_last.pt" LS="$OUT/LS/checkpoint_last.pt" FL1="$OUT/FL1/checkpoint_last.pt" \
    --temperatures 0.5,0.6,0.7,0.8,0.9,1,1.1,1.2,1.3,1.4,1.5,1.6,1.8,2 --beam 4 --lenpen 0.6 --max-tokens 8000 \
    --post-process sentencepiece --references valid="$DATA/valid.de" test="$DATA/test.de" --output-dir "$OUT/sweep"
