#!/usr/bin/env bash
# make demo-nmt: §5.2 / Table 3 / Figure 5 of Mukhoti et al. (2020) at CPU scale, on real En-De data that installs
# offline (LibreOffice's help pages, ~32.6k train / 1.3k valid / 1.2k test paragraph pairs, MPL-2.0).
#
#   1. data:   apt-get download + dpkg-deb -x the two help packages (no apt-get install), align, split, sentencepiece
#   2. train:  a small pre-LN Transformer (2+2 layers, d=128) for the same number of updates with
#              CE (focal_loss --gamma 0, = fairseq's cross_entropy), FL γ=1, and LS α=0.1 (focal_loss --gamma 0
#              --label-smoothing 0.1, = label_smoothed_cross_entropy)  -- ~10-15 min each on 2 idle CPU cores
#   3. sweep:  BLEU (beam 4, max length 1.2 src + 10, sacrebleu) and teacher-forced token ECE/AdaECE/NLL at
#              T = 0.6 ... 1.5 on the first LIMIT=500 sentences of valid and test, one pass per model; T* by
#              validation ECE; Table 3 rows (table3.md / sweep.json) and Figure 5 (figure5.png)
#
# Environment: PY (python of the venv with fairseq), DATA (work dir), OUT (results), UPDATES (per model),
# MODELS (subset of "ce fl1 ls"), TEMPERATURES, LIMIT (sentences per split in the sweep; the CPU decodes
# LIMIT x |TEMPERATURES| x beam hypotheses per split).
set -euo pipefail
PY=${PY:-.venv/bin/python}
BIN=$(dirname "$PY")
DATA=${DATA:-data/nmt_demo}
OUT=${OUT:-results/nmt_demo}
UPDATES=${UPDATES:-800}
MODELS=${MODELS:-"ce fl1 ls"}
TEMPERATURES=${TEMPERATURES:-0.6,0.7,0.8,0.9,1,1.1,1.2,1.3,1.4,1.5}
LIMIT=${LIMIT:-500}
HERE=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$DATA" "$OUT"

# 1. data -----------------------------------------------------------------------------------------------------
if [ ! -d "$DATA/lo_help/usr/share/libreoffice/help/de" ]; then
    (cd "$DATA" && apt-get download libreoffice-help-en-us libreoffice-help-de \
        && for f in libreoffice-help-*.deb; do dpkg-deb -x "$f" lo_help; done)
fi
if [ ! -f "$DATA/corpus/bin/dict.de.txt" ]; then
    "$PY" "$HERE/scripts/nmt_prepare_libreoffice.py" --help-root "$DATA/lo_help/usr/share/libreoffice/help" \
        --out "$DATA/corpus" --vocab-size 4000
    "$BIN/fairseq-preprocess" --source-lang en --target-lang de --trainpref "$DATA/corpus/train.sp" \
        --validpref "$DATA/corpus/valid.sp" --testpref "$DATA/corpus/test.sp" --destdir "$DATA/corpus/bin" \
        --joined-dictionary --workers 2
fi

# 2. train ----------------------------------------------------------------------------------------------------
declare -A LOSS=([ce]="--gamma 0" [fl1]="--gamma 1" [ls]="--gamma 0 --label-smoothing 0.1")
for model in $MODELS; do
    if [ -f "$OUT/$model/checkpoint_last.pt" ] && grep -q "done training" "$OUT/$model/train.log" 2>/dev/null; then
        continue
    fi
    mkdir -p "$OUT/$model"
    # shellcheck disable=SC2086
    "$BIN/fairseq-train" "$DATA/corpus/bin" --user-dir "$HERE/fairseq_focal" --task translation --cpu --seed 1 \
        --arch transformer --share-all-embeddings --encoder-normalize-before --decoder-normalize-before \
        --encoder-layers 2 --decoder-layers 2 --encoder-embed-dim 128 --decoder-embed-dim 128 \
        --encoder-ffn-embed-dim 512 --decoder-ffn-embed-dim 512 --encoder-attention-heads 4 \
        --decoder-attention-heads 4 --dropout 0.1 \
        --criterion focal_loss ${LOSS[$model]} \
        --optimizer adam --adam-betas '(0.9,0.98)' --lr 2e-3 --lr-scheduler inverse_sqrt --warmup-updates 200 \
        --clip-norm 0 --max-tokens 4096 --max-update "$UPDATES" --validate-interval-updates 400 \
        --save-interval-updates 400 --keep-interval-updates 1 --no-epoch-checkpoints \
        --save-dir "$OUT/$model" --no-progress-bar --log-interval 25 2>&1 | tee "$OUT/$model/train.log" \
        | grep --line-buffered -E "valid on|done training" || true
done

# 3. sweep ----------------------------------------------------------------------------------------------------
CKPTS=()
for model in $MODELS; do CKPTS+=("$model=$OUT/$model/checkpoint_last.pt"); done
"$PY" "$HERE/scripts/nmt_sweep.py" run --data "$DATA/corpus/bin" --checkpoints "${CKPTS[@]}" \
    --temperatures "$TEMPERATURES" --beam 4 --max-tokens 6000 --max-len-a 1.2 --max-len-b 10 --limit "$LIMIT" \
    --post-process sentencepiece \
    --references valid="$DATA/corpus/valid.de" test="$DATA/corpus/test.de" --out "$OUT"
