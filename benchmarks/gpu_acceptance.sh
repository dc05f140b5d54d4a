#!/usr/bin/env bash
# The training's GPU check in one command on one CUDA GPU (meant to fit in 10 minutes on an H100),
# from the repository root with the project installed:
#
#   benchmarks/gpu_acceptance.sh RESULTS_DIR [OFFICIAL_SRC [OFFICIAL_SITE]]
#
# In order of what matters most, each stage under a time limit of its own, its log in RESULTS_DIR
# (a stage that fails or runs out of time does not stop the next):
#   1. official_full.log, official_lora.log
#                    the official training step, full and LoRA r16 on every attention projection,
#                    batch 64, each in a process of its own (only with OFFICIAL_SRC, a checkout of
#                    github.com/MineDojo/NitroGen): after the full run in the same process, the LoRA
#                    run measured 239 samples/s instead of 317 alone
#   2. ours.log      ours at the released size, batch 64: full and lora_attention with
#                    bf16_weights, compiled with CUDA graphs (the trainer's cuda_graphs: true)
#   3. frames.log    2,048 PNG frames for the stages below
#   4. tests.log     the CUDA-only tests (CUDA graphs through a resume, the GPU samplers), with
#                    their failures' tracebacks and no captured logs: 37 s on an H100 with
#                    inductor's cache warm, over 100 s cold
#   5. fp16_test.log fp16's loss scale through a resume: a straight run's against a resumed one's,
#                    three `nitrogen-finetune train` processes (60 s on an H100)
#   6. trainer.log   nitrogen-finetune train itself on those frames, lora_attention with
#                    bf16_weights, compile and cuda_graphs: samples/s as its log lines report them
#                    (an epoch of those frames is 23 steps: steps 21 to 30 and 41 to 50 hold an
#                    epoch's start)
# The default LoRA set-up's peak memory at batch 16 (3.7 GiB, measured twice) is one more command:
#   python benchmarks/training_throughput.py --runs lora:16
# OFFICIAL_SITE, if given, goes first on the official stages' PYTHONPATH: the official code needs
# transformers 4.x, diffusers (0.36 is the newest that takes huggingface_hub 0.x), einops and
# requests, e.g.
#   pip install --no-deps --target OFFICIAL_SITE "transformers<5" "huggingface_hub<1" "tokenizers<0.23" \
#       "diffusers<0.37" einops requests urllib3 idna charset-normalizer certifi
# (--no-deps: the rest, numpy included, stays the project's). The tests need the [test] extra.
# The stage limits add up to 585 s (each stage may take 5 s more to be killed); the script exits 1
# when any stage failed or ran out of time.
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
    echo "== $name: exit $status after $((SECONDS - start)) s$( { [ $status = 124 ] || [ $status = 137 ]; } && echo ' (out of time)')"
    tail -n 20 "$results/$name.log"
    [ $status = 0 ] || failed=1
}

"$python" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" || exit 1
if [ -n "$official_src" ]; then
    for method in full lora_attention; do
        stage "official_${method%_attention}" 55 env PYTHONPATH="${official_site:+$official_site:}${PYTHONPATH:-}" \
            "$python" $bench --runs "" --official-src "$official_src" --official-runs $method
    done
fi
stage ours 125 "$python" $bench --runs lora_attention+bf16_weights:64,full+bf16_weights:64 \
    --compile-only --compile-mode reduce-overhead
data=$(mktemp -d)/frames
stage frames 30 "$python" benchmarks/loader_throughput.py --frames 2048 --keep "$data" --workers ""
stage tests 140 "$python" -m pytest -q -rfEs --tb=short -p no:logging tests/test_cuda.py
stage fp16_test 80 "$python" -m pytest -q -rfEs --tb=short -p no:logging \
    tests/test_run_folder.py::test_fp16_loss_scale_state_is_checkpointed_and_resumed
stage trainer 100 "$python" -m nitrogen_finetuner.cli train --base released --data "$data" \
    --output "$(dirname "$data")/run" --method lora --max-steps 50 --set batch_size=64 \
    --set "lora.targets=$every_attention" --set bf16_weights=true --set compile=true --set cuda_graphs=true \
    --set num_workers=8 --set val_every=0 --set checkpoint_every=0 --set log_every=10 --set export_at_end=false
grep -h '"train/samples_per_s"' "$(dirname "$data")"/run/metrics.jsonl 2>/dev/null | tail -n 6
exit $failed
