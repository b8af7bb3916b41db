"""deploy/kubernetes/ is a set of valid Kubernetes objects (the official schemas, shipped by kubernetes-validate and
used offline) that deploys what docker-compose.kafka.yml deploys: the same processes with the same commands, the
same one-shot `init`, probes and resources on every container, credentials only from a Secret, a
PodDisruptionBudget per Deployment, and replica counts the processes can share partitions by.

There is no kubectl or cluster here: build() below is a small Kustomize in Python that knows only the fields these
kustomizations use, and refuses any other, so nothing is silently left out of what is validated.
"""

from __future__ import annotations

import copy
import os
import re
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

import kubernetes_validate
import pydantic
import pytest
import yaml
from pydantic_settings import SettingsError

from runtime.settings import Settings
from tests.unit.test_compose_file import APP, APP_IMAGE, SERVICES, ledger_invocations, resolve

# The Kubernetes versions the objects are validated against (kubernetes-validate 1.37 ships 1.25 to 1.37): an older
# release that clusters on extended support still run, and the newest shipped.
KUBERNETES_VERSIONS = ("1.33.0", "1.37.0")
ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"
BASE_DIR = DEPLOY / "base"
PRODUCTION_DIR = DEPLOY / "overlays" / "production"
SECRET_NAME = "ledger-secrets"
CONFIG_NAME = "ledger-config"
REQUIRED_SECRETS = {"LEDGER_DATABASE_URL", "LEDGER_API_TOKENS"}
PLACEHOLDER = "REPLACE_ME"
SECRET_NAMES = re.compile(r"PASSWORD|SECRET|API_KEY|TOKENS|DATABASE_URL")
WORKLOADS = {"Deployment", "Job", "CronJob"}
KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "resources", "components", "namespace", "images", "replicas", "patches"}
CLUSTER_SCOPED = {"Namespace"}

Object = dict[str, Any]


# --- a small Kustomize ------------------------------------------------------------------------------

def load_documents(path: Path) -> list[Object]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document is not None]


def strategic_merge(original: Any, patch: Any) -> Any:
    """Kubernetes' strategic merge, as far as these patches need it: maps merge key by key; lists of named items
    (containers, env, volumes) merge item by item on `name`; any other value or list is replaced."""
    if isinstance(original, dict) and isinstance(patch, dict):
        merged = copy.deepcopy(original)
        for key, value in patch.items():
            merged[key] = strategic_merge(original[key], value) if key in original else copy.deepcopy(value)
        return merged
    named = isinstance(original, list) and isinstance(patch, list) and all(
        isinstance(item, dict) and "name" in item for item in [*original, *patch])
    if named:
        patched = {item["name"]: item for item in patch}
        merged = [strategic_merge(item, patched.pop(item["name"])) if item["name"] in patched else copy.deepcopy(item)
                  for item in original]
        return merged + [copy.deepcopy(item) for item in patched.values()]
    return copy.deepcopy(patch)


def pod_spec(workload: Object) -> Object:
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"]


def one(objects: list[Object], kind: str, name: str) -> Object:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} objects, expected exactly one"
    return found[0]


def build(directory: Path) -> list[Object]:
    """`kustomize build directory`: resources (files, or directories with their own kustomization), components,
    then the patches (one strategic-merge patch per file, matched by kind and name), replicas, images, namespace."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KUSTOMIZATION_FIELDS
    assert not unknown, f"{directory}: build() does not implement {sorted(unknown)}: teach it before using them"
    objects: list[Object] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        objects += build(path) if path.is_dir() else load_documents(path)
    for entry in kustomization.get("components", []):
        path = (directory / entry).resolve()
        kind = yaml.safe_load((path / "kustomization.yaml").read_text())["kind"]
        assert kind == "Component", f"{entry}: a {kind}, not a Component"
        objects += build(path)
    for entry in kustomization.get("patches", []):
        assert set(entry) == {"path"}, f"{directory}: only strategic-merge patches from a file: {entry}"
        documents = load_documents(directory / entry["path"])
        assert len(documents) == 1, f"{entry['path']}: kustomize's `patches` takes one patch per file"
        (patch,) = documents
        target = one(objects, patch["kind"], patch["metadata"]["name"])
        objects[objects.index(target)] = strategic_merge(target, patch)
    for entry in kustomization.get("replicas", []):
        one(objects, "Deployment", entry["name"])["spec"]["replicas"] = entry["count"]
    for entry in kustomization.get("images", []):
        replaced = 0
        for workload in (o for o in objects if o["kind"] in WORKLOADS):
            for container in pod_spec(workload)["containers"]:
                if re.split(r"[:@]", container["image"])[0] == entry["name"]:
                    container["image"] = f"{entry.get('newName', entry['name'])}:{entry['newTag']}"
                    replaced += 1
        assert replaced, f"image {entry['name']} names no container's image"
    if "namespace" in kustomization:
        for o in objects:
            if o["kind"] not in CLUSTER_SCOPED:
                o["metadata"]["namespace"] = kustomization["namespace"]
    return objects


BASE = build(BASE_DIR)
PRODUCTION = build(PRODUCTION_DIR)


def of_kind(objects: list[Object], kind: str) -> dict[str, Object]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def containers(objects: list[Object]) -> dict[str, Object]:
    """Every ledger container by its workload's name (one container per workload here)."""
    found = {}
    for name, workload in ((o["metadata"]["name"], o) for o in objects if o["kind"] in WORKLOADS):
        (container,) = pod_spec(workload)["containers"]
        found[name] = container
    return found


def invocations(container: Object) -> list[list[str]]:
    """The `ledger` argument lists a container runs: its args (the image's entrypoint is `ledger`), or each
    `ledger ...` of an `sh -c` script. `$$` is `$` for Kubernetes as for compose, so compose's parser reads both."""
    return ledger_invocations({"entrypoint": container.get("command"), "command": container.get("args")})


# --- the check every Deployment must pass -----------------------------------------------------------

UNITS = {"m": Fraction(1, 1000), "": Fraction(1), "k": Fraction(10**3), "M": Fraction(10**6), "G": Fraction(10**9),
         "Ki": Fraction(2**10), "Mi": Fraction(2**20), "Gi": Fraction(2**30)}


def quantity(text: str | int) -> Fraction:
    """A Kubernetes quantity (250m, 1, 512Mi, 2Gi) as an exact number."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(m|k|M|G|Ki|Mi|Gi|)", str(text))
    assert match, f"not a quantity this test reads: {text!r}"
    return Fraction(match.group(1)) * UNITS[match.group(2)]


def deployment_problems(deployment: Object) -> list[str]:
    """What a Deployment lacks, one line each (empty when none): on every container, a liveness probe GET /health
    and a readiness probe GET /ready on a port the container declares, and cpu and memory requests and limits,
    no request above its limit."""
    problems = []
    name = deployment["metadata"]["name"]
    pod = pod_spec(deployment)
    if not pod.get("containers"):
        return [f"{name}: no containers"]
    for container in pod["containers"]:
        where = f"{name}/{container.get('name')}"
        declared = container.get("ports", [])
        ports = {p.get("name") for p in declared} | {p["containerPort"] for p in declared}
        for probe, path in (("livenessProbe", "/health"), ("readinessProbe", "/ready")):
            get = (container.get(probe) or {}).get("httpGet")
            if not get:
                problems.append(f"{where}: no {probe} (HTTP GET {path})")
            elif get.get("path") != path:
                problems.append(f"{where}: {probe} asks {get.get('path')!r}, not {path}")
            elif get.get("port") not in ports - {None}:
                problems.append(f"{where}: {probe} port {get.get('port')!r} is none of the container's ports")
        resources = container.get("resources") or {}
        for kind in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if resource not in (resources.get(kind) or {}):
                    problems.append(f"{where}: no {resource} {kind[:-1]}")
        for resource in ("cpu", "memory"):
            request, limit = (resources.get(kind, {}).get(resource) for kind in ("requests", "limits"))
            if request is not None and limit is not None and quantity(request) > quantity(limit):
                problems.append(f"{where}: {resource} request {request} above its limit {limit}")
    return problems


# --- the schemas ------------------------------------------------------------------------------------

def schema_errors(document: Object) -> list[str]:
    """kubernetes-validate, strict (unknown fields are errors, as `kubectl apply` makes them), offline, against each
    of KUBERNETES_VERSIONS."""
    where = f"{document.get('kind')}/{(document.get('metadata') or {}).get('name')}"
    errors = []
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{where}: {'.'.join(map(str, exc.path))}: {exc.message} (Kubernetes {version})")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(f"{where}: {exc.message}")
    return errors


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_schemas_are_the_chosen_kubernetes_versions(version: str) -> None:
    """kubernetes-validate validates against the newest schemas it ships that are not newer than the version asked
    for: it must ship this one, not fall back to an older one."""
    namespace = one(PRODUCTION, "Namespace", "payout-ledger")
    assert kubernetes_validate.validate(namespace, version, strict=True) == version.rsplit(".", 1)[0]


def test_every_object_of_base_and_production_validates() -> None:
    assert {o["kind"] for o in PRODUCTION} == {"Namespace", "ConfigMap", "Secret", "Job", "CronJob", "Deployment",
                                               "PodDisruptionBudget", "Service", "PersistentVolumeClaim"}
    errors = [error for document in [*BASE, *PRODUCTION] for error in schema_errors(document)]
    assert errors == []


@pytest.mark.parametrize("break_it, where", [
    (lambda d: d["spec"].__setitem__("replicas", "three"), "spec.replicas"),
    (lambda d: d["spec"].__setitem__("replica", 3), "spec"),  # a typo: strict refuses unknown fields
    (lambda d: pod_spec(d)["containers"][0]["livenessProbe"]["httpGet"].pop("port"), "spec.template.spec.containers"),
    (lambda d: pod_spec(d)["containers"][0]["resources"]["limits"].__setitem__("memory", ["1Gi"]),
     "spec.template.spec.containers"),
])
def test_a_broken_copy_fails_validation_where_it_is_broken(break_it: Callable[[Object], Any], where: str) -> None:
    broken = copy.deepcopy(one(PRODUCTION, "Deployment", "sequencer"))
    break_it(broken)
    errors = schema_errors(broken)
    assert errors and errors[0].startswith(f"Deployment/sequencer: {where}"), errors


def test_every_manifest_file_is_part_of_a_kustomization() -> None:
    listed = set()
    for kustomization in DEPLOY.rglob("kustomization.yaml"):
        listed.add(kustomization)
        content = yaml.safe_load(kustomization.read_text())
        paths = [*content.get("resources", []), *content.get("components", []),
                 *(p["path"] for p in content.get("patches", []))]
        listed |= {(kustomization.parent / path).resolve() for path in paths}
    files = {path.resolve() for path in DEPLOY.rglob("*.yaml")}
    assert files - listed == set(), "files no kustomization uses"


# --- probes and resources ---------------------------------------------------------------------------

def test_every_deployment_has_probes_and_requests_and_limits_on_every_container() -> None:
    deployments = of_kind(PRODUCTION, "Deployment")
    assert set(deployments) == {"sequencer", "aggregator", "transfers", "projector", "notifier", "alerts", "api",
                                "webhooks"}
    assert {name: deployment_problems(d) for name, d in deployments.items()} == {name: [] for name in deployments}
    assert all(deployment_problems(d) == [] for d in of_kind(BASE, "Deployment").values())


def _drop(*path: str) -> Callable[[Object], None]:
    def drop(container: Object) -> None:
        parent = container
        for key in path[:-1]:
            parent = parent[key]
        del parent[path[-1]]
    return drop


@pytest.mark.parametrize("strip, expected", [
    (_drop("livenessProbe"), "no livenessProbe"),
    (_drop("readinessProbe"), "no readinessProbe"),
    (_drop("resources", "limits"), "no cpu limit"),
    (_drop("resources", "limits", "memory"), "no memory limit"),
    (_drop("resources", "requests"), "no memory request"),
    (_drop("resources"), "no cpu request"),
    (lambda c: c["readinessProbe"]["httpGet"].__setitem__("path", "/health"), "readinessProbe asks '/health'"),
    (lambda c: c["livenessProbe"]["httpGet"].__setitem__("port", 9999), "livenessProbe port 9999"),
    (lambda c: c["resources"]["requests"].__setitem__("memory", "4Gi"), "memory request 4Gi above its limit"),
])
def test_a_deployment_stripped_of_probes_or_limits_fails_the_same_check(strip: Callable[[Object], None],
                                                                       expected: str) -> None:
    for name, deployment in of_kind(PRODUCTION, "Deployment").items():
        stripped = copy.deepcopy(deployment)
        strip(pod_spec(stripped)["containers"][0])
        problems = deployment_problems(stripped)
        assert any(expected in problem for problem in problems), f"{name}: {problems}"
    second = copy.deepcopy(one(PRODUCTION, "Deployment", "api"))
    pod_spec(second)["containers"].append({"name": "sidecar", "image": "busybox"})
    assert deployment_problems(second)[:2] == ["api/sidecar: no livenessProbe (HTTP GET /health)",
                                               "api/sidecar: no readinessProbe (HTTP GET /ready)"]


def served_port(container: Object) -> int:
    """The port a ledger container answers /health and /ready on: the webhook endpoint's --port, the API's
    LEDGER_API_PORT, or --metrics-port (every other processor)."""
    (args,) = invocations(container)
    env = {item["name"]: item.get("value") for item in container.get("env", [])}
    if args[:2] == ["webhooks", "serve"]:
        return int(args[args.index("--port") + 1])
    if args == ["api"]:
        return int(env["LEDGER_API_PORT"])
    return int(args[args.index("--metrics-port") + 1])


def test_probes_ask_the_port_the_process_serves_them_on() -> None:
    for name, deployment in of_kind(PRODUCTION, "Deployment").items():
        (container,) = pod_spec(deployment)["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for probe in ("livenessProbe", "readinessProbe"):
            assert ports[container[probe]["httpGet"]["port"]] == served_port(container), f"{name} {probe}"
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        metrics = [int(a[a.index("--metrics-port") + 1]) for a in invocations(container) if "--metrics-port" in a]
        assert int(annotations["prometheus.io/port"]) == (metrics or [served_port(container)])[0], name
        assert int(annotations["prometheus.io/port"]) in ports.values(), f"{name}: the scraped port is declared"


def test_one_shot_containers_have_requests_and_limits_too() -> None:
    for name, workload in {**of_kind(PRODUCTION, "Job"), **of_kind(PRODUCTION, "CronJob")}.items():
        stripped = {"metadata": {"name": name}, "spec": {"template": {"spec": pod_spec(workload)}}, "kind": "Job"}
        assert [p for p in deployment_problems(stripped) if "Probe" not in p] == [], name


# --- the same processes as docker-compose.kafka.yml -------------------------------------------------

def test_the_same_processes_with_the_same_commands_as_the_compose_file() -> None:
    """Every compose app service but `init` is a Deployment of the same name running the same `ledger` command;
    `clock` (a shell loop of `ledger tick` in compose) is a CronJob running `ledger tick` every minute."""
    compose = {name: ledger_invocations(service) for name, service in APP.items() if name != "init"}
    long_running = {name: invocations(c) for name, c in containers(PRODUCTION).items()
                    if name in of_kind(PRODUCTION, "Deployment") or name in of_kind(PRODUCTION, "CronJob")}
    assert long_running == compose
    assert of_kind(PRODUCTION, "CronJob")["clock"]["spec"]["schedule"] == "* * * * *"
    assert "sleep 60" in SERVICES["clock"]["command"][0], "compose's clock ticks once a minute too"
    for name, args_lists in long_running.items():
        for args in args_lists:
            resolve(args)  # a real subcommand with real options, or click's usage error


def test_the_init_job_runs_the_compose_init_command() -> None:
    (init,) = pod_spec(one(PRODUCTION, "Job", "ledger-init"))["containers"]
    assert init["command"] == SERVICES["init"]["entrypoint"] == ["sh", "-c"]
    assert init["args"] == SERVICES["init"]["command"]
    assert ["status"] in invocations(init) and invocations(init)[-1] == ["up"]
    assert pod_spec(one(PRODUCTION, "Job", "ledger-init"))["restartPolicy"] == "Never"


def test_every_ledger_container_runs_the_image_and_its_user() -> None:
    uid = int(re.search(r"useradd [^\n]*--uid (\d+)", (ROOT / "Dockerfile").read_text()).group(1))
    for name, container in containers(BASE).items():
        assert container["image"] == APP_IMAGE, name
    images = {container["image"] for container in containers(PRODUCTION).values()}
    assert len(images) == 1 and not images.pop().endswith(":latest"), "production runs one released tag"
    for workload in (o for o in PRODUCTION if o["kind"] in WORKLOADS):
        security = pod_spec(workload)["securityContext"]
        assert security["runAsUser"] == uid and security["runAsNonRoot"] is True, workload["metadata"]["name"]


def test_every_pod_meets_the_restricted_pod_security_standard_its_namespace_enforces() -> None:
    namespace = one(PRODUCTION, "Namespace", "payout-ledger")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for workload in (o for o in PRODUCTION if o["kind"] in WORKLOADS):
        name, pod = workload["metadata"]["name"], pod_spec(workload)
        assert workload["metadata"]["namespace"] == "payout-ledger", name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        for container in pod["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], name
        for volume in pod.get("volumes", []):
            assert set(volume) - {"name"} <= {"persistentVolumeClaim", "emptyDir", "configMap", "secret"}, name


# --- scaling ------------------------------------------------------------------------------------------

def test_every_deployment_has_a_disruption_budget_that_holds_at_any_replica_count() -> None:
    deployments = of_kind(PRODUCTION, "Deployment")
    budgets = of_kind(PRODUCTION, "PodDisruptionBudget")
    for name, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
        selecting = [b for b in budgets.values() if b["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert len(selecting) == 1, f"{name}: {len(selecting)} PodDisruptionBudgets select its pods"
        (budget,) = selecting
        # maxUnavailable, not minAvailable: a minAvailable equal to the replica count would block every drain
        assert budget["spec"] == {"maxUnavailable": 1, "selector": budget["spec"]["selector"]}, name
    for budget in budgets.values():
        selector = budget["spec"]["selector"]["matchLabels"].items()
        matched = [n for n, d in deployments.items() if selector <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert matched == [budget["metadata"]["name"]], f"PDB {budget['metadata']['name']} selects {matched}"


def test_production_replicas_share_the_partitions_evenly_and_the_aggregator_scales() -> None:
    config = one(PRODUCTION, "ConfigMap", CONFIG_NAME)["data"]
    partitions = int(config["LEDGER_PARTITIONS_EVENTS"])
    deployments = of_kind(PRODUCTION, "Deployment")
    by_partitions = {name for name, service in APP.items() if service["labels"]["ledger.scaling"] == "partitions"}
    assert by_partitions == {"sequencer", "aggregator", "transfers", "projector", "notifier"}
    for name in by_partitions:
        replicas = deployments[name]["spec"]["replicas"]
        assert replicas > 1 and partitions % replicas == 0, f"{name}: {replicas} replicas for {partitions} partitions"
    aggregator = deployments["aggregator"]
    assert aggregator["spec"].get("strategy", {}).get("type", "RollingUpdate") == "RollingUpdate"
    assert "--standby" not in invocations(pod_spec(aggregator)["containers"][0])[0]
    assert one(BASE, "Deployment", "aggregator")["spec"]["replicas"] == 1  # the base assumes no count either way
    for name, deployment in deployments.items():
        assert "hostPort" not in str(deployment) and "nodeName" not in pod_spec(deployment), name


def test_services_send_to_the_declared_port_of_one_deployment() -> None:
    deployments = of_kind(PRODUCTION, "Deployment")
    for name, service in of_kind(PRODUCTION, "Service").items():
        selected = [n for n, d in deployments.items()
                    if service["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert selected == [name], f"Service {name} selects {selected}"
        (container,) = pod_spec(deployments[name])["containers"]
        for port in service["spec"]["ports"]:
            named = {p["name"]: p["containerPort"] for p in container["ports"]}
            assert named[port["targetPort"]] == served_port(container), name


# --- settings and secrets -----------------------------------------------------------------------------

def environment(container: Object, secrets: dict[str, str], config: dict[str, str]) -> dict[str, str]:
    """The environment Kubernetes gives the container: envFrom the ConfigMap, then env (values and secretKeyRefs)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert set(source) == {"configMapRef"} and source["configMapRef"]["name"] == CONFIG_NAME
        env.update(config)
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            assert ref["name"] == SECRET_NAME, item
            env[item["name"]] = secrets[ref["key"]]
    return env


def settings_for(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in [name for name in os.environ if name.upper().startswith("LEDGER_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


def test_the_secret_holds_placeholders_only_and_every_key_is_used() -> None:
    secret = one(PRODUCTION, "Secret", SECRET_NAME)
    values = secret["stringData"]
    assert "data" not in secret
    assert {"LEDGER_DATABASE_URL", "LEDGER_STRIPE_API_KEY", "LEDGER_STRIPE_WEBHOOK_SECRET", "LEDGER_API_TOKENS",
            "LEDGER_KAFKA_SASL_PASSWORD"} <= set(values)
    assert {key for key, value in values.items() if value == PLACEHOLDER} == REQUIRED_SECRETS
    assert all(value == "" for key, value in values.items() if key not in REQUIRED_SECRETS), "optional ones are unset"
    referenced = {}
    for name, container in containers(PRODUCTION).items():
        for item in container.get("env", []):
            if "valueFrom" in item:
                ref = item["valueFrom"]["secretKeyRef"]
                assert ref["name"] == SECRET_NAME and ref["key"] in values, f"{name}: {ref}"
                assert item["name"] == ref["key"], f"{name}: {item['name']} from key {ref['key']}"
                if ref["key"] in REQUIRED_SECRETS:  # without it the pod must not start at all
                    assert not ref.get("optional", False), f"{name}: {ref}"
                referenced.setdefault(ref["key"], set()).add(name)
            else:
                assert not SECRET_NAMES.search(item["name"]), f"{name}.{item['name']}: a secret written as a value"
    assert set(referenced) == set(values), "keys nobody reads"
    assert referenced["LEDGER_STRIPE_API_KEY"] == {"transfers"} and referenced["LEDGER_API_TOKENS"] == {"api"}
    assert referenced["LEDGER_STRIPE_WEBHOOK_SECRET"] == {"webhooks"}
    assert referenced["LEDGER_KAFKA_SASL_PASSWORD"] == set(containers(PRODUCTION)), "every process talks to Kafka"
    assert not any(SECRET_NAMES.search(key) for key in one(PRODUCTION, "ConfigMap", CONFIG_NAME)["data"])


def test_a_process_given_the_placeholders_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = one(PRODUCTION, "Secret", SECRET_NAME)["stringData"]
    config = one(PRODUCTION, "ConfigMap", CONFIG_NAME)["data"]
    api = containers(PRODUCTION)["api"]
    with pytest.raises(pydantic.ValidationError, match="database_url"):
        settings_for(environment(containers(PRODUCTION)["sequencer"], secrets, config), monkeypatch)
    with pytest.raises(SettingsError, match="api_tokens"):  # not JSON: refused before anything else
        settings_for(environment(api, secrets, config), monkeypatch)
    with pytest.raises(pydantic.ValidationError, match="database_url"):
        settings_for(environment(api, {**secrets, "LEDGER_API_TOKENS": '{"t": "operator"}'}, config), monkeypatch)


def test_every_ledger_variable_is_a_settings_field() -> None:
    names = set(one(PRODUCTION, "ConfigMap", CONFIG_NAME)["data"])
    names |= set(one(PRODUCTION, "Secret", SECRET_NAME)["stringData"])
    names |= {item["name"] for c in containers(PRODUCTION).values() for item in c.get("env", [])}
    assert all(name.startswith("LEDGER_") for name in names)
    unknown = sorted(name for name in names if name[len("LEDGER_"):].lower() not in Settings.model_fields)
    assert unknown == [], f"not fields of runtime/settings.py Settings: {unknown}"


def test_the_shared_settings_are_the_compose_files(monkeypatch: pytest.MonkeyPatch) -> None:
    config = one(PRODUCTION, "ConfigMap", CONFIG_NAME)["data"]
    compose = {key: str(value) for key, value in SERVICES["sequencer"]["environment"].items()}
    assert set(config) == set(compose) - {"LEDGER_DATABASE_URL"}, "the same settings; the database URL is a secret"
    assert {k: v for k, v in config.items() if k != "LEDGER_KAFKA_BOOTSTRAP"} == \
        {k: v for k, v in compose.items() if k in config and k != "LEDGER_KAFKA_BOOTSTRAP"}

    samples = {key: "" for key in one(PRODUCTION, "Secret", SECRET_NAME)["stringData"]}
    samples |= {"LEDGER_DATABASE_URL": "postgresql+psycopg2://ledger:sample-only@postgres:5432/ledger",
                "LEDGER_API_TOKENS": '{"sample-token": "operator"}', "LEDGER_STRIPE_WEBHOOK_SECRET": "whsec_sample"}
    for name, container in containers(PRODUCTION).items():
        settings = settings_for(environment(container, samples, config), monkeypatch)
        assert settings.kafka_bootstrap == config["LEDGER_KAFKA_BOOTSTRAP"], name
        assert (settings.partitions_incoming, settings.partitions_events, settings.partitions_commands) == (6, 6, 6)
        assert settings.metrics_host == "0.0.0.0", f"{name}: probes and Prometheus reach the pod's address"
        if name != "webhooks":  # the webhook endpoint needs no database (commands/webhooks_command.py)
            assert settings.database_url == samples["LEDGER_DATABASE_URL"], name
    api = settings_for(environment(containers(PRODUCTION)["api"], samples, config), monkeypatch)
    assert api.api_host == "0.0.0.0" and api.api_port == served_port(containers(PRODUCTION)["api"])
    transfers = settings_for(environment(containers(PRODUCTION)["transfers"], samples, config), monkeypatch)
    (mount,) = containers(PRODUCTION)["transfers"]["volumeMounts"]
    assert {transfers.bank_outbox_dir.parent, transfers.bank_status_dir.parent} == {Path(mount["mountPath"])}
