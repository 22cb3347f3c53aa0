"""Packed (padding-free) bulk batches: the layout, the attention, the decoder's probe and its switch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import servers.backends.packed as packed_module
from servers.backends.accelerated import AccelerationSettings, LastTokenDecoder
from servers.backends.device import choose_placement
from servers.backends.packed import PACKED_ATTENTION, pack, packed_or_sdpa, varlen_causal_attention
from testkit.random_models import random_qwen3_causal_lm

PAD = 151643
PACKING = AccelerationSettings(bulk_packing="on")


def test_pack_lays_texts_back_to_back_with_restarting_positions() -> None:
    p = pack([[5, 6, 7], [8], [9, 10]])
    assert p.ids.tolist() == [[5, 6, 7, 8, 9, 10]]
    assert p.positions.tolist() == [[0, 1, 2, 0, 0, 1]]
    assert p.cu_seqlens.tolist() == [0, 3, 4, 6]
    assert p.cu_seqlens.dtype == torch.int32  # what the varlen kernel takes
    assert p.last.tolist() == [2, 3, 5]
    assert p.max_length == 64  # rounded up to a power of two from 64
    assert pack([[1] * 65]).max_length == 128
    assert pack([[1] * 128]).max_length == 128


def test_varlen_attention_is_each_texts_own_causal_attention_with_grouped_heads() -> None:
    torch.manual_seed(0)
    lengths = [4, 1, 7]
    q = torch.randn(1, 4, sum(lengths), 8)
    k, v = torch.randn(1, 2, sum(lengths), 8), torch.randn(1, 2, sum(lengths), 8)
    cu = torch.tensor([0, 4, 5, 12], dtype=torch.int32)
    out = varlen_causal_attention(q, k, v, cu, 64, None)
    assert out.shape == (1, 12, 4, 8)  # (1, T, H, D), transformers' layout
    start = 0
    for n in lengths:
        part = slice(start, start + n)
        kr, vr = (t[:, :, part].repeat_interleave(2, dim=1) for t in (k, v))
        want = F.scaled_dot_product_attention(q[:, :, part], kr, vr, is_causal=True).transpose(1, 2)
        torch.testing.assert_close(out[:, part], want, atol=1e-6, rtol=1e-6)
        start += n


def test_the_attention_function_is_sdpa_for_unpacked_calls() -> None:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    module = random_qwen3_causal_lm("tiny").model.layers[0].self_attn
    q, k, v = torch.randn(2, 4, 6, 16), torch.randn(2, 2, 6, 16), torch.randn(2, 2, 6, 16)
    ours, _ = packed_or_sdpa(module, q, k, v, None, scaling=0.25)
    theirs, _ = ALL_ATTENTION_FUNCTIONS["sdpa"](module, q, k, v, None, scaling=0.25)
    assert torch.equal(ours, theirs)


def _batch(*lengths: int) -> list[list[int]]:
    rng = np.random.default_rng(sum(lengths))
    return [rng.integers(0, 150000, size=n).tolist() for n in lengths]


def test_decoder_runs_bulk_batches_packed_and_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bulk packed, priority padded: both give each text's own last hidden state (fp32, CPU)."""
    model = random_qwen3_causal_lm("tiny").model.eval()
    decoder = LastTokenDecoder(model, choose_placement("cpu", "float32", "sdpa"), PAD, None, PACKING, 512)
    assert decoder.packing
    assert decoder.info()["bulk_packing"] == "on"
    assert model.config._attn_implementation == PACKED_ATTENTION
    calls: list[bool] = []
    real = packed_module.varlen_causal_attention
    monkeypatch.setattr(packed_module, "varlen_causal_attention", lambda *a: calls.append(True) or real(*a))
    batch = _batch(7, 19, 3, 1, 60)
    with torch.inference_mode():
        bulk = decoder.run(batch, "bulk")
        assert len(calls) == 2  # one per layer: the bulk batch went packed
        priority = decoder.run(batch[:2], "priority")
        assert len(calls) == 2  # the priority lane stays padded
        for row, seq in enumerate(batch):
            alone = model(input_ids=torch.tensor([seq]), use_cache=False).last_hidden_state[0, -1]
            torch.testing.assert_close(bulk[row], alone, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(priority, bulk[:2], atol=1e-5, rtol=1e-5)


def test_packing_is_refused_with_a_reason_and_the_model_left_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    placement = choose_placement("cpu", "float32", "sdpa")
    sliding = random_qwen3_causal_lm("tiny").model.eval()
    sliding.config.layer_types = ["sliding_attention", "full_attention"]
    refused = LastTokenDecoder(sliding, placement, PAD, None, PACKING, 512)
    assert not refused.packing
    assert refused.info()["bulk_packing"] == "off (the model builds its own attention mask)"
    assert sliding.config._attn_implementation == "sdpa"

    # A packed forward that is wrong (here: every text attends to the whole row) fails the start-up probe.
    def unmasked(query, key, value, cu, max_length, scale):  # type: ignore[no-untyped-def]
        return F.scaled_dot_product_attention(query, key, value, scale=scale, enable_gqa=True).transpose(1, 2)

    monkeypatch.setattr(packed_module, "varlen_causal_attention", unmasked)
    model = random_qwen3_causal_lm("tiny").model.eval()
    wrong = LastTokenDecoder(model, placement, PAD, None, PACKING, 512)
    assert not wrong.packing
    assert wrong.info()["bulk_packing"].startswith("off (probe disagrees with the padded forward (cosine")
    assert model.config._attn_implementation == "sdpa"
    # A reranker's head reduces each text to one score; with a large shared offset a cosine over the scores
    # would pass the broken forward above, so the probe compares the hidden states before the head.
    scored = random_qwen3_causal_lm("tiny").model.eval()
    scorer = LastTokenDecoder(scored, placement, PAD, lambda h: h.sum(-1) * 0.01 + 50.0, PACKING, 512)
    assert not scorer.packing
    assert scorer.info()["bulk_packing"].startswith("off (probe disagrees")

    eager = random_qwen3_causal_lm("tiny").model.eval()
    eager.set_attn_implementation("eager")
    refused_eager = LastTokenDecoder(eager, choose_placement("cpu", "float32", "eager"), PAD, None, PACKING, 512)
    assert refused_eager.info()["bulk_packing"] == "off (the model runs eager attention; packing replaces SDPA only)"
    assert eager.config._attn_implementation == "eager"

    off = LastTokenDecoder(random_qwen3_causal_lm("tiny").model.eval(), placement, PAD, None,
                           AccelerationSettings(bulk_packing="off"), 512)
    assert off.info()["bulk_packing"] == "off"
    # The default, auto, packs only on CUDA with the varlen kernel: the CPU keeps padded batches.
    auto = LastTokenDecoder(random_qwen3_causal_lm("tiny").model.eval(), placement, PAD, None,
                            AccelerationSettings(), 512)
    assert not auto.packing
    assert auto.info()["bulk_packing"] == "off (auto: CUDA with FlashAttention-2's varlen kernel only)"
