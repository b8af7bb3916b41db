"""docker-compose.kafka.yml is a valid Compose file (the official JSON schema, vendored in schemas/compose/)
and deploys what the code expects: a 3-broker KRaft quorum, real `ledger` subcommands, real settings,
scalable processors, and Prometheus and Grafana wired to the repo's rules and dashboard.

Nothing here runs a container (the development machines have no engine): these are the checks that can
fail without one.
"""

from __future__ import annotations

import base64
import copy
import functools
import json
import os
import re
import shlex
from pathlib import Path, PurePosixPath
from typing import Any

import click
import jsonschema
import pytest
import yaml

from commands.main import cli
from runtime import stack
from runtime.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_PATH = ROOT / "docker-compose.kafka.yml"
SCHEMA_PATH = ROOT / "schemas" / "compose" / "compose-spec.json"
COMPOSE = yaml.safe_load(COMPOSE_PATH.read_text())  # PyYAML's safe loader resolves the `<<` merge keys
SCHEMA = json.loads(SCHEMA_PATH.read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
APP_IMAGE = "payout-ledger:latest"
APP = {name: service for name, service in SERVICES.items() if service.get("image") == APP_IMAGE}
KAFKA = {name: service for name, service in SERVICES.items() if str(service.get("image", "")).startswith("apache/kafka")}
SCALING = {"partitions", "standby", "replicas"}
# What the operator must provide, e.g. in .env beside the compose file (tests set harmless samples).
OPERATOR_ENV = {"POSTGRES_PASSWORD": "sample-only", "GRAFANA_ADMIN_PASSWORD": "sample-only",
                "LEDGER_API_TOKENS": '{"sample-token": "operator"}'}
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's interpolation: ${VAR}, ${VAR:-default}, ${VAR:?error} (raises KeyError), $$ -> $."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, operator, argument = match.group(1), match.group(2) or "", match.group(3) or ""
        value = env.get(name)
        if value is not None and (value != "" or ":" not in operator):  # ':' treats empty as unset
            return value
        if operator.endswith("?"):
            raise KeyError(f"{name}: {argument}")
        return argument if operator.endswith("-") else ""

    parts = value.split("$$")
    return "$".join(VARIABLE.sub(substitute, part) for part in parts)


def variables_used() -> dict[str, str]:
    """Every ${VAR...} in the file -> its operator (':?', ':-' or '')."""
    return {m.group(1): m.group(2) or "" for m in VARIABLE.finditer(COMPOSE_PATH.read_text())}


def ledger_invocations(service: dict[str, Any]) -> list[list[str]]:
    """The `ledger` argument lists a service runs: its command (entrypoint `ledger`), or each `ledger ...`
    inside an `sh -c` script."""
    entrypoint = service.get("entrypoint")
    command = service.get("command") or []
    if entrypoint is None:
        return [list(command)]
    assert entrypoint == ["sh", "-c"], f"entrypoint: only the image's `ledger` or sh -c, got {entrypoint!r}"
    script = interpolate(command[0], {})
    return [shlex.split(found) for found in re.findall(r"\bledger((?:\s+[\w.-]+)*)", script)]


def resolve(args: list[str]) -> click.Command:
    """The click command these arguments name, after parsing its options (raises click's usage errors)."""
    command: click.Command = cli
    context = click.Context(cli, info_name="ledger")
    remaining = list(args)
    path = ["ledger"]
    while isinstance(command, click.Group):
        assert remaining, f"{' '.join(path)}: a subcommand is needed"
        name = remaining.pop(0)
        found = command.get_command(context, name)
        assert found is not None, f"{' '.join(path)} has no subcommand {name!r}"
        path.append(name)
        command, context = found, click.Context(found, info_name=name, parent=context)
    command.make_context(" ".join(path), remaining, parent=context.parent)
    return command


def metrics_port(service: dict[str, Any]) -> int | None:
    """The port a service serves /metrics on: --metrics-port, or the API's own port."""
    for args in ledger_invocations(service):
        if "--metrics-port" in args:
            return int(args[args.index("--metrics-port") + 1])
        if args[:1] == ["api"]:
            return int(service["environment"]["LEDGER_API_PORT"])
    return None


def container_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host source of a service's short-syntax volumes."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        mounts[target] = source
    return mounts


def settings_of(service: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as a service's process would build them from its interpolated environment."""
    for name in [name for name in os.environ if name.upper().startswith("LEDGER_")]:
        monkeypatch.delenv(name)
    for name, value in interpolate(service["environment"], OPERATOR_ENV).items():
        monkeypatch.setenv(name, str(value))
    return Settings()


# --- the schema ------------------------------------------------------------------------------------

@functools.cache
def validator() -> jsonschema.protocols.Validator:
    cls = jsonschema.validators.validator_for(SCHEMA, default=None)
    assert cls is jsonschema.Draft201909Validator, f"$schema {SCHEMA.get('$schema')!r} names {cls}"
    cls.check_schema(SCHEMA)
    return cls(SCHEMA)


def schema_errors(document: dict[str, Any]) -> list[str]:
    return [f"{'.'.join(map(str, error.absolute_path))}: {error.message}" for error in validator().iter_errors(document)]


def test_the_vendored_schema_is_the_compose_specification() -> None:
    assert SCHEMA["title"] == "Compose Specification"
    assert set(SCHEMA["definitions"]["service"]["properties"]) >= {"build", "depends_on", "healthcheck", "profiles"}
    readme = (SCHEMA_PATH.parent / "README.md").read_text()
    assert "compose-spec/compose-spec" in readme and re.search(r"\b[0-9a-f]{40}\b", readme), "source and commit"


def test_the_compose_file_validates_against_the_compose_specification() -> None:
    assert schema_errors(COMPOSE) == []
    assert schema_errors(interpolate(COMPOSE, OPERATOR_ENV)) == []  # what compose validates, after interpolation


@pytest.mark.parametrize("break_it, where", [
    (lambda doc: doc["services"]["kafka-1"].__setitem__("ports", {"19092": 19092}), "services.kafka-1.ports"),
    (lambda doc: doc["services"]["init"]["depends_on"]["postgres"].__setitem__("condition", "service_ready"),
     "services.init.depends_on"),
    (lambda doc: doc["services"]["sequencer"].__setitem__("replica", 2), "services.sequencer"),
    (lambda doc: doc["services"].__setitem__("bad name!", {"image": "x"}), "services"),
])
def test_a_broken_copy_fails_validation_where_it_is_broken(break_it, where: str) -> None:  # noqa: ANN001
    broken = copy.deepcopy(COMPOSE)
    break_it(broken)
    errors = schema_errors(broken)
    assert errors, "the schema accepted a broken file"
    assert any(error.startswith(where) for error in errors), errors


# --- Kafka -----------------------------------------------------------------------------------------

def test_three_kraft_brokers_with_distinct_ids_form_a_three_voter_quorum() -> None:
    assert sorted(KAFKA) == ["kafka-1", "kafka-2", "kafka-3"]
    node_ids = {int(s["environment"]["KAFKA_NODE_ID"]): name for name, s in KAFKA.items()}
    assert sorted(node_ids) == [1, 2, 3]
    cluster_ids = {s["environment"]["CLUSTER_ID"] for s in KAFKA.values()}
    assert len(cluster_ids) == 1, "one cluster"
    (cluster_id,) = cluster_ids
    assert len(base64.urlsafe_b64decode(cluster_id + "=" * (-len(cluster_id) % 4))) == 16, \
        f"CLUSTER_ID {cluster_id!r}: Kafka needs a base64url UUID of 16 bytes"
    for name, service in KAFKA.items():
        env = service["environment"]
        assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}, name
        voters = dict(voter.split("@") for voter in env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(","))
        assert {int(k): v.split(":")[0] for k, v in voters.items()} == node_ids, f"{name}: voters = node ids"
        assert service["hostname"] == name
        listeners = dict(item.split("://") for item in env["KAFKA_LISTENERS"].split(","))
        assert {f":{v.split(':')[1]}" for v in voters.values()} == {listeners["CONTROLLER"]}, name
        advertised = dict(item.split("://") for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
        assert advertised["INTERNAL"] == f"{name}:9092"
        external_port = advertised["EXTERNAL"].split(":")[1]
        assert service["ports"] == [f"127.0.0.1:{external_port}:{external_port}"], f"{name}: EXTERNAL is published"
        assert env["KAFKA_LOG_DIRS"] in container_mounts(service), f"{name}: the log dirs are on the volume"


def test_replication_factor_three_and_min_insync_two() -> None:
    for name, service in KAFKA.items():
        env = service["environment"]
        assert int(env["KAFKA_DEFAULT_REPLICATION_FACTOR"]) == 3, name
        assert int(env["KAFKA_MIN_INSYNC_REPLICAS"]) == 2, name
        assert int(env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]) == 3, name
        assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false", name
        assert env["KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE"] == "false", name


def test_the_ledger_creates_its_topics_with_rf_three_and_min_isr_two(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_of(SERVICES["init"], monkeypatch)
    assert settings.replication_factor == 3
    specs = {spec.name: spec for spec in settings.topic_specs()}
    assert specs[settings.topic_events].config["min.insync.replicas"] == "2"
    assert specs[settings.topic_events].config["retention.ms"] == "-1"


def test_record_sizes_are_set_together_on_brokers_topics_and_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    from ledger.intake import OUTPUT_MESSAGE_MAX_BYTES, RECORD_READ_MAX_BYTES

    settings = settings_of(SERVICES["init"], monkeypatch)
    specs = {spec.name: spec for spec in settings.topic_specs()}
    for topic in (settings.topic_incoming, settings.topic_commands):
        assert int(specs[topic].config["max.message.bytes"]) == RECORD_READ_MAX_BYTES
    for topic in (settings.topic_events, settings.topic_dlq):  # a dead letter of the largest input fits whole
        assert int(specs[topic].config["max.message.bytes"]) == OUTPUT_MESSAGE_MAX_BYTES > RECORD_READ_MAX_BYTES
    for name in ("kafka-1", "kafka-2", "kafka-3"):
        env = SERVICES[name]["environment"]
        assert int(env["KAFKA_MESSAGE_MAX_BYTES"]) == OUTPUT_MESSAGE_MAX_BYTES, name
        assert int(env["KAFKA_REPLICA_FETCH_MAX_BYTES"]) >= OUTPUT_MESSAGE_MAX_BYTES, name


# --- the ledger's services -------------------------------------------------------------------------

def test_every_ledger_service_runs_a_real_subcommand_with_real_options() -> None:
    ran = set()
    for name, service in APP.items():
        invocations = ledger_invocations(service)
        assert invocations, f"{name} runs no ledger command"
        for args in invocations:
            try:
                command = resolve(args)
            except click.UsageError as exc:
                raise AssertionError(f"{name}: `ledger {' '.join(args)}`: {exc.format_message()}") from None
            ran.add(command.name)
    assert ran >= {"up", "sequencer", "aggregator", "tick", "transfers", "projector", "notifier", "watch", "serve", "api"}


def test_resolve_refuses_unknown_commands_and_options() -> None:
    with pytest.raises(AssertionError, match="no subcommand 'projections-run'"):
        resolve(["projections-run"])
    with pytest.raises(click.NoSuchOption):
        resolve(["aggregator", "--standby"])


def test_locked_processors_run_as_hot_standbys_or_partitioned_so_they_can_scale() -> None:
    for name, service in APP.items():
        for args in ledger_invocations(service):
            params = {param.name for param in resolve(args).params}
            label = service["labels"]["ledger.scaling"]
            if label == "standby":
                assert "--standby" in args, f"{name}: a second replica would exit with AlreadyRunning"
            elif "standby" in params:  # a locked processor that scales by partition leases
                assert label == "partitions" and "--partitioned" in args, f"{name}: a second replica would wait idle"
    labels = {name: service["labels"]["ledger.scaling"] for name, service in APP.items()}
    assert {name for name, label in labels.items() if label == "standby"} == set()
    assert {name for name, label in labels.items() if label == "partitions"} == {
        "aggregator", "sequencer", "notifier", "transfers", "projector"}


def test_scalable_services_have_no_container_name_and_no_fixed_host_port() -> None:
    assert all("container_name" not in service for service in SERVICES.values())
    for name, service in APP.items():
        assert service["labels"]["ledger.scaling"] in SCALING | {"one-shot"}, name
        for port in service.get("ports", []):
            published = str(port).rsplit(":", 1)[0].split(":")[-1]
            assert re.fullmatch(r"\d+-\d+", published), f"{name}: host port {port!r} would clash on --scale"


def test_every_ledger_variable_is_a_settings_field() -> None:
    fields = set(Settings.model_fields)
    names = set(variables_used())
    for service in SERVICES.values():
        names |= set(service.get("environment", {}))
    names |= set(re.findall(r"\b(LEDGER_[A-Z0-9_]+)=", (ROOT / "Dockerfile").read_text()))
    ledger_names = {name for name in names if name.startswith("LEDGER_")}
    assert {"LEDGER_KAFKA_BOOTSTRAP", "LEDGER_DATABASE_URL", "LEDGER_REPLICATION_FACTOR"} <= ledger_names
    unknown = sorted(name for name in ledger_names if name[len("LEDGER_"):].lower() not in fields)
    assert unknown == [], f"not fields of runtime/settings.py Settings: {unknown}"


def test_every_ledger_service_gets_valid_settings_pointing_at_the_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    postgres = SERVICES["postgres"]["environment"]
    partitions = set()
    for name, service in APP.items():
        settings = settings_of(service, monkeypatch)
        assert settings.kafka_bootstrap == ",".join(f"{broker}:9092" for broker in sorted(KAFKA)), name
        assert settings.database_url == (f"postgresql+psycopg2://{postgres['POSTGRES_USER']}:sample-only@postgres:5432/"
                                         f"{postgres['POSTGRES_DB']}"), name
        partitions.add((settings.partitions_incoming, settings.partitions_events, settings.partitions_commands))
    assert len(partitions) == 1, f"every process must agree on partition counts: {partitions}"
    api = settings_of(SERVICES["api"], monkeypatch)
    assert api.api_host == "0.0.0.0" and api.api_tokens == {"sample-token": "operator"}


def test_secrets_come_from_the_operator_never_from_the_file() -> None:
    secret = re.compile(r"PASSWORD|SECRET|API_KEY|TOKENS")
    for name, service in SERVICES.items():
        for key, value in service.get("environment", {}).items():
            if secret.search(key):
                assert VARIABLE.fullmatch(str(value)), f"{name}.{key}: must be ${{...}} interpolation, not a value"
    required = {name for name, operator in variables_used().items() if operator == ":?"}
    assert required == set(OPERATOR_ENV)
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        interpolate(COMPOSE, {k: v for k, v in OPERATOR_ENV.items() if k != "POSTGRES_PASSWORD"})


def test_init_prepares_the_stack_before_any_processor_starts() -> None:
    init = SERVICES["init"]
    assert ["up"] in ledger_invocations(init) and init["restart"] == "no"
    assert init["depends_on"] == {name: {"condition": "service_healthy"} for name in [*KAFKA, "postgres"]}
    for name in APP.keys() - {"init"}:
        assert SERVICES[name]["depends_on"] == {"init": {"condition": "service_completed_successfully"}}, name


def test_ledger_up_with_external_services_starts_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """What init relies on (runtime/stack.py): with both addresses set, `ledger up` only prepares them."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("ledger up started an embedded service although LEDGER_* named external ones")

    prepared = []
    monkeypatch.setattr(stack.embedded_broker, "start_broker", refuse)
    monkeypatch.setattr(stack.embedded_postgres, "start_postgres", refuse)
    monkeypatch.setattr(stack, "_prepare", lambda settings, state, report: prepared.append(state))
    settings = Settings(kafka_bootstrap="kafka-1:9092,kafka-2:9092,kafka-3:9092",
                        database_url="postgresql://ledger:x@postgres:5432/ledger", data_dir=tmp_path)
    state, _ = stack.up(settings)
    assert prepared == [state] and state.broker_pid is None and state.postgres_pid is None
    assert state.kafka_bootstrap == settings.kafka_bootstrap


def test_health_checks() -> None:
    assert "pg_isready" in " ".join(SERVICES["postgres"]["healthcheck"]["test"])
    api_port = SERVICES["api"]["environment"]["LEDGER_API_PORT"]
    assert f"127.0.0.1:{api_port}/health'" in " ".join(SERVICES["api"]["healthcheck"]["test"])
    for service in KAFKA.values():
        assert "kafka-broker-api-versions.sh" in " ".join(service["healthcheck"]["test"])


def test_the_image_is_built_from_the_repo_and_runs_ledger() -> None:
    assert APP and all(service["build"] == "." for service in APP.values())
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.M)
    assert re.search(r"^ENTRYPOINT \[\"ledger\"\]$", dockerfile, re.M)
    assert re.search(r"pip wheel --no-deps \. -w /wheels", dockerfile)  # built into a wheel, then installed:
    assert re.search(r"pip install /tmp/wheels/\*\.whl", dockerfile) and "pip install -e" not in dockerfile
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", ".ledger", "test-artifacts", ".git"} <= ignored


# --- Prometheus and Grafana ------------------------------------------------------------------------

def test_prometheus_loads_the_repo_rules_and_scrapes_every_replica_of_every_metrics_service() -> None:
    prometheus = SERVICES["prometheus"]
    mounts = container_mounts(prometheus)
    config_path = next(arg.split("=", 1)[1] for arg in prometheus["command"] if arg.startswith("--config.file="))
    assert mounts[config_path] == "./monitoring/prometheus/prometheus.yml"
    config = yaml.safe_load((ROOT / mounts[config_path]).read_text())
    assert [mounts[path] for path in config["rule_files"]] == ["./monitoring/prometheus/alerts.yml"]

    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    exposing = {name: metrics_port(service) for name, service in APP.items() if metrics_port(service)}
    assert set(exposing) >= {"sequencer", "aggregator", "transfers", "projector", "notifier", "alerts", "webhooks", "api"}
    for name, port in exposing.items():
        assert str(port) in [str(p) for p in SERVICES[name]["expose"]], f"{name}: expose its metrics port"
        assert name in jobs, f"Prometheus does not scrape {name}"
        assert jobs[name]["dns_sd_configs"] == [{"names": [name], "type": "A", "port": port}], \
            f"{name}: DNS A records of the service name (one per replica), port {port}"
    for job in jobs.values():
        for sd in job.get("dns_sd_configs", []):
            assert set(sd["names"]) <= set(SERVICES), f"job {job['job_name']} names no compose service"


def test_grafana_is_provisioned_with_prometheus_and_the_repo_dashboard() -> None:
    grafana = SERVICES["grafana"]
    mounts = container_mounts(grafana)
    provisioning = ROOT / mounts["/etc/grafana/provisioning"]
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert datasource["type"] == "prometheus" and datasource["isDefault"] is True
    assert datasource["url"] == "http://prometheus:9090" and "127.0.0.1:9090:9090" in SERVICES["prometheus"]["ports"]

    (provider,) = yaml.safe_load((provisioning / "dashboards" / "payout-ledger.yml").read_text())["providers"]
    assert provider["type"] == "file"
    dashboards = {target: source for target, source in mounts.items()
                  if PurePosixPath(target).parent == PurePosixPath(provider["options"]["path"])}
    assert list(dashboards.values()) == ["./monitoring/grafana/payout-ledger.json"]
    dashboard = json.loads((ROOT / "monitoring/grafana/payout-ledger.json").read_text())
    assert dashboard["uid"] == "payout-ledger"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == datasource["type"]
