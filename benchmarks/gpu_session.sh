#!/usr/bin/env bash
# One session on a lent GPU machine (bare image with torch; nothing can be downloaded there):
# the accelerator benchmark, then the warm-start benchmark for three seeds, each seed's
# pipeline and from-scratch baselines in their own processes (the GPU is far from full
# with a 28x28 resnet20). Fine-tuning for 2 epochs (scratch 10 = pretrain 8 + 2) and for
# 6 epochs (scratch 14), both from the same trained network, supernet and search; then,
# while time is left, a supernet trained 8 epochs instead of 4 (fine-tuning 2 epochs).
#
# Needs, carried next to the checkout: .gpu/whl (optuna and its pure-Python needs,
# torch-pruning) and .gpu/fmnist (the Fashion-MNIST IDX files). Results go to $OUT:
# accelerator.{txt,json}, warmstart.tgz (cells, tables, logs; no weights).
# SMOKE=1 runs the same steps with tiny settings (a CPU check of this script).
set -u
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 WIDTHSEARCH_DATA=$PWD/.gpu/fmnist OMP_NUM_THREADS=2
if [ "${SMOKE:-0}" = 1 ]; then
    PY=.venv/bin/python
else
    PY=python3
    SITE=/tmp/site
    python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --upgrade --target $SITE \
        .gpu/whl/*.whl . || exit 1
    export PYTHONPATH=$SITE
fi
(nvidia-smi -L; $PY -c "import torch; print(torch.__version__)") > "$OUT/machine.txt" 2>&1

if [ "${SMOKE:-0}" = 1 ]; then
    ACC="--device cpu --smoke"; WARM="--smoke --device cpu"; SEEDS="0"; S8=2
else
    ACC="--steps ${ACC_STEPS:-50} --warmup 10"; WARM="--device cuda"; SEEDS="0 1 2"; S8=8
fi
timeout 200 $PY benchmarks/accelerator.py $ACC --out "$OUT/accelerator.json" \
    > "$OUT/accelerator.txt" 2>&1

R=/tmp/warm
mkdir -p $R/e2 $R/e6
pack() { tar czf "$OUT/.w.tgz" -C $R --exclude='*.pt' . 2>/dev/null && mv "$OUT/.w.tgz" "$OUT/warmstart.tgz"; }
(while sleep 15; do pack; done) &
PACKER=$!
bench() { $PY benchmarks/warmstart.py $WARM --threads 2 "$@"; }
for s in $SEEDS; do
    (
        bench --out $R/e2 --seeds $s --part pipeline
        mkdir -p $R/e6/cells $R/e6/work/s$s
        cp $R/e2/work/s$s/full.pt $R/e2/work/s$s/supernet.pt $R/e6/work/s$s/
        for c in full supernet search; do cp $R/e2/cells/$c-s$s.json $R/e6/cells/; done
        bench --out $R/e6 --seeds $s --part pipeline --finetune-epochs 6 --scratch-epochs 14
        # if time is left: a supernet trained twice as long, from the same trained network
        mkdir -p $R/s8/cells $R/s8/work/s$s
        cp $R/e2/work/s$s/full.pt $R/s8/work/s$s/
        cp $R/e2/cells/full-s$s.json $R/s8/cells/
        for f in 10 25 50; do cp $R/e2/cells/scratch-$f-s$s.json $R/s8/cells/ 2>/dev/null; done
        bench --out $R/s8 --seeds $s --part pipeline --supernet-epochs $S8
    ) > $R/pipeline-s$s.log 2>&1 &
    (
        bench --out $R/e2 --seeds $s --part scratch
        bench --out $R/e6 --seeds $s --part scratch --finetune-epochs 6 --scratch-epochs 14
    ) > $R/scratch-s$s.log 2>&1 &
done
wait $(jobs -p | grep -v "^$PACKER$")
kill $PACKER 2>/dev/null
bench --out $R/e2 --seeds $SEEDS --report > $R/table-e2.md 2>&1
bench --out $R/e6 --seeds $SEEDS --report --finetune-epochs 6 --scratch-epochs 14 > $R/table-e6.md 2>&1
bench --out $R/s8 --seeds $SEEDS --report --supernet-epochs $S8 > $R/table-s8.md 2>&1
pack
cat $R/table-e2.md $R/table-e6.md $R/table-s8.md
