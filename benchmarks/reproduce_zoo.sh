#!/usr/bin/env bash
# The exact commands behind the bundled zoo φ `metaperturb-glyphs10-resnet20` (run from the repository root).
set -euo pipefail
# meta-train three φ on glyphs10 (one process each, one torch thread; ~27 min each on a shared 2-core machine)
for seed in 0 1 2; do
  OMP_NUM_THREADS=1 python recipes/meta_train.py --dataset_dir ../shared/data/glyphs10 --task_column task --no_flip \
    --model_type cifar_resnet20 --image_size 32 --per_device_train_batch_size 32 --max_train_steps 150 \
    --seed $seed --checkpointing_steps 50 --checkpoints_total_limit 1 --output_dir runs/glyphs10-seed$seed &
done; wait
# select one on the MNIST-train validation target (no benchmark number uses these images)
python benchmarks/select_phi.py runs/glyphs10-seed0 runs/glyphs10-seed1 runs/glyphs10-seed2 \
  --max_train_steps 200 --eval_mc_samples 20 | tail -1 > runs/select_phi.json
# bundle it, benchmark it, bundle again with the results
python tools/bundle_zoo.py runs/glyphs10-seed2 metaperturb-glyphs10-resnet20 --selection runs/select_phi.json
python benchmarks/transfer_gain.py --max_train_steps 200 --eval_mc_samples 100
# the same at 1,000 steps (fashion_mnist; none and both φs), for the findings
python benchmarks/transfer_gain.py --targets fashion_mnist --no_vit --regularizers none zoo official \
  --max_train_steps 1000 --eval_mc_samples 20 --work_dir runs/transfer_gain_1000
# one-pass "mean" mode against MC-20 image by image (paired Δ, its standard error), moment-matched and MC-fitted
python benchmarks/mean_vs_mc.py --mc_samples 20 --mc_fit_steps 200 | tail -1 > runs/mean_vs_mc.json
# and against MC-100, every row (the fit and the one-pass predictions are cached from the MC-20 comparison)
python benchmarks/mean_vs_mc.py --work_dirs runs/transfer_gain runs/transfer_gain_1000 --mc_samples 100 \
  --mc_fit_steps 200 --threads 2 | tail -1 > runs/mean_vs_mc_mc100.json
# the card's findings are docs/results.md's (between the findings markers)
{ printf '## Findings\n\n'; sed -n '/<!-- findings -->/,/<!-- \/findings -->/p' docs/results.md | sed '1d;$d'; } > runs/findings.md
python tools/bundle_zoo.py runs/glyphs10-seed2 metaperturb-glyphs10-resnet20 --selection runs/select_phi.json \
  --benchmark runs/transfer_gain/transfer_gain.json --reproduction benchmarks/reproduce_zoo.sh \
  --notes runs/findings.md
