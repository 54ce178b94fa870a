#!/usr/bin/env bash
# The exact commands behind the bundled zoo φ `metaperturb-glyphs10-resnet20` (run from the repository root).
set -euo pipefail
C=benchmarks/results/phi_candidates
# meta-train five φ on glyphs10 at the authors' budget: 10 tasks, 750 steps of batch 128, Adam 1e-3, wd 5e-4
# (two CPU processes of one thread each; one run at a time)
for seed in 0 1 2 3 4; do
  ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 --num_cpu_threads_per_process 1 \
    recipes/meta_train.py --dataset_dir ../shared/data/glyphs10 --task_column task --no_flip \
    --per_device_train_batch_size 128 --max_train_steps 750 --learning_rate 1e-3 --weight_decay 5e-4 --seed $seed \
    --checkpointing_steps 50 --checkpoints_total_limit 2 --output_dir $C/glyphs10-resnet20-b128-750-seed$seed
done
# select one on the MNIST-train validation target (no benchmark number uses these images)
python benchmarks/select_phi.py $C/glyphs10-resnet20-b128-750-seed{0,1,2,3,4} --max_train_steps 1000 --eval_mc_samples 20
# benchmark the selected φ: ResNet-20 from scratch, 100 images per class, 2,000 steps of batch 64, three targets
python tools/build_animal_mnist.py --output_dir runs/animal_mnist  # docs/datasets.md says how to install its source
python benchmarks/transfer_gain.py --work_dir runs/transfer_gain_2000 --targets fashion_mnist mnist animal_mnist \
  --target_dir animal_mnist=runs/animal_mnist --zoo_phi $C/glyphs10-resnet20-b128-750-seed1 \
  --max_train_steps 2000 --eval_mc_samples 20 --no_vit
# the same at 1,000 steps (another work dir: a run folder holds one budget)
python benchmarks/transfer_gain.py --work_dir runs/transfer_gain_1000 --targets fashion_mnist mnist animal_mnist \
  --target_dir animal_mnist=runs/animal_mnist --zoo_phi $C/glyphs10-resnet20-b128-750-seed1 \
  --max_train_steps 1000 --eval_mc_samples 20 --no_vit
# bundle it with its selection and the benchmark's records (the card's "what it is good for" comes from them)
R=benchmarks/results/transfer_gain-fashion_mnist+mnist+animal_mnist
python tools/bundle_zoo.py $C/glyphs10-resnet20-b128-750-seed1 metaperturb-glyphs10-resnet20 \
  --selection benchmarks/results/select_phi-steps1000-mc20-pc100-phi5_ae33b34c.json \
  --benchmark $R-steps2000-mc20-phi_glyphs10-resnet20-b128-750-seed1-novit.json \
  --other_budget $R-steps1000-mc20-phi_glyphs10-resnet20-b128-750-seed1-novit.json \
  --reproduction benchmarks/reproduce_zoo.sh
