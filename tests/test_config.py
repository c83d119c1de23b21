"""Config loading: valid files load; every kind of mistake names the file, the key path and the problem."""

from __future__ import annotations

import pytest

from gridwatch.config import ConfigError, load_config
from tests.helpers import DEMO_CITY, demo_config, write_config

BASE = {
    "version": 1,
    "city": {"geojson": str(DEMO_CITY)},
    "sensor_types": {
        "water_level": {
            "unit": "m",
            "category": "water_level",
            "rules": {"threshold": {"above": 2.5, "clear_below": 2.2}},
        }
    },
    "sensors": [
        {"id": "wl-1", "type": "water_level", "period_s": 60, "location": {"lon": 104.06, "lat": 30.66}}
    ],
}


def test_demo_config_loads_with_sensor_files():
    cfg = demo_config()
    assert len(cfg.sensors) == 558
    assert cfg.kafka.profile == "dev"
    assert cfg.kafka.effective_max_batch_size() == 1  # Tansu: one record per produce request
    assert cfg.city.geojson.exists()


def test_minimal_config_defaults(tmp_path):
    cfg = load_config(write_config(tmp_path, BASE))
    assert cfg.mqtt.topic_prefix == "gridwatch"
    assert cfg.kafka.profile == "production"
    assert cfg.kafka.effective_session_timeout_ms() == 30_000
    assert cfg.rules_for(cfg.sensors[0]).threshold.above == 2.5


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"mqtt": {"prot": 1}}, "mqtt.prot: unknown key"),
        ({"mqtt": {"port": 70000}}, "mqtt.port: Input should be less than or equal to 65535"),
        ({"version": 2}, "version: Input should be 1"),
        (
            {"sensors": [{"id": "x", "type": "nope", "period_s": 1, "location": {"lon": 1, "lat": 1}}]},
            "sensors[0] (id 'x').type: unknown sensor type 'nope'",
        ),
        (
            {
                "sensors": [
                    {"id": "bad id", "type": "water_level", "period_s": 1, "location": {"lon": 1, "lat": 1}}
                ]
            },
            "sensors.0.id: String should match pattern",
        ),
        (
            {
                "sensor_types": {
                    "water_level": {
                        "unit": "m",
                        "category": "water_level",
                        "rules": {"threshold": {"above": 2.5, "clear_below": 3}},
                    }
                }
            },
            "clear_below (3.0) must be <= above (2.5)",
        ),
        (
            {"sensor_types": {"water_level": {"unit": "m", "category": "flood"}}},
            "sensor_types.water_level.category: Input should be",
        ),
    ],
)
def test_errors_name_file_key_and_problem(tmp_path, patch, expected):
    data = {**BASE, **patch}
    path = write_config(tmp_path, data)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert str(path) in msg
    assert expected in msg


def test_duplicate_sensor_across_files(tmp_path):
    (tmp_path / "more.yaml").write_text(
        "- {id: wl-1, type: water_level, period_s: 60, location: {lon: 104.0, lat: 30.6}}\n"
    )
    path = write_config(tmp_path, {**BASE, "sensor_files": ["more.yaml"]})
    with pytest.raises(ConfigError, match="duplicate sensor id 'wl-1'"):
        load_config(path)


def test_bad_sensor_file_entry_names_that_file(tmp_path):
    (tmp_path / "more.yaml").write_text(
        "- {id: wl-2, type: water_level, period_s: -1, location: {lon: 1, lat: 1}}\n"
    )
    path = write_config(tmp_path, {**BASE, "sensor_files": ["more.yaml"]})
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert "more.yaml: [0].period_s: Input should be greater than 0" in str(e.value)


def test_not_yaml_and_missing_file(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("version: 1\ncity: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: not valid YAML \(line"):
        load_config(p)
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")


def test_secret_env_is_required_but_never_echoed(tmp_path, monkeypatch):
    from gridwatch.config import secret_from_env

    monkeypatch.setenv("GW_TEST_SECRET", "s3cr3t-value")
    assert secret_from_env("GW_TEST_SECRET", what="mqtt.password_env") == "s3cr3t-value"
    monkeypatch.delenv("GW_TEST_SECRET")
    with pytest.raises(ConfigError) as e:
        secret_from_env("GW_TEST_SECRET", what="mqtt.password_env")
    assert "GW_TEST_SECRET is not set" in str(e.value) and "s3cr3t" not in str(e.value)
