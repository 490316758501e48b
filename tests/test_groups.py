"""P_acc over all K rollouts of a prompt, wherever they were sampled, and peer solutions."""

import pytest

from caopd.groups import RolloutRecord, local_records, peer_solution, step_statistics, success_rates
from caopd.tasks.arithmetic import parse_answer


def _record(uid, rank, index, correct, solution=None):
    return RolloutRecord(uid=uid, rank=rank, index=index, correct=correct, confidence=None, solution=solution)


def test_success_rate_pools_rollouts_from_every_process():
    records = [_record(7, 0, i, i < 3) for i in range(4)] + [_record(7, 1, i, i == 0) for i in range(4)]
    records += [_record(9, 1, 4 + i, True) for i in range(8)]
    assert success_rates(records) == {7: 4 / 8, 9: 1.0}


def test_peer_solution_excludes_the_rollout_itself_and_crosses_processes():
    records = [_record(1, 0, 0, True, "mine"), _record(1, 0, 1, False), _record(1, 1, 0, True, "theirs")]
    assert peer_solution(records, rank=0, index=0, uid=1) == "theirs"
    assert peer_solution(records, rank=1, index=0, uid=1) == "mine"  # wraps around
    assert peer_solution(records, rank=0, index=1, uid=1) == "theirs"


def test_peer_solution_none_when_no_other_rollout_is_correct():
    records = [_record(1, 0, 0, True, "only"), _record(1, 0, 1, False), _record(2, 0, 2, True, "other prompt")]
    assert peer_solution(records, rank=0, index=0, uid=1) is None


def test_step_statistics_read_the_rollouts_by_the_runs_reading():
    texts = ["Answer: 1\nConfidence: 0.5", "Answer: 2\nConfidence: 1.5", "Answer: 3", "Answer: 4 Confidence: 0.2"]
    expected = {  # (format rate, mean confidence with missing as 0, out-of-range share)
        "paper": (0.75, (0.5 + 1.0 + 0.0 + 0.2) / 4, 0.25),  # 1.5 clipped; the same-line statement read
        "percent": (0.5, (0.5 + 0.015) / 4, 0.25),  # 1.5 %; the same-line statement is no statement
    }
    for reading, (formats, mean, out_of_range) in expected.items():
        records = local_records([0] * 4, texts, [True, False, True, False], 0, False, reading)
        stats = step_statistics(records, success_rates(records))
        assert stats["caopd/confidence_format_rate"] == formats
        assert stats["caopd/rollout_confidence_mean"] == pytest.approx(mean)
        assert stats["caopd/rollout_confidence_out_of_range"] == out_of_range
        assert stats["caopd/p_acc_mean"] == 0.5


def test_step_statistics_count_answers_and_verdicts_where_the_task_reads_answers():
    texts = ["Answer: 1\nConfidence: 0.5", "no answer here", "Answer: 3", "Answer: x"]
    verdicts = [True, False, False, False]
    records = local_records([0, 0, 1, 1], texts, verdicts, 0, False, answer_key=parse_answer)
    stats = step_statistics(*_with_rates(records))
    assert (stats["caopd/answer_rate"], stats["caopd/rollout_accuracy"]) == (0.5, 0.25)
    assert "caopd/answer_rate" not in step_statistics(*_with_rates(local_records([0], ["x"], [True], 0, False)))


def _with_rates(records):
    return records, success_rates(records)
