"""Metrics: built-in values on hand-computed cases, CTC decoding, ragged outputs, plug-ins, errors."""
from __future__ import annotations

import numpy as np
import pytest

from edgeq.ctc import edit_distance, greedy_decode, load_charset
from edgeq.errors import EdgeqError, MetricError
from edgeq.metrics import (BUILTIN_METRICS, compare, compare_outputs, default_metric, get_metric,
                           per_sample)


def frames(ids, num_classes):
    """One-hot-ish scores [T, C] whose per-frame argmax is ``ids``."""
    scores = np.full((len(ids), num_classes), -1.0, np.float32)
    scores[np.arange(len(ids)), ids] = 2.0
    return scores


# ---- classification ----------------------------------------------------------------------------

LOGITS = np.array([[0.1, 0.9, 0.0, 0.2, 0.3, 0.4],    # top1 = 1
                   [0.8, 0.1, 0.0, 0.2, 0.3, 0.4],    # top1 = 0
                   [0.0, 0.1, 0.2, 0.3, 0.4, 0.5],    # top1 = 5, smallest is 0
                   [0.5, 0.4, 0.3, 0.2, 0.1, 0.0]])   # top1 = 0, smallest is 5
LABELS = np.array([1, 3, 0, 4])


def test_top1_top5_values_units_and_drop():
    top1, top5 = get_metric("top1"), get_metric("top5")
    assert top1.score([LOGITS], LABELS) == pytest.approx(0.25)
    # sample 2's label is its smallest logit (the only class outside its top 5)
    assert top5.score([LOGITS], LABELS) == pytest.approx(0.75)
    assert top1.score([LOGITS.reshape(4, 1, 6)], list(LABELS)) == pytest.approx(0.25)  # [N, 1, C]
    assert top1.unit == "pp" and top1.higher_is_better and top1.needs_labels
    assert top1.display(0.25) == pytest.approx(25.0)
    assert top1.drop(0.75, 0.25) == pytest.approx(50.0)
    assert top1.drop(0.25, 0.75) == pytest.approx(-50.0)
    # only output 0 counts; a second output is ignored
    assert top1.score([LOGITS, np.zeros((4, 2))], LABELS) == pytest.approx(0.25)


def test_top1_rejects_labels_that_are_not_class_ids():
    top1 = get_metric("top1")
    for labels, fragment in [(np.array(["cat", "dog", "cat", "eel"]), "(dtype <U3)"),
                             (LABELS.astype(np.float32), "(dtype float32)"),
                             (np.zeros((4, 2), int), "got a 2-D"),
                             ([np.array([1, 2]), np.array([3])] * 2, "ragged")]:
        with pytest.raises(MetricError, match="needs integer class labels") as info:
            top1.score([LOGITS], labels)
        assert fragment in str(info.value)
    with pytest.raises(MetricError, match="got 3 labels for 4 samples"):
        top1.score([LOGITS], LABELS[:3])
    with pytest.raises(MetricError, match="needs labels"):
        top1.score([LOGITS], None)


def test_default_metric():
    assert default_metric(LABELS) == "top1"
    assert default_metric([0, 2, 1]) == "top1"
    assert default_metric(np.array(["ab", "c"])) is None
    assert default_metric(np.zeros((3, 4), int)) is None
    assert default_metric(LABELS.astype(float)) is None
    assert default_metric(None) is None


# ---- label-free comparisons --------------------------------------------------------------------

def test_cosine_and_sqnr_against_reference():
    ref = [np.array([[1.0, 0.0], [0.0, 2.0]]), np.array([[3.0, 4.0], [1.0, 1.0]])]
    out = [np.array([[0.0, 1.0], [0.0, 5.0]]),   # cosines 0 and 1 -> 0.5
           np.array([[3.0, 4.0], [1.0, 1.0]])]   # identical -> 1.0, sqnr inf
    cos, sqnr = get_metric("cosine"), get_metric("sqnr")
    assert not cos.needs_labels and cos.needs_reference
    assert cos.score(out, None, ref) == pytest.approx(0.75)        # mean over outputs
    # output 0: signal mean 5/4, noise mean (1 + 1 + 0 + 9)/4 -> 10*log10(5/11); output 1 is inf
    assert sqnr.score(out, None, ref) == pytest.approx(10 * np.log10(5 / 11))  # worst output
    assert sqnr.score(ref, None, ref) == float("inf")
    assert sqnr.drop(float("inf"), float("inf")) == 0.0
    assert cos.drop(1.0, 0.75) == pytest.approx(0.25)
    with pytest.raises(MetricError, match="FP32 outputs"):
        cos.score(out, None, None)
    with pytest.raises(MetricError, match="returned 1 outputs but the FP32 reference has 2"):
        cos.score(out[:1], None, ref)


def test_compare_outputs_two_outputs_and_ragged():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 4)).astype(np.float32)
    b = rng.standard_normal((5, 3, 2)).astype(np.float32)
    b2 = b.copy()
    b2[0, 0, 0] += 0.5
    result = compare_outputs([a, b], [a, b2])
    assert [o["name"] for o in result["outputs"]] == [0, 1]
    assert result["outputs"][0]["max_abs_diff"] == 0.0 and result["outputs"][0]["sqnr_db"] == float("inf")
    assert result["outputs"][1]["max_abs_diff"] == pytest.approx(0.5)
    assert result["outputs"][1] == {"name": 1, **compare(b, b2)}
    assert {k: result[k] for k in compare(a, a)} == compare(a, a)  # output 0 at the top level

    ref = [np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[2.0, 0.0], [0.0, 3.0], [1.0, 0.0]])]
    test = [np.array([[1.0, 0.0], [1.0, 0.0]]), np.array([[2.0, 0.0], [0.0, 3.0], [1.0, 0.0]])]
    assert [s.shape for s in per_sample(ref)] == [(2, 2), (3, 2)]
    assert [s.shape for s in per_sample(b)] == [(3, 2)] * 5
    r = compare_outputs([ref], [test])
    assert r["samples"] == 2 and r["max_abs_diff"] == 1.0
    assert r["cosine"] == pytest.approx(0.75)          # per-sample cosines 0.5 and 1.0
    assert r["top1_agreement"] == pytest.approx(0.8)   # 4 of 5 time steps agree
    assert r["sqnr_db"] == round(10 * np.log10(16 / 2), 2)  # signal 16/10, noise 2/10
    assert get_metric("cosine").score([test], None, [ref]) == pytest.approx(0.75)


# ---- CTC ---------------------------------------------------------------------------------------

def test_greedy_decode_collapses_repeats_and_drops_blanks():
    assert greedy_decode([frames([1, 1, 0, 1, 2, 2, 0, 0, 3], 4)]) == [[1, 1, 2, 3]]
    assert greedy_decode([frames([1, 1], 3)]) == [[1]]            # "aa" without a blank is "a"
    assert greedy_decode([frames([1, 0, 1], 3)]) == [[1, 1]]      # a blank separates the repeat
    assert greedy_decode(np.stack([frames([2, 2, 1], 3), frames([0, 0, 0], 3)])) == [[2, 1], []]
    assert greedy_decode([frames([2, 0, 2, 1], 3)], blank=2) == [[0, 1]]


def test_edit_distance():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("flaw", "lawn") == 2
    assert edit_distance("", "abc") == 3 and edit_distance("abc", "") == 3
    assert edit_distance("same", "same") == 0
    assert edit_distance(["a", "b", "c"], ["a", "x", "c", "d"]) == 2
    assert edit_distance((1, 2, 3), (3, 2, 1)) == 2


@pytest.fixture
def charset(tmp_path):
    path = tmp_path / "keys.txt"
    path.write_text("a\nb\n \nc\n", encoding="utf-8")  # classes 1..4 with blank 0; line 3 is the space
    return path


def test_charset_file_convention(charset, tmp_path):
    assert load_charset(charset) == ["", "a", "b", " ", "c"]
    assert load_charset(charset, blank=4) == ["a", "b", " ", "c", ""]
    with pytest.raises(MetricError, match="does not exist"):
        get_metric("ctc-cer", charset=tmp_path / "nope.txt")
    (tmp_path / "gap.txt").write_text("a\n\nb\n")
    with pytest.raises(MetricError, match="empty line 2"):
        load_charset(tmp_path / "gap.txt")


def test_ctc_cer_and_wer_values(charset):
    # sample 0 decodes to "ab c", sample 1 to "ac" (frames: a a _ c)
    out = np.stack([frames([1, 0, 2, 3, 4, 4], 5), frames([1, 1, 0, 4, 0, 0], 5)])
    cer, wer = get_metric("ctc-cer", charset=charset), get_metric("ctc-wer", charset=charset)
    assert cer.unit == "points" and not cer.higher_is_better
    for labels in (np.array(["ab c", "abc"]), np.array([b"ab c", b"abc"]), ["ab c", "abc"],
                   np.array(["ab c", "abc"], dtype=object)):
        # 1 deletion over 4 + 3 reference characters; 1 substituted word over 2 + 1 words
        assert cer.score([out], labels) == pytest.approx(100 / 7)
        assert wer.score([out], labels) == pytest.approx(100 / 3)
    assert cer.drop(1.0, 3.5) == pytest.approx(2.5)    # lower is better: rising CER is a drop
    assert cer.display(3.5) == 3.5
    # ragged outputs: one [T_i, C] array per sample
    ragged = [frames([1, 0, 2, 3, 4], 5), frames([1, 4], 5)]
    assert cer.score([ragged], ["ab c", "abc"]) == pytest.approx(100 / 7)
    # integer id labels padded with -1 are mapped through the charset
    assert cer.score([out], np.array([[1, 2, 3, 4], [1, 2, 4, -1]])) == pytest.approx(100 / 7)


def test_ctc_without_charset_compares_ids():
    out = [frames([1, 0, 2, 2], 3), frames([2, 2, 2], 3)]            # decodes [1, 2] and [2]
    cer = get_metric("ctc-cer")
    assert cer.score([out], np.array([[1, 2, -1], [1, 2, 1]])) == pytest.approx(100 * 2 / 5)
    assert cer.score([out], [np.array([1, 2]), np.array([2])]) == 0.0
    with pytest.raises(MetricError, match="needs a charset"):
        cer.score([out], ["ab", "b"])
    with pytest.raises(MetricError, match="needs a charset"):
        get_metric("ctc-wer").score([out], [np.array([1, 2]), np.array([2])])


def test_ctc_errors(charset):
    cer = get_metric("ctc-cer", charset=charset)
    with pytest.raises(MetricError, match="model has 7 classes but the charset gives 5"):
        cer.score([np.zeros((1, 3, 7))], ["a"])
    with pytest.raises(MetricError, match="got 1 transcripts for 2 samples"):
        cer.score([np.zeros((2, 3, 5))], ["a"])
    with pytest.raises(MetricError, match="blank index 9"):
        get_metric("ctc-cer", blank=9).score([np.zeros((1, 3, 5))], [np.array([1])])


def test_edit_distance_is_fast_enough():
    import time
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("abcdefghij"), 20)) for _ in range(2000)]
    start = time.perf_counter()
    total = sum(edit_distance(a, b) for a, b in zip(words, words[1:]))
    assert total > 0 and time.perf_counter() - start < 5.0   # worst case: nothing in common


# ---- plug-ins ----------------------------------------------------------------------------------

def test_user_metric_from_file(tmp_path):
    path = tmp_path / "my_metrics.py"
    path.write_text(
        "import numpy as np\n"
        "def mae(outputs, labels):\n"
        "    outputs = outputs[0] if isinstance(outputs, list) else outputs\n"
        "    return np.mean(np.abs(outputs[:, 0] - labels))\n"
        "mae.higher_is_better = False\n"
        "def kind(outputs, labels):\n"
        "    return {'list': 2.0}.get(type(outputs).__name__, 1.0)\n"
        "kind.needs_labels = False\n")
    mae = get_metric(f"{path}:mae")
    assert mae.name == "mae" and not mae.higher_is_better and mae.needs_labels
    outputs = np.array([[1.0], [2.0], [4.0]])
    assert mae.score([outputs], np.array([1.0, 1.0, 1.0])) == pytest.approx(4 / 3)
    assert isinstance(mae.score([outputs], np.array([1.0, 1.0, 1.0])), float)  # numpy scalar -> float
    assert mae.drop(1.0, 1.5) == pytest.approx(0.5)      # larger error is worse: positive drop
    assert mae.drop(1.0, 0.5) == pytest.approx(-0.5)
    # one-output models get the entry itself, several outputs get the list
    kind = get_metric(f"{path}:kind")
    assert not kind.needs_labels
    assert kind.score([outputs]) == 1.0 and kind.score([outputs, outputs]) == 2.0


def test_user_metric_from_module(tmp_path, monkeypatch):
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "scores.py").write_text(
        "def hits(outputs, labels):\n    return float((outputs.argmax(1) == labels).sum())\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    metric = get_metric("mypkg.scores:hits")
    assert metric.name == "hits" and metric.higher_is_better and metric.unit == ""
    assert metric.score([LOGITS], LABELS) == 1.0
    assert metric.drop(3.0, 1.0) == 2.0 and metric.display(1.0) == 1.0


@pytest.mark.parametrize("returns, fragment", [
    ("'abc'", "returned 'abc' (str), not a number."),
    ("None", "returned None (NoneType), not a number."),
    ("float('nan')", "returned nan (float), not a finite number."),
    ("float('inf')", "returned inf (float), not a finite number."),
    ("np.array([0.5, 0.6])", "returned an array of shape (2,) (ndarray), not a number."),
])
def test_user_metric_bad_results(tmp_path, returns, fragment):
    path = tmp_path / "bad.py"
    path.write_text(f"import numpy as np\ndef fn(outputs, labels):\n    return {returns}\n")
    with pytest.raises(MetricError) as info:
        get_metric(f"{path}:fn").score([np.zeros((2, 2))], np.zeros(2))
    assert str(info.value) == f"metric fn {fragment}"


def test_user_metric_results_converted_to_float(tmp_path):
    path = tmp_path / "ok.py"
    path.write_text("import numpy as np\n"
                    "def zero_d(o, l): return np.array(0.5)\n"
                    "def one(o, l): return np.array([[0.25]], np.float32)\n"
                    "def integer(o, l): return np.int64(3)\n")
    assert [get_metric(f"{path}:{name}").score([np.zeros(1)], [0]) for name in ("zero_d", "one", "integer")] \
        == [0.5, 0.25, 3.0]


def test_user_metric_that_raises(tmp_path):
    path = tmp_path / "raising.py"
    path.write_text("def fn(outputs, labels):\n    raise ValueError('labels are all wrong')\n")
    with pytest.raises(MetricError) as info:
        get_metric(f"{path}:fn").score([np.zeros((2, 2))], np.zeros(2))
    assert str(info.value) == "metric fn raised ValueError: labels are all wrong."


def test_plugin_loading_errors(tmp_path):
    (tmp_path / "broken.py").write_text("import not_a_real_module_xyz\n")
    (tmp_path / "fine.py").write_text("value = 3\nhigher = lambda o, l: 1.0\nhigher.higher_is_better = 'no'\n")
    cases = [(f"{tmp_path}/missing.py:fn", "metric file"),
             (f"{tmp_path}/missing.py:fn", "does not exist"),
             (f"{tmp_path}/broken.py:fn", "failed: ModuleNotFoundError"),
             (f"{tmp_path}/fine.py:nope", "has no function 'nope'"),
             (f"{tmp_path}/fine.py:value", "fine.py:value is not callable (it is a int)"),
             (f"{tmp_path}/fine.py:higher", "must be True or False"),
             ("top3", "unknown metric 'top3'"),
             ("top3", ", ".join(BUILTIN_METRICS)),
             ("fine.py", "write fine.py:function"),
             ("not_a_real_package_xyz.sub:fn", "cannot import metric module 'not_a_real_package_xyz.sub'")]
    for spec, fragment in cases:
        with pytest.raises(MetricError) as info:
            get_metric(spec)
        message = str(info.value)
        assert fragment in message, (spec, message)
        assert message.endswith(".") and "\n" not in message
    assert issubclass(MetricError, EdgeqError) and MetricError.exit_code == 2
