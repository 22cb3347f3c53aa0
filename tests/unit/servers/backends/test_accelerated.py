"""The fast path's pieces that run anywhere: buckets, right padding, the layer switch, CPU behaviour."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from servers.backends.accelerated import (
    MAX_GRAPH_TOKENS,
    AccelerationSettings,
    LastTokenDecoder,
    _LayerForward,
    _ThreadLocalSwitch,
    acceleration_settled,
    decoder_layers,
    graph_buckets,
    mask_free_kwargs,
    right_padded,
)
from servers.backends.device import choose_placement
from testkit.random_models import random_qwen3_causal_lm


def test_buckets_are_powers_of_two_within_the_token_cap() -> None:
    buckets = graph_buckets(8, 512)
    assert (1, 32) in buckets
    assert (8, 128) in buckets
    assert (1, 512) in buckets
    assert (8, 512) not in buckets  # over MAX_GRAPH_TOKENS
    assert all(b * n <= MAX_GRAPH_TOKENS for b, n in buckets)
    assert buckets == sorted(buckets)  # the first fit is the smallest
    assert graph_buckets(1, 32) == [(1, 32)]


def test_right_padded_rows_and_last_indices() -> None:
    ids, last = right_padded([[5, 6, 7], [9]], pad_id=0, rows=4, length=5)
    assert ids.tolist() == [[5, 6, 7, 0, 0], [9, 0, 0, 0, 0], [0] * 5, [0] * 5]
    assert last.tolist() == [2, 0, 0, 0]


def test_layer_switch_falls_back_to_eager_and_is_thread_local() -> None:
    calls: list[str] = []

    def eager(x: int) -> int:
        calls.append("eager")
        return x

    def broken(x: int) -> int:
        raise RuntimeError("would recompile")

    wrapper = _LayerForward(eager, broken)
    assert wrapper(1) == 1  # off: eager
    wrapper.enabled.set()
    assert wrapper(2) == 2  # on but failing: eager, counted
    assert wrapper.failures == 1
    ok = _LayerForward(eager, lambda x: x * 10)
    with _ThreadLocalSwitch([ok]):
        assert ok(3) == 30  # on for this thread only
    assert ok(3) == 3  # back off after the block


def test_decoder_on_cpu_is_eager_and_equals_the_unpadded_forward() -> None:
    model = random_qwen3_causal_lm("tiny").model.eval()
    placement = choose_placement("cpu", "float32", "sdpa")
    decoder = LastTokenDecoder(model, placement, 151643, None, AccelerationSettings(), 512)
    assert decoder.info()["graphs"] == "off"
    assert decoder.info()["compile"] == "off"
    assert decoder.info()["compiled_graphs"] == "off"  # CPU: no Triton kernels, no capture
    assert len(decoder_layers(model)) == 2
    rng = np.random.default_rng(0)
    batch = [rng.integers(0, 150000, size=n).tolist() for n in (7, 19, 3)]
    with torch.inference_mode():
        pooled = decoder.run(batch, "bulk")
        for row, seq in enumerate(batch):
            alone = model(input_ids=torch.tensor([seq]), use_cache=False).last_hidden_state[0, -1]
            torch.testing.assert_close(pooled[row], alone, atol=1e-5, rtol=1e-5)
        decoder.run(batch[:1], "priority")
    assert decoder.info()["priority_paths"] == {"compiled_graph": 0, "graph": 0, "eager": 1}


def test_decoder_skips_mask_building_where_the_model_takes_a_mask_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    """No packed-sequence search (a device sync per forward on CUDA) and the same hidden states, bit for bit."""
    import transformers.masking_utils as masking

    model = random_qwen3_causal_lm("tiny").model.eval()
    placement = choose_placement("cpu", "float32", "sdpa")
    decoder = LastTokenDecoder(model, placement, 151643, None, AccelerationSettings(), 512)
    assert decoder.info()["mask_free"] is True
    searches: list[int] = []
    search = masking.find_packed_sequence_indices
    monkeypatch.setattr(masking, "find_packed_sequence_indices", lambda *a, **k: searches.append(1) or search(*a, **k))
    rng = np.random.default_rng(1)
    batch = [rng.integers(0, 150000, size=n).tolist() for n in (5, 12)]
    ids, last = right_padded(batch, 151643, 2, 12)
    with torch.inference_mode():
        pooled = decoder.run(batch, "bulk")
        assert searches == []  # the decoder's own forward never searched
        built = model(input_ids=ids, use_cache=False).last_hidden_state[torch.arange(2), last]
    assert searches == [1]  # the default call does: the probe above is live
    assert torch.equal(pooled, built)


def test_mask_mapping_is_refused_for_sliding_window_layers_and_for_models_that_build_their_own() -> None:
    model = random_qwen3_causal_lm("tiny").model.eval()
    model.config.layer_types = ["sliding_attention", "full_attention"]
    assert mask_free_kwargs(model, torch.device("cpu"), 0) == {}

    class OwnMask(torch.nn.Module):
        config = type("Config", (), {"layer_types": ["full_attention"]})()

        def forward(self, input_ids: torch.Tensor, use_cache: bool, attention_mask: object = None) -> object:
            if attention_mask is not None:
                raise AttributeError("'dict' object has no attribute 'ndim'")
            return type("Out", (), {"last_hidden_state": input_ids.float()})()

    assert mask_free_kwargs(OwnMask(), torch.device("cpu"), 0) == {}


def test_acceleration_settings_come_from_the_server_settings(tmp_path: Path) -> None:
    from servers.settings import ServerSettings

    settings = ServerSettings(model="x", cuda_graphs="off", compile="on", cuda_graph_max_batch=2,
                              cuda_graph_max_length=64, compile_cache_dir=str(tmp_path))
    acc = AccelerationSettings.from_settings(settings)
    assert (acc.cuda_graphs, acc.compile, acc.graph_max_batch, acc.graph_max_length) == ("off", "on", 2, 64)
    assert acc.compile_cache_dir == str(tmp_path)
    assert acc.compiled_graph_buckets == ((1, 64), (8, 64))  # the default, smallest first
    with pytest.raises(ValueError, match="cuda_graphs"):
        ServerSettings(model="x", cuda_graphs="sometimes")


def test_compiled_graph_buckets_parse_sort_and_switch_off() -> None:
    from servers.settings import ServerSettings, parse_graph_buckets

    assert parse_graph_buckets(("8x64", "1X32", "1x32")) == ((1, 32), (8, 64))
    assert parse_graph_buckets(("off",)) == parse_graph_buckets(()) == ()
    acc = AccelerationSettings.from_settings(ServerSettings(model="x", compiled_graph_buckets=("off",)))
    assert acc.compiled_graph_buckets == ()
    for bad in ("4*64", "0x32", "x64", "4x"):
        with pytest.raises(ValueError, match="BATCHxLENGTH"):
            ServerSettings(model="x", compiled_graph_buckets=(bad,))


def test_a_query_takes_the_smallest_compiled_graph_then_the_smallest_eager_graph() -> None:
    """The bucket choice of the priority lane (graphs themselves need CUDA: stand-ins mark which was picked)."""
    model = random_qwen3_causal_lm("tiny").model.eval()
    decoder = LastTokenDecoder(model, choose_placement("cpu", "float32", "sdpa"), 151643, None,
                               AccelerationSettings(), 512)
    # As on a GPU whose background work captured these (sorted the way __init__ sorts them).
    decoder._buckets = graph_buckets(8, 512)
    decoder._compiled_keys = [(1, 32), (1, 64), (4, 64), (8, 64)]
    eager = {key: object() for key in decoder._buckets}
    compiled = {key: object() for key in decoder._compiled_keys}
    decoder._graphs.update(eager)  # type: ignore[arg-type]

    def chosen(n: int, length: int) -> tuple[str, object] | None:
        found = decoder._graph_for(n, length)
        return None if found is None else (found[0], found[1])

    assert chosen(1, 20) == ("graph", eager[(1, 32)])  # compiled graphs not ready yet: the eager one
    decoder._compiled_graphs.update(compiled)  # type: ignore[arg-type]
    assert chosen(1, 20) == ("compiled_graph", compiled[(1, 32)])
    assert chosen(1, 53) == ("compiled_graph", compiled[(1, 64)])
    assert chosen(3, 40) == ("compiled_graph", compiled[(4, 64)])
    assert chosen(2, 64) == ("compiled_graph", compiled[(4, 64)])
    assert chosen(1, 100) == ("graph", eager[(1, 128)])  # longer than every compiled bucket
    assert chosen(8, 128) == ("graph", eager[(8, 128)])
    assert chosen(16, 32) is None  # larger than every bucket: the eager forward
    assert chosen(1, 600) is None


def test_a_stopped_decoder_starts_no_background_work() -> None:
    """Engine stop calls stop(): a decoder stopped before its start never spawns the capture/compile thread."""
    model = random_qwen3_causal_lm("tiny").model.eval()
    decoder = LastTokenDecoder(model, choose_placement("cpu", "float32", "sdpa"), 151643, None,
                               AccelerationSettings(), 512)
    decoder.graphs_enabled = True  # as on a GPU: start() would spawn the background thread
    decoder.stop()
    decoder.start()
    assert decoder._thread is None
    assert decoder.wait(0)


def test_acceleration_is_settled_only_when_no_part_is_still_being_built() -> None:
    assert acceleration_settled({"graphs": "ready", "compiled_graphs": "ready", "compile": "ready"})
    assert acceleration_settled({"graphs": "off (encoder)", "compile": "off (encoder)"})
    assert acceleration_settled({"graphs": "ready", "compiled_graphs": "failed", "compile": "stopped"})
    for busy in ("pending", "capturing", "compiling"):
        assert not acceleration_settled({"graphs": "ready", "compiled_graphs": busy, "compile": "pending"})
        assert not acceleration_settled({"graphs": busy})
