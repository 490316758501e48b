"""eval/cascade.py: routing a small model's unsure queries to a large model, against hand-computed values."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT, covers

SCRIPT = ROOT / "eval" / "cascade.py"


def _items(rows):
    return [{"item_id": i, "sample_index": s, "correct": c, "confidence": p} for i, s, c, p in rows]


SMALL = _items([(0, 0, True, 0.9), (1, 0, False, 0.3), (2, 0, False, None), (3, 0, True, 0.6)])
# the large model: item 0 right, item 1 right in 1 of 2 samples, items 2 and 3 right
LARGE = _items([(0, 0, True, 1.0), (1, 0, True, 1.0), (1, 1, False, 1.0), (2, 0, True, 1.0), (3, 0, True, 1.0)])


def _run(tmp_path, *argv):
    command = [sys.executable, str(SCRIPT), *map(str, argv)]
    command += ["--output_json", str(tmp_path / "routing.json"), "--output_png", str(tmp_path / "routing.png")]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)


def _write(path, items):
    path.write_text(json.dumps(items))
    return path


@covers("eval/cascade.py")
def test_routing_by_hand(tmp_path):
    small, large = _write(tmp_path / "small.json", SMALL), _write(tmp_path / "large.json", LARGE)
    result = _run(tmp_path, "--small", small, "--labels", "S", "--large", large, "--cost_ratio", 10,
                  "--thresholds", 0, 0.5, 0.7, 1.01)  # fmt: skip
    assert result.returncode == 0, result.stderr
    routing = json.loads((tmp_path / "routing.json").read_text())
    points = routing["results"]["S"]
    assert [p["threshold"] for p in points] == [0, 0.5, 0.7, 1.01]
    expected = [  # (deferred share, accuracy, cost)
        (0.0, 2 / 4, 1.0),  # t = 0: the small model answers everything
        (2 / 4, (1 + 0.5 + 1 + 1) / 4, 1 + 0.5 * 10),  # items 1, 2 deferred: large scores 0.5 and 1
        (3 / 4, (1 + 0.5 + 1 + 1) / 4, 1 + 0.75 * 10),  # item 3 (0.6) deferred too: large right as the small was
        (1.0, (1 + 0.5 + 1 + 1) / 4, 1 + 10),  # everything deferred: the large model's accuracy
    ]
    for point, (share, accuracy, cost) in zip(points, expected):
        assert point["deferred_share"] == pytest.approx(share)
        assert point["accuracy"] == pytest.approx(accuracy)
        assert point["cost"] == pytest.approx(cost)
        # deferring the same share at random: small accuracy 2/4, large accuracy 3.5/4 over the small file's items
        assert point["random_deferral_accuracy"] == pytest.approx((1 - share) * 2 / 4 + share * 3.5 / 4)
    assert points[1]["accuracy"] - points[1]["random_deferral_accuracy"] == pytest.approx(0.875 - 0.6875)
    assert routing["large"]["S"]["accuracy"] == pytest.approx(3.5 / 4)
    cheapest = routing["cheapest_matching_large"]["S"]
    assert cheapest["threshold"] == 0.5 and cheapest["cost"] == pytest.approx(6.0)
    assert (tmp_path / "routing.png").stat().st_size > 0
    assert (routing["without_confidence"], routing["items"]) == ({"S": 1}, {"S": 4})  # item 2 states none
    assert "S: 1 of 4 items state no confidence; every threshold above 0 defers them" in result.stdout
    again = _run(tmp_path, "--small", small, "--labels", "S", "--large", large, "--cost_ratio", 10)
    assert again.returncode == 2 and "already exists; pass --overwrite" in again.stderr  # the first result is kept
    assert json.loads((tmp_path / "routing.json").read_text()) == routing


def test_an_assumed_large_model_and_two_small_ones(tmp_path):
    small = _write(tmp_path / "small.json", SMALL)
    result = _run(tmp_path, "--small", small, small, "--labels", "A", "B", "--large_accuracy", 0.6,
                  "--cost_ratio", 4, "--thresholds", 0.5)  # fmt: skip
    assert result.returncode == 0, result.stderr
    routing = json.loads((tmp_path / "routing.json").read_text())
    (point,) = routing["results"]["A"]
    assert point["accuracy"] == pytest.approx((1 + 0.6 + 0.6 + 1) / 4) and point["cost"] == pytest.approx(3.0)
    assert routing["results"]["A"] == routing["results"]["B"]
    assert routing["cheapest_matching_large"]["A"]["threshold"] == 0.5  # 0.8 >= 0.6 - 0.01


def test_an_assumed_accuracy_averages_back_to_itself(tmp_path):
    """Ten queries deferred to a large model of accuracy 0.1 score 0.1, not 0.09999999999999999 (a plain sum)."""
    small = _write(tmp_path / "small.json", _items([(i, 0, False, 0.5) for i in range(10)]))
    result = _run(tmp_path, "--small", small, "--labels", "A", "--large_accuracy", 0.1, "--cost_ratio", 2,
                  "--thresholds", 1.0)  # fmt: skip
    assert result.returncode == 0, result.stderr
    routing = json.loads((tmp_path / "routing.json").read_text())
    assert routing["large"]["A"]["accuracy"] == 0.1
    assert routing["results"]["A"][0]["accuracy"] == 0.1 and routing["results"]["A"][0]["deferred_share"] == 1.0


@pytest.mark.parametrize(
    ("large", "extra", "message"),
    [
        (LARGE[:2], [], "2 item_id(s) are not in"),
        (LARGE, ["--labels", "A", "B"], "one distinct --labels entry"),
        ("{oops", [], "not valid JSON"),
        ([{"item_id": 0}], [], "needs an 'item_id' and a true/false 'correct'"),
    ],
)
def test_bad_inputs_are_one_line(tmp_path, large, extra, message):
    small = _write(tmp_path / "small.json", SMALL)
    large_file = tmp_path / "large.json"
    large_file.write_text(large if isinstance(large, str) else json.dumps(large))
    ratio = [] if "--cost_ratio" in extra else ["--cost_ratio", 10]
    result = _run(tmp_path, "--small", small, "--large", large_file, *ratio, *extra)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "routing.json").exists()


def test_confidences_are_read_again_from_the_responses(tmp_path):
    """The stored confidence is re-read by --confidence_reading: "85" is 1.0 under the paper's reading (answered at
    threshold 0.9) and 0.85 under the percent reading (deferred)."""
    small = [{"item_id": 0, "correct": True, "confidence": 0.1, "response": "Answer: 4\nConfidence: 85"}]
    path = _write(tmp_path / "small.json", small)
    shares = {}
    for reading in ("paper", "percent"):
        result = _run(tmp_path, "--small", path, "--labels", "S", "--large_accuracy", 0.5, "--cost_ratio", 10,
                      "--thresholds", 0.9, "--confidence_reading", reading, "--overwrite")  # fmt: skip
        assert result.returncode == 0, result.stderr
        routing = json.loads((tmp_path / "routing.json").read_text())
        assert routing["confidence_reading"] == reading
        shares[reading] = routing["results"]["S"][0]["deferred_share"]
    assert shares == {"paper": 0.0, "percent": 1.0}
