"""Settings: a TOML file, overridden by CAMPAIGN_<SECTION>__<KEY> environment variables.

Loaded once by the CLI and passed down; nothing reads settings from a global.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from campaign import assumptions

AccountType = Literal["trial", "production", "premium"]
CONFIG_ENV = "CAMPAIGN_CONFIG"


FOLDER_CONFIG = "campaign.toml"
"""A settings file a data folder may carry for the database inside it (`campaign demo`
leaves one in its folder)."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseSettings(Section):
    dsn: SecretStr = SecretStr("")
    """PostgreSQL DSN; empty starts an embedded PostgreSQL under data_dir."""
    data_dir: Path = Path(".campaign")
    embedded_database: str = Field(default="", pattern=r"^[A-Za-z0-9_-]{0,63}$")
    """The database inside the embedded PostgreSQL; empty: its default one. `campaign demo`
    keeps its data in one of its own, so that it never touches yours."""
    pool_min_size: int = Field(default=2, ge=1, le=100)
    pool_max_size: int = Field(default=10, ge=1, le=100)
    auto_migrate: bool = True
    """`campaign run` applies pending migrations at start (else it stops with one line)."""


class AculabSettings(Section):
    base_url: AnyHttpUrl = AnyHttpUrl("https://ws.aculabcloud.net")
    cloud_id: str = Field(default="1-2-0", min_length=1)
    username: str = Field(default="bob@example.com", min_length=1)
    api_access_key: SecretStr = SecretStr("")
    account_type: AccountType = "production"
    calls_per_second: float = Field(default=1.0, ge=0.001, le=100_000)
    service_passwords: dict[str, SecretStr] = Field(default_factory=dict)
    allow_plain_http: bool = False
    """Allow an http:// base_url off loopback (a simulator in docker-compose; never Aculab)."""

    @field_validator("base_url", mode="before")
    @classmethod
    def _no_credentials(cls, value: Any) -> Any:
        # A URL is printed, logged and sent in the clear far more readily than a
        # SecretStr; Aculab takes its credentials in the Authorization header anyway.
        # Checked before the URL is parsed: a password with a '/' would otherwise be
        # reported as a bad port, and an '@' has no other use in Aculab's base URL.
        if "@" in str(value):
            raise ValueError(
                "must not carry credentials (user:password@); set aculab.api_access_key "
                "and aculab.service_passwords instead"
            )
        return value

    def service_password(self, service: str) -> SecretStr | None:
        found = self.service_passwords.get(service)
        if found is not None:
            return found
        # Environment variable names are case-insensitive; accept a differently
        # cased service name rather than failing authentication.
        folded = {k.casefold(): v for k, v in self.service_passwords.items()}
        return folded.get(service.casefold())


class HttpSettings(Section):
    connect_timeout: float = Field(default=5.0, gt=0, le=300)
    read_timeout: float = Field(default=15.0, gt=0, le=600)
    """Seconds to wait for Aculab's answer once the request is sent."""
    max_connections: int = Field(default=20, ge=1, le=1000)
    user_agent: str = "aculab-campaign/0.1"


class DispatcherSettings(Section):
    namespace: str = Field(default="campaign", min_length=1, max_length=64)
    """Prefix of every unique_id; keep it different per installation sharing an account."""
    idempotency_window_seconds: float = Field(
        default=assumptions.DEFAULT_IDEMPOTENCY_WINDOW_SECONDS,
        gt=0,
        le=assumptions.UNIQUE_ID_RETENTION_SECONDS,
    )
    lease_seconds: float = Field(default=30.0, ge=2, le=3600)
    poll_interval: float = Field(default=2.0, gt=0, le=300)
    """Seconds between looks at the database when no NOTIFY arrives (batches due to be
    re-sent; every active campaign too while the LISTEN connection is down)."""
    recheck_all_seconds: float = Field(default=30.0, gt=0, le=3600)
    """While notifications are heard, every active campaign's next due time is read
    again this often (at least poll_interval), in case one was missed; in between,
    only campaigns a notification names are read."""
    max_in_flight_batches: int = Field(default=4, ge=1, le=256)
    retry_initial_delay: float = Field(default=1.0, gt=0, le=600)
    retry_max_delay: float = Field(default=60.0, gt=0, le=3600)
    progress_interval: float = Field(default=5.0, gt=0, le=3600)
    pacing_guard_seconds: float = Field(default=0.02, ge=0, le=1)
    """Widens each one-second pacing window so request jitter never doubles a second."""
    max_queue_seconds: float = Field(default=2.0, ge=0, le=3600)
    """Submit nothing for a service whose Aculab queue is deeper than this many seconds."""
    queue_check_interval: float = Field(default=1.0, gt=0, le=60)
    """Seconds a queue length read from Aculab is reused."""
    shutdown_grace_seconds: float = Field(default=8.0, gt=0, le=60)
    breaker_threshold: int = Field(default=5, ge=1, le=1000)
    """service_start failures in a row (no connection, timeout, 5xx) after which Aculab
    counts as unreachable: nothing new is claimed and one probe at a time is sent."""


class ListenerSettings(Section):
    enabled: bool = True
    """Serve the final-page endpoint, /healthz and /metrics."""
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    webhook_secret: SecretStr = SecretStr("")
    """Secret path segment of the final-page URL: /final/<secret>. Empty: push disabled."""
    max_body_bytes: int = Field(default=65536, ge=1024, le=10 * 1024 * 1024)

    @field_validator("webhook_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        secret = value.get_secret_value()
        if secret and (len(secret) < 16 or not secret.isascii() or "/" in secret):
            raise ValueError("must be at least 16 URL-safe characters (no '/')")
        return value


class PollerSettings(Section):
    enabled: bool = True
    """Poll application_status for calls whose outcome has not been pushed."""
    first_poll_delay: float = Field(default=60.0, ge=0, le=86400)
    """Seconds after a call is started before its first poll."""
    interval: float = Field(default=30.0, gt=0, le=86400)
    """Then every `interval` seconds, doubling after each poll up to max_interval."""
    max_interval: float = Field(default=600.0, gt=0, le=86400)
    give_up_after: float = Field(default=7200.0, gt=0, le=7 * 86400)
    """Seconds after the start with no outcome: the call is `unknown` and retried by policy."""
    concurrency: int = Field(default=8, ge=1, le=256)
    """application_status requests in flight per daemon."""
    batch: int = Field(default=200, ge=1, le=10000)
    """Calls taken per round."""


class LoggingSettings(Section):
    format: Literal["json", "console"] = "json"
    level: Literal["debug", "info", "warning", "error"] = "info"
    show_phone_numbers: bool = False
    """Log destinations in full (debugging only: they are personal data)."""


class DashboardSettings(Section):
    """`campaign dashboard`: the read-only web page and its JSON document."""

    host: str = "127.0.0.1"
    """Listening address (`--host` wins); anything but loopback needs a password."""
    port: int = Field(default=8090, ge=0, le=65535)
    password: SecretStr = SecretStr("")
    """HTTP Basic password (any user name); empty: no password, loopback only."""
    refresh_seconds: float = Field(default=5.0, ge=1, le=3600)
    """How often an open page fetches the document again."""

    @field_validator("password")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        # It guards personal data on a network, sent with every request.
        if value.get_secret_value() and len(value.get_secret_value()) < 12:
            raise ValueError("must be at least 12 characters")
        return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CAMPAIGN_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    database: DatabaseSettings = DatabaseSettings()
    aculab: AculabSettings = AculabSettings()
    http: HttpSettings = HttpSettings()
    dispatcher: DispatcherSettings = DispatcherSettings()
    listener: ListenerSettings = ListenerSettings()
    poller: PollerSettings = PollerSettings()
    logging: LoggingSettings = LoggingSettings()
    dashboard: DashboardSettings = DashboardSettings()

    @model_validator(mode="after")
    def _window_outlasts_a_request(self) -> Settings:
        # No send may begin later than one request's longest time before the end of
        # the idempotency window: with a window shorter than that, nothing is ever sent.
        longest = self.http.connect_timeout + self.http.read_timeout
        if self.dispatcher.idempotency_window_seconds <= longest:
            raise ValueError(
                f"dispatcher.idempotency_window_seconds "
                f"({self.dispatcher.idempotency_window_seconds:g}) must be longer than "
                f"http.connect_timeout + http.read_timeout ({longest:g}): no batch could "
                "ever be sent"
            )
        return self

    @field_validator("aculab")
    @classmethod
    def _loopback_http_only(cls, value: AculabSettings) -> AculabSettings:
        url = value.base_url
        loopback = url.host in {"127.0.0.1", "localhost", "::1", "[::1]"}
        if url.scheme == "http" and not (loopback or value.allow_plain_http):
            raise ValueError(
                "plain http:// is only allowed on loopback (or with allow_plain_http for a "
                "simulator); Aculab requires TLS"
            )
        return value


class ConfigError(Exception):
    """Settings could not be loaded; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _with_toml(path: Path | None) -> type[Settings]:
    class _FromFile(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if path is not None:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
            return tuple(sources)

    return _FromFile


def _location(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(settings)"


def load_settings(path: Path | str | None = None, **overrides: Any) -> Settings:
    """Settings from `path` (or $CAMPAIGN_CONFIG), the environment and `overrides`.

    Raises ConfigError with one readable line per problem.
    """
    if path is None and os.environ.get(CONFIG_ENV):
        path = os.environ[CONFIG_ENV]
    toml_path = Path(path) if path is not None else None
    if toml_path is not None:
        if not toml_path.is_file():
            raise ConfigError([f"config: file not found: {toml_path}"])
        try:
            with toml_path.open("rb") as fh:
                tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"config: {toml_path} is not valid TOML: {exc}"]) from None
        except OSError as exc:
            raise ConfigError([f"config: cannot read {toml_path}: {exc.strerror}"]) from None
    try:
        settings = _with_toml(toml_path)(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False, include_input=False):
            message = str(err["msg"]).removeprefix("Value error, ")
            if err["loc"]:
                problems.append(f"config: {_location(err['loc'])}: {message}")
            else:  # a rule across sections names its keys itself
                problems.append(f"config: {message}")
        raise ConfigError(problems) from None
    except ValueError as exc:  # e.g. an environment value that is not valid JSON
        raise ConfigError([f"config: {exc}"]) from None
    return settings
