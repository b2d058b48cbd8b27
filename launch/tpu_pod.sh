#!/usr/bin/env bash
# Run a vft command on every host of a Cloud TPU VM slice (jax.distributed auto-detects the pod).
usage() {
  cat <<'EOF'
Usage: launch/tpu_pod.sh [OPTIONS] TPU_NAME ZONE COMMAND [VFT_FLAGS...]

Runs `vft COMMAND VFT_FLAGS... --distributed` on every worker of the TPU VM slice TPU_NAME, after
the same setup on all workers (--worker=all):
  1. copy this checkout's HEAD commit (`git archive`; uncommitted changes are NOT copied) to
     ~/vft, replacing everything there except the virtual environment ~/vft/.venv;
  2. install the TPU variant: `make venv ACCEL=tpu` (a no-op when the pins did not change);
  3. run the command in the foreground (every worker's output is streamed back here).
Outputs (--workdir, --output) and --config.data.dir should be gs:// paths; local inputs
(--input, --config.codec.path) must exist on every worker (e.g. a gcsfuse mount, or `tpu-vm scp`).

Options:
  --project=PROJECT   Google Cloud project (default: gcloud's configured one)
  --gcloud-flag=FLAG  one more flag for every gcloud call, e.g. --gcloud-flag=--tunnel-through-iap
  --python=PYTHON     interpreter that creates the worker venv, >= 3.11 (default: python3)
  --dry-run           print the commands (one per line, shell-quoted) instead of running them
  -h, --help          show this help

Examples:
  launch/tpu_pod.sh --project=my-proj my-v5p-64 us-east5-a train \
    --config=configs/tokenizer_d12_d12.py --workdir=gs://my-bucket/runs/d12_d12 \
    --config.data.dir=gs://my-bucket/k600_128
  launch/tpu_pod.sh my-v5p-64 us-east5-a prep --input=/mnt/k600/train \
    --output=gs://my-bucket/k600_128 --config=configs/prep_video.py:k600_128 \
    --config.codec.path=../vidtok.safetensors   # copied to each worker's ~ beforehand
EOF
}
set -euo pipefail

die() { echo "tpu_pod.sh: $*" >&2; exit 2; }

dry_run=0 python=python3 gcloud_flags=()
while (($#)); do
  case $1 in
    --project=*) gcloud_flags+=("$1"); shift ;;
    --gcloud-flag=*) gcloud_flags+=("${1#--gcloud-flag=}"); shift ;;
    --python=*) python=${1#--python=}; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) break ;;
  esac
done
(($# >= 3)) || die "expected TPU_NAME ZONE COMMAND [VFT_FLAGS...], got $# arguments (see --help)"
tpu_name=$1 zone=$2
shift 2

cd "$(dirname "$0")/.."
# shellcheck source=launch/lib.sh
source launch/lib.sh
commit=$(git rev-parse HEAD) || die "$PWD is not a git checkout (the workers get its HEAD commit)"
[[ -z $(git status --porcelain --untracked-files=no) ]] ||
  echo "tpu_pod.sh: warning: uncommitted changes are not copied; workers run $commit" >&2
tarball=${TMPDIR:-/tmp}/vft-$commit.tar.gz
ssh=(gcloud compute tpus tpu-vm ssh "$tpu_name" "--zone=$zone" --worker=all "${gcloud_flags[@]}")

# Remote command lines: the worker's login shell parses them once more, so every user-given word
# is quoted for it once more.
quote make venv ACCEL=tpu "PYTHON=$python"
install=$quoted
quote .venv/bin/python -m vft.main "$@" --distributed
vft_cmd=$quoted

run git archive --format=tar.gz "--output=$tarball" "$commit"
((dry_run)) || trap 'rm -f "$tarball"' EXIT
run gcloud compute tpus tpu-vm scp "$tarball" "$tpu_name:vft.tar.gz" "--zone=$zone" --worker=all \
  "${gcloud_flags[@]}"
run "${ssh[@]}" "--command=mkdir -p ~/vft && find ~/vft -mindepth 1 -maxdepth 1 ! -name .venv \
-exec rm -rf {} + && tar -xzf ~/vft.tar.gz -C ~/vft && rm ~/vft.tar.gz && cd ~/vft && $install"
run "${ssh[@]}" "--command=cd ~/vft && $vft_cmd"
