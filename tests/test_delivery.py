"""The delivery pipeline, checked by the validators its users' tools apply.

GitHub workflows against GitHub's schema (check-jsonschema) and their shell steps
through ShellCheck; the Dockerfile through hadolint; the compose file against the
compose specification; the Kubernetes manifests through kubernetes-validate; the
built wheel installed into a fresh environment; and the image's entry point run
for real around a real agent and OpenCode server. Each validator is also shown a
broken file, so that a validator that passes everything cannot hide here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tomllib
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from conftest import ROOT, free_port, kill_everything_of, private_env, processes_of, wait_for

from nexus_ops.config import DEFAULT_OPENCODE_VERSION, Settings, load_settings

WORKFLOWS = ROOT / ".github" / "workflows"
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "k8s"
ENTRYPOINT = DEPLOY / "entrypoint.sh"
BINDER = ROOT / "binder"
# Measured with benchmarks/bench_memory.py (OpenCode 1.18.33, 10 sessions, 5 min):
# peaks of the server's process tree and of the agent, in MiB.
MEASURED_SERVER_MIB = 539
MEASURED_AGENT_MIB = 77


def project_version() -> str:
    with (ROOT / "pyproject.toml").open("rb") as handle:
        return str(tomllib.load(handle)["project"]["version"])


def tool(name: str) -> str:
    """A validator installed with the `test` extra: beside this Python, else on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return found


def run(*argv: str, cwd: Path = ROOT, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=300, check=False, **kwargs
    )


def assert_passes(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, f"{done.args}:\n{done.stdout}\n{done.stderr}"


def assert_fails(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode != 0, f"{done.args} accepted a broken file:\n{done.stdout}"


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def nexus_variables(env: dict[str, str]) -> dict[str, str]:
    return {k: str(v) for k, v in env.items() if k.startswith("NEXUS_")}


def assert_valid_settings(env: dict[str, str], tmp_path: Path) -> None:
    """Every NEXUS_* variable is a real setting with a valid value (load_settings agrees)."""
    variables = nexus_variables(env)
    assert variables, "no NEXUS_* settings found"
    load_settings(variables, directory=tmp_path)


# ---- GitHub workflows --------------------------------------------------------------


def workflow(name: str) -> dict[Any, Any]:
    loaded: dict[Any, Any] = yaml.safe_load((WORKFLOWS / name).read_text())
    return loaded


def run_steps(document: dict[Any, Any]) -> Iterator[tuple[str, str]]:
    for job_name, job in document["jobs"].items():
        for step in job.get("steps", []):
            if "run" in step:
                yield f"{job_name}: {step.get('name', step['run'][:40])}", step["run"]


def test_workflows_match_the_github_workflow_schema(tmp_path: Path) -> None:
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert {f.name for f in files} >= {"ci.yml", "security.yml", "release.yml"}
    check = tool("check-jsonschema")
    assert_passes(run(check, "--builtin-schema", "vendor.github-workflows", *map(str, files)))
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  x:\n    runs-on: ubuntu-24.04\n    stepz: []\n")
    assert_fails(run(check, "--builtin-schema", "vendor.github-workflows", str(broken)))


def test_workflow_shell_steps_pass_shellcheck(tmp_path: Path) -> None:
    shellcheck = tool("shellcheck")
    scripts = []
    for path in sorted(WORKFLOWS.glob("*.yml")):
        for index, (where, script) in enumerate(run_steps(workflow(path.name))):
            # GitHub substitutes ${{ ... }} before bash runs the step (bash -e).
            body = re.sub(r"\$\{\{.*?\}\}", "GHA_EXPRESSION", script)
            target = tmp_path / f"{path.stem}-{index}.sh"
            target.write_text(f"#!/bin/bash\n# {where}\nset -e\n{body}")
            scripts.append(str(target))
    assert len(scripts) >= 8
    assert_passes(run(shellcheck, "--severity=style", *scripts))
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/bin/bash\nrm -rf $DIR/\n")
    assert_fails(run(shellcheck, str(bad)))


def test_ci_workflow_runs_what_ci_run_runs() -> None:
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    ci = workflow("ci.yml")
    steps = ci["jobs"]["test"]["steps"]
    make = [s for s in steps if s.get("run", "").strip() == "make test"]
    assert make, "ci.yml must call `make test`, as .ci/run does"
    gate = make[0]["env"]["PYTEST_ARGS"]
    assert "--cov=nexus_ops" in gate
    assert re.search(r"--cov-fail-under=\d+", gate)
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test: check", makefile, re.M)
    assert "$(PYTEST_ARGS)" in makefile
    # Every marker runs in CI: the browser, OpenCode and Prometheus tests included.
    with (ROOT / "pyproject.toml").open("rb") as handle:
        addopts = tomllib.load(handle)["tool"]["pytest"]["ini_options"]["addopts"]
    pytest_lines = [line for line in makefile.splitlines() if "/pytest" in line]
    assert pytest_lines and not any(" -m " in f" {line} " for line in [*pytest_lines, addopts])


def test_security_workflow_audits_keeps_an_sbom_and_checks_licences() -> None:
    security = workflow("security.yml")
    scripts = "\n".join(script for _, script in run_steps(security))
    assert "pip-audit" in scripts
    assert "cyclonedx-py environment" in scripts
    assert "--allow-only" in scripts and "licence-allowlist.txt" in scripts
    uploads = [
        s["with"]["path"]
        for s in security["jobs"]["audit"]["steps"]
        if s.get("uses", "").startswith("actions/upload-artifact")
    ]
    assert "sbom.cdx.json" in uploads
    allowed = (ROOT / ".github" / "licence-allowlist.txt").read_text().split()
    assert "MIT" in allowed and not any("GPL" in name for name in allowed)


def test_release_workflow_builds_tests_the_wheel_and_publishes() -> None:
    release = workflow("release.yml")
    assert release[True]["push"]["tags"] == ["v*"]  # YAML 1.1 reads `on` as True
    jobs = release["jobs"]
    build = "\n".join(script for _, script in run_steps({"jobs": {"b": jobs["build"]}}))
    assert "python -m build" in build and "release-notes.sh" in build
    tested = "\n".join(script for _, script in run_steps({"jobs": {"t": jobs["test-wheel"]}}))
    assert 'pip install "${wheel}[test]"' in tested
    assert "/tmp/wheel-env/bin/pytest" in tested
    for publisher in ("github-release", "image", "pypi"):
        assert set(jobs[publisher]["needs"]) == {"build", "test-wheel"}


def test_release_notes_come_from_the_changelog(tmp_path: Path) -> None:
    script = ROOT / ".github" / "scripts" / "release-notes.sh"
    changelog = tmp_path / "CHANGELOG.md"
    changelog.write_text(
        "# Changelog\n\n## [Unreleased]\n\n## [1.2.0] - 2026-12-01\n\n### Added\n- one\n\n"
        "## [1.1.0] - 2026-11-01\n\n- older\n"
    )
    notes = run("sh", str(script), "1.2.0", str(changelog))
    assert_passes(notes)
    assert "- one" in notes.stdout and "older" not in notes.stdout
    missing = run("sh", str(script), "1.3.0", str(changelog))
    assert_fails(missing)
    assert "1.3.0" in missing.stderr
    real = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in real
    for version in re.findall(r"^## \[(\d[^\]]*)\]", real, re.M):
        assert re.fullmatch(r"\d+\.\d+\.\d+(?:[-.]?\w+)*", version), version


# ---- container image ---------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for op, args in dockerfile_instructions():
        if op == "ENV":
            env.update(re.findall(r'(\w+)=("[^"]*"|\S+)', args))
    return {k: v.strip('"') for k, v in env.items()}


def test_dockerfile_passes_hadolint(tmp_path: Path) -> None:
    hadolint = tool("hadolint")
    assert_passes(run(hadolint, str(DOCKERFILE)))
    broken = tmp_path / "Dockerfile"
    broken.write_text("FROM python\nRUN apt-get install curl\nUSER root\n")
    assert_fails(run(hadolint, str(broken)))


def test_dockerfile_builds_a_non_root_image_with_pinned_opencode() -> None:
    steps = dockerfile_instructions()
    stages = [args for op, args in steps if op == "FROM"]
    assert len(stages) >= 2, "multi-stage: build, then runtime"
    final = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM") :]
    user = [args for op, args in final if op == "USER"]
    assert user and user[-1].split(":")[0].isdigit() and user[-1].split(":")[0] != "0"
    args = dict(re.findall(r"(\w+)=(\S+)", " ".join(a for op, a in steps if op == "ARG")))
    assert args["OPENCODE_VERSION"] == DEFAULT_OPENCODE_VERSION
    assert args["VERSION"] == project_version()
    labels = " ".join(a for op, a in final if op == "LABEL")
    assert 'org.opencontainers.image.version="${VERSION}"' in labels
    assert "nexus-ops opencode install" in " ".join(a for op, a in steps if op == "RUN")
    exposed = {port for op, a in final if op == "EXPOSE" for port in a.split()}
    assert exposed == {"1420", "8866"}
    health = [a for op, a in final if op == "HEALTHCHECK"]
    assert health and "/health" in health[0] and "NEXUS_AGENT_PORT" in health[0]


def test_dockerfile_settings_are_valid_and_allow_the_remote_bind(tmp_path: Path) -> None:
    env = dockerfile_env()
    assert env["NEXUS_AGENT_HOST"] == env["NEXUS_CONSOLE_HOST"] == "0.0.0.0"
    settings = load_settings(nexus_variables(env), directory=tmp_path)
    assert settings.allow_remote and settings.env == "production"
    assert (settings.agent_port, settings.console_port) == (1420, 8866)


def test_dockerfile_copies_only_what_its_ignore_file_lets_in() -> None:
    lines = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*", "start from nothing, then let in what the image needs"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for op, args in dockerfile_instructions():
        if op != "COPY" or "--from=" in args:
            continue
        sources = [a for a in args.split() if not a.startswith("--")][:-1]
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            assert source.rstrip("/") in allowed, f"COPY {source}: excluded by the ignore file"


def test_entrypoint_passes_shellcheck() -> None:
    assert os.access(ENTRYPOINT, os.X_OK)
    assert_passes(run(tool("shellcheck"), str(ENTRYPOINT)))


def test_entrypoint_installs_tokens_with_private_modes(tmp_path: Path) -> None:
    handed = tmp_path / "run-secrets"
    handed.mkdir()
    (handed / "agent.token").write_text("token-from-a-secret\n")
    home = tmp_path / "nexus"
    env = {**os.environ, "NEXUS_HOME": str(home), "NXOPS_SECRETS_DIR": str(handed)}
    done = run("sh", str(ENTRYPOINT), "sh", "-c", 'echo "ran $0"', "cmd", env=env)
    assert_passes(done)
    assert done.stdout.strip() == "ran cmd"
    installed = home / "secrets" / "agent.token"
    assert installed.read_text() == "token-from-a-secret\n"
    assert stat.S_IMODE(installed.stat().st_mode) == 0o600
    assert stat.S_IMODE(installed.parent.stat().st_mode) == 0o700
    assert not (home / "secrets" / "console.token").exists()


def http_status(url: str, token: str | None = None) -> int:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=3) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def start_prometheus(config_dir: Path, agent_port: str, token_file: Path, port: int) -> Any:
    """Real Prometheus with deploy/prometheus as compose mounts it, aimed at this agent."""
    config = yaml.safe_load((config_dir / "prometheus.yml").read_text())
    job = config["scrape_configs"][0]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{agent_port}"]}]
    job["authorization"]["credentials_file"] = str(token_file)
    (config_dir / "prometheus.yml").write_text(yaml.safe_dump(config))
    argv = ["prometheus", f"--config.file={config_dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={config_dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}"]  # fmt: skip
    log = (config_dir / "prometheus.log").open("wb")
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def scraped_up(port: int) -> bool:
    url = f"http://127.0.0.1:{port}/api/v1/query?query=up%7Bjob%3D%22nexus-ops%22%7D"
    with urllib.request.urlopen(url, timeout=3) as response:
        result = json.loads(response.read())["data"]["result"]
    return bool(result) and result[0]["value"][1] == "1"


@pytest.mark.opencode
@pytest.mark.prometheus
def test_entrypoint_runs_the_agent_and_server_like_the_container(
    nexus_env: dict[str, str], tmp_path: Path
) -> None:
    """The image's command outside Docker: the token from a secret file serves the
    agent and Prometheus alike, the server starts with the agent and stops first."""
    handed = tmp_path / "run-secrets"
    handed.mkdir()
    token = "compose-secret-token-0123456789"
    (handed / "agent.token").write_text(token + "\n")
    bindir = str(Path(sys.executable).parent)
    env = {**nexus_env, "NXOPS_SECRETS_DIR": str(handed), "NXOPS_MANAGE_SERVER": "true",
           "PATH": bindir + os.pathsep + nexus_env["PATH"]}  # fmt: skip
    base = f"http://127.0.0.1:{env['NEXUS_AGENT_PORT']}"
    log = tmp_path / "container.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["sh", str(ENTRYPOINT), "nexus-ops", "agent", "run"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    shutil.copytree(DEPLOY / "prometheus", tmp_path / "prometheus")
    prom_port = free_port()
    prometheus = start_prometheus(
        tmp_path / "prometheus", env["NEXUS_AGENT_PORT"], handed / "agent.token", prom_port
    )
    try:
        wait_for(lambda: http_status(base + "/ready") == 200, timeout=90, what="/ready")
        with urllib.request.urlopen(base + "/health", timeout=3) as response:
            assert json.loads(response.read())["version"] == project_version()
        assert http_status(base + "/metrics") == 401
        assert http_status(base + "/metrics", token) == 200
        wait_for(lambda: scraped_up(prom_port), timeout=60, what="Prometheus scraping the agent")
        server_pid = json.loads(Path(env["NEXUS_HOME"], "opencode.pid").read_text())["pid"]
        server = psutil.Process(server_pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
        assert not server.is_running() or server.status() == psutil.STATUS_ZOMBIE
        assert "stopped" in log.read_text()
    finally:
        for started in (proc, prometheus):
            if started.poll() is None:
                os.killpg(started.pid, signal.SIGKILL)
                started.wait(timeout=10)
        kill_everything_of(env)


# ---- compose -----------------------------------------------------------------------


def test_compose_file_matches_the_compose_specification(tmp_path: Path) -> None:
    check = tool("check-jsonschema")
    assert_passes(run(check, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)))
    broken = tmp_path / "compose.yaml"
    broken.write_text("services:\n  a:\n    image: 3\n    portz: []\n")
    assert_fails(run(check, "--builtin-schema", "vendor.compose-spec", str(broken)))


def test_compose_config_when_docker_compose_is_installed() -> None:
    docker = shutil.which("docker")
    if docker is None or run(docker, "compose", "version").returncode != 0:
        pytest.skip("docker compose is not installed here; the schema test covers the file")
    env = {**os.environ, "COMPOSE_PROJECT_NAME": "nexus-ops-check"}
    assert_passes(run(docker, "compose", "-f", str(COMPOSE), "config", "--quiet", env=env))


def test_compose_runs_agent_console_and_prometheus(tmp_path: Path) -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert set(services) == {"nexus-ops", "console", "prometheus"}
    agent, console, prometheus = (services[n] for n in ("nexus-ops", "console", "prometheus"))
    assert agent["build"]["args"]["VERSION"] == project_version()
    assert console["network_mode"] == "service:nexus-ops"
    assert sorted(agent["ports"]) == ["127.0.0.1:1420:1420", "127.0.0.1:8866:8866"]
    home = agent["environment"]["NEXUS_HOME"]
    assert f"nexus-home:{home}" in agent["volumes"] and f"nexus-home:{home}" in console["volumes"]
    assert "opencode-data:/home/nexus/.local/share/opencode" in agent["volumes"]
    assert set(compose["volumes"]) >= {"nexus-home", "opencode-data", "prometheus-data"}
    for service in (agent, console):
        assert_valid_settings(service["environment"], tmp_path)
    # Published ports reach a container's own addresses, never its loopback.
    assert console["environment"]["NEXUS_CONSOLE_HOST"] == "0.0.0.0"
    assert console["environment"]["NEXUS_CONSOLE_PORT"] == "8866"
    # The agent's pids are not visible from the console's container: its URL is named.
    port = agent["environment"]["NEXUS_AGENT_PORT"]
    assert console["environment"]["NEXUS_AGENT_URL"] == f"http://127.0.0.1:{port}"
    assert "agent.token" in agent["secrets"] and "agent.token" in prometheus["secrets"]
    mounted = [v.split(":")[:2] for v in prometheus["volumes"] if v.startswith("./")]
    assert mounted == [["./prometheus", "/etc/prometheus"]]


def test_compose_prometheus_scrapes_the_agent_with_the_shared_secret() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    prometheus = compose["services"]["prometheus"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    job = jobs["nexus-ops"]
    port = compose["services"]["nexus-ops"]["environment"]["NEXUS_AGENT_PORT"]
    assert job["static_configs"][0]["targets"] == [f"nexus-ops:{port}"]
    secret = job["authorization"]["credentials_file"]
    assert secret == "/run/secrets/" + prometheus["secrets"][0]
    for rules in config.get("rule_files", []):
        assert (DEPLOY / "prometheus" / rules).is_file(), f"{rules} is not in deploy/prometheus"


# ---- Kubernetes --------------------------------------------------------------------


def k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    objects = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in load_yaml_documents(path):
            objects[(doc["kind"], doc["metadata"]["name"])] = doc
    return objects


def test_k8s_manifests_pass_kubernetes_validate(tmp_path: Path) -> None:
    validate = tool("kubernetes-validate")
    files = sorted(map(str, K8S.glob("*.yaml")))
    assert_passes(run(validate, "--strict", *files))
    broken = tmp_path / "deployment.yaml"
    broken.write_text((K8S / "deployment.yaml").read_text().replace("replicas: 1", "replicas: x"))
    assert_fails(run(validate, "--strict", str(broken)))


def test_k8s_deployment_probes_resources_and_single_replica() -> None:
    objects = k8s_objects()
    deployment = objects[("Deployment", "nexus-ops")]
    spec = deployment["spec"]
    assert spec["replicas"] == 1, "one replica per OpenCode data volume (SQLite)"
    assert spec["strategy"]["type"] == "Recreate"
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    agent = next(c for c in pod["containers"] if c["name"] == "agent")
    assert agent["livenessProbe"]["httpGet"] == {"path": "/health", "port": 1420}
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert claims and all(("PersistentVolumeClaim", c) in objects for c in claims)
    assert any(v.get("secret", {}).get("secretName") == "nexus-ops-tokens" for v in pod["volumes"])
    for container in pod["containers"]:
        for source in container.get("envFrom", []):
            assert ("ConfigMap", source["configMapRef"]["name"]) in objects


def k8s_pod() -> dict[str, Any]:
    return dict(k8s_objects()[("Deployment", "nexus-ops")]["spec"]["template"]["spec"])


def test_k8s_agent_readiness_is_the_agents_not_the_servers() -> None:
    # The Service keeps the agent's endpoint while the server is down: Prometheus
    # then scrapes opencode_server_status 0 and OpenCodeServerDown can fire.
    agent = next(c for c in k8s_pod()["containers"] if c["name"] == "agent")
    assert agent["readinessProbe"]["httpGet"] == {"path": "/health", "port": 1420}


def test_k8s_console_has_probes_that_start_no_kernel() -> None:
    console = next(c for c in k8s_pod()["containers"] if c["name"] == "console")
    for probe in ("livenessProbe", "readinessProbe"):
        assert console[probe]["tcpSocket"] == {"port": 8866}, probe


def test_k8s_containers_are_locked_down_with_writable_scratch_only() -> None:
    pod = k8s_pod()
    assert pod["automountServiceAccountToken"] is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    for container in pod["containers"]:
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        # Writable: the data volume, and an emptyDir for HOME and for /tmp each.
        assert "persistentVolumeClaim" in volumes[mounts["/data"]["name"]]
        for path in ("/home/nexus", "/tmp"):
            assert "emptyDir" in volumes[mounts[path]["name"]], (container["name"], path)
            assert not mounts[path].get("readOnly", False)


def test_k8s_network_policy_selects_the_pod_and_admits_its_ports() -> None:
    objects = k8s_objects()
    policy = objects[("NetworkPolicy", "nexus-ops")]["spec"]
    pod = objects[("Deployment", "nexus-ops")]["spec"]["template"]
    assert policy["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    ports = {p["port"] for rule in policy["ingress"] for p in rule["ports"]}
    assert ports == {1420, 8866}
    egress = {(p["port"], p["protocol"]) for rule in policy["egress"] for p in rule["ports"]}
    assert {(53, "UDP"), (443, "TCP")} <= egress


def mebibytes(quantity: str) -> float:
    units = {"Mi": 1.0, "Gi": 1024.0, "M": 1e6 / 2**20, "G": 1e9 / 2**20}
    unit = next(u for u in sorted(units, key=len, reverse=True) if quantity.endswith(u))
    return float(quantity.removesuffix(unit)) * units[unit]


def test_k8s_memory_fits_the_measured_server_with_ten_sessions() -> None:
    agent = next(c for c in k8s_pod()["containers"] if c["name"] == "agent")
    limit = mebibytes(agent["resources"]["limits"]["memory"])
    request = mebibytes(agent["resources"]["requests"]["memory"])
    settings = k8s_objects()[("ConfigMap", "nexus-ops-settings")]["data"]
    restart_at = int(settings["NEXUS_MEMORY_LIMIT_MB"])
    hard_at = int(settings["NEXUS_MEMORY_HARD_LIMIT_MB"])
    measured = MEASURED_SERVER_MIB + MEASURED_AGENT_MIB
    assert request >= measured, "the scheduler must find room for the measured use"
    # The agent restarts OpenCode above its measured use (once no session is busy),
    # and at once before the container's limit is reached with the agent beside it.
    assert MEASURED_SERVER_MIB < restart_at < hard_at < limit - MEASURED_AGENT_MIB
    assert limit >= measured


def test_k8s_settings_are_valid_production_settings(tmp_path: Path) -> None:
    config = k8s_objects()[("ConfigMap", "nexus-ops-settings")]["data"]
    assert config["NEXUS_ENV"] == "production"
    assert_valid_settings(config, tmp_path)
    # Both Services reach the pod's addresses: the agent and the console listen there.
    assert config["NEXUS_AGENT_HOST"] == config["NEXUS_CONSOLE_HOST"] == "0.0.0.0"
    assert config["NEXUS_CONSOLE_PORT"] == "8866"
    # The agent's pids are not visible from the console's container: its URL is named.
    pod = k8s_objects()[("Deployment", "nexus-ops")]["spec"]["template"]["spec"]
    console = next(c for c in pod["containers"] if c["name"] == "console")
    env = {e["name"]: e["value"] for e in console["env"]}
    assert env["NEXUS_AGENT_URL"] == f"http://127.0.0.1:{config['NEXUS_AGENT_PORT']}"
    assert_valid_settings({**config, **env}, tmp_path)


def test_k8s_services_reach_the_pod_ports() -> None:
    objects = k8s_objects()
    pod = objects[("Deployment", "nexus-ops")]["spec"]["template"]
    names = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    services = [o for (kind, _), o in objects.items() if kind == "Service"]
    assert {p["port"] for s in services for p in s["spec"]["ports"]} == {1420, 8866}
    for service in services:
        selector = service["spec"]["selector"].items()
        assert selector <= pod["metadata"]["labels"].items()
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= names


# ---- Binder ------------------------------------------------------------------------


def test_binder_environment_and_post_build(tmp_path: Path) -> None:
    environment = yaml.safe_load((BINDER / "environment.yml").read_text())
    deps = [d for d in environment["dependencies"] if isinstance(d, str)]
    with (ROOT / "pyproject.toml").open("rb") as handle:
        requires = tomllib.load(handle)["project"]["requires-python"]
    python = next(d for d in deps if d.startswith("python="))
    assert requires == ">=" + python.split("=")[1]
    assert any(d.startswith("nodejs") for d in deps), "npm installs OpenCode"
    post_build = BINDER / "postBuild"
    assert os.access(post_build, os.X_OK)
    assert_passes(run(tool("shellcheck"), str(post_build)))
    commands = post_build.read_text()
    assert "pip install --no-cache-dir ." in commands
    assert "nexus-ops opencode install" in commands


# What the notebook server that binder/start hands over to sees: the demo's agent.
BINDER_KERNEL_CHECK = """
from nexus_ops.client import AgentClient
from nexus_ops.config import load_settings
from nexus_ops.errors import NexusOpsError
import os, time
settings = load_settings()
print("home", settings.home, "demo", settings.demo, "given", os.environ["NEXUS_HOME"])
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    try:
        with AgentClient.from_settings(settings) as client:
            if client.status().state.value == "running":
                print("server running")
                break
    except NexusOpsError:
        pass
    time.sleep(0.5)
"""


@pytest.mark.opencode
def test_binder_start_runs_the_demo_for_the_notebook_server(
    tmp_path: Path, opencode_bin: Path
) -> None:
    start = BINDER / "start"
    assert os.access(start, os.X_OK)
    assert_passes(run(tool("shellcheck"), str(start)))
    env = private_env(tmp_path, {"NEXUS_OPENCODE_BIN": str(opencode_bin)})
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]
    demo_home = Path(env["HOME"]) / ".local" / "share" / "nexus-ops-demo"
    try:
        done = run(str(start), sys.executable, "-c", BINDER_KERNEL_CHECK, env=env)
        assert_passes(done)
        assert f"home {demo_home} demo True given {demo_home}" in done.stdout, done.stdout
        assert "server running" in done.stdout, (demo_home / "demo.log").read_text()
        demo = next(
            p for p in psutil.process_iter(["cmdline"])
            if "demo" in (p.info["cmdline"] or []) and str(demo_home) in p.info["cmdline"]
        )  # fmt: skip
        demo_env = {**env, "NEXUS_HOME": str(demo_home)}
        started = processes_of(demo_env)  # the agent and the server
        assert len(started) >= 2, started
        demo.send_signal(signal.SIGTERM)
        assert psutil.wait_procs([demo, *started], timeout=90)[1] == []
        assert "demo stopped" in (demo_home / "demo.log").read_text()
        assert processes_of(demo_env) == []
    finally:
        kill_everything_of({**env, "NEXUS_HOME": str(demo_home)})


def environment_sharing_dependencies(venv: Path) -> Path:
    """A fresh virtual environment that sees this one's dependencies but not nexus-ops.

    The dependencies come from this environment (fast, offline); a plain path line
    does not run this environment's .pth files, so an editable install of the
    source tree stays out of sight and nexus-ops must be installed into the new one.
    """
    assert_passes(run(sys.executable, "-m", "venv", "--without-pip", str(venv)))
    python = venv / "bin" / "python"
    where = "import sysconfig; print(sysconfig.get_path('purelib'))"
    purelib = Path(run(str(python), "-c", where).stdout.strip())
    shared = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (purelib / "_shared_dependencies.pth").write_text("\n".join(sorted(shared)) + "\n")
    return python


@pytest.mark.opencode
def test_binder_post_build_installs_nexus_ops_and_opencode(tmp_path: Path) -> None:
    """binder/postBuild run as repo2docker runs it: from the repository root, with the
    environment's python and pip first on PATH (conda's part is not run here)."""
    python = environment_sharing_dependencies(tmp_path / "binder-env")
    env = private_env(tmp_path / "user")
    env["PATH"] = str(python.parent) + os.pathsep + env["PATH"]
    # npm's cache of the machine's user: OpenCode is not downloaded again.
    env["NPM_CONFIG_CACHE"] = os.environ.get("NPM_CONFIG_CACHE", str(Path.home() / ".npm"))
    source = tmp_path / "repo"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".cache", "build", "dist", "*.egg-info", "test-artifacts",
        "__pycache__", ".*_cache"))  # fmt: skip
    done = run(str(BINDER / "postBuild"), cwd=source, env=env)
    assert_passes(done)
    located = run(str(python.parent / "nexus-ops"), "opencode", "path", cwd=tmp_path, env=env)
    assert_passes(located)
    assert located.stdout.startswith(env["NEXUS_HOME"]), located.stdout
    assert DEFAULT_OPENCODE_VERSION in located.stdout


# ---- the built package -------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """sdist, then the wheel built from that sdist, as the release workflow does."""
    out = tmp_path_factory.mktemp("dist")
    assert_passes(run(sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)))
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


def test_wheel_carries_the_version_and_the_typed_package(built: dict[str, Path]) -> None:
    version = project_version()
    assert built["wheel"].name.startswith(f"nexus_ops-{version}-")
    with zipfile.ZipFile(built["wheel"]) as wheel:
        names = wheel.namelist()
        metadata = wheel.read(f"nexus_ops-{version}.dist-info/METADATA").decode()
        scripts = wheel.read(f"nexus_ops-{version}.dist-info/entry_points.txt").decode()
    assert "nexus_ops/py.typed" in names and "nexus_ops/cli.py" in names
    assert not any(n.startswith("tests/") for n in names)
    assert f"\nVersion: {version}\n" in metadata
    assert "nexus-ops = nexus_ops.cli:main" in scripts


def test_installed_wheel_reports_its_version_and_checks_its_config(
    built: dict[str, Path], tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    python = environment_sharing_dependencies(venv)
    pip = (sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps")
    assert_passes(run(*pip, "--no-index", "--ignore-installed", str(built["wheel"])))
    env = private_env(tmp_path / "user")
    env.pop("PYTHONPATH", None)
    where = run(
        str(python), "-c", "import nexus_ops; print(nexus_ops.__file__)", cwd=tmp_path, env=env
    )
    assert_passes(where)
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout
    version = run(str(venv / "bin" / "nexus-ops"), "--version", cwd=tmp_path, env=env)
    assert_passes(version)
    assert version.stdout.strip() == f"nexus-ops {project_version()}"
    check = run(str(venv / "bin" / "nexus-ops"), "config", "check", cwd=tmp_path, env=env)
    assert_passes(check)
    env["NEXUS_PROBE_TIMEOUT"] = "abc"
    invalid = run(str(venv / "bin" / "nexus-ops"), "config", "check", cwd=tmp_path, env=env)
    assert invalid.returncode == 2 and "NEXUS_PROBE_TIMEOUT" in invalid.stderr


def test_installed_package_is_the_one_under_test() -> None:
    """In the release workflow the suite runs against the installed wheel, not the tree."""
    if os.environ.get("NXOPS_TEST_INSTALLED_WHEEL") != "1":
        pytest.skip("only when the suite runs against an installed wheel (release workflow)")
    import nexus_ops

    assert not Path(nexus_ops.__file__).resolve().is_relative_to(ROOT)


# ---- documentation -----------------------------------------------------------------


def test_deployment_guide_covers_each_way_and_is_linked() -> None:
    guide = (ROOT / "docs" / "deployment.md").read_text()
    for topic in (
        "make console",
        "deploy/Dockerfile",
        "deploy/compose.yaml",
        "deploy/k8s",
        "TLS",
        "Caddy",
        "nginx",
        "-L 8866:127.0.0.1:8866",
        "one replica",
    ):
        assert topic.lower() in guide.lower(), f"docs/deployment.md does not cover {topic!r}"
    known = set(Settings.model_fields)
    for variable in set(re.findall(r"\bNEXUS_[A-Z_]+\b", guide)):
        assert variable[len("NEXUS_") :].lower() in known, f"{variable} is not a setting"
    assert "docs/deployment.md" in (ROOT / "README.md").read_text()
