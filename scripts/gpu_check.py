"""After installing on a GPU machine: does CaOPD train here? (run through scripts/gpu_check.sh)

Builds a tiny Qwen3 model from a config with the real tokenizer of the embedded SmolLM2 (no download), then runs
``main.py`` the way a user does, one process on one GPU, in bf16, on the built-in arithmetic task:

1. ``transformers``: two CaOPD steps with transformers generation, a checkpoint after each (with the EMA teacher);
2. ``resume``: the same run resumed from ``latest`` to step 3 (teacher restored, rollout log holds each step once);
3. ``vllm-colocate``: one CaOPD step with vLLM generation in colocate mode, when vLLM is installed;
4. ``zero3``: one CaOPD step and a checkpoint under DeepSpeed ZeRO-3 (scripts/accelerate/zero3.yaml with one
   process), when DeepSpeed is installed;
5. ``eval-backends``: the same small evaluation with ``--backend transformers`` and ``--backend vllm``, when vLLM is
   installed: both must run and record the same sampling settings in their metrics.json;
6. ``shared-prefix``: on this device, in fp32, the shared-prefix forward's logits, loss and every gradient against
   TRL's repeated-prefix forward (relative differences printed; above 1e-4 fails), with sdpa and eager attention.
   Checks 1, 2 and 4 also require the run config to record the shared prefix as on.

Each check prints PASS, FAIL (with the end of its log) or SKIP (and why); the exit status is 1 if any failed.
``--cpu`` runs checks 1, 2 and 6 without a GPU and without bf16 (the test suite does, to keep this script working).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from caopd.run_config import RUN_CONFIG_NAME

VLLM_FLAGS = ["--use_vllm", "--vllm_mode", "colocate", "--vllm_gpu_memory_utilization", "0.2"]
ZERO3_LAUNCH = ["--config_file", str(ROOT / "scripts" / "accelerate" / "zero3.yaml")]


def build_tiny_model(directory: Path) -> Path:
    """A randomly initialised Qwen3 (the paper's architecture) with SmolLM2's tokenizer, saved like a hub model."""
    import torch
    from transformers import AutoTokenizer

    from caopd.models import embedded_model_path, tiny_random_model

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_path())
    model = tiny_random_model(tokenizer, model_type="qwen3", hidden_size=128, head_dim=64)
    model.to(torch.bfloat16).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def train_command(model: Path, output: Path, max_steps: int, on_gpu: bool, *extra: str) -> list[str]:
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--dynamo_backend", "no"]
    launch += ["--mixed_precision", "bf16"] if on_gpu else ["--cpu", "--mixed_precision", "no"]
    flags = ["--model_name", str(model), "--dataset_name", "arithmetic", "--output_dir", str(output), "--no_wandb"]
    flags += ["--max_steps", str(max_steps), "--num_prompts_per_batch", "1", "--num_generations", "4"]
    flags += ["--per_device_train_batch_size", "4", "--max_completion_length", "32", "--max_prompt_length", "512"]
    flags += ["--warmup_steps", "0", "--save_steps", "1", "--save_rollouts", "--bf16" if on_gpu else "--no_bf16"]
    return [*launch, *extra, str(ROOT / "main.py"), *flags]


def run(command: list[str], log: Path) -> str | None:
    """Run a command, its output into ``log``; None when it succeeded, else the end of its log."""
    with open(log, "w", encoding="utf-8") as handle:
        finished = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT, env=os.environ.copy())
    if finished.returncode == 0:
        return None
    return f"exit status {finished.returncode}; last lines of {log}:\n" + "\n".join(log.read_text().splitlines()[-15:])


def completed_run_problem(output: Path, steps: int) -> str | None:
    """What is missing from a finished run of ``steps`` steps, or None."""
    state = json.loads((output / f"checkpoint-{steps}" / "trainer_state.json").read_text())
    if state["global_step"] != steps:
        return f"checkpoint-{steps} says global step {state['global_step']}"
    if not (output / f"checkpoint-{steps}" / "teacher").is_dir():
        return f"checkpoint-{steps} has no teacher/"
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    if not losses or any(loss != loss for loss in losses):
        return f"no finite loss logged: {losses}"
    recorded = yaml.safe_load((output / RUN_CONFIG_NAME).read_text())["derived"]["shared_prefix"]
    if recorded != "on":
        return f"the run config records shared_prefix: {recorded}"
    logged = [json.loads(line)["step"] for line in (output / "rollouts" / "rank0.jsonl").read_text().splitlines()]
    if sorted(set(logged)) != list(range(steps)) or len(logged) != 4 * steps:
        return f"the rollout log holds steps {logged}, expected 4 rollouts for each of steps 0..{steps - 1}"
    return None


def eval_backends_problem(model: Path, work: Path) -> str | None:
    """Evaluate on both backends; what differs in the sampling settings they recorded, or None."""
    recorded = {}
    for backend in ("transformers", "vllm"):
        output = work / f"eval_{backend}"
        command = [sys.executable, str(ROOT / "eval_arithmetic.py"), "--model_path", str(model), "--backend", backend]
        command += ["--num_questions", "4", "--num_samples", "2", "--max_new_tokens", "16", "--n_bootstrap", "0"]
        failed = run([*command, "--output_dir", str(output), "--overwrite"], work / f"eval_{backend}.log")
        if failed:
            return f"--backend {backend}: {failed}"
        recorded[backend] = json.loads((output / "metrics.json").read_text())["sampling"]
    differing = {key for key in recorded["vllm"] if recorded["vllm"][key] != recorded["transformers"].get(key)}
    print(f"[gpu_check] sampling settings of both backends: {recorded['vllm']}")
    return f"the backends sampled differently: {sorted(differing)}" if differing else None


def _relative(got, expected) -> float:
    return float((got - expected).abs().max() / expected.abs().max().clamp(min=1e-12))


def _loss_and_gradients(model, logits, ids, mask, keep: int):
    """The completion tokens' mean negative log-likelihood and every parameter's gradient of it."""
    import torch

    logps = torch.log_softmax(logits, -1).gather(-1, ids[:, -keep:, None]).squeeze(-1)
    return _gradients(model, -(logps * mask[:, -keep:]).sum() / mask[:, -keep:].sum())


def shared_prefix_problem(model_dir: Path, device: str) -> str | None:
    """The shared-prefix forward against the repeated-prefix one on ``device`` (fp32): what differs beyond 1e-4."""
    import torch
    from transformers import AutoModelForCausalLM

    from caopd.shared_prefix import enable_shared_prefix, shared_prefix_logits

    generator = torch.Generator().manual_seed(0)
    rows, keep, width = [], 24, 40
    for length in (40, 23):  # two prompts (one left-padded), K = 4 rollouts each, completions of varying length
        prompt = torch.randint(3, 1000, (length,), generator=generator)
        for k in range(4):
            completion = torch.randint(3, 1000, (keep,), generator=generator)
            real = keep - 5 * k
            ids = torch.cat([torch.zeros(width - length, dtype=torch.long), prompt, completion])
            mask = torch.cat([torch.zeros(width - length), torch.ones(length + real), torch.zeros(keep - real)])
            rows.append((ids, mask.long()))
    ids, mask = (torch.stack(parts).to(device) for parts in zip(*rows, strict=True))
    problems = []
    for attention in ("sdpa", "eager"):
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=attention)
        model.to(device).train()

        plain = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1][:, -keep:]
        plain_loss, plain_grads = _loss_and_gradients(model, plain, ids, mask, keep)
        enable_shared_prefix(model)
        shared = shared_prefix_logits(model, ids, mask, keep)
        shared_loss, shared_grads = _loss_and_gradients(model, shared, ids, mask, keep)
        valid = mask[:, -keep - 1 : -1].bool()
        differences = {
            "logits": _relative(shared.detach()[valid], plain.detach()[valid]),
            "loss": _relative(shared_loss, plain_loss),
            "gradients": max(_relative(shared_grads[name], grad) for name, grad in plain_grads.items()),
        }
        print(f"[gpu_check] shared prefix, {attention}: relative differences {differences}")
        problems += [f"{attention} {name} {value:.2e}" for name, value in differences.items() if value > 1e-4]
    return f"differences above 1e-4: {', '.join(problems)}" if problems else None


def chunked_loss_problem(model_dir: Path, device: str) -> str | None:
    """The chunked distillation loss (``caopd.chunked_loss``) against TRL's on whole logits on ``device`` (fp32, no
    TF32): TRL's top-k JSD with the tail bucket between the student and a perturbed teacher, over completions of
    varying length in chunks of 5 positions; what differs beyond 1e-4 in the loss and the gradients."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl.experimental.sdft.loss_utils import compute_topk_self_distillation_loss

    from caopd.chunked_loss import CompletionStates, chunked_per_token, hidden_states_as_logits

    torch.backends.cuda.matmul.allow_tf32 = False
    generator = torch.Generator().manual_seed(0)
    keep = 24
    ids = torch.randint(3, 1000, (4, 40), generator=generator).to(device)
    mask = torch.ones_like(ids[:, -keep:])
    for row in range(4):
        mask[row, keep - 5 * row :] = 0
    student = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).train()
    teacher = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
    with torch.no_grad():
        for parameter in teacher.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator).to(device) * 0.5)

    def divergence(student_logits, teacher_logits, _ids):
        return compute_topk_self_distillation_loss(
            student_logits, teacher_logits, distillation_topk=20, distillation_alpha=0.5, distillation_add_tail=True
        )

    def completion_outputs(model):  # the positions that predict the completion, as TRL slices its logits
        return model(input_ids=ids, use_cache=False).logits[:, -keep - 1 : -1]

    def mean_over_mask(per_token):
        return (per_token * mask).sum() / mask.sum()

    with torch.no_grad():
        teacher_logits = completion_outputs(teacher)
        with hidden_states_as_logits(teacher) as teacher_head:
            teacher_states = CompletionStates(completion_outputs(teacher), teacher_head)
    whole_loss, whole_grads = _gradients(
        student, mean_over_mask(divergence(completion_outputs(student), teacher_logits, ids))
    )
    with hidden_states_as_logits(student) as head:
        states = CompletionStates(completion_outputs(student), head)
    per_token, _, _ = chunked_per_token(divergence, states, teacher_states, ids[:, -keep:], 5)
    chunked_loss, chunked_grads = _gradients(student, mean_over_mask(per_token))
    differences = {
        "loss": _relative(chunked_loss, whole_loss),
        "gradients": max(_relative(chunked_grads[name], grad) for name, grad in whole_grads.items()),
    }
    print(f"[gpu_check] chunked loss: relative differences {differences}")
    problems = [f"{name} {value:.2e}" for name, value in differences.items() if value > 1e-4]
    return f"differences above 1e-4: {', '.join(problems)}" if problems else None


def _gradients(model, loss):
    """``loss`` detached and every parameter's gradient of it."""
    model.zero_grad()
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="run the transformers and resume checks on the CPU")
    parser.add_argument("--work_dir", default=None, help="where models, runs and logs go (default: a temp folder)")
    options = parser.parse_args(argv)
    import torch

    on_gpu = not options.cpu
    if on_gpu and not torch.cuda.is_available():
        print(
            "error: no CUDA GPU visible to torch; run this on the GPU machine (or --cpu for the CPU checks)",
            file=sys.stderr,
        )
        return 2
    work = Path(options.work_dir or tempfile.mkdtemp(prefix="caopd_gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    model = build_tiny_model(work / "tiny_qwen3")
    print(f"[gpu_check] tiny Qwen3 with SmolLM2's tokenizer in {model}; logs in {work}")
    if on_gpu:
        print(f"[gpu_check] {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")

    results: list[tuple[str, str, str]] = []

    def check(name: str, problem: str | None) -> None:
        results.append((name, "FAIL" if problem else "PASS", problem or ""))
        print(f"[gpu_check] {name}: {'FAIL' if problem else 'PASS'}" + (f"\n{problem}" if problem else ""))

    run_dir = work / "transformers"
    failed = run(train_command(model, run_dir, 2, on_gpu), work / "transformers.log")
    check("transformers: 2 CaOPD steps, bf16, checkpoints with teacher", failed or completed_run_problem(run_dir, 2))
    if failed is None:
        resume = ["--resume_from_checkpoint", "latest"]
        failed = run(train_command(model, run_dir, 3, on_gpu) + resume, work / "resume.log")
        check("resume: from checkpoint-2 to step 3", failed or completed_run_problem(run_dir, 3))

    optional = [
        ("vllm-colocate: 1 CaOPD step with vLLM generation", "vllm", "vllm", []),
        ("zero3: 1 CaOPD step and a checkpoint under DeepSpeed ZeRO-3", "deepspeed", "zero3", ZERO3_LAUNCH),
    ]
    for name, package, folder, launch in optional:
        if not on_gpu or importlib.util.find_spec(package) is None:
            reason = "no GPU (--cpu)" if not on_gpu else f"{package} is not installed"
            results.append((name, "SKIP", reason))
            print(f"[gpu_check] {name}: SKIP ({reason})")
            continue
        flags = VLLM_FLAGS if package == "vllm" else []
        failed = run(train_command(model, work / folder, 1, on_gpu, *launch) + flags, work / f"{folder}.log")
        check(name, failed or completed_run_problem(work / folder, 1))

    name = "eval-backends: one evaluation on transformers and on vLLM, same sampling settings"
    if not on_gpu or importlib.util.find_spec("vllm") is None:
        reason = "no GPU (--cpu)" if not on_gpu else "vllm is not installed"
        results.append((name, "SKIP", reason))
        print(f"[gpu_check] {name}: SKIP ({reason})")
    else:
        check(name, eval_backends_problem(model, work))

    check(
        "shared-prefix: logits, loss and gradients equal the repeated-prefix forward (fp32, sdpa and eager)",
        shared_prefix_problem(model, "cuda" if on_gpu else "cpu"),
    )

    check(
        "chunked loss: loss and gradients equal TRL's on whole logits (fp32, top-k JSD with tail, chunks of 5)",
        chunked_loss_problem(model, "cuda" if on_gpu else "cpu"),
    )

    print("\n[gpu_check] summary")
    for name, verdict, _ in results:
        print(f"  {verdict:<4}  {name}")
    return 1 if any(verdict == "FAIL" for _, verdict, _ in results) else 0


if __name__ == "__main__":
    sys.exit(main())
