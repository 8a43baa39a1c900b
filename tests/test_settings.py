"""Settings: TOML file, environment overrides, one clear line per problem."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from campaign.settings import ConfigError, Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config.example.toml"


def _keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    out = set()
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out |= _keys(ann, f"{prefix}{name}.")
        else:
            out.add(f"{prefix}{name}")
    return out


def _toml_keys(data: dict[str, object], prefix: str = "") -> set[str]:
    out = set()
    for k, v in data.items():
        if isinstance(v, dict) and k != "service_passwords":
            out |= _toml_keys(v, f"{prefix}{k}.")
        else:
            out.add(f"{prefix}{k}")
    return out


def test_example_config_documents_every_setting_with_its_default() -> None:
    data = tomllib.loads(EXAMPLE.read_text())
    assert _toml_keys(data) == _keys(Settings)
    loaded = load_settings(EXAMPLE)
    assert loaded.model_dump(mode="json") == Settings().model_dump(mode="json")


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[aculab]\naccount_type = "trial"\ncalls_per_second = 3\n')
    monkeypatch.setenv("CAMPAIGN_ACULAB__CALLS_PER_SECOND", "7.5")
    monkeypatch.setenv("CAMPAIGN_ACULAB__SERVICE_PASSWORDS", '{"MyOutboundService": "pw"}')
    s = load_settings(cfg)
    assert s.aculab.account_type == "trial"
    assert s.aculab.calls_per_second == 7.5
    assert s.aculab.service_password("MyOutboundService") is not None


def test_config_path_can_come_from_campaign_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[dispatcher]\nnamespace = "acme"\n')
    monkeypatch.setenv("CAMPAIGN_CONFIG", str(cfg))
    assert load_settings().dispatcher.namespace == "acme"


def test_every_bad_value_is_reported_on_its_own_line_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[aculab]\naccount_type = "gold"\ncalls_per_second = 0\n'
        "[http]\nread_timeout = -1\n[dispatcher]\nsurprise = 1\n"
    )
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    problems = err.value.problems
    assert len(problems) == 4
    for key in ("aculab.account_type", "aculab.calls_per_second", "http.read_timeout"):
        assert any(key in p for p in problems), key
    assert any("dispatcher.surprise" in p for p in problems)


def test_missing_file_and_broken_toml_are_one_line_each(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml")
    broken = tmp_path / "b.toml"
    broken.write_text("[aculab\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(broken)


def test_secrets_never_show_in_the_settings_repr() -> None:
    s = load_settings(
        None,
        aculab={"api_access_key": "key-123", "service_passwords": {"S": "pw-456"}},
        database={"dsn": "postgresql://u:dbpw-789@h/db"},
    )
    text = repr(s) + str(s) + str(s.model_dump())
    for secret in ("key-123", "pw-456", "dbpw-789"):
        assert secret not in text


def test_cli_exits_2_with_one_line_per_problem_and_no_traceback(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[aculab]\naccount_type = "gold"\napi_access_key = "k-secret"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMPAIGN_")}
    env["CAMPAIGN_HTTP__CONNECT_TIMEOUT"] = "soon"
    proc = subprocess.run(
        [sys.executable, "-m", "campaign", "--config", str(cfg), "check-config"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2
    assert any("aculab.account_type" in line for line in lines)
    assert any("http.connect_timeout" in line for line in lines)
    assert "Traceback" not in proc.stderr and "k-secret" not in proc.stderr


def test_an_idempotency_window_no_request_fits_in_is_refused_naming_both_keys() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(
            None,
            dispatcher={"idempotency_window_seconds": 15},
            http={"connect_timeout": 5, "read_timeout": 15},
        )
    assert err.value.problems == [
        "config: dispatcher.idempotency_window_seconds (15) must be longer than "
        "http.connect_timeout + http.read_timeout (20): no batch could ever be sent"
    ]
    window = load_settings(
        None,
        dispatcher={"idempotency_window_seconds": 15},
        http={"connect_timeout": 1, "read_timeout": 2},
    ).dispatcher.idempotency_window_seconds
    assert window == 15
