"""Server settings: defaults, RAG_SERVE_* environment variables, CLI flags (flag beats env), validation."""

from __future__ import annotations

from dataclasses import fields

import pytest

from servers.cli import build_parser, settings_from_args
from servers.kinds import KINDS
from servers.settings import SERVER_KINDS, ServerSettings, env_overrides, env_var_name, settings_from_env


def test_env_var_names() -> None:
    assert env_var_name("max_batch_tokens") == "RAG_SERVE_MAX_BATCH_TOKENS"


def test_env_values_are_parsed_to_field_types() -> None:
    environ = {
        "RAG_SERVE_MODEL": "/models/x",
        "RAG_SERVE_MAX_BATCH_TOKENS": "32768",
        "RAG_SERVE_MAX_WAIT_MS": "5.5",
        "RAG_SERVE_WARMUP": "false",
        "RAG_SERVE_ALLOW_URL_IMAGES": "yes",
        "RAG_SERVE_API_KEYS": "k1, k2",
        "RAG_SERVE_INSTRUCTION": "Find it",
        "UNRELATED": "1",
    }
    s = settings_from_env(environ)
    assert s.model == "/models/x"
    assert s.max_batch_tokens == 32768
    assert isinstance(s.max_batch_tokens, int)
    assert s.max_wait_ms == 5.5
    assert s.warmup is False
    assert s.allow_url_images is True
    assert s.api_keys == ("k1", "k2")
    assert s.instruction == "Find it"
    assert s.max_batch_size == 256  # untouched default


def test_singular_api_key_variable() -> None:
    assert settings_from_env({"RAG_SERVE_API_KEY": "secret"}, model="m").api_keys == ("secret",)
    both = {"RAG_SERVE_API_KEY": "one", "RAG_SERVE_API_KEYS": "two"}
    assert settings_from_env(both, model="m").api_keys == ("two",)


def test_bad_env_values_are_refused() -> None:
    with pytest.raises(ValueError, match="invalid literal for int"):
        env_overrides({"RAG_SERVE_MAX_BATCH_TOKENS": "lots"})
    with pytest.raises(ValueError, match="not a boolean"):
        env_overrides({"RAG_SERVE_WARMUP": "maybe"})


def test_explicit_values_beat_env_and_none_does_not() -> None:
    environ = {"RAG_SERVE_MODEL": "env-model", "RAG_SERVE_MAX_BATCH_TOKENS": "32768"}
    s = settings_from_env(environ, max_batch_tokens=9000, max_length=None)
    assert s.max_batch_tokens == 9000
    assert s.max_length == 8192
    assert s.model == "env-model"


def test_environment_is_read_when_settings_are_built_not_at_import(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_SERVE_MAX_BATCH_TOKENS", "20000")
    monkeypatch.setenv("RAG_SERVE_MODEL", "late")
    s = settings_from_env()
    assert (s.model, s.max_batch_tokens) == ("late", 20000)
    # A plain constructor is pure: no environment leaks into it.
    assert ServerSettings(model="m").max_batch_tokens == 16384


def test_cli_flag_beats_env() -> None:
    parser = build_parser()
    environ = {"RAG_SERVE_MAX_BATCH_TOKENS": "32768", "RAG_SERVE_MAX_BATCH_SIZE": "64", "RAG_SERVE_MODEL": "env"}
    args = parser.parse_args(["embed", "--model", "flag-model", "--max-batch-tokens", "12000", "--no-warmup"])
    s = settings_from_args("embed", args, environ)
    assert s.kind == "embed"
    assert s.model == "flag-model"
    assert s.max_batch_tokens == 12000  # flag wins
    assert s.max_batch_size == 64  # env applies where no flag is given
    assert s.warmup is False


def test_cli_api_keys_repeatable_and_comma_separated() -> None:
    args = build_parser().parse_args(["embed", "--model", "m", "--api-key", "a,b", "--api-key", "c"])
    assert settings_from_args("embed", args, {}).api_keys == ("a", "b", "c")


def test_every_setting_has_a_cli_flag_on_some_kind() -> None:
    parser = build_parser()
    parsed = [parser.parse_args([kind, "--model", "m"] if "model" in KINDS[kind].settings else [kind])
              for kind in SERVER_KINDS]
    for f in fields(ServerSettings):
        if f.name == "kind":
            continue
        assert any(hasattr(sub, f.name) for sub in parsed), f"no CLI flag for {f.name}"


@pytest.mark.parametrize(
    ("kind", "flag"),
    [("embed", "--image-root"), ("embed", "--max-pixels"), ("rerank", "--last-token-padding"),
     ("mm-embed", "--last-token-padding")],
)
def test_a_flag_the_kind_ignores_is_refused(kind: str, flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args([kind, "--model", "m", flag, "x"])
    assert "unrecognized arguments" in capsys.readouterr().err


def test_batching_defaults_have_one_owner() -> None:
    from servers.scheduler import BatchLimits

    limits, settings = BatchLimits(), ServerSettings(model="m")
    for name in ("max_batch_tokens", "max_batch_size", "max_wait_ms", "max_queue_items", "retry_after_s",
                 "bulk_workers"):
        assert getattr(limits, name) == getattr(settings, name), name


def test_validation_messages() -> None:
    with pytest.raises(ValueError, match="RAG_SERVE_MODEL"):
        ServerSettings()
    with pytest.raises(ValueError, match="max_batch_size must be >= 1"):
        ServerSettings(model="m", max_batch_size=0)
    with pytest.raises(ValueError, match="max_wait_ms"):
        ServerSettings(model="m", max_wait_ms=-1)


def test_cli_reports_invalid_settings_as_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    from servers.cli import main

    with pytest.raises(SystemExit) as info:
        main(["embed", "--model", "m", "--max-queue-items", "0"])
    assert info.value.code == 2
    assert "max_queue_items must be >= 1" in capsys.readouterr().err


def test_batch_budget_must_fit_one_full_length_input() -> None:
    from servers.engines.base import check_fits_batch

    check_fits_batch(512, ServerSettings(model="m", max_length=512, max_batch_tokens=512))
    with pytest.raises(ValueError, match=r"--max-batch-tokens \(100\) is below the max input length \(512\)"):
        check_fits_batch(512, ServerSettings(model="m", max_length=8192, max_batch_tokens=100))


def test_model_name_prefers_served_name() -> None:
    assert ServerSettings(model="/a/b").model_name == "/a/b"
    assert ServerSettings(model="/a/b", served_model_name="emb").model_name == "emb"


def test_pixel_range_defaults_to_the_recipe_and_parses_from_env_and_flags() -> None:
    s = settings_from_env({"RAG_SERVE_MODEL": "m"})
    assert (s.min_pixels, s.max_pixels) == (None, None)
    s = settings_from_env({"RAG_SERVE_MODEL": "m", "RAG_SERVE_MIN_PIXELS": "4096", "RAG_SERVE_MAX_PIXELS": ""})
    assert (s.min_pixels, s.max_pixels) == (4096, None)
    args = build_parser().parse_args(["mm-embed", "--model", "m", "--max-pixels", "65536"])
    assert settings_from_args("mm-embed", args, environ={}).max_pixels == 65536
    with pytest.raises(ValueError, match="min_pixels must be <= max_pixels"):
        ServerSettings(model="m", min_pixels=10, max_pixels=5)
    with pytest.raises(ValueError, match="max_pixels must be >= 1"):
        ServerSettings(model="m", max_pixels=0)


def test_compiled_graph_buckets_default_per_kind_and_from_env() -> None:
    """Query-sized compiled graphs for the embedders; none for rerank (its pairs are long, its requests bulk)."""
    from servers.settings import DEFAULT_COMPILED_GRAPH_BUCKETS

    assert settings_from_env({}, kind="embed", model="m").compiled_graph_buckets == DEFAULT_COMPILED_GRAPH_BUCKETS
    assert settings_from_env({}, kind="mm-embed", model="m").compiled_graph_buckets == DEFAULT_COMPILED_GRAPH_BUCKETS
    assert settings_from_env({}, kind="rerank", model="m").compiled_graph_buckets == ("off",)
    env = {"RAG_SERVE_COMPILED_GRAPH_BUCKETS": "1x128, 2x256"}
    assert settings_from_env(env, kind="rerank", model="m").compiled_graph_buckets == ("1x128", "2x256")
