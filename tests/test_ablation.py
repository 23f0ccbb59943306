"""`leanvision ablate gated_sparse_blip`: each switch of the grid reaches the model that row trains."""

import json

import pytest
import torch

from leanvision.training.families import load_saved
from leanvision.training.tools.ablation import format_table, run_ablation

pytestmark = pytest.mark.slow  # trains four tiny models (about 50 s)

TINY = ("--max_train_samples", "16", "--max_eval_samples", "4", "--num_train_epochs", "1",
        "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "4", "--generation_max_new_tokens", "6")


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    out = tmp_path_factory.mktemp("ablation")
    rows = run_ablation(out_dir=str(out), sparsities=(0.0, 0.7), extra_args=TINY, metrics="bleu,rouge_l,cider",
                        progress=False)
    return out, rows


def _row(rows, sparsity, gating):
    return next(r for r in rows if r["sparsity"] == sparsity and r["gating"] == gating)


def test_saved_configs_carry_each_rows_switches(ablation):
    out, rows = ablation
    assert [(r["sparsity"], r["gating"]) for r in rows] == [(0.0, True), (0.0, False), (0.7, True), (0.7, False)]
    for row in rows:
        assert row["saved_config"] == {"attention_sparsity": row["sparsity"], "use_token_gating": row["gating"]}
    assert json.loads((out / "results.json").read_text()) == rows


def test_measured_gates_and_kept_fractions_follow_the_switches(ablation):
    _, rows = ablation
    for sparsity in (0.0, 0.7):
        on, off = _row(rows, sparsity, True), _row(rows, sparsity, False)
        assert 0.0 < on["mean_gate"] < 1.0 and off["mean_gate"] is None
    for gating in (True, False):
        dense, sparse = _row(rows, 0.0, gating), _row(rows, 0.7, gating)
        assert dense["kept_self"] == 1.0 and dense["kept_cross"] == 1.0
        assert sparse["kept_self"] < 0.35 and sparse["kept_cross"] < 0.35
    table = format_table(rows)
    assert "| 0 | off |" in table and table.splitlines()[3].split("|")[9].strip() == "-"  # no gate: no mean gate
    for row in rows:  # greedy captions of the 4 eval images
        assert 1 <= row["distinct_captions"] <= 4


def test_gating_on_and_off_train_different_models(ablation):
    """At sparsity 0 the two rows differ in their token gates only; the gated model has them and its logits differ."""
    out, _ = ablation
    _, on, _ = load_saved(str(out / "sparsity_0_gating_on"))
    _, off, _ = load_saved(str(out / "sparsity_0_gating_off"))
    gate_params = {name for name, _ in on.named_parameters() if "token_gate" in name}
    assert gate_params and not any("token_gate" in name for name, _ in off.named_parameters())
    torch.manual_seed(0)
    latents = torch.randn(2, 8, 32, 32)
    input_ids = torch.tensor([[on.config.text_config.bos_token_id, 5, 6, 7]] * 2)
    with torch.no_grad():
        logits_on = on(latents=latents, input_ids=input_ids).logits
        logits_off = off(latents=latents, input_ids=input_ids).logits
    assert not torch.allclose(logits_on, logits_off, atol=1e-3)
