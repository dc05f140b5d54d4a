#!/usr/bin/env bash
# The training's GPU check in one command on one CUDA GPU (meant to fit in 10 minutes on an H100),
# from the repository root with the project installed:
#
#   benchmarks/gpu_acceptance.sh RESULTS_DIR [OFFICIAL_SRC [OFFICIAL_SITE]]
#
# In order of what matters most, each stage under a time limit of its own, its log in RESULTS_DIR
# (a stage that fails or runs out of time does not stop the next):
#   1. official.log  the official training step, full and LoRA r16 on every attention projection,
#                    batch 64 (only with OFFICIAL_SRC, a checkout of github.com/MineDojo/NitroGen)
#   2. ours.log      ours at the released size, batch 64: full and lora_attention with
#                    bf16_weights, compiled with CUDA graphs (the trainer's cuda_graphs: true)
#   3. tests.log     the CUDA-only tests: CUDA graphs through a resume, fp16's loss scale through
#                    a resume, the GPU samplers
#   4. frames.log,   nitrogen-finetune train itself on 2,048 PNG frames it writes first,
#      trainer.log   lora_attention with bf16_weights, compile and cuda_graphs: samples/s as its
#                    log lines report them
#   5. memory.log    the default LoRA set-up at batch 16, for its peak memory
# OFFICIAL_SITE, if given, goes first on the official stage's PYTHONPATH: the official code needs
# transformers 4.x and diffusers, e.g.
#   pip install --no-deps --target OFFICIAL_SITE "transformers<5" "huggingface_hub<1" "tokenizers<0.23" diffusers
# (--no-deps: the rest, numpy included, stays the project's). The tests need the [test] extra.
# The stage limits add up to 580 s; the script exits 1 when any stage failed or ran out of time.
set -u
if [ $# -lt 1 ]; then
    echo "usage: $0 RESULTS_DIR [OFFICIAL_SRC [OFFICIAL_SITE]]" >&2
    exit 2
fi
results=$1 official_src=${2:-} official_site=${3:-}
mkdir -p "$results"
export PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
bench=benchmarks/training_throughput.py
every_attention="[dit_attention,vl_mixer_attention,vision_tower_attention]"

failed=0
stage() {  # NAME SECONDS COMMAND...: runs COMMAND under a time limit into NAME.log, then shows its end
    local name=$1 limit=$2 start=$SECONDS status
    shift 2
    timeout --kill-after=5 "$limit" "$@" > "$results/$name.log" 2>&1
    status=$?
    echo "== $name: exit $status after $((SECONDS - start)) s$([ $status = 124 ] && echo ' (out of time)')"
    tail -n 20 "$results/$name.log"
    [ $status = 0 ] || failed=1
}

"$python" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" || exit 1
if [ -n "$official_src" ]; then
    stage official 90 env PYTHONPATH="${official_site:+$official_site:}${PYTHONPATH:-}" \
        "$python" $bench --runs "" --official-src "$official_src"
fi
stage ours 180 "$python" $bench --runs lora_attention+bf16_weights:64,full+bf16_weights:64 \
    --compile-only --compile-mode reduce-overhead
stage tests 130 "$python" -m pytest -q -rs tests/test_cuda.py \
    tests/test_run_folder.py::test_fp16_loss_scale_state_is_checkpointed_and_resumed
data=$(mktemp -d)/frames
stage frames 30 "$python" benchmarks/loader_throughput.py --frames 2048 --keep "$data" --workers ""
stage trainer 120 "$python" -m nitrogen_finetuner.cli train --base released --data "$data" \
    --output "$(dirname "$data")/run" --method lora --max-steps 60 --set batch_size=64 \
    --set "lora.targets=$every_attention" --set bf16_weights=true --set compile=true --set cuda_graphs=true \
    --set num_workers=8 --set val_every=0 --set checkpoint_every=0 --set log_every=10
grep -h '"train/samples_per_s"' "$(dirname "$data")"/run/metrics.jsonl 2>/dev/null | tail -n 3
stage memory 30 "$python" $bench --runs lora:16
exit $failed
