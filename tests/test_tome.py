"""ToMe on DTP-ViT's dense tower: r = 0 is the dense model, token counts per layer, size bookkeeping, the merge."""

import pytest
import torch

from leanvision import DTPViTConfig, DTPViTModel
from leanvision.modeling.modeling_common import split_heads
from leanvision.modeling.modeling_tome import ToMeViT, bipartite_soft_matching, merge_weighted, tome_schedule


def dense_model(pooler_type="mean"):
    torch.manual_seed(0)
    config = DTPViTConfig(image_size=16, patch_size=4, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                          num_pre_layers=1, num_shortened_layers=2, compression_rate=1.0, pooler_type=pooler_type)
    return DTPViTModel(config).eval()


@pytest.mark.parametrize("pooler_type", ["mean", "cls"])
def test_r_zero_is_the_dense_model_exactly(pooler_type):
    model = dense_model(pooler_type)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        dense, tome = model(x), ToMeViT(model, r=0)(x)
    assert torch.equal(tome.last_hidden_state, dense.last_hidden_state)
    assert torch.equal(tome.pooler_output, dense.pooler_output)
    assert tome.token_counts == (17, 17, 17, 17) and torch.equal(tome.sizes, torch.ones(3, 17))


def test_token_counts_follow_tomes_schedule_and_sizes_add_up():
    model = dense_model()
    # 17 tokens, r = 5: 17 -> 12 -> 7 -> 4 (the last layer is capped at (7 - 1) // 2 = 3).
    assert tome_schedule(17, 3, 5) == [5, 5, 3]
    with torch.no_grad():
        out = ToMeViT(model, r=5)(torch.randn(2, 3, 16, 16))
    assert out.token_counts == (17, 12, 7, 4)
    assert out.last_hidden_state.shape == (2, 4, 32)
    # Every patch is in exactly one token: sizes sum to 1 (CLS) + 16 patches, CLS stays first with size 1.
    assert torch.equal(out.sizes.sum(-1), torch.full((2,), 17.0)) and torch.equal(out.sizes[:, 0], torch.ones(2))


def test_matching_merges_the_most_similar_pairs_and_protects_cls():
    # Tokens: CLS, then A/B alternating. a1 (position 2) equals b1 (position 3); a2 (position 4) nearly equals b0.
    metric = torch.tensor([[[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1], [0, 1, 0.1], [1, 1, 1]]])
    kept, merged, destination = bipartite_soft_matching(metric, r=2)
    assert merged.tolist() == [[1, 2]] and destination.tolist() == [[1, 0]]
    assert kept.tolist() == [[0]]  # CLS is never merged, even at -inf similarity to everything
    hidden = torch.arange(6.0)[None, :, None].expand(1, 6, 2)
    sizes = torch.tensor([[1.0, 1, 1, 1, 1, 3]])
    merged_hidden, merged_sizes = merge_weighted(hidden, sizes, kept, merged, destination)
    # [CLS; b0 + a2; b1 + a1; b2]: sizes add, values are size-weighted means.
    assert merged_sizes.tolist() == [[1.0, 2.0, 2.0, 3.0]]
    assert merged_hidden[0, :, 0].tolist() == [0.0, (1 + 4) / 2, (3 + 2) / 2, 5.0]


def test_proportional_attention_counts_a_merged_token_as_its_patches():
    """Two identical keys/values seen as two size-1 tokens or as one size-2 token give the same attention output."""
    model = dense_model()
    layer = ToMeViT(model, r=0).layers[0]
    torch.manual_seed(1)
    x = torch.randn(1, 3, 32)
    duplicated = torch.cat([x, x[:, 2:]], dim=1)
    with torch.no_grad():
        normed = layer.layer.layer_norm1
        attn = layer.layer.self_attn
        def attend(h, sizes, merged):
            n = normed(h)
            q, k, v = (split_heads(p(n), attn.head_dim) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
            bias = sizes.log()[:, None, None, :] if merged else None
            return attn.attend(q, k, v, bias)[0]

        two_tokens = attend(duplicated, torch.ones(1, 4), False)[:, :3]
        one_token = attend(x, torch.tensor([[1.0, 1.0, 2.0]]), True)
    torch.testing.assert_close(one_token, two_tokens, rtol=0, atol=1e-5)


def test_tome_refuses_a_pooling_tower():
    config = DTPViTConfig(image_size=16, patch_size=4, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                          num_pre_layers=1, num_shortened_layers=1, compression_rate=0.5)
    with pytest.raises(ValueError, match="dense tower"):
        ToMeViT(DTPViTModel(config), r=2)
