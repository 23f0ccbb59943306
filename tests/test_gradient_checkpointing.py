"""Gradient checkpointing works in every family and changes neither the loss nor the gradients."""

import pytest
import torch

from test_attention import AUTO_CLASS, inputs, load


def loss_and_gradients(model, batch):
    torch.manual_seed(0)
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family", sorted(AUTO_CLASS))
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(family):
    model = load(family, "eager").train()
    batch = inputs(family)
    if family == "dtp_vit":
        batch = {"pixel_values": batch["pixel_values"], "labels": torch.tensor([1, 2])}
    elif family == "dtp_clip":
        batch["return_loss"] = True
    else:
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    loss, gradients = loss_and_gradients(model, batch)
    model.activation_checkpointing_enable()
    assert model.is_activation_checkpointing
    checkpointed_loss, checkpointed_gradients = loss_and_gradients(model, batch)
    torch.testing.assert_close(checkpointed_loss, loss, rtol=0, atol=0)
    assert checkpointed_gradients.keys() == gradients.keys() and len(gradients) > 10
    for name, gradient in gradients.items():
        torch.testing.assert_close(checkpointed_gradients[name], gradient, rtol=0, atol=1e-6, msg=name)
