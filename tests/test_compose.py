"""docker-compose.yml and the Dockerfile, checked against the code (no Docker engine here).

The compose file is parsed and its `${VAR:-default}` interpolation resolved as Compose
would with an empty environment; then the services, their `campaign` commands (through
the real argument parser), the environment (through the real settings model), the
start-up order, the published ports and the image build are checked.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, get_origin

import pytest
import yaml
from pydantic import BaseModel

from campaign.cli import build_parser
from campaign.settings import CONFIG_ENV, Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"

SERVICES = {"postgres", "simulator", "migrate", "campaign"}
MONITORING = {"prometheus", "grafana", "dashboard"}
"""The services of the `monitoring` profile (off unless asked for)."""
ENGINE_SERVICES = ("simulator", "migrate", "campaign", "dashboard")
SIMULATOR_PORT = 8700

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's variable interpolation: $$, $VAR, ${VAR}, ${VAR:-d}, ${VAR-d}, ${VAR:?e}."""

    def one(m: re.Match[str]) -> str:
        if m["escaped"]:
            return "$"
        name = m["braced"] or m["bare"]
        value = env.get(name)
        op, arg = m["op"], m["arg"] or ""
        if op in (":-", "-"):
            unset = value is None or (op == ":-" and value == "")
            return arg if unset else str(value)
        if op in (":?", "?"):
            if value is None or (op == ":?" and value == ""):
                raise AssertionError(f"compose would stop: ${{{name}}} is required ({arg})")
            return value
        if op in (":+", "+"):
            return arg if value else ""
        if value is None:
            raise AssertionError(f"${{{name}}} has no default: `compose up` would warn and use ''")
        return value

    return _VARIABLE.sub(one, text)


def resolve(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [resolve(item, env) for item in node]
    if isinstance(node, dict):
        return {key: resolve(value, env) for key, value in node.items()}
    return node


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose file as Compose sees it when no variable is set (every default used)."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(raw, dict)
    resolved = resolve(raw, {})
    assert isinstance(resolved, dict)
    return resolved


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    found = compose["services"][name]
    assert isinstance(found, dict)
    return found


def command_of(compose: dict[str, Any], name: str) -> list[str]:
    command = service(compose, name)["command"]
    words = shlex.split(command) if isinstance(command, str) else command
    assert all(isinstance(w, str) for w in words), f"{name}: every word must be a string"
    return list(words)


def environment_of(compose: dict[str, Any], name: str) -> dict[str, str]:
    env = service(compose, name).get("environment", {})
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    for key, value in env.items():
        # Compose refuses booleans here, and YAML turns a bare true/10 into non-strings.
        assert isinstance(value, str), f"{name}: {key} must be quoted, got {value!r}"
    return dict(env)


def settings_from(env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key in [k for k in os.environ if k.upper().startswith("CAMPAIGN_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return load_settings(None)


def published(compose: dict[str, Any], name: str) -> dict[int, str]:
    """Container port -> host address it is published on."""
    out: dict[int, str] = {}
    for entry in service(compose, name).get("ports", []):
        if isinstance(entry, dict):
            out[int(entry["target"])] = str(entry.get("host_ip", "0.0.0.0"))
            continue
        spec = str(entry).split("/")[0]
        parts = spec.rsplit(":", 2)
        host_ip = parts[0] if len(parts) == 3 else "0.0.0.0"
        out[int(parts[-1])] = host_ip
    return out


def setting_paths(
    model: type[BaseModel], prefix: tuple[str, ...] = ()
) -> Iterator[tuple[str, ...]]:
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from setting_paths(annotation, (*prefix, name))
        else:
            yield (*prefix, name)


def names_a_setting(variable: str) -> bool:
    """CAMPAIGN_<SECTION>__<KEY> names an existing key (case-insensitive, like the settings)."""
    if variable.upper() == CONFIG_ENV:
        return True
    if not variable.upper().startswith("CAMPAIGN_"):
        return False
    parts = [p.lower() for p in variable[len("CAMPAIGN_") :].split("__")]
    model: type[BaseModel] = Settings
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
            continue
        # A leaf; one more part is allowed only into a dict (service_passwords__NAME).
        rest = parts[i + 1 :]
        return not rest or (get_origin(annotation) is dict and len(rest) == 1)
    return False  # a whole section is not a key


# --- services and commands ------------------------------------------------------------


def profiles(compose: dict[str, Any], name: str) -> list[str]:
    return list(service(compose, name).get("profiles", []))


def test_compose_defines_postgres_the_simulator_migrate_and_the_daemon(
    compose: dict[str, Any],
) -> None:
    # `docker compose up` starts these; the others wait for their profile.
    assert {name for name in compose["services"] if not profiles(compose, name)} == SERVICES


def test_the_monitoring_profile_adds_prometheus_grafana_and_the_dashboard(
    compose: dict[str, Any],
) -> None:
    extra = {name for name in compose["services"] if profiles(compose, name)}
    assert extra == MONITORING
    for name in MONITORING:
        assert profiles(compose, name) == ["monitoring"], name


def test_postgres_is_the_official_16_image_on_a_named_volume_with_a_pg_isready_healthcheck(
    compose: dict[str, Any],
) -> None:
    pg = service(compose, "postgres")
    assert pg["image"] in {"postgres:16", "docker.io/library/postgres:16"} or pg[
        "image"
    ].startswith("postgres:16-")
    volumes = pg["volumes"]
    assert any(
        isinstance(v, str)
        and v.split(":")[0] in compose["volumes"]
        and ":/var/lib/postgresql/data" in v
        for v in volumes
    ), volumes
    test = pg["healthcheck"]["test"]
    assert "pg_isready" in (test if isinstance(test, str) else " ".join(test))


def test_engine_services_are_built_from_this_repository(compose: dict[str, Any]) -> None:
    for name in ENGINE_SERVICES:
        build = service(compose, name)["build"]
        context = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = (
            "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        )
        assert (COMPOSE_FILE.parent / context / dockerfile).resolve() == DOCKERFILE


@pytest.mark.parametrize(
    ("name", "subcommand"),
    [
        ("simulator", "simulator"),
        ("migrate", "migrate"),
        ("campaign", "run"),
        ("dashboard", "dashboard"),
    ],
)
def test_each_engine_service_runs_a_documented_campaign_command(
    compose: dict[str, Any], name: str, subcommand: str
) -> None:
    words = command_of(compose, name)
    assert words[0] == "campaign"
    # The real parser: an unknown option or a malformed value exits with status 2.
    args = build_parser().parse_args(words[1:])
    assert args.command == subcommand


def test_the_simulator_listens_on_every_interface_of_its_container(
    compose: dict[str, Any],
) -> None:
    args = build_parser().parse_args(command_of(compose, "simulator")[1:])
    assert (args.host, args.port) == ("0.0.0.0", SIMULATOR_PORT)
    assert [name for name, _ in args.service] == ["MyOutboundService"]


# --- environment ------------------------------------------------------------------------


def test_every_campaign_variable_names_a_real_setting(compose: dict[str, Any]) -> None:
    known = ["CAMPAIGN_" + "__".join(p).upper() for p in setting_paths(Settings)]
    for name in ENGINE_SERVICES:
        for variable in environment_of(compose, name):
            if variable.upper().startswith("CAMPAIGN_"):
                assert names_a_setting(variable), f"{name}: {variable} is not one of {known}"


def test_the_setting_name_check_refuses_misspelt_variables() -> None:
    assert names_a_setting("CAMPAIGN_DATABASE__DSN")
    assert names_a_setting("campaign_listener__host")
    assert names_a_setting("CAMPAIGN_ACULAB__SERVICE_PASSWORDS__MyOutboundService")
    for wrong in (
        "CAMPAIGN_DATABASE_DSN",
        "CAMPAIGN_DATABASE__URL",
        "CAMPAIGN_ACULAB",
        "CAMPAIGN_ACULAB__BASE_URL__X",
        "CAMPAIGN_LISTENER__HOST__PORT",
        "CAMPAIGN_WEB__PORT",
    ):
        assert not names_a_setting(wrong), wrong


@pytest.mark.parametrize("name", ["migrate", "campaign"])
def test_the_daemon_environment_loads_as_valid_settings_for_the_compose_network(
    compose: dict[str, Any], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_from(environment_of(compose, name), monkeypatch)

    dsn = settings.database.dsn.get_secret_value()
    assert re.fullmatch(r"postgres(ql)?://campaign:[^@]+@postgres:5432/campaign", dsn), dsn
    assert settings.aculab.base_url.host == "simulator"
    assert settings.aculab.base_url.port == SIMULATOR_PORT
    assert settings.aculab.allow_plain_http
    assert settings.listener.host == "0.0.0.0"


def test_the_daemon_and_migrate_share_one_database(compose: dict[str, Any]) -> None:
    pg = environment_of(compose, "postgres")
    expected = (
        f"postgresql://{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@postgres:5432/"
        f"{pg['POSTGRES_DB']}"
    )
    for name in ("migrate", "campaign"):
        assert environment_of(compose, name)["CAMPAIGN_DATABASE__DSN"] == expected


def test_the_daemon_uses_the_credentials_the_simulator_accepts(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_from(environment_of(compose, "campaign"), monkeypatch)
    sim = build_parser().parse_args(command_of(compose, "simulator")[1:])
    aculab = settings.aculab

    assert (aculab.cloud_id, aculab.username) == (sim.cloud_id, sim.username)
    assert aculab.api_access_key.get_secret_value() == sim.api_key
    assert aculab.account_type == sim.account_type
    assert aculab.calls_per_second <= sim.cps
    for service_name, password in sim.service:
        configured = aculab.service_password(service_name)
        assert configured is not None and configured.get_secret_value() == password


def test_the_simulator_pushes_outcomes_to_the_daemons_final_page(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_from(environment_of(compose, "campaign"), monkeypatch)
    sim = build_parser().parse_args(command_of(compose, "simulator")[1:])
    secret = settings.listener.webhook_secret.get_secret_value()

    assert secret
    assert sim.final_page_url == f"http://campaign:{settings.listener.port}/final/{secret}"


# --- start-up order, restarts, ports ----------------------------------------------------------


def depends_on(compose: dict[str, Any], name: str) -> dict[str, str]:
    deps = service(compose, name).get("depends_on", {})
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {dep: spec.get("condition", "service_started") for dep, spec in deps.items()}


def test_migrate_waits_for_a_healthy_postgres(compose: dict[str, Any]) -> None:
    assert depends_on(compose, "migrate") == {"postgres": "service_healthy"}
    assert service(compose, "migrate").get("restart", "no") == "no"


def test_the_daemon_starts_after_migrate_succeeded_and_the_simulator_is_up(
    compose: dict[str, Any],
) -> None:
    deps = depends_on(compose, "campaign")
    assert deps["migrate"] == "service_completed_successfully"
    assert deps["simulator"] in {"service_started", "service_healthy"}
    for dep, condition in deps.items():
        if condition == "service_healthy":
            assert "healthcheck" in service(compose, dep), f"{dep} has no healthcheck"


def test_the_daemon_is_restarted_and_given_time_to_drain_on_stop(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = service(compose, "campaign")
    settings = settings_from(environment_of(compose, "campaign"), monkeypatch)
    grace = daemon.get("stop_grace_period", "10s")
    match = re.fullmatch(r"(\d+)s", grace)
    assert match is not None, grace

    assert daemon["restart"] in {"unless-stopped", "always", "on-failure"}
    assert int(match[1]) > settings.dispatcher.shutdown_grace_seconds


def test_the_simulator_and_the_daemons_listener_are_published(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_from(environment_of(compose, "campaign"), monkeypatch)

    assert SIMULATOR_PORT in published(compose, "simulator")
    assert settings.listener.port in published(compose, "campaign")


# --- the image ----------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions, one list per stage (each begins with its FROM)."""
    stages: list[list[tuple[str, str]]] = []
    for word, rest in dockerfile_instructions():
        if word == "FROM":
            stages.append([])
        stages[-1].append((word, rest))
    return stages


def copied_into(stage: list[tuple[str, str]]) -> set[str]:
    """The absolute paths a stage's COPY instructions write, from its WORKDIR."""
    workdir = PurePosixPath(next(rest for word, rest in stage if word == "WORKDIR"))
    return {
        (workdir / dest.rstrip("/")).as_posix() if not dest.startswith("/") else dest.rstrip("/")
        for word, rest in stage
        if word == "COPY"
        for *_, dest in [rest.split()]
    }


def test_the_image_builds_a_wheel_from_the_source_and_installs_only_that_wheel() -> None:
    build, final = dockerfile_stages()
    assert build[0] == ("FROM", "python:3.11-slim AS build")
    assert final[0] == ("FROM", "python:3.11-slim")

    # The build stage has the package and the migrations its symlink points at.
    workdir = PurePosixPath(next(rest for word, rest in build if word == "WORKDIR"))
    link = REPO / "campaign" / "migrations"
    assert link.is_symlink()
    target = os.path.normpath(workdir / "campaign" / os.readlink(link))
    copied = copied_into(build)
    assert {(workdir / "campaign").as_posix(), target} <= copied
    assert any(
        "pip wheel" in rest and rest.split()[-1] == "." for word, rest in build if word == "RUN"
    ), build

    # The image itself gets the wheel and nothing of the source.
    assert [rest for word, rest in final if word == "COPY"] == ["--from=build /wheels /wheels"]
    installs = [rest for word, rest in final if word == "RUN" and "pip install" in rest]
    assert installs and all(" -e " not in cmd for cmd in installs), installs
    assert any(re.search(r"pip install /wheels/\*\.whl", cmd) for cmd in installs), installs
    # The build fails if the installed package cannot find its migrations.
    assert any("load_migrations()" in cmd for cmd in installs), installs


def test_the_build_context_leaves_out_local_state_but_keeps_what_the_image_needs() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for excluded in (".git", ".venv", ".env"):
        assert excluded in patterns
    for needed in ("campaign", "migrations", "pyproject.toml", "README.md"):
        assert not any(Path(needed).match(p) or p.rstrip("/") == needed for p in patterns)


# --- the monitoring profile -----------------------------------------------------------------


def mounts(compose: dict[str, Any], name: str) -> dict[str, Path]:
    """Container path -> the repository file or folder bind-mounted there."""
    out = {}
    for entry in service(compose, name).get("volumes", []):
        source, _, rest = str(entry).partition(":")
        if source.startswith("."):
            out[rest.split(":")[0]] = (COMPOSE_FILE.parent / source).resolve()
    return out


def test_the_monitoring_images_come_from_their_registries_with_a_pinned_version(
    compose: dict[str, Any],
) -> None:
    for name, repository in (("prometheus", "prom/prometheus"), ("grafana", "grafana/grafana")):
        image, _, tag = service(compose, name)["image"].partition(":")
        assert image == repository
        assert re.fullmatch(r"v?\d+\.\d+\.\d+", tag), f"{name}: pin a version, not {tag!r}"


def test_prometheus_scrapes_the_daemons_listener(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    config_path = mounts(compose, "prometheus")["/etc/prometheus/prometheus.yml"]
    assert config_path == REPO / "deploy" / "prometheus" / "prometheus.yml"
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    assert "--config.file=/etc/prometheus/prometheus.yml" in command_of(compose, "prometheus")
    settings = settings_from(environment_of(compose, "campaign"), monkeypatch)

    (job,) = config["scrape_configs"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for static in job["static_configs"] for t in static["targets"]]
    assert targets == [f"campaign:{settings.listener.port}"]


def test_grafana_is_provisioned_with_prometheus_and_the_campaign_dashboard(
    compose: dict[str, Any],
) -> None:
    grafana = mounts(compose, "grafana")
    provisioning = grafana["/etc/grafana/provisioning"]
    dashboards = grafana["/var/lib/grafana/dashboards"]
    assert provisioning == REPO / "deploy" / "grafana" / "provisioning"
    assert dashboards == REPO / "deploy" / "grafana" / "dashboards"

    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert 9090 in published(compose, "prometheus")
    providers = yaml.safe_load((provisioning / "dashboards" / "campaign.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"

    board = json.loads((dashboards / "campaign.json").read_text(encoding="utf-8"))
    home = environment_of(compose, "grafana")["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == "/var/lib/grafana/dashboards/campaign.json"
    # Every query goes to the data source picked in the dashboard's `datasource` variable:
    # of Prometheus' type, so the provisioned (default) one here, any one elsewhere.
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == (
        "datasource",
        source["type"],
    )
    uses = [p["datasource"] for p in board["panels"]]
    uses += [t["datasource"] for p in board["panels"] for t in p["targets"]]
    uses += [v["datasource"] for v in board["templating"]["list"] if v["type"] == "query"]
    assert {(u["type"], u["uid"]) for u in uses} == {("prometheus", "${datasource}")}
    assert source["isDefault"]
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])


def test_the_dashboard_service_listens_beyond_its_container_with_a_password(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from campaign.dashboard import check_address

    args = build_parser().parse_args(command_of(compose, "dashboard")[1:])
    settings = settings_from(environment_of(compose, "dashboard"), monkeypatch)
    password = settings.dashboard.password.get_secret_value()

    assert args.host == "0.0.0.0" and password
    check_address(args.host, password)  # would refuse to start without one
    assert args.port in published(compose, "dashboard")
    # The same database and account budget as the daemon it watches.
    daemon = settings_from(environment_of(compose, "campaign"), monkeypatch)
    assert settings.database.dsn == daemon.database.dsn
    assert settings.aculab.calls_per_second == daemon.aculab.calls_per_second
