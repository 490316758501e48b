"""The benchmark and check scripts a user runs: they run, and what they print is computed from what they measure."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT, SHARED_DATA, covers
from tiny_model import save_tiny_model

from caopd.held_out import HistoryError
from caopd.user_errors import USER_ERRORS


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=ROOT, timeout=600)


def ratio_of_printed(numerator: str, denominator: str, digits: int = 3):
    """``numerator / denominator`` as printed values allow: each was rounded to its printed decimals, and the ratio
    to ``digits``."""
    a, b = float(numerator), float(denominator)
    half_unit = 0.5 * 10 ** -(len(numerator.split(".")[1]) if "." in numerator else 0)
    return pytest.approx(a / b, abs=0.5 * 10**-digits + half_unit * (1 / b + a / b**2) + 1e-9)


@pytest.mark.slow
@covers("bench/memory.py")
def test_memory_table_and_estimate_are_computed_from_the_measurements():
    # At 16 and 32 tokens the optimizer's peak hides the logits (the slopes were noise around 0); at 64 and 128 the
    # whole loss's rows show (about 5 per token) and the chunked loss's do not.
    finished = _run("bench/memory.py", "--length", "64", "--points", "2", "--proxy_layers", "1", "--repeats", "2")
    assert finished.returncode == 0, finished.stderr[-2000:]
    lines = finished.stdout.splitlines()
    timing = lines[next(i for i, line in enumerate(lines) if line.startswith("Loss time with the LM head at")) + 1]
    chunked, whole, ratio = (timing.split()[i] for i in (2, 5, 10))
    assert float(ratio) == ratio_of_printed(chunked, whole)  # the medians' ratio
    assert len(timing.split("per turn: ")[1].split(",")) == 2
    assert "Loss time with the LM head at 89.3% of the matrix work (Qwen3-8B: 8.2%, Qwen3-32B: 2.4%" in finished.stdout
    rows_per_token = {}
    for arm in ("chunked", "whole"):
        rows = [line.split() for line in lines if line.startswith(arm) and "slope" not in line and ":" not in line]
        assert [int(row[1]) for row in rows] == [64, 128]
        assert [float(row[4]) for row in rows] == [ratio_of_printed(row[3], rows[0][3], digits=2) for row in rows]
        slope_line = next(line for line in lines if line.startswith(arm) and "slope" in line).split()
        rows_per_token[arm] = float(slope_line[slope_line.index("vocabulary") - 1].lstrip("="))
    assert "chunked: on" in lines
    whole_steps = [float(line.split()[3]) for line in lines if line.startswith("whole") and "slope" not in line]
    assert rows_per_token["whole"] > 1.0 > rows_per_token["chunked"]  # issue 35's target: under one row chunked
    assert whole_steps[1] - whole_steps[0] > 64 * 49152 * 2 / 2**20  # at least one bf16 logits row per added token
    estimates, model, arm = {}, None, None
    for line in lines:
        if line.startswith("Estimated at the paper's settings ("):
            model = line.split("(")[1].split(",")[0]
        elif line.strip() in ("chunked loss:", "whole loss:"):
            arm = line.strip().split()[0]
        elif " GiB  (" in line:
            estimates[model, arm, line[:56].strip()] = float(line[56:].split()[0])
    row = 151_936 * 2 / 2**30
    for model in ("Qwen3-8B", "Qwen3-32B"):
        logits = "logits and loss temporaries (student + teacher)"
        assert estimates[model, "whole", logits] == pytest.approx(rows_per_token["whole"] * 8192 * row, abs=0.06)
        chunked = (max(rows_per_token["chunked"], 0) * 8192 + rows_per_token["whole"] * 1024) * row
        assert estimates[model, "chunked", logits] == pytest.approx(chunked, abs=0.06)
    verdicts = [line.rsplit(",", 1)[1].strip() for line in lines if "with vLLM colocate at 0.3 of" in line]
    assert len(verdicts) == 8 and set(verdicts) <= {"fits", "does not fit"}  # 2 models x 2 losses x 80 and 141 GB


def test_memory_extrapolation_scales_the_measured_rows():
    sys.path.insert(0, str(ROOT / "bench"))
    import memory

    one_tensor = 8192 * 151_936 * 2 / 2**30  # one [8192 x 151,936] bf16 tensor
    logits = "logits and loss temporaries (student + teacher)"
    whole = dict((name, gib) for name, gib, _ in memory.paper_scale_rows("Qwen3-8B", 5.0, 0.0))
    assert whole[logits] == pytest.approx(5 * one_tensor)
    chunked = dict((name, gib) for name, gib, _ in memory.paper_scale_rows("Qwen3-32B", 0.01, 5.0 * 1024))
    assert chunked[logits] == pytest.approx(0.01 * one_tensor + 5 * one_tensor / 8)
    assert chunked["fp32 master weights + AdamW moments, shard"] == pytest.approx(32.8e9 / 8 * 12 / 2**30)
    assert memory.slope([(1, 3.0), (2, 5.0), (4, 9.0)]) == pytest.approx(2.0)
    # the LM head's share of Qwen3-8B's matrix work, by hand: 151,936 x 4,096 against 36 layers of attention
    # (4,096 x (32 + 8) x 128 x 2) and MLP (3 x 4,096 x 12,288)
    head = 151_936 * 4096
    assert memory.paper_head_share("Qwen3-8B") == pytest.approx(head / (head + 36 * 192_937_984))
    assert memory.proxy_layers(0.08223, 49_152) == 93  # 25.2 M head weights, 3.01 M per layer of the timing model


@pytest.mark.slow
@covers("bench/overhead.py")
def test_overhead_times_alternating_arms(tmp_path):
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_model import save_tiny_model

    model = save_tiny_model(tmp_path / "tiny")
    finished = _run(
        "bench/overhead.py", "--pairs", "1", "--model_name", str(model), "--output_dir", str(tmp_path / "o")
    )
    assert finished.returncode == 0, finished.stderr[-2000:]
    for backbone in ("SDFT", "SDPO"):
        section = finished.stdout[finished.stdout.index(f"CaOPD on {backbone} against") :].splitlines()
        pair = next(line for line in section if line.split() and line.split()[0] == "0").split()
        assert float(pair[3]) == ratio_of_printed(pair[1], pair[2])
        mean = next(line for line in section if line.startswith("mean step:")).replace(",", "").split()
        ratio = float(next(line for line in section if line.startswith("step-time ratio")).split()[5])
        assert ratio == ratio_of_printed(mean[3], mean[6])
    assert "% of the CaOPD step" in finished.stdout


@covers("bench/sdpo_stability.py")
def test_sdpo_stability_tables_what_each_step_logged(tmp_path):
    """Two steps of CaOPD on SDPO with the policy term on: each row's rollout columns are recomputed from the
    rollout log, the loss columns are the step's logged values, and a re-run skips the finished stage."""
    sys.path.insert(0, str(ROOT / "bench"))
    import sdpo_stability

    model, out = save_tiny_model(tmp_path / "tiny"), tmp_path / "o"
    argv = ["bench/sdpo_stability.py", "--model_name", str(model), "--output_dir", str(out), "--max_steps", "2"]
    argv += ["--arms", "caopd_sdpo", "--variants", "sampled_policy_lr3e-4", "--num_generations", "2"]
    finished = _run(*argv)
    assert finished.returncode == 0, finished.stderr[-2000:]
    steps = json.loads((out / "steps.json").read_text())["sampled_policy_lr3e-4 / caopd_sdpo"]["steps"]
    run = out / "sampled_policy_lr3e-4" / "caopd_sdpo"
    rollouts = [json.loads(line) for line in (run / "rollouts" / "rank0.jsonl").read_text().splitlines()]
    history = json.loads((run / "checkpoint-2" / "trainer_state.json").read_text())["log_history"]
    assert [row["step"] for row in steps] == [1, 2]
    for row, logged in zip(steps, history, strict=False):
        mine = [r for r in rollouts if r["step"] == row["step"] - 1]
        assert row["acc"] == sum(r["correct"] for r in mine) / len(mine)
        assert row["policy"] == logged["self_distillation/policy_loss"] and row["grad norm"] == logged["grad_norm"]
        assert row["len trained"] == logged["caopd/completion_length_trained"]
    assert "| sampled_policy_lr3e-4 / caopd_sdpo |" in (out / "steps.md").read_text()
    assert sdpo_stability.summary(steps)["acc last 4"] == sum(r["acc"] for r in steps) / 2
    assert "done earlier, skipped" in _run(*argv).stdout
    reported = _run("bench/sdpo_stability.py", "--output_dir", str(tmp_path / "r"), "--report_runs", str(run))
    assert (
        reported.returncode == 0 and json.loads((tmp_path / "r" / "steps.json").read_text())[str(run)]["steps"] == steps
    )
    empty = _run("bench/sdpo_stability.py", "--output_dir", str(tmp_path / "r"), "--report_runs", str(tmp_path))
    assert empty.returncode == 1 and "has no rollout log" in empty.stderr


@covers("bench/seeds.py")
def test_seeds_runs_reproduce_per_seed_and_averages_its_metrics(tmp_path):
    """One seed end to end (the interval's arithmetic is tested on its own below): its flags reach reproduce.py, and
    the table holds the metrics reproduce.py wrote."""
    model, out = save_tiny_model(tmp_path / "tiny"), tmp_path / "o"
    argv = ["bench/seeds.py", "--output_dir", str(out), "--seeds", "3", "--arms", "sdpo", "--model_name", str(model)]
    argv += ["--max_steps", "1", "--num_generations", "2", "--num_questions", "2", "--num_samples", "1"]
    finished = _run(*argv, "--n_bootstrap", "0")
    assert finished.returncode == 0, finished.stderr[-2000:]
    table = json.loads((out / "seeds.json").read_text())
    metrics = json.loads((out / "seed-3" / "eval" / "sdpo" / "metrics.json").read_text())
    assert table["seeds"]["3"]["sdpo"]["ece"] == metrics["ece"]
    assert table["mean_95ci"]["sdpo"]["accuracy"] == [metrics["accuracy"]] * 3
    assert "--seed 3" in (out / "seed-3" / "commands.sh").read_text()
    assert "| **SDPO** | mean [95% t] |" in (out / "seeds.md").read_text()


def test_seed_interval_is_students_t():
    sys.path.insert(0, str(ROOT / "bench"))
    from seeds import mean_interval

    mean, low, high = mean_interval([1.0, 2.0, 3.0, None])  # sd 1, t(2) = 4.303
    assert (mean, high - mean) == (2.0, pytest.approx(4.303 / 3**0.5)) and low == pytest.approx(2 * mean - high)
    assert mean_interval([0.5]) == (0.5, 0.5, 0.5) and mean_interval([None]) is None


@pytest.mark.slow
@covers("bench/prefix.py")
def test_prefix_quick_mode_times_both_forwards_at_equal_loss():
    # one shape with checkpointing on: the shapes differ only in their rows, which test_prefix_rows reads, and the
    # checkpointing settings only in the model's switch (each is exact in tests/test_shared_prefix.py)
    shapes = ["science"] if (SHARED_DATA / "caopd_eval" / "science_eval").is_dir() else ["arithmetic"]
    finished = _run("bench/prefix.py", "--quick", "--repeats", "1", "--shapes", *shapes, "--checkpointing", "on")
    assert finished.returncode == 0, finished.stderr[-3000:]
    rows = [line.strip("|").split("|") for line in finished.stdout.splitlines() if line.startswith("| ")][1:]
    rows = [[cell.strip() for cell in row] for row in rows if not row[0].startswith("-")]
    assert [(row[0], row[1]) for row in rows] == [(shape, "on") for shape in shapes]
    for name, _, rows_x_tokens, unshared, shared, ratio, unshared_mib, shared_mib, memory, losses in rows:
        assert int(rows_x_tokens.split(" x ")[0]) == {"arithmetic": 16, "tooluse": 8, "science": 16}[name]
        assert float(ratio) == ratio_of_printed(shared, unshared)
        assert float(memory) == ratio_of_printed(shared_mib, unshared_mib, digits=2)
        unshared_loss, shared_loss = map(float, losses.split(" / "))
        assert shared_loss == pytest.approx(unshared_loss, rel=1e-4)


@pytest.mark.skipif(not (SHARED_DATA / "caopd_eval").is_dir(), reason="the shared evaluation sets are absent")
def test_prefix_rows_of_every_shape_are_real_prompts_and_demonstrations():
    sys.path.insert(0, str(ROOT / "bench"))
    import prefix

    for shape, settings in prefix.SHAPES.items():
        rows = prefix._rows(shape, str(SHARED_DATA / "caopd_eval"), settings["questions"])
        assert len(rows) == settings["questions"]
        assert all(messages[-1]["role"] == "user" and demonstration.strip() for messages, demonstration in rows)


@pytest.mark.slow
@covers("bench/probe_teacher_format.py")
def test_teacher_format_probe_prints_the_probabilities_it_computed(tmp_path):
    model = save_tiny_model(tmp_path / "tiny")
    finished = _run("bench/probe_teacher_format.py", "--model", str(model), "--n", "2", "--teacher_instruction", "Go.")
    assert finished.returncode == 0, finished.stderr[-2000:]
    table = {line[:15].strip(): [float(v) for v in line[15:].split()] for line in finished.stdout.splitlines()[2:]}
    assert list(table) == ["student", "SDFT teacher", "CaOPD teacher", "SDFT, yours", "CaOPD, yours"]
    assert all(0.0 <= value <= 1.0 for values in table.values() for value in values)

    sys.path.insert(0, str(ROOT / "bench"))
    import probe_teacher_format as probe
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from caopd.tasks.arithmetic import generate_questions

    tokenizer, net = AutoTokenizer.from_pretrained(model), AutoModelForCausalLM.from_pretrained(model).eval()
    rows = generate_questions(2, seed=0, split="train")
    expected = (
        sum(
            probe.tail_token_probability(
                net, tokenizer, row["prompt"], row["demonstration"].split("\n")[0] + "\nAnswer", 1
            )
            for row in rows
        )
        / 2
    )
    assert table["student"][0] == pytest.approx(expected, abs=0.0006)


@pytest.mark.slow
@covers("bench/probe_arithmetic.py")
def test_arithmetic_probe_counts_add_up(tmp_path):
    model = save_tiny_model(tmp_path / "tiny")
    argv = ["--model", str(model), "--n", "4", "--k", "2", "--max_new_tokens", "8", "--prompts_per_call", "2"]
    finished = _run("bench/probe_arithmetic.py", *argv)
    assert finished.returncode == 0, finished.stderr[-2000:]
    lines = finished.stdout.splitlines()
    histogram = [int(line.split()[1]) for line in lines if line.strip()[:4] in ("0/2:", "1/2:", "2/2:")]
    assert len(histogram) == 3 and sum(histogram) == 4
    assert "completions: 8" in lines
    accuracy = float(next(line for line in lines if line.startswith("all")).split()[2])
    assert accuracy == pytest.approx((histogram[1] * 0.5 + histogram[2]) / 4, abs=0.0006)


@pytest.mark.parametrize(
    ("script", "argv", "message"),
    [
        ("bench/memory.py", ["--length", "4"], "--length must be at least 16"),
        ("bench/memory.py", ["--points", "1"], "--points must be at least 2"),
        ("bench/overhead.py", ["--pairs", "0"], "argument --pairs: must be a positive integer"),
    ],
)
def test_bench_flags_out_of_range(script, argv, message):
    finished = _run(script, *argv)
    assert finished.returncode == 2 and message in finished.stderr


@covers("bench/eval_cost.py")
def test_eval_cost_is_the_evaluation_time_over_the_steps_between_evaluations(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "bench"))
    import eval_cost

    entries = [{"step": 2, "runtime": 3.0, "seconds_per_step": None, "n_samples": 64}]
    entries += [{"step": 4, "runtime": 5.0, "seconds_per_step": 10.0, "n_samples": 64}]
    entries += [{"step": 6, "runtime": 4.0, "seconds_per_step": 14.0, "n_samples": 64}]
    (tmp_path / "eval_history.jsonl").write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    assert eval_cost.main([str(tmp_path)]) == 0
    rows = {int(line.split()[0]): line.split()[2] for line in capsys.readouterr().out.splitlines()[2:]}
    assert rows == {n: f"{4.0 / (n * 12.0):.1%}" for n in (2, 10, 50, 100)}  # mean runtime 4 s, mean step 12 s
    (tmp_path / "eval_history.jsonl").write_text(json.dumps(entries[0]) + "\n")
    with pytest.raises(SystemExit):
        eval_cost.main([str(tmp_path)])
    assert "1 evaluation(s), none after an earlier one" in capsys.readouterr().err
    (tmp_path / "eval_history.jsonl").write_text(json.dumps(entries[0]) + '\n{"step": 4, "runt')  # cut short
    with pytest.raises(HistoryError, match=r"eval_history.jsonl, line 2: not an evaluation record"):
        eval_cost.main([str(tmp_path)])
    assert HistoryError in USER_ERRORS  # so the script ends in that one line
