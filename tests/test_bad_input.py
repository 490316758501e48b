"""Bad input at every entry point a user runs: each case ends in one ``error:`` line naming the problem (exit code
not 0, no traceback) and leaves what was there before untouched.

Every script runs in this process (``runpy``, as ``python SCRIPT ARGS`` would), so the table stays fast: the
cases fail before any model is loaded, which is the point of checking input early.
"""

from __future__ import annotations

import json
import runpy
import signal
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT

# (case id, script, arguments, what the error line must say). In arguments, {tmp} is the case's own folder (files
# below are written into it first) and {model} a tiny saved model.
CASES = [
    # ---- main.py: flags
    ("main zero generations", "main.py", "--output_dir {tmp}/o --num_generations 0",
     "argument --num_generations: must be a positive integer, got '0'"),
    ("main negative lr", "main.py", "--output_dir {tmp}/o --learning_rate -1",
     "argument --learning_rate: must be a positive number"),
    ("main ema rate", "main.py", "--output_dir {tmp}/o --ref_model_mixup_alpha 1.5",
     "argument --ref_model_mixup_alpha: must be a number in [0, 1]"),
    ("main alpha", "main.py", "--output_dir {tmp}/o --distillation_alpha -0.1",
     "argument --distillation_alpha: must be a number in [0, 1]"),
    ("main wrong type", "main.py", "--output_dir {tmp}/o --num_generations many", "invalid int value: 'many'"),
    ("main unknown choice", "main.py", "--output_dir {tmp}/o --dataset_name chess", "invalid choice: 'chess'"),
    ("main no output", "main.py", "--dataset_name arithmetic", "--output_dir is required"),
    ("main skip tokens", "main.py", "--output_dir {tmp}/o --num_loss_tokens_to_skip -2",
     "argument --num_loss_tokens_to_skip: must be an integer, 0 or more"),
    ("main temperature", "main.py", "--output_dir {tmp}/o --temperature 0",
     "argument --temperature: must be a positive number"),
    ("main max steps", "main.py", "--output_dir {tmp}/o --max_steps 0", "--max_steps must be positive"),
    ("main vllm on cpu", "main.py", "--output_dir {tmp}/o --use_vllm", "--use_vllm"),
    ("main bf16 on cpu", "main.py", "--output_dir {tmp}/o --bf16", "--bf16"),
    ("main overlong prompts", "main.py",
     "--output_dir {tmp}/o --dataset_name arithmetic --model_name {model} --max_prompt_length 8",
     "--max_prompt_length"),
    ("main held-out twice", "main.py", "--output_dir {tmp}/o --eval_steps 2 --eval_data x.jsonl --eval_split_size 4",
     "--eval_data and --eval_split_size both name the held-out questions"),
    ("main held-out without schedule", "main.py", "--output_dir {tmp}/o --eval_split_size 4",
     "--eval_split_size is set but --eval_strategy is no: add --eval_steps N"),
    ("main schedule without questions", "main.py", "--output_dir {tmp}/o --eval_steps 2",
     "no held-out questions; give --eval_data FILE or --eval_split_size N"),
    ("main eval batch", "main.py",
     "--output_dir {tmp}/o --dataset_name arithmetic --eval_steps 1 --num_generations_eval 3",
     "--per_device_eval_batch_size 8 is not a multiple of --num_generations_eval 3"),
    ("main held-out too many", "main.py",
     "--output_dir {tmp}/o --dataset_name custom --verifier exact_match --train_data {tmp}/ok.jsonl "
     "--eval_steps 1 --eval_split_size 50", "leave at least one row for each side"),
    ("main held-out all trained", "main.py",
     "--output_dir {tmp}/o --dataset_name custom --verifier exact_match --train_data {tmp}/ok.jsonl "
     "--eval_steps 1 --eval_data {tmp}/ok.jsonl", "every question in it is a training question too"),
    # ---- main.py: --config
    ("config missing", "main.py", "--config {tmp}/none.yaml", "cannot read it"),
    ("config not yaml", "main.py", "--config {tmp}/broken.yaml", "not valid YAML"),
    ("config not mapping", "main.py", "--config {tmp}/list.yaml", "expected a mapping"),
    ("config unknown key", "main.py", "--config {tmp}/unknown.yaml", "unknown key(s) learning_rat"),
    ("config wrong type", "main.py", "--config {tmp}/wrong_type.yaml",
     "num_generations='eight' is not valid: invalid int value"),
    # ---- main.py: data and verifier
    ("custom without data", "main.py", "--output_dir {tmp}/o --dataset_name custom --verifier exact_match",
     "needs --train_data"),
    ("custom data missing", "main.py",
     "--output_dir {tmp}/o --dataset_name custom --verifier exact_match --train_data {tmp}/none.jsonl",
     "not found"),
    ("custom data not json", "main.py",
     "--output_dir {tmp}/o --dataset_name custom --verifier exact_match --train_data {tmp}/garbage.jsonl",
     "garbage.jsonl: line 1 is not JSON"),
    ("custom lacks answer", "main.py",
     "--output_dir {tmp}/o --dataset_name custom --verifier exact_match --train_data {tmp}/no_answer.jsonl",
     "lacks column 'answer'"),
    ("custom empty question", "main.py",
     "--output_dir {tmp}/o --dataset_name custom --verifier exact_match --train_data {tmp}/blank.jsonl",
     "row 0: empty question"),
    ("tooluse rows malformed", "main.py", "--output_dir {tmp}/o --dataset_name tooluse --train_data {tmp}/ok.jsonl",
     "ok.jsonl"),
    ("verifier unknown", "main.py",
     "--output_dir {tmp}/o --dataset_name custom --verifier fuzzy --train_data {tmp}/ok.jsonl", "choose one of"),
    ("verifier not importable", "main.py",
     "--output_dir {tmp}/o --dataset_name custom --verifier no_such_module:f --train_data {tmp}/ok.jsonl",
     "cannot import it"),
    ("verifier not callable", "main.py",
     "--output_dir {tmp}/o --dataset_name custom --verifier bad_verifiers:NOT_CALLABLE --train_data {tmp}/ok.jsonl",
     "is not callable"),
    ("verifier raises", "main.py",
     "--output_dir {tmp}/o --dataset_name custom --verifier bad_verifiers:raises --train_data {tmp}/ok.jsonl",
     "raised ValueError"),
    ("verifier returns text", "main.py",
     "--output_dir {tmp}/o --dataset_name custom --verifier bad_verifiers:returns_text --train_data {tmp}/ok.jsonl",
     "returned 'yes' (str); it must return True or False"),
    ("verifier returns None", "main.py",
     "--output_dir {tmp}/o --dataset_name custom --verifier bad_verifiers:returns_none --train_data {tmp}/ok.jsonl",
     "returned None"),
    ("equivalence raises", "main.py",
     "--output_dir {tmp}/o --dataset_name custom --verifier exact_match --train_data {tmp}/ok.jsonl "
     "--self_consistency --equivalence bad_verifiers:raises", "--equivalence bad_verifiers:raises raised"),
    ("regex invalid", "main.py",
     "--output_dir {tmp}/o --dataset_name custom --verifier regex:(unclosed --train_data {tmp}/ok.jsonl",
     "not a valid regular expression"),
    # ---- main.py: checkpoints and the output folder
    ("resume missing", "main.py", "--output_dir {tmp}/o --resume_from_checkpoint {tmp}/nowhere",
     "cannot resume from it: not a checkpoint folder"),
    ("resume latest none", "main.py", "--output_dir {tmp}/o --resume_from_checkpoint latest",
     "no complete checkpoint-* folder"),
    ("resume incomplete", "main.py", "--output_dir {tmp}/run --resume_from_checkpoint {tmp}/run/checkpoint-4",
     "it has no caopd_complete.json"),
    ("earlier checkpoints", "main.py", "--output_dir {tmp}/run", "already holds checkpoints (checkpoint-4)"),
    ("eval into a checkpoint", "eval_arithmetic.py", "--model_path {model} --output_dir {tmp}/run/checkpoint-4/ev",
     "lies inside the training checkpoint"),
    ("a user's own folder", "main.py", "--output_dir {tmp}/users --dataset_name arithmetic --overwrite_output_dir",
     "holds files this CLI did not write (adapter, config.json)"),
    ("model folder without config", "main.py", "--output_dir {tmp}/o --dataset_name arithmetic --model_name {tmp}",
     "has no config.json"),
    # ---- evaluation scripts
    ("eval samples", "eval_arithmetic.py", "--model_path {model} --num_samples 0",
     "argument --num_samples: must be a positive integer"),
    ("eval top_p", "eval_arithmetic.py", "--model_path {model} --top_p 1.5", "--top_p must lie in (0, 1]"),
    ("eval greedy n", "eval_arithmetic.py", "--model_path {model} --temperature 0 --num_samples 4", "is greedy"),
    ("eval top_k", "eval_arithmetic.py", "--model_path {model} --top_k -5", "--top_k must be 0 (off)"),
    ("eval questions", "eval_arithmetic.py", "--model_path {model} --num_questions 0",
     "argument --num_questions: must be a positive integer"),
    ("eval limit", "eval_arithmetic.py", "--model_path {model} --limit -3",
     "argument --limit: must be a positive integer"),
    ("eval bootstrap", "eval_arithmetic.py", "--model_path {model} --n_bootstrap -1",
     "argument --n_bootstrap: must be an integer, 0 or more"),
    ("eval output is a file", "eval_arithmetic.py", "--model_path {model} --output_dir {tmp}/ok.jsonl", "is a file"),
    ("eval overlong prompts", "eval_arithmetic.py", "--model_path {model} --output_dir {tmp}/e --max_prompt_length 8",
     "--max_prompt_length"),
    ("eval custom regex invalid", "eval_custom.py", "--model_path {model} --data {tmp}/ok.jsonl --verifier regex:[a-",
     "not a valid regular expression"),
    ("eval wrong type", "eval_arithmetic.py", "--model_path {model} --temperature hot", "invalid float value"),
    ("eval data missing", "eval_tooluse.py", "--model_path {model} --data {tmp}/none", "not found"),
    ("eval data malformed", "eval_science.py", "--model_path {model} --data {tmp}/no_answer.jsonl", "no_answer"),
    ("eval model missing", "eval_arithmetic.py", "--model_path {tmp} --output_dir {tmp}/e", "has no config.json"),
    ("eval earlier results", "eval_arithmetic.py", "--model_path {model} --output_dir {tmp}/results",
     "already holds results (inference.json)"),
    ("eval custom verifier raises", "eval_custom.py",
     "--model_path {model} --data {tmp}/ok.jsonl --verifier bad_verifiers:raises", "raised ValueError"),
    ("eval custom verifier non-bool", "eval_custom.py",
     "--model_path {model} --data {tmp}/ok.jsonl --verifier bad_verifiers:returns_none", "returned None"),
    ("eval custom no verifier", "eval_custom.py", "--model_path {model} --data {tmp}/ok.jsonl",
     "the following arguments are required: --verifier"),
    # ---- metric scripts
    ("metrics input missing", "eval/run_eval_tooluse.py", "--input {tmp}/none.json --output {tmp}/m.json",
     "cannot read it"),
    ("metrics input not json", "eval/run_eval_chemistry.py", "--input {tmp}/garbage.jsonl --output {tmp}/m.json",
     "not valid JSON"),
    ("metrics input not a list", "eval/run_eval_chemistry.py", "--input {tmp}/mapping.json --output {tmp}/m.json",
     "expected a JSON list"),
    ("metrics no items", "eval/run_eval_chemistry.py", "--input {tmp}/empty.json --output {tmp}/m.json", "no items"),
    ("metrics bins", "eval/run_eval_chemistry.py", "--input {tmp}/items.json --output {tmp}/m.json --n_bins 0",
     "argument --n_bins: must be a positive integer"),
    ("metrics bootstrap", "eval/run_eval_chemistry.py",
     "--input {tmp}/items.json --output {tmp}/m.json --n_bootstrap -5",
     "argument --n_bootstrap: must be an integer, 0 or more"),
    ("metrics output is a folder", "eval/run_eval_chemistry.py", "--input {tmp}/items.json --output {tmp}",
     "--output"),
    ("metrics rule", "eval/run_eval_tooluse.py", "--input {tmp}/items.json --output {tmp}/m.json --tooluse_match x",
     "invalid choice: 'x'"),
    # ---- comparison and routing
    ("compare missing", "eval/compare.py", "{tmp}/none.json --output_md {tmp}/c.md --output_png {tmp}/c.png",
     "none.json: cannot read it"),
    ("compare a JSON string", "eval/compare.py", "{tmp}/string.json --output_md {tmp}/c.md --output_png {tmp}/c.png",
     "not a metrics file (expected a JSON object, got str)"),
    ("compare bins without keys", "eval/compare.py",
     "{tmp}/keyless_bins.json --output_md {tmp}/c.md --output_png {tmp}/c.png", "bin_stats[0] needs a whole 'count'"),
    ("compare a text metric", "eval/compare.py",
     "{tmp}/text_metric.json --output_md {tmp}/c.md --output_png {tmp}/c.png", "metric 'ece' must be a number"),
    ("cascade a list as item id", "eval/cascade.py",
     "--small {tmp}/list_id.json --large_accuracy 0.9 --cost_ratio 10 --output_json {tmp}/r.json "
     "--output_png {tmp}/r.png", "item 0: 'item_id' must be a whole number, 0 or more, got [1]"),
    ("cascade other questions", "eval/cascade.py",
     "--small {tmp}/items_with_prompts.json --large {tmp}/other_questions.json --cost_ratio 10 "
     "--output_json {tmp}/r.json --output_png {tmp}/r.png", "item_id 0 asks another question"),
    ("compare not metrics", "eval/compare.py", "{tmp}/mapping.json --output_md {tmp}/c.md --output_png {tmp}/c.png",
     "not a metrics file"),
    ("compare output is a folder", "eval/compare.py", "{tmp}/mapping.json --output_md {tmp} --output_png {tmp}/c.png",
     "is a folder"),
    ("compare labels", "eval/compare.py",
     "{tmp}/mapping.json --labels a b --output_md {tmp}/c.md --output_png {tmp}/c.png", "one distinct --labels"),
    ("cascade missing", "eval/cascade.py",
     "--small {tmp}/none.json --large_accuracy 0.9 --cost_ratio 10 --output_json {tmp}/r.json --output_png {tmp}/r.png",
     "none.json"),
    ("cascade no large", "eval/cascade.py",
     "--small {tmp}/items.json --cost_ratio 10 --output_json {tmp}/r.json --output_png {tmp}/r.png", "--large"),
    ("cascade large accuracy", "eval/cascade.py",
     "--small {tmp}/items.json --large_accuracy 1.5 --cost_ratio 10 --output_json {tmp}/r.json "
     "--output_png {tmp}/r.png", "--large_accuracy"),
    ("cascade cost", "eval/cascade.py",
     "--small {tmp}/items.json --large_accuracy 0.9 --cost_ratio -1 --output_json {tmp}/r.json "
     "--output_png {tmp}/r.png", "--cost_ratio"),
    ("cascade thresholds", "eval/cascade.py",
     "--small {tmp}/items.json --large_accuracy 0.9 --cost_ratio 10 --thresholds 0 2 --output_json {tmp}/r.json "
     "--output_png {tmp}/r.png", "--thresholds"),
    ("cascade empty", "eval/cascade.py",
     "--small {tmp}/empty.json --large_accuracy 0.9 --cost_ratio 10 --output_json {tmp}/r.json "
     "--output_png {tmp}/r.png", "no items"),
    ("cascade output is a folder", "eval/cascade.py",
     "--small {tmp}/items.json --large_accuracy 0.9 --cost_ratio 10 --output_json {tmp} --output_png {tmp}/r.png",
     "is a folder"),
    ("cascade labels", "eval/cascade.py",
     "--small {tmp}/items.json --labels a b --large_accuracy 0.9 --cost_ratio 10 --output_json {tmp}/r.json "
     "--output_png {tmp}/r.png", "--labels"),
    ("cascade items missing", "eval/cascade.py",
     "--small {tmp}/items.json --large {tmp}/large_one_item.json --cost_ratio 10 --output_json {tmp}/r.json "
     "--output_png {tmp}/r.png", "1 item_id"),
    # ---- data preparation
    ("science input missing", "data/prepare_science.py", "--input {tmp}/none.jsonl --output {tmp}/s", "not found"),
    ("science no rows", "data/prepare_science.py", "--input {tmp}/garbage.jsonl --output {tmp}/s",
     "no Chemistry L3 multiple-choice rows"),
    ("science output taken", "data/prepare_science.py",
     "--input {tmp}/science20.jsonl --output {tmp}/mine", "is not a saved dataset"),
    ("science too few rows", "data/prepare_science.py", "--input {tmp}/science.jsonl --output {tmp}/s",
     "leave the validation, test split(s) empty"),
    ("tooluse input not json", "data/prepare_tooluse.py", "--input {tmp}/garbage.jsonl --output {tmp}/t",
     "cannot read ToolAlpaca JSON"),
    ("tooluse input a mapping", "data/prepare_tooluse.py", "--input {tmp}/mapping.json --output {tmp}/t",
     "expected a JSON list"),
    ("tooluse no usable rows", "data/prepare_tooluse.py", "--input {tmp}/empty.json --output {tmp}/t",
     "no usable rows"),
    # ---- bench scripts a user runs
    ("reproduce steps", "bench/reproduce.py", "--output_dir {tmp}/r --max_steps 0", "--max_steps"),
    ("reproduce questions", "bench/reproduce.py", "--output_dir {tmp}/r --num_questions -1", "--num_questions"),
    ("reproduce generations", "bench/reproduce.py", "--output_dir {tmp}/r --num_generations 0", "--num_generations"),
    ("memory length", "bench/memory.py", "--length 0", "--length"),
    ("overhead pairs", "bench/overhead.py", "--pairs 0", "--pairs"),
    ("prefix repeats", "bench/prefix.py", "--repeats 0", "--repeats"),
    ("overhead unknown model", "bench/overhead.py", "--model_name {tmp}/no_model --output_dir {tmp}/ov",
     "cannot load model"),
    ("prefix data", "bench/prefix.py", "--data_dir {tmp}/none", "has no tooluse_eval/"),
    # ---- typed values from YAML and JSON
    ("data with a byte-order mark", "main.py", "--output_dir {tmp}/o --dataset_name custom --verifier exact_match "
     "--train_data {tmp}/bom.jsonl", "starts with a byte-order mark"),
    ("data with NaN", "main.py", "--output_dir {tmp}/o --dataset_name custom --verifier numeric "
     "--train_data {tmp}/nan.jsonl", "line 1 is not JSON (NaN is not a JSON number)"),
    ("data with 1e400", "main.py", "--output_dir {tmp}/o --dataset_name custom --verifier numeric "
     "--train_data {tmp}/huge.jsonl", "line 1 is not JSON (1e400 is too large for a number)"),
    ("data with a raw NUL", "main.py", "--output_dir {tmp}/o --dataset_name custom --verifier exact_match "
     "--train_data {tmp}/nul.jsonl", "line 1 is not JSON (Invalid control character at column 44: '\\x00' unescaped"),
    ("data with a huge row", "main.py", "--output_dir {tmp}/o --dataset_name custom --verifier exact_match "
     "--train_data {tmp}/long.jsonl", "line 2 is 1,000,044 characters long, more than a row may be (1,000,000"),
    ("data not UTF-8", "main.py", "--output_dir {tmp}/o --dataset_name custom --verifier exact_match "
     "--train_data {tmp}/latin1.jsonl", "not UTF-8 text"),
    ("text prompt for a built-in task", "main.py",
     "--output_dir {tmp}/o --dataset_name arithmetic --train_data {tmp}/text_prompt.jsonl",
     "row 0: 'prompt' must be chat messages"),
    ("sdpo threshold below 0", "main.py", "--output_dir {tmp}/o --backbone sdpo --success_reward_threshold -0.5",
     "--success_reward_threshold must lie in (0, 1]"),
    ("yaml integer key", "main.py", "--config {tmp}/int_key.yaml", "key 5 is not a flag name"),
    ("yaml null key", "main.py", "--config {tmp}/null_key.yaml", "key None is not a flag name"),
    ("yaml infinite seed", "main.py", "--config {tmp}/inf_seed.yaml", "seed=inf is not valid"),
    ("yaml steps true", "main.py", "--config {tmp}/steps_bool.yaml", "max_steps=True is not valid"),
    ("yaml steps fraction", "main.py", "--config {tmp}/steps_fraction.yaml", "expected a whole number, got 1.9"),
    ("yaml alias bomb", "main.py", "--config {tmp}/alias_bomb.yaml", "72 YAML aliases"),
    ("yaml quoted false keeps checkpoints", "main.py", "--config {tmp}/quoted_false.yaml",
     "already holds checkpoints (checkpoint-4)"),
    ("yaml boolean not a boolean", "main.py", "--config {tmp}/yes_please.yaml",
     "overwrite_output_dir must be true or false, got 'yes please'"),
    ("yaml output_dir a number", "main.py", "--config {tmp}/dir_number.yaml",
     "output_dir must be text, got 5 (int); quote it"),
    ("yaml model_name a number", "main.py", "--config {tmp}/model_number.yaml", "model_name must be text, got 5 (int)"),
    ("yaml count a boolean", "main.py", "--config {tmp}/count_bool.yaml", "num_generations=True is not valid"),
    ("yaml count a fraction", "main.py", "--config {tmp}/count_fraction.yaml", "expected a whole number, got 2.5"),
    ("yaml nan rate", "main.py", "--config {tmp}/nan_rate.yaml", "learning_rate=nan is not valid"),
    ("yaml report_to list", "main.py", "--config {tmp}/report_list.yaml", "reporting to tensorboard needs"),
    ("custom content a number", "main.py",
     "--output_dir {tmp}/o --dataset_name custom --verifier exact_match --train_data {tmp}/content_number.jsonl",
     "'question' must be text or a list of chat messages"),
    ("custom demonstration a number", "main.py",
     "--output_dir {tmp}/o --dataset_name custom --verifier exact_match --train_data {tmp}/demo_number.jsonl",
     "'demonstration' must be text, got int"),
    ("tooluse golden response a list", "main.py",
     "--output_dir {tmp}/o --dataset_name tooluse --train_data {tmp}/tool_response_list.jsonl",
     "'golden_response' must be text, got list"),
    ("science prompt messages malformed", "main.py",
     "--output_dir {tmp}/o --dataset_name science --train_data {tmp}/science_messages.jsonl",
     "'prompt' must be text or a list of chat messages"),
    ("marker files null", "main.py", "--output_dir {tmp}/null_marker --resume_from_checkpoint latest",
     "no complete checkpoint-* folder"),
    ("marker files null named", "main.py",
     "--output_dir {tmp}/null_marker --resume_from_checkpoint {tmp}/null_marker/checkpoint-2",
     "does not list its files"),
    ("marker names a file outside", "main.py",
     "--output_dir {tmp}/escaping_marker --resume_from_checkpoint {tmp}/escaping_marker/checkpoint-2",
     "names a file outside the checkpoint"),
    # ---- numeric flags: negative, zero, nan, inf
    ("main teacher prompt length", "main.py", "--output_dir {tmp}/o --max_teacher_prompt_length -5",
     "argument --max_teacher_prompt_length: must be a positive integer"),
    ("main nan lr", "main.py", "--output_dir {tmp}/o --learning_rate nan", "must be a finite number, got 'nan'"),
    ("main negative warmup", "main.py", "--output_dir {tmp}/o --warmup_steps -3", "argument --warmup_steps"),
    ("main save limit negative", "main.py", "--output_dir {tmp}/o --save_total_limit -1",
     "argument --save_total_limit: must be a positive integer"),
    ("main save limit zero", "main.py", "--output_dir {tmp}/o --save_total_limit 0", "--save_total_limit"),
    ("main scheduler needs arguments", "main.py", "--output_dir {tmp}/o --lr_scheduler_type cosine_with_min_lr",
     "--lr_scheduler_kwargs"),
    ("main scheduler arguments not json", "main.py",
     "--output_dir {tmp}/o --lr_scheduler_type cosine_with_min_lr --lr_scheduler_kwargs min_lr=1",
     "--lr_scheduler_kwargs"),
    ("main scheduler plateau", "main.py", "--output_dir {tmp}/o --lr_scheduler_type reduce_lr_on_plateau",
     "reduce_lr_on_plateau"),
    ("main port", "main.py", "--output_dir {tmp}/o --vllm_server_port 70000", "a TCP port in 1..65535"),
    ("main lora dropout", "main.py", "--output_dir {tmp}/o --use_peft --lora_dropout 1", "--lora_dropout"),
    ("main ema nan", "main.py", "--output_dir {tmp}/o --ref_model_mixup_alpha nan", "--ref_model_mixup_alpha"),
    ("main grad norm negative", "main.py", "--output_dir {tmp}/o --max_grad_norm -1", "--max_grad_norm"),
    ("eval top_p nan", "eval_arithmetic.py", "--model_path {model} --top_p nan", "argument --top_p"),
    ("eval temperature inf", "eval_arithmetic.py", "--model_path {model} --temperature inf", "argument --temperature"),
    ("eval min_p", "eval_arithmetic.py", "--model_path {model} --min_p 2", "--min_p must lie in [0, 1]"),
    ("metrics bins nan", "eval/run_eval_chemistry.py", "--input {tmp}/items.json --output {tmp}/m.json --n_bins nan",
     "argument --n_bins"),
    ("cascade cost nan", "eval/cascade.py",
     "--small {tmp}/items.json --large_accuracy 0.9 --cost_ratio nan --output_json {tmp}/r.json "
     "--output_png {tmp}/r.png", "argument --cost_ratio: must be a finite number"),
    ("cascade large accuracy inf", "eval/cascade.py",
     "--small {tmp}/items.json --large_accuracy inf --cost_ratio 10 --output_json {tmp}/r.json "
     "--output_png {tmp}/r.png", "argument --large_accuracy"),
    ("cascade threshold nan", "eval/cascade.py",
     "--small {tmp}/items.json --large_accuracy 0.9 --cost_ratio 10 --thresholds nan --output_json {tmp}/r.json "
     "--output_png {tmp}/r.png", "argument --thresholds"),
    ("science seed negative", "data/prepare_science.py", "--input {tmp}/science20.jsonl --output {tmp}/s --seed -1",
     "argument --seed"),
    ("reproduce lr inf", "bench/reproduce.py", "--output_dir {tmp}/r --learning_rate inf", "argument --learning_rate"),
    ("overhead pairs negative", "bench/overhead.py", "--pairs -2", "argument --pairs"),
    ("memory length nan", "bench/memory.py", "--length nan", "argument --length"),
    ("k ablation k zero", "bench/k_ablation.py", "--ks 0 4", "argument --ks"),
    ("prefix repeats negative", "bench/prefix.py", "--repeats -1", "argument --repeats"),
    # ---- output paths
    ("main output under a file", "main.py", "--output_dir {tmp}/ok.jsonl/run", "--output_dir"),
    ("main output unwritable", "main.py", "--output_dir /proc/caopd_run",
     "--output_dir /proc/caopd_run: cannot write there"),
    ("eval output under a file", "eval_arithmetic.py", "--model_path {model} --output_dir {tmp}/ok.jsonl/e",
     "--output_dir"),
    ("metrics output exists", "eval/run_eval_chemistry.py", "--input {tmp}/items.json --output {tmp}/mapping.json",
     "pass --overwrite"),
    ("metrics output under a file", "eval/run_eval_chemistry.py",
     "--input {tmp}/items.json --output {tmp}/ok.jsonl/m.json", "--output"),
    ("cascade output exists", "eval/cascade.py",
     "--small {tmp}/items.json --large_accuracy 0.9 --cost_ratio 10 --output_json {tmp}/mapping.json "
     "--output_png {tmp}/r.png", "pass --overwrite"),
    ("cascade picture exists", "eval/cascade.py",
     "--small {tmp}/items.json --large_accuracy 0.9 --cost_ratio 10 --output_json {tmp}/r.json "
     "--output_png {tmp}/picture.png", "pass --overwrite"),
    ("compare output exists", "eval/compare.py",
     "{tmp}/metrics.json --output_md {tmp}/notes.md --output_png {tmp}/c.png", "pass --overwrite"),
    ("tooluse output under a file", "data/prepare_tooluse.py",
     "--input {tmp}/toolalpaca.json --output {tmp}/ok.jsonl/t",
     "--output"),
    # ---- pathological files
    ("metrics deep json", "eval/run_eval_chemistry.py", "--input {tmp}/deep.json --output {tmp}/m.json",
     "deep.json"),
    ("custom deep json", "main.py",
     "--output_dir {tmp}/o --dataset_name custom --verifier exact_match --train_data {tmp}/deep.jsonl",
     "deep.jsonl: line 1 is not JSON"),
    ("tooluse instructions text", "data/prepare_tooluse.py", "--input {tmp}/instructions_text.json --output {tmp}/t",
     "no usable rows"),
    ("tooluse instructions number", "data/prepare_tooluse.py",
     "--input {tmp}/instructions_number.json --output {tmp}/t", "no usable rows"),
    ("tooluse deep json", "data/prepare_tooluse.py", "--input {tmp}/deep.json --output {tmp}/t",
     "cannot read ToolAlpaca JSON"),
    ("compare items not metrics", "eval/compare.py", "{tmp}/items.json --output_md {tmp}/c.md --output_png {tmp}/c.png",
     "not a metrics file"),
    ("cascade metrics not items", "eval/cascade.py",
     "--small {tmp}/metrics.json --large_accuracy 0.9 --cost_ratio 10 --output_json {tmp}/r.json "
     "--output_png {tmp}/r.png", "metrics.json"),
    ("science marker deep", "main.py", "--output_dir {tmp}/deep_marker --resume_from_checkpoint "
     "{tmp}/deep_marker/checkpoint-2", "does not read (RecursionError"),
    # ---- things that must not be silent
    ("report to tensorboard missing", "main.py", "--output_dir {tmp}/o --report_to tensorboard",
     "reporting to tensorboard needs its package"),
    ("report to unknown", "main.py", "--output_dir {tmp}/o --report_to carrier_pigeon", "not an integration"),
    ("equivalence never matches", "main.py",
     "--output_dir {tmp}/o --dataset_name custom --verifier exact_match --train_data {tmp}/ok.jsonl "
     "--self_consistency --equivalence bad_verifiers:never", "P_acc 0 throughout"),
    ("flash attention not installed", "main.py",
     "--output_dir {tmp}/o --dataset_name arithmetic --model_name {model} --attn_implementation flash_attention_2",
     "--attn_implementation flash_attention_2: "),
    # ---- two runs, one output folder; resume under other settings
    ("folder in use", "main.py", "--output_dir {tmp}/locked --dataset_name arithmetic --model_name {model}",
     "is in use by another run (pid "),
    ("resume another model", "main.py",
     "--output_dir {tmp}/other_run --resume_from_checkpoint latest --dataset_name arithmetic --model_name {model}",
     "model: 'someone/else' then"),
    ("resume another backbone", "main.py",
     "--output_dir {tmp}/other_run --resume_from_checkpoint latest --dataset_name arithmetic --model_name {model} "
     "--backbone sdpo", "backbone: 'sdft' then, 'sdpo' now"),
    ("resume with lora", "main.py",
     "--output_dir {tmp}/other_run --resume_from_checkpoint latest --dataset_name arithmetic --model_name {model} "
     "--use_peft", "use_peft: False then, True now"),
]  # fmt: skip


def _write_inputs(tmp: Path) -> None:
    """The files the cases read, each wrong in its own way (and a few good ones)."""
    (tmp / "garbage.jsonl").write_text("this is not JSON\n{\n")
    row = '{"question": "What is 2 + 2?", "answer": %s}\n'
    (tmp / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + (row % '"4"').encode())
    (tmp / "nan.jsonl").write_text(row % "NaN")
    (tmp / "huge.jsonl").write_text(row % "1e400")
    (tmp / "nul.jsonl").write_text(row % '"4\x00"')
    (tmp / "long.jsonl").write_text(row % '"4"' + row % json.dumps("x" * 1_000_000))
    (tmp / "latin1.jsonl").write_bytes((row % '"caf\xe9"').encode("latin-1"))
    (tmp / "no_answer.jsonl").write_text(json.dumps({"question": "What is 2 + 2?"}) + "\n")
    (tmp / "blank.jsonl").write_text(json.dumps({"question": "  ", "answer": "4"}) + "\n")
    (tmp / "ok.jsonl").write_text(json.dumps({"question": "What is 2 + 2?", "answer": "4"}) + "\n")
    (tmp / "broken.yaml").write_text("learning_rate: [1e-5\n")
    (tmp / "list.yaml").write_text("- learning_rate\n")
    (tmp / "unknown.yaml").write_text("output_dir: out\nlearning_rat: 1e-5\n")
    (tmp / "wrong_type.yaml").write_text("output_dir: out\nnum_generations: eight\n")
    science = {"question": "Which is a noble gas?", "choices": {"label": ["A", "B"], "text": ["Ne", "Na"]}}
    (tmp / "science.jsonl").write_text(json.dumps({**science, "answerKey": "A"}) + "\n")
    (tmp / "science20.jsonl").write_text(20 * (json.dumps({**science, "answerKey": "A"}) + "\n"))
    (tmp / "mapping.json").write_text(json.dumps({"accuracy": 0.5}))
    (tmp / "empty.json").write_text("[]")
    items = [
        {"item_id": i, "response": f"<answer>A</answer>\nConfidence: 0.{i + 1}", "golden_answer": [{"Answer": "A"}]}
        for i in range(2)
    ]
    for item in items:
        item["correct"], item["confidence"] = True, 0.5
    (tmp / "items.json").write_text(json.dumps(items))
    (tmp / "large_one_item.json").write_text(json.dumps(items[:1]))
    (tmp / "list_id.json").write_text(json.dumps([{**items[0], "item_id": [1]}]))
    for name, question in (("items_with_prompts", "Q"), ("other_questions", "another question")):
        asked = [{**item, "prompt": [{"role": "user", "content": question}]} for item in items]
        (tmp / f"{name}.json").write_text(json.dumps(asked))
    (tmp / "string.json").write_text('"hello"')
    good_bin = {"bin_lower": 0.0, "bin_upper": 1.0, "count": 1, "accuracy": 1.0, "mean_confidence": 0.5}
    (tmp / "keyless_bins.json").write_text(json.dumps({"bin_stats": [{}]}))
    (tmp / "text_metric.json").write_text(json.dumps({"bin_stats": [good_bin], "ece": "low"}))
    (tmp / "run" / "checkpoint-4").mkdir(parents=True)  # a checkpoint whose write was cut short
    (tmp / "run" / "caopd_config.yaml").write_text("flags: {}\n")  # by an earlier run of this CLI
    (tmp / "users" / "adapter").mkdir(parents=True)  # a user's own folder, with names a run would write
    (tmp / "users" / "config.json").write_text("{}")
    (tmp / "users" / "adapter" / "notes.txt").write_text("my own notes")
    (tmp / "results").mkdir()
    (tmp / "results" / "inference.json").write_text("[]")
    (tmp / "mine" / "train").mkdir(parents=True)
    (tmp / "mine" / "train" / "notes.txt").write_text("my own notes")
    _write_typed_inputs(tmp)
    _write_pathological_inputs(tmp)
    _write_earlier_runs(tmp)


def _write_typed_inputs(tmp: Path) -> None:
    """Configs and rows whose values have the wrong type (a number for a path, a string for a boolean)."""
    configs = {
        "quoted_false": f'output_dir: {tmp}/run\noverwrite_output_dir: "false"\n',
        "yes_please": f"output_dir: {tmp}/o\noverwrite_output_dir: yes please\n",
        "dir_number": "output_dir: 5\n",
        "model_number": f"output_dir: {tmp}/o\nmodel_name: 5\n",
        "count_bool": f"output_dir: {tmp}/o\nnum_generations: true\n",
        "count_fraction": f"output_dir: {tmp}/o\nnum_generations: 2.5\n",
        "nan_rate": f"output_dir: {tmp}/o\nlearning_rate: .nan\n",
        "report_list": f"output_dir: {tmp}/o\nreport_to: [tensorboard]\n",
        "int_key": f"output_dir: {tmp}/o\n5: 1\n",
        "null_key": f"output_dir: {tmp}/o\n~: 1\n",
        "inf_seed": f"output_dir: {tmp}/o\nseed: .inf\n",
        "steps_bool": f"output_dir: {tmp}/o\nmax_steps: true\n",
        "steps_fraction": f"output_dir: {tmp}/o\nmax_steps: 1.9\n",
        "alias_bomb": "a: &a [x, x, x, x, x, x, x, x, x]\n"
        + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8)),
    }
    for name, text in configs.items():
        (tmp / f"{name}.yaml").write_text(text)
    rows = {
        "content_number": {"question": [{"role": "user", "content": 5}], "answer": "4"},
        "demo_number": {"question": "What is 2 + 2?", "answer": "4", "demonstration": 5},
        "tool_response_list": {
            "prompt": "Use the tools.\n\nBegin!\nFind cats.",
            "golden_answer": [{"Action": "search", "Action_Input": "{}"}],
            "golden_response": ["Action: search"],
        },
        "science_messages": {"prompt": [{"role": "user", "content": 5}], "answer": "A"},
        "text_prompt": {"prompt": "What is 2 + 2?", "demonstration": "Answer: 4", "ground_truth": "4"},
    }
    for name, row in rows.items():
        (tmp / f"{name}.jsonl").write_text(json.dumps(row) + "\n")
    (tmp / "metrics.json").write_text(json.dumps({"accuracy": 0.5, "bin_stats": []}))
    (tmp / "notes.md").write_text("my notes")
    (tmp / "picture.png").write_bytes(b"not really a picture")


def _write_pathological_inputs(tmp: Path) -> None:
    """Very deep nesting, and ToolAlpaca records whose fields have the wrong shape."""
    deep = "[" * 100_000 + "]" * 100_000
    (tmp / "deep.json").write_text(deep)
    (tmp / "deep.jsonl").write_text(deep + "\n")
    golden = [[{"Action": "search", "Action_Input": "{}"}]]
    (tmp / "instructions_text.json").write_text(
        json.dumps([{"Name": "api", "Instructions": "ab", "Golden_Answers": golden}])
    )
    (tmp / "instructions_number.json").write_text(
        json.dumps([{"Name": "api", "Instructions": 5, "Golden_Answers": golden}])
    )
    (tmp / "toolalpaca.json").write_text(
        json.dumps([{"Name": "api", "Instructions": ["Find"], "Golden_Answers": golden}])
    )


HELD_LOCKS: list = []  # the locks of the "live run" folders, held until the test session ends


def _write_earlier_runs(tmp: Path) -> None:
    """Output folders of other runs: a live run's lock, complete checkpoints of a run with other settings, markers
    that list no files, list a file outside, or do not parse."""
    import torch

    from caopd.checkpoints import MARKER, write_marker
    from caopd.run_guard import IDENTITY_NAME, RunLock
    from caopd.teacher import TEACHER_DIR

    HELD_LOCKS.append(RunLock(tmp / "locked"))  # a live run: this process holds the folder's lock for the test
    HELD_LOCKS[-1].acquire()
    checkpoint = tmp / "other_run" / "checkpoint-2"
    (checkpoint / TEACHER_DIR).mkdir(parents=True)
    torch.save({"w": torch.zeros(1)}, checkpoint / TEACHER_DIR / "weights.bin")
    (checkpoint / IDENTITY_NAME).write_text(
        json.dumps({"model": "someone/else", "backbone": "sdft", "use_peft": False})
    )
    write_marker(checkpoint, 2)
    for name, marker in {
        "null_marker": '{"step": 2, "files": null}',
        "escaping_marker": '{"step": 2, "files": {"../../ok.jsonl": 1}}',
        "deep_marker": "[" * 100_000 + "]" * 100_000,
    }.items():
        (tmp / name / "checkpoint-2" / TEACHER_DIR).mkdir(parents=True)
        (tmp / name / "checkpoint-2" / MARKER).write_text(marker)


def run_script(script: str, argv: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """``python script argv`` in this process: its exit code and its stderr."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", [script, *argv])
    code: int | str | None = 0
    try:
        runpy.run_path(str(ROOT / script), run_name="__main__")
    except SystemExit as exit_:
        code = exit_.code
    stderr = capsys.readouterr().err
    if isinstance(code, str):  # SystemExit("error: ...") prints its message and exits with 1
        stderr, code = stderr + code + "\n", 1
    return int(code or 0), stderr


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    from tiny_model import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.parametrize(("script", "arguments", "expected"), [case[1:] for case in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line(script, arguments, expected, tmp_path, saved_tiny, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT / "tests"))  # bad_verifiers
    _write_inputs(tmp_path)
    before = _snapshot(tmp_path)
    argv = arguments.format(tmp=tmp_path, model=saved_tiny).split()
    if script == "main.py" and "report" not in arguments:
        argv.append("--no_wandb")  # wandb is not installed here; its own message is tested in test_cli.py
    started = time.monotonic()
    code, stderr = run_script(script, argv, monkeypatch, capsys)
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith(("usage:", " "))]
    assert code != 0, stderr
    assert "Traceback" not in stderr, stderr
    assert lines and "error: " in lines[-1], stderr
    assert expected in lines[-1], stderr
    assert time.monotonic() - started < 60  # nothing hangs: every case fails before the work starts
    after = _snapshot(tmp_path)
    assert {name: after.get(name) for name in before} == before  # nothing written earlier changed


def test_a_catastrophic_regex_stops_in_seconds_with_one_line():
    from caopd.tasks.base import TaskDataError
    from caopd.tasks.custom import REGEX_TIMEOUT_S, resolve_verifier

    verify = resolve_verifier("regex:((?:a|aa)+)$")
    assert verify("Answer: aaa", "aaa")  # an ordinary response is judged as usual
    started = time.monotonic()
    with pytest.raises(TaskDataError, match=r"took over 2 s on a 5,001-character response \(catastrophic"):
        verify("a" * 5000 + "!", "a")  # (a|aa)+ backtracks exponentially before the "!"
    assert time.monotonic() - started < REGEX_TIMEOUT_S + 5


def test_a_verifier_that_fails_on_model_output_stops_training_in_one_line(tmp_path, saved_tiny, capsys, monkeypatch):
    import main

    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"question": "What is 2 + 2?", "answer": "4"}) + "\n")
    flags = ["--model_name", str(saved_tiny), "--dataset_name", "custom", "--train_data", str(data), "--no_wandb"]
    flags += ["--verifier", "bad_verifiers:fails_on_model_output", "--output_dir", str(tmp_path / "run")]
    flags += ["--max_steps", "1", "--num_prompts_per_batch", "1", "--num_generations", "2"]
    flags += ["--per_device_train_batch_size", "2", "--max_completion_length", "16", "--max_prompt_length", "256"]
    assert main.main(flags) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error: --verifier bad_verifiers:fails_on_model_output raised IndexError" in last
    assert "it must return True or False for any text" in last


def test_a_verifier_is_stopped_when_it_hangs_or_ends_the_process(monkeypatch):
    """A user's verifier under a time limit, with exits turned into errors: one line each, in about a second."""
    from caopd.tasks.base import TaskDataError
    from caopd.tasks.custom import resolve_verifier

    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    monkeypatch.setenv("CAOPD_VERIFIER_TIMEOUT_S", "0.5")
    started = time.monotonic()
    with pytest.raises(TaskDataError, match=r"took over 0\.5 s on one response"):
        resolve_verifier("bad_verifiers:sleeps_on_model_output")("no answer here", "4")
    assert time.monotonic() - started < 5
    assert resolve_verifier("bad_verifiers:sleeps_on_model_output")("Answer: 4", "4")  # alarm cleared after
    for name in ("exits", "sys_exits"):
        with pytest.raises(TaskDataError, match="tried to end the process"):
            resolve_verifier(f"bad_verifiers:{name}")("Answer: 4", "4")
    monkeypatch.setenv("CAOPD_VERIFIER_TIMEOUT_S", "soon")
    with pytest.raises(TaskDataError, match="give a positive number of seconds"):
        resolve_verifier("bad_verifiers:works")("Answer: 4", "4")


def test_a_verifier_that_hangs_in_training_stops_the_run_in_one_line(tmp_path, saved_tiny, capsys, monkeypatch):
    import main

    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    monkeypatch.setenv("CAOPD_VERIFIER_TIMEOUT_S", "1")
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"question": "What is 2 + 2?", "answer": "4"}) + "\n")
    flags = ["--model_name", str(saved_tiny), "--dataset_name", "custom", "--train_data", str(data), "--no_wandb"]
    flags += ["--verifier", "bad_verifiers:sleeps_on_model_output", "--output_dir", str(tmp_path / "run")]
    flags += ["--max_steps", "1", "--num_prompts_per_batch", "1", "--num_generations", "2", "--backbone", "sdpo"]
    flags += ["--per_device_train_batch_size", "2", "--max_completion_length", "16", "--max_prompt_length", "256"]
    assert main.main(flags) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error: --verifier bad_verifiers:sleeps_on_model_output took over 1 s on one response" in last


def test_an_interrupted_evaluation_leaves_earlier_results_and_no_half_file(tmp_path, saved_tiny, monkeypatch, capsys):
    """Ctrl-C while an evaluation replaces earlier results: one stop line, exit 130, the earlier results intact,
    and the caller's signal handlers as they were."""
    from caopd import evaluation

    output = tmp_path / "eval"
    output.mkdir()
    (output / "inference.json").write_text("[1]")

    def killed(*_args, **_kwargs):
        raise KeyboardInterrupt  # Ctrl-C (or a time limit) while generating

    monkeypatch.setattr(evaluation, "generate", killed)
    argv = ["--model_path", str(saved_tiny), "--num_questions", "2", "--output_dir", str(output), "--overwrite"]
    handler = signal.getsignal(signal.SIGINT)
    assert evaluation.evaluate("arithmetic", argv) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("stopped by Ctrl-C; no result was written")
    assert signal.getsignal(signal.SIGINT) is handler
    assert sorted(path.name for path in output.iterdir()) == ["inference.json"]
    assert (output / "inference.json").read_text() == "[1]"  # replaced only when the new results are complete


def test_a_full_disk_while_writing_results_keeps_the_earlier_set(tmp_path, saved_tiny, monkeypatch, capsys):
    import errno

    from caopd import atomic, evaluation

    output = tmp_path / "eval"
    output.mkdir()
    earlier = {"inference.json": "[1]", "metrics.json": "{}", "reliability.png": "old picture"}
    for name, text in earlier.items():
        (output / name).write_text(text)
    write_temporary = atomic._temporary_copy

    def full_on_metrics(path, write, mode):
        if path.name == "metrics.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_temporary(path, write, mode)

    monkeypatch.setattr(atomic, "_temporary_copy", full_on_metrics)
    argv = ["--model_path", str(saved_tiny), "--num_questions", "2", "--output_dir", str(output), "--overwrite"]
    argv += ["--max_new_tokens", "4", "--n_bootstrap", "0"]
    assert evaluation.evaluate("arithmetic", argv) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: the disk is full (No space left on device); no result was replaced: free some space and run again"
    )
    assert {path.name: path.read_text() for path in output.iterdir()} == earlier  # no new file, no temporary


def test_data_preparation_replaces_its_own_earlier_output(tmp_path, monkeypatch, capsys):
    from datasets import load_from_disk

    _write_inputs(tmp_path)
    argv = ["--input", str(tmp_path / "science20.jsonl"), "--output", str(tmp_path / "science")]
    for _ in range(2):  # the second run replaces the first run's datasets
        assert run_script("data/prepare_science.py", argv, monkeypatch, capsys)[0] == 0
    assert [len(load_from_disk(str(tmp_path / "science" / name))) for name in ("train", "validation", "test")] == [
        15,
        1,
        4,
    ]
