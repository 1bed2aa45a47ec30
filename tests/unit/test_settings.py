"""Settings come from EMOSTREAM_* variables with documented defaults."""

from dataclasses import fields

import pytest

from emostream.settings import DEFAULT_EMOJI, ROOT, Settings, documentation


def test_defaults_run_everything_on_this_machine():
    settings = Settings.from_env(environ={})
    assert settings.kafka_bootstrap == "127.0.0.1:9092"
    assert settings.kafka_is_local
    assert settings.emoji_types == DEFAULT_EMOJI
    assert (settings.clusters, settings.subscribers_per_cluster) == (3, 3)
    assert settings.flush_interval_ms == 500


def test_variables_override_defaults_with_their_types():
    settings = Settings.from_env(
        environ={
            "EMOSTREAM_KAFKA_BOOTSTRAP": "kafka-1:9092,kafka-2:9092",
            "EMOSTREAM_CLUSTERS": "5",
            "EMOSTREAM_SCALE_UP_RATIO": "0.5",
            "EMOSTREAM_EMOJI_TYPES": "🔥, 👏",
            "EMOSTREAM_SPARK_UI": "false",
        }
    )
    assert settings.kafka_bootstrap == "kafka-1:9092,kafka-2:9092"
    assert not settings.kafka_is_local
    assert settings.clusters == 5
    assert settings.scale_up_ratio == 0.5
    assert settings.emoji_types == ("🔥", "👏")
    assert settings.spark_ui is False


def test_a_malformed_variable_stops_with_its_name():
    with pytest.raises(SystemExit, match="EMOSTREAM_CLUSTERS='three' is not a valid int"):
        Settings.from_env(environ={"EMOSTREAM_CLUSTERS": "three"})


def test_settings_survive_a_round_trip_through_the_environment():
    settings = Settings.from_env(environ={}, clusters=2, token_secret="s3cret", spark_ui=False)
    assert Settings.from_env(environ=settings.to_env()) == settings


def test_the_token_secret_is_never_in_the_repr():
    assert "s3cret" not in repr(Settings.from_env(environ={}, token_secret="s3cret"))


def test_the_readmes_configuration_table_is_the_settings_own():
    """The README documents every setting with its default, as `python -m emostream.settings` prints it."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    table = [line for line in section.splitlines() if line.startswith("|")]

    assert table == documentation().splitlines()
    assert len(table) == len(fields(Settings)) + 2
