"""local/docker-compose.yml, checked without a Docker engine.

scripts/test.sh runs `docker-compose config` on it (Debian's docker-compose
parses and validates a file with no engine). This checks what a schema
cannot: that the file agrees with template.yaml (the emulators serve every
AWS service the template's data path uses), with the LocalStack that
scripts/emulators.sh runs on the host and the tests use (same release, same
settings), and with itself (each infra-* service waits for and calls the
emulator of its own profile, on the port that emulator listens on).
"""
import re
import tomllib
from pathlib import Path
from urllib.parse import urlparse

import yaml

from test_template import load_template

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "local" / "docker-compose.yml"
EMULATORS_SH = ROOT / "scripts" / "emulators.sh"

# The AWS services that serve each kind of resource in the data path.
SERVICE_OF_RESOURCE = {"AWS::DynamoDB::Table": "dynamodb", "AWS::SQS::Queue": "sqs"}

# The settings scripts/emulators.sh starts LocalStack with that mean the
# same in a container. The others (FILESYSTEM_ROOT, GATEWAY_LISTEN,
# LOCALSTACK_HOST, OVERRIDE_IN_DOCKER, TMPDIR) are about running on the host.
SHARED_LOCALSTACK_SETTINGS = [
    "SERVICES", "EAGER_SERVICE_LOADING", "DYNAMODB_IN_MEMORY", "SQS_ENDPOINT_STRATEGY",
    "DISABLE_EVENTS", "SKIP_SSL_CERT_DOWNLOAD", "DNS_ADDRESS",
]


def compose():
    with open(COMPOSE) as f:
        return yaml.safe_load(f)


def emulators_sh():
    return EMULATORS_SH.read_text()


def services_needed():
    resources = load_template()["Resources"].values()
    return {SERVICE_OF_RESOURCE[r["Type"]] for r in resources if r["Type"] in SERVICE_OF_RESOURCE}


def test_localstack_is_the_release_the_tests_run():
    version = re.search(r"^LOCALSTACK_VERSION=(\S+)", emulators_sh(), re.M).group(1)
    image = compose()["services"]["localstack"]["image"]
    assert image == f"localstack/localstack:{version}", (
        f"{COMPOSE.name} runs {image}, the tests run localstack-core {version} "
        "(scripts/emulators.sh): keep them the same release"
    )


def test_localstack_has_the_settings_the_tests_run_it_with():
    env = {k: str(v) for k, v in compose()["services"]["localstack"]["environment"].items()}
    script = emulators_sh()
    for name in SHARED_LOCALSTACK_SETTINGS:
        found = re.findall(rf"\b{name}=([^\s\\]+)", script)
        assert len(found) == 1, f"scripts/emulators.sh sets {name} {len(found)} times"
        assert env.get(name) == found[0], (
            f"{name}: {env.get(name)!r} in {COMPOSE.name}, {found[0]!r} in scripts/emulators.sh"
        )
    assert "LOCALSTACK_AUTH_TOKEN" not in env, "this LocalStack release needs no auth token"


def test_each_emulator_serves_what_the_template_uses():
    needed = services_needed()
    assert needed == {"dynamodb", "sqs"}, needed
    localstack = compose()["services"]["localstack"]["environment"]["SERVICES"]
    assert needed <= set(localstack.split(",")), localstack
    # moto serves every service; the launcher it runs must exist.
    moto = compose()["services"]["moto"]
    mounted = [v.split(":")[0] for v in moto["volumes"]]
    assert all((COMPOSE.parent / m).resolve().exists() for m in mounted), mounted
    script = moto["entrypoint"][1]
    assert any(v.split(":")[1] == script for v in moto["volumes"]), (script, moto["volumes"])


def test_ports_are_loopback_only():
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_infra_services_provision_their_own_emulator():
    services = compose()["services"]
    infra_package = tomllib.loads((ROOT / "infra" / "Cargo.toml").read_text())["package"]["name"]
    emulators = [name for name in services if not name.startswith("infra-")]
    assert sorted(emulators) == ["localstack", "moto"], emulators
    for emulator in emulators:
        infra = services[f"infra-{emulator}"]
        profiles = services[emulator]["profiles"]
        assert infra["profiles"] == profiles, (emulator, infra["profiles"], profiles)
        assert infra["depends_on"] == {emulator: {"condition": "service_healthy"}}
        assert "healthcheck" in services[emulator], emulator
        command = infra["command"]
        assert command[command.index("-p") + 1] == infra_package
        endpoint = urlparse(command[command.index("--endpoint-url") + 1])
        container_ports = {int(str(p).rsplit(":", 1)[1]) for p in services[emulator]["ports"]}
        assert endpoint.hostname == emulator and endpoint.port in container_ports, (
            f"infra-{emulator} calls {endpoint.geturl()}, {emulator} listens on {container_ports}"
        )
        assert command[command.index("--env-file") + 1] == "local/aws.env"
        # The repository is mounted where the command runs, so template.yaml
        # and local/aws.env are where pigeonhole-infra looks.
        assert f"..:{infra['working_dir']}" in infra["volumes"], infra["volumes"]
