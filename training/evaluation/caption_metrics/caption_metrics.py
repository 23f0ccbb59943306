"""COCO caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr, SPICE) as an `evaluate` module.

Load it offline by path: ``evaluate.load("/abs/path/to/training/evaluation/caption_metrics")``.
"""

import contextlib
import io
import os
import shutil
import subprocess
import sys

import datasets
import evaluate
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.spice import spice as spice_module
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

@contextlib.contextmanager
def _child_stderr_silenced():
    """Points file descriptor 2 at a temporary file for the block, so a child process (which inherits it) prints
    nothing to the console; what it wrote is shown when the block raises. Python's stderr is flushed first."""
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


_DESCRIPTION = """
Standard word-level COCO caption evaluation with pycocoevalcap: captions and references are lower-cased and
tokenised by the Stanford PTB tokenizer (punctuation removed), then scored against several references per image.
BLEU-1..4 (corpus level), METEOR 1.5, ROUGE-L and CIDEr (CIDEr-D style, IDF over the references of the evaluated
set) run offline with Java. SPICE runs only where the Stanford CoreNLP 3.6.0 jars are in pycocoevalcap's
spice/lib folder; otherwise it is reported as skipped with the reason.
"""

_CITATION = """
@inproceedings{papineni2002bleu, title={BLEU: a method for automatic evaluation of machine translation},
  author={Papineni, Kishore and Roukos, Salim and Ward, Todd and Zhu, Wei-Jing}, booktitle={ACL}, year={2002}}
@inproceedings{denkowski2014meteor, title={Meteor Universal: Language Specific Translation Evaluation for Any
  Target Language}, author={Denkowski, Michael and Lavie, Alon}, booktitle={WMT}, year={2014}}
@inproceedings{lin2004rouge, title={ROUGE: A Package for Automatic Evaluation of Summaries}, author={Lin, Chin-Yew},
  booktitle={Text Summarization Branches Out}, year={2004}}
@inproceedings{vedantam2015cider, title={CIDEr: Consensus-based Image Description Evaluation},
  author={Vedantam, Ramakrishna and Zitnick, C. Lawrence and Parikh, Devi}, booktitle={CVPR}, year={2015}}
@inproceedings{anderson2016spice, title={SPICE: Semantic Propositional Image Caption Evaluation},
  author={Anderson, Peter and Fernando, Basura and Johnson, Mark and Gould, Stephen}, booktitle={ECCV}, year={2016}}
@article{chen2015microsoft, title={Microsoft COCO Captions: Data Collection and Evaluation Server},
  author={Chen, Xinlei and Fang, Hao and Lin, Tsung-Yi and Vedantam, Ramakrishna and Gupta, Saurabh and
  Doll{\'a}r, Piotr and Zitnick, C. Lawrence}, journal={arXiv:1504.00325}, year={2015}}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated captions, one string per image.
    references: list of reference captions per image, each a non-empty list of strings.
    metrics: which metrics to compute, any of "bleu", "meteor", "rouge_l", "cider", "spice"
        (default: all). METEOR starts a Java process (about 10 s); leave it out for fast evaluation.
Returns:
    bleu_1, bleu_2, bleu_3, bleu_4, meteor, rouge_l, cider, spice: plain floats for the requested metrics
        (spice is None when it could not run);
    skipped: dict from metric name to the reason it was not computed (empty when nothing was skipped).
Examples:
    >>> metric = evaluate.load("training/evaluation/caption_metrics")
    >>> metric.compute(predictions=["a red circle"], references=[["a red circle", "a circle that is red"]],
    ...                metrics=["bleu", "rouge_l"])
"""

METRICS = ("bleu", "meteor", "rouge_l", "cider", "spice")
_SPICE_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")


def _spice_missing_reason():
    """Why SPICE cannot run here, or None when its Stanford CoreNLP 3.6.0 jars are present."""
    lib = os.path.join(os.path.dirname(os.path.abspath(spice_module.__file__)), "lib")
    missing = [jar for jar in _SPICE_JARS if not os.path.isfile(os.path.join(lib, jar))]
    if missing:
        return f"Stanford CoreNLP 3.6.0 jars not found in pycocoevalcap's spice/lib folder (missing: {', '.join(missing)})"
    return None


def _one_line(caption):
    # The PTB tokenizer reads one caption per line: any line break inside a caption would shift every later one.
    return " ".join(caption.split())


def _check_inputs(predictions, references):
    """Reject inputs that `evaluate` would accept but score wrongly (a reference string is split into characters)."""
    if predictions is None or references is None:
        raise ValueError("predictions and references are both required")
    if len(predictions) != len(references):
        raise ValueError(f"predictions ({len(predictions)}) and references ({len(references)}) differ in length")
    if len(predictions) == 0:
        raise ValueError("predictions is empty: nothing to evaluate")
    for i, prediction in enumerate(predictions):
        if not isinstance(prediction, str):
            raise ValueError(f"predictions[{i}] must be a string, got {type(prediction).__name__}")
    for i, refs in enumerate(references):
        if not isinstance(refs, (list, tuple)) or not all(isinstance(r, str) for r in refs):
            raise ValueError(f"references[{i}] must be a list of strings, got {refs!r}")
        if len(refs) == 0:
            raise ValueError(f"references[{i}] is empty: each prediction needs at least one reference")


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CaptionMetrics(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
            ),
            codebase_urls=["https://github.com/salaniz/pycocoevalcap"],
            reference_urls=["https://arxiv.org/abs/1504.00325"],
        )

    # `evaluate` appends the inputs description to these docstrings, so they must exist.
    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add a batch of predictions and references after checking their types and lengths."""
        _check_inputs(predictions, references)
        super().add_batch(predictions=predictions, references=references, **kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Add one prediction and its list of references after checking their types."""
        _check_inputs([prediction], [reference])
        super().add(prediction=prediction, reference=reference, **kwargs)

    def _compute(self, predictions, references, metrics=METRICS):
        metrics = [metrics] if isinstance(metrics, str) else list(metrics)
        unknown = [name for name in metrics if name not in METRICS]
        if unknown:
            raise ValueError(f"metrics: unknown names {unknown}; choose from {list(METRICS)}")
        if shutil.which("java") is None:
            raise RuntimeError("caption_metrics needs Java on PATH for PTB tokenisation (and METEOR, SPICE)")

        tokenizer = PTBTokenizer()
        with _child_stderr_silenced():  # the Java tokenizer prints "PTBTokenizer tokenized N tokens ..."
            gts = tokenizer.tokenize(
                {i: [{"caption": _one_line(r)} for r in refs] for i, refs in enumerate(references)}
            )
            res = tokenizer.tokenize({i: [{"caption": _one_line(p)}] for i, p in enumerate(predictions)})

        result = {}
        skipped = {}
        if "bleu" in metrics:
            with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its n-gram counts
                bleu, _ = Bleu(4).compute_score(gts, res)
            result.update({f"bleu_{n + 1}": float(score) for n, score in enumerate(bleu)})
        if "meteor" in metrics:
            meteor = Meteor()
            try:
                result["meteor"] = float(meteor.compute_score(gts, res)[0])
            finally:
                meteor.meteor_p.stdin.close()
                meteor.meteor_p.kill()
                meteor.meteor_p.wait()
        if "rouge_l" in metrics:
            result["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
        if "cider" in metrics:
            result["cider"] = float(Cider().compute_score(gts, res)[0])
        if "spice" in metrics:
            reason = _spice_missing_reason()
            if reason is None:
                try:
                    result["spice"] = float(spice_module.Spice().compute_score(gts, res)[0])
                except (subprocess.CalledProcessError, OSError, ValueError) as error:
                    reason = f"SPICE failed: {error}"
            if reason is not None:
                result["spice"] = None
                skipped["spice"] = reason
        result["skipped"] = skipped
        return result
