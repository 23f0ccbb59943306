"""FSDP on CPU: two gloo ranks train the digits recipe's DTP-ViT with torch's FSDP2 (`fully_shard`, parameters
sharded as DTensors) and with DDP; the final weights agree within 1e-5, and the FSDP model saves and loads.

`accelerate launch --use_fsdp` cannot be used for this on CPU: accelerate 1.16 turns FSDP on only for accelerator
distributed types (MULTI_GPU, MULTI_NPU, ...), so on CPU it silently runs DDP (`DistributedType.MULTI_CPU`, the
model wrapped in `DistributedDataParallel`). The script below shards with torch directly."""

import os
import subprocess
import sys

import pytest
import torch

from helpers import free_port
from leanvision import DTPViTForImageClassification

SCRIPT = r"""
import sys
import torch
import torch.distributed as dist
import yaml
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

from leanvision import DTPViTConfig, DTPViTForImageClassification
from leanvision.training.data.digits import digits_dataset
from leanvision.processing.processing_dtp_vit import build_image_processor

mode, recipe, out = sys.argv[1:4]
dist.init_process_group("gloo")
rank = dist.get_rank()
overrides = yaml.safe_load(open(recipe))["config_overrides"]
torch.manual_seed(0)
model = DTPViTForImageClassification(DTPViTConfig(**overrides, num_labels=10)).train()
initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
if mode == "fsdp":
    for layer in (*model.dtp_vit.pre_layers, *model.dtp_vit.shortened_layers):
        fully_shard(layer)
    fully_shard(model)
    assert type(next(model.parameters())).__name__ == "DTensor"
else:
    model = DistributedDataParallel(model)
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
train = digits_dataset()["train"].select(range(32))
processor = build_image_processor(overrides["image_size"])
pixels = processor(images=[image.convert("RGB") for image in train["image"]], return_tensors="pt")["pixel_values"]
labels = torch.tensor(train["label"])
for step in range(4):
    rows = slice(8 * step + rank, 8 * step + 8, 2)  # each rank its half of the step's 8 images
    torch.manual_seed(1000 * step + rank)  # the same Gumbel noise on each rank in both runs
    model(pixels[rows], labels=labels[rows]).loss.backward()
    optimizer.step()
    optimizer.zero_grad()
state = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach() for k, v in model.state_dict().items()}
if rank == 0:
    plain = DTPViTForImageClassification(DTPViTConfig(**overrides, num_labels=10))
    plain.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    moved = max((plain.state_dict()[k] - initial[k]).abs().max().item() for k in initial)
    assert moved > 1e-3, moved
    plain.save_pretrained(out)
dist.destroy_process_group()
"""


def run_two_ranks(tmp_path, mode: str) -> str:
    script = tmp_path / "shard.py"
    script.write_text(SCRIPT)
    out = str(tmp_path / mode)
    recipe = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "training", "recipes",
                          "dtp_vit_digits.yaml")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), str(script), mode, recipe, out]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                            env=dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1"))
    assert result.returncode == 0, result.stderr[-4000:]
    return out


@pytest.mark.slow
def test_fsdp_on_cpu_trains_the_digits_model_like_ddp(tmp_path):
    fsdp = DTPViTForImageClassification.from_pretrained(run_two_ranks(tmp_path, "fsdp"))
    ddp = DTPViTForImageClassification.from_pretrained(run_two_ranks(tmp_path, "ddp"))
    fsdp_state, ddp_state = fsdp.state_dict(), ddp.state_dict()
    assert fsdp_state.keys() == ddp_state.keys()
    for key in fsdp_state:
        torch.testing.assert_close(fsdp_state[key], ddp_state[key], rtol=0, atol=1e-5, msg=key)
