"""P_acc over all K rollouts of a prompt, wherever they were sampled, and peer solutions."""

from caopd.groups import RolloutRecord, peer_solution, success_rates


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
