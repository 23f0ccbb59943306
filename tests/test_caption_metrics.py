import contextlib
import io
import os
from pathlib import Path

import evaluate
import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.spice import spice as spice_module
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

import leanvision.training
from leanvision.training.data.shapes import make_shapes_dataset

METRIC_DIR = Path(leanvision.training.__file__).parent / "evaluation" / "caption_metrics"
FAST = ["bleu", "rouge_l", "cider"]


@pytest.fixture(scope="module")
def metric():
    return evaluate.load(str(METRIC_DIR.resolve()), keep_in_memory=True)


@pytest.fixture(scope="module")
def shapes():
    ds = make_shapes_dataset(12, seed=5, max_objects=2, split="test")
    # References leave out the canonical caption, so a canonical prediction is not a copy of a reference.
    return ds["caption"], [captions[1:] for captions in ds["captions"]]


def child_processes():
    """Child processes of this process that are not yet reaped (running or zombie)."""
    pids = set()
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        pids.update((task / "children").read_text().split())
    return pids


def test_scores_equal_pycocoevalcap_called_directly(metric, shapes):
    canonical, references = shapes
    # Correct, wrongly ordered, empty and punctuated predictions.
    predictions = list(canonical)
    predictions[1] = canonical[2]
    predictions[3] = ""
    predictions[4] = canonical[4].upper().replace(" and ", ", and ") + "."
    children_before = child_processes()
    result = metric.compute(predictions=predictions, references=references)
    assert child_processes() <= children_before  # the Java tokenizer and METEOR processes are closed

    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": r} for r in refs] for i, refs in enumerate(references)})
    res = tokenizer.tokenize({i: [{"caption": p}] for i, p in enumerate(predictions)})
    with contextlib.redirect_stdout(io.StringIO()):
        bleu, _ = Bleu(4).compute_score(gts, res)
    meteor = Meteor()
    expected = {f"bleu_{n + 1}": bleu[n] for n in range(4)}
    expected["meteor"] = meteor.compute_score(gts, res)[0]
    del meteor
    expected["rouge_l"] = Rouge().compute_score(gts, res)[0]
    expected["cider"] = Cider().compute_score(gts, res)[0]

    scores = {k: v for k, v in result.items() if k not in ("spice", "skipped")}
    assert scores == expected
    assert all(type(v) is float for v in scores.values())
    assert 0.0 < result["bleu_4"] < 1.0 and 0.0 < result["meteor"] < 1.0 and result["cider"] > 0.0


def test_perfect_prediction_scores_top_and_beats_unrelated(metric, shapes):
    _, references = shapes
    perfect = metric.compute(predictions=[refs[0] for refs in references], references=references, metrics=FAST)
    assert perfect["bleu_4"] == pytest.approx(1.0, abs=1e-6)
    assert perfect["rouge_l"] == pytest.approx(1.0)
    unrelated = ["a dog riding a skateboard down the street"] * len(references)
    other = metric.compute(predictions=unrelated, references=references, metrics=FAST)
    assert other["bleu_4"] < 0.01 and other["cider"] < 0.05
    assert perfect["cider"] > 1.0 > other["cider"]


def test_scores_are_word_level_with_ptb_tokenisation(metric):
    references = [["a red circle at the top left"], ["a blue square at the bottom"]]
    shuffled = ["left top the at circle red a", "bottom the at square blue a"]
    result = metric.compute(predictions=shuffled, references=references, metrics=["bleu"])
    # Every word is right (and so every character), but no 4-gram is.
    assert result["bleu_1"] == pytest.approx(1.0, abs=1e-6)
    assert result["bleu_4"] < 0.01
    # Case and punctuation are removed by the PTB tokenizer before scoring.
    noisy = ["A Red Circle, at the top left.", "A BLUE square at the bottom!"]
    assert metric.compute(predictions=noisy, references=references, metrics=["bleu"])["bleu_4"] == pytest.approx(
        1.0, abs=1e-6
    )


def test_spice_is_skipped_with_reason_without_corenlp_jars(metric):
    lib = Path(spice_module.__file__).parent / "lib"
    if (lib / "stanford-corenlp-3.6.0.jar").exists():
        pytest.skip("Stanford CoreNLP jars are present: SPICE runs here")
    result = metric.compute(predictions=["a red circle"], references=[["a red circle"]], metrics=["spice"])
    assert set(result) == {"spice", "skipped"}
    assert result["spice"] is None
    assert "stanford-corenlp-3.6.0.jar" in result["skipped"]["spice"]


def test_metric_selection(metric):
    result = metric.compute(predictions=["a red circle"], references=[["a red circle"]], metrics=["rouge_l"])
    assert result == {"rouge_l": 1.0, "skipped": {}}
    with pytest.raises(ValueError, match="metrics"):
        metric.compute(predictions=["a"], references=[["a"]], metrics=["blue"])


@pytest.mark.parametrize(
    "predictions, references, message",
    [
        (["a", "b"], [["a"]], "differ in length"),
        (["a", "b"], [["a"], []], r"references\[1\] is empty"),
        (["a", "b"], [["a"], "b"], r"references\[1\] must be a list of strings"),
        ([], [], "predictions is empty"),
        ([None], [["a"]], r"predictions\[0\] must be a string"),
    ],
)
def test_bad_inputs_raise_value_error(metric, predictions, references, message):
    with pytest.raises(ValueError, match=message):
        metric.compute(predictions=predictions, references=references, metrics=["bleu"])
