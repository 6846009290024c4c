#!/usr/bin/env bash
# The spo_round bench at the reference's SD-1.5 settings on one GPU: 512 px, k = 4, 10 prompts per
# round, 20 steps branching from step 4, 10 transitions per training step, frozen weights in fp16
# with fp32 LoRA (the reference's precision), random weights of the real sizes (UNet, VAE, text
# encoder, and an SPM of the released CLIP-H size). spo-studio and the reference-style baseline run
# one after the other, each in its own process; the 40 candidates are scored 8 at a time (the
# VAE decoding 40 images of 512 px at once would need tens of GB). About 3–6 minutes on an H100; writes
# bench/results/spo_round_gpu.json (and prints the table).
#
#     bash bench/gpu_check.sh            # from the repository root, on a machine with a CUDA GPU
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check.sh: no CUDA GPU visible to torch; run it on a GPU machine')"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
exec timeout 570 python bench/spo_round.py \
  --model sd15-random --resolution 512 --scorer clip-h-random --precision fp16 \
  --batch 10 --k 4 --num-steps 20 --branch-start 4 --train-batch 10 --train-repeats 3 --warmup 1 --micro-batch 8 \
  --out bench/results/spo_round_gpu.json
