#!/usr/bin/env bash
# Trains the models bundled in diffice/demo_models/ (diffice.load_demo_models) from scratch on phantoms.
# Usage: scripts/train_demo_models.sh WORKDIR [part...]   (parts: data ddpm segmenter classifier oracle pack;
# default: all). On 2 cores: data 20 s, ddpm ~40 min, segmenter/classifier/oracle 5-10 minutes each.
set -euo pipefail
work=${1:?usage: $0 WORKDIR [data ddpm segmenter classifier oracle pack]}
shift
parts=${*:-data ddpm segmenter classifier oracle pack}
mkdir -p "$work"
cd "$work"
for part in $parts; do
  case $part in
    data)  # diffice phantoms refuses a folder holding a dataset: a finished one (labels.csv) is kept
      [ -e train_set/labels.csv ] || diffice phantoms --out train_set --n 6000 --size 64 80 --seed 1 --quiet ;;
    ddpm)  # guided-diffusion UNet, 1.37M parameters; learned sigma, 1000 linear steps
      diffice train ddpm --images train_set/images --out ddpm --steps 3000 --batch-size 8 --lr 2e-4 \
        --weight-decay 0.05 --ema-rate 0.999 --checkpoint-every 250 --model-channels 32 --channel-mult 1,2,2 \
        --num-res-blocks 1 --attention-ds 4 --num-heads 4 --seed 0 ;;
    segmenter)
      diffice train segmenter --images train_set/images --masks train_set/masks --out segmenter \
        --width 16 --levels 3 --steps 1500 --batch-size 16 --lr 2e-3 --seed 0 ;;
    classifier)  # l = SonoNet-8 on [x, s(x)]; s frozen
      diffice train classifier --images train_set/images --labels train_set/labels.csv \
        --segmenter segmenter/model.safetensors --out classifier --k 8 --steps 1500 --batch-size 16 \
        --lr 1e-3 --seed 0 ;;
    oracle)  # trained apart from f: its own segmenter (another seed) + SonoNet-12 (f: SonoNet-8), one head per concept
      diffice train segmenter --images train_set/images --masks train_set/masks --out oracle_segmenter \
        --width 16 --levels 3 --steps 1500 --batch-size 16 --lr 2e-3 --seed 7
      diffice train oracle --images train_set/images --labels train_set/labels.csv --out oracle --k 12 \
        --segmenter oracle_segmenter/model.safetensors --steps 2000 --batch-size 16 --lr 1e-3 --seed 7 ;;
    pack)
      python -m diffice.explain.demo_pack . --replace-bundled ;;
    *) echo "unknown part: $part" >&2; exit 2 ;;
  esac
done
