"""The deployment examples in deploy/ are well-formed and agree with the code they deploy.

No Docker engine or Kubernetes cluster runs here, so the files are parsed and checked
structurally: the Dockerfile's instructions, the Kubernetes objects' required fields and
cross-references (Service <-> Job, ConfigMap <-> mount, ports <-> annotations), and every
environment variable against the names the package actually reads (imported from the
code, not copied). The Kubernetes scrape config goes through ``promtool check config``.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from scirs2_optim_jax import cli, config, monitor
from scirs2_optim_jax.parallel import distributed

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
JOB_YAML = ROOT / "deploy" / "k8s" / "train-job.yaml"
PROMETHEUS = ROOT / "deploy" / "prometheus"
DISTRIBUTED_VARS = {
    distributed.ENV_COORDINATOR_ADDRESS,
    distributed.ENV_NUM_PROCESSES,
    distributed.ENV_PROCESS_ID,
}
COMPLETION_INDEX = "metadata.annotations['batch.kubernetes.io/job-completion-index']"


# --- Dockerfile -----------------------------------------------------------------------


def _instructions(path: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    result = []
    for text in logical:
        keyword, _, arguments = text.partition(" ")
        result.append((keyword.upper(), arguments.strip()))
    return result


def _of(instructions: list[tuple[str, str]], keyword: str) -> list[str]:
    return [args for kw, args in instructions if kw == keyword]


def test_dockerfile_parses_into_known_instructions() -> None:
    known = {"FROM", "ENV", "ARG", "WORKDIR", "COPY", "RUN", "USER", "EXPOSE", "ENTRYPOINT"}
    known |= {"CMD", "LABEL", "HEALTHCHECK"}
    instructions = _instructions(DOCKERFILE)
    assert {kw for kw, _ in instructions} <= known
    assert instructions[0] == ("FROM", "python:3.11-slim")
    assert _of(instructions, "FROM") == ["python:3.11-slim"], "one stage, the slim base"


def test_dockerfile_installs_the_project_it_copies() -> None:
    instructions = _instructions(DOCKERFILE)
    workdir, copied, installs = None, set(), []
    for keyword, args in instructions:
        if keyword == "WORKDIR":
            workdir = args
        elif keyword == "COPY":
            *sources, dest = shlex.split(args)
            # Into the working directory: "./" keeps the names, "./name" names one source.
            assert not dest.startswith("/") and Path(dest).parent == Path(".")
            names = [Path(s).name for s in sources] if dest in ("./", ".") else [Path(dest).name]
            copied |= {(workdir, name) for name in names}
        elif keyword == "RUN" and "pip install" in args:
            installs.append((workdir, args))
    assert len(installs) == 1
    install_dir, command = installs[0]
    # `pip install ".[${EXTRAS}]"` from the directory holding the copied project.
    target = shlex.split(command.split("&&")[0])[-1]
    assert target == ".[${EXTRAS}]"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    needed = {"pyproject.toml", pyproject["readme"], "scirs2_optim_jax"}
    assert {(install_dir, name) for name in needed} <= copied
    # The image runs `scirs2-optim train`, so its default extras are what the CLI needs.
    extras = re.search(r'ARG EXTRAS="([^"]*)"', DOCKERFILE.read_text())
    assert extras and extras.group(1) == "cli", "EXTRAS defaults to the cli extra"
    assert "cli" in pyproject["optional-dependencies"]


def test_dockerfile_runs_the_command_as_a_non_root_user() -> None:
    instructions = _instructions(DOCKERFILE)
    users = _of(instructions, "USER")
    assert users, "no USER: the image would run as root"
    user, _, group = users[-1].partition(":")
    assert user.isdigit() and int(user) != 0 and group.isdigit() and int(group) != 0
    kinds = [kw for kw, _ in instructions]
    assert kinds.index("USER") > max(i for i, kw in enumerate(kinds) if kw == "RUN")
    (entrypoint,) = _of(instructions, "ENTRYPOINT")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert json.loads(entrypoint) == ["scirs2-optim"] and "scirs2-optim" in scripts
    (cmd,) = _of(instructions, "CMD")
    assert cli.build_parser().parse_args(json.loads(cmd)).command == "train"


def test_dockerignore_keeps_what_the_image_copies() -> None:
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("**")] == "**"
    for kept in ("!pyproject.toml", "!README.md", "!scirs2_optim_jax/**"):
        assert kept in ignore


# --- Kubernetes -----------------------------------------------------------------------


def _objects() -> dict[str, dict[str, Any]]:
    docs = [doc for doc in yaml.safe_load_all(JOB_YAML.read_text()) if doc is not None]
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(doc), doc
        assert doc["metadata"]["name"]
    by_kind = {doc["kind"]: doc for doc in docs}
    assert len(by_kind) == len(docs), "one object of each kind"
    assert set(by_kind) == {"Service", "ConfigMap", "PersistentVolumeClaim", "Job"}
    return by_kind


def _container(job: dict[str, Any]) -> dict[str, Any]:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return container


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    names = [item["name"] for item in container["env"]]
    assert len(names) == len(set(names)), "an environment variable is set twice"
    return {item["name"]: item for item in container["env"]}


def _ports(container: dict[str, Any]) -> dict[str, int]:
    return {port["name"]: port["containerPort"] for port in container["ports"]}


def test_job_is_an_indexed_job_with_one_process_per_pod() -> None:
    objects = _objects()
    job = objects["Job"]
    assert job["apiVersion"] == "batch/v1"
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] >= 2
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    env = _env(_container(job))
    assert int(env[distributed.ENV_NUM_PROCESSES]["value"]) == spec["completions"]


def test_headless_service_names_pod_zero_as_the_coordinator() -> None:
    objects = _objects()
    job, service = objects["Job"], objects["Service"]
    assert service["apiVersion"] == "v1" and service["spec"]["clusterIP"] == "None"
    template = job["spec"]["template"]
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    assert template["spec"]["subdomain"] == service["metadata"]["name"]

    env = _env(_container(job))
    host, _, port = env[distributed.ENV_COORDINATOR_ADDRESS]["value"].rpartition(":")
    # An Indexed Job's pod i has the hostname <job>-<i>; with the subdomain it resolves as
    # <job>-<i>.<service> in the namespace.
    assert host == f"{job['metadata']['name']}-0.{service['metadata']['name']}"
    container_ports = _ports(_container(job))
    assert int(port) == container_ports["coordinator"]
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert service_ports["coordinator"]["port"] == int(port)
    assert service_ports["metrics"]["targetPort"] == "metrics"


def test_env_sets_exactly_the_variables_init_distributed_reads() -> None:
    job = _objects()["Job"]
    env = _env(_container(job))
    assert {name for name in env if name in DISTRIBUTED_VARS} == DISTRIBUTED_VARS
    assert {n for n in env if n.startswith("SCIRS2_") and "PROCESS" in n} <= DISTRIBUTED_VARS
    process_id = env[distributed.ENV_PROCESS_ID]["valueFrom"]["fieldRef"]["fieldPath"]
    assert process_id == COMPLETION_INDEX

    # What each pod's process resolves, with the downward API filled in for every index.
    plain = {name: item["value"] for name, item in env.items() if "value" in item}
    completions = job["spec"]["completions"]
    for index in range(completions):
        environ = {**plain, distributed.ENV_PROCESS_ID: str(index)}
        resolved = distributed.resolve_distributed_config(environ=environ)
        assert (resolved.num_processes, resolved.process_id) == (completions, index)


def test_every_env_variable_is_one_the_package_reads() -> None:
    env = _env(_container(_objects()["Job"]))
    known = DISTRIBUTED_VARS | set(monitor.ENV_VARS.values()) | {config.CONFIG_FILE_VAR}
    unknown = [name for name in env if name not in known and not name.startswith(config.ENV_PREFIX)]
    assert not unknown, f"variables no code reads: {unknown}"
    # Config variables must name real fields: load_config refuses unknown ones.
    plain = {name: item.get("value", "") for name, item in env.items()}
    config.load_config(environ={k: v for k, v in plain.items() if k.startswith("SCIRS2_OPTIM")})
    token = env[monitor.ENV_VARS["token"]]["valueFrom"]["secretKeyRef"]
    assert token["optional"] is True, "the token Secret is optional"


def test_every_pod_serves_metrics_on_the_pod_network() -> None:
    """The train command reads the monitor's host variable; the Job sets it to 0.0.0.0."""
    env = _env(_container(_objects()["Job"]))
    assert monitor.ENV_VARS["host"] == cli.METRICS_HOST_VAR
    assert monitor.ENV_VARS["token"] == cli.METRICS_TOKEN_VAR
    assert env[cli.METRICS_HOST_VAR]["value"] == "0.0.0.0"  # noqa: S104
    assert (cli.COORDINATOR_VAR, cli.NUM_PROCESSES_VAR, cli.PROCESS_ID_VAR) == (
        distributed.ENV_COORDINATOR_ADDRESS,
        distributed.ENV_NUM_PROCESSES,
        distributed.ENV_PROCESS_ID,
    )


def test_container_args_config_and_volumes_fit_together(tmp_path: Path) -> None:
    objects = _objects()
    job, config_map = objects["Job"], objects["ConfigMap"]
    container = _container(job)
    assert "command" not in container, "the image's ENTRYPOINT (scirs2-optim) runs"
    args = cli.build_parser().parse_args(container["args"])
    assert args.command == "train" and args.resume and args.config

    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert set(mounts) == set(volumes)
    assert volumes["config"]["configMap"]["name"] == config_map["metadata"]["name"]
    claim = volumes["checkpoints"]["persistentVolumeClaim"]["claimName"]
    assert claim == objects["PersistentVolumeClaim"]["metadata"]["name"]
    assert "ReadWriteMany" in objects["PersistentVolumeClaim"]["spec"]["accessModes"]

    config_dir, filename = Path(args.config).parent, Path(args.config).name
    assert mounts["config"] == config_dir.as_posix() and filename in config_map["data"]
    run_file = tmp_path / filename
    run_file.write_text(config_map["data"][filename])
    run = config.load_config(run_file, environ={})  # raises on any invalid field
    assert run.checkpoint.directory.startswith(mounts["checkpoints"] + "/")
    annotations = job["spec"]["template"]["metadata"]["annotations"]
    assert run.monitoring.metrics_port == int(annotations["prometheus.io/port"])


def test_resources_and_security() -> None:
    job = _objects()["Job"]
    container = _container(job)
    resources = container["resources"]
    for key in ("cpu", "memory"):
        assert resources["limits"][key] == resources["requests"][key], key
    security = job["spec"]["template"]["spec"]["securityContext"]
    user = _of(_instructions(DOCKERFILE), "USER")[-1].partition(":")[0]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == int(user)
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_scrape_annotations_match_the_metrics_port() -> None:
    job = _objects()["Job"]
    annotations = job["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == _ports(_container(job))["metrics"]
    scrape = yaml.safe_load((PROMETHEUS / "prometheus-k8s.yml").read_text())
    (scrape_job,) = scrape["scrape_configs"]
    assert annotations["prometheus.io/path"] == scrape_job["metrics_path"] == "/metrics"
    exposed = {int(p) for p in _of(_instructions(DOCKERFILE), "EXPOSE")[0].split()}
    assert set(_ports(_container(job)).values()) <= exposed


# --- Prometheus on Kubernetes -----------------------------------------------------------


@pytest.mark.skipif(shutil.which("promtool") is None, reason="scripts/test-setup.sh installs it")
def test_k8s_scrape_config_passes_promtool_check(tmp_path: Path) -> None:
    for name in ("prometheus-k8s.yml", "alerts.yml"):
        shutil.copy(PROMETHEUS / name, tmp_path)
    (tmp_path / "scirs2-metrics-token").write_text("token\n")
    result = subprocess.run(
        ["promtool", "check", "config", "prometheus-k8s.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_k8s_scrape_config_finds_the_job_pods() -> None:
    objects = _objects()
    job, service = objects["Job"], objects["Service"]
    scrape = yaml.safe_load((PROMETHEUS / "prometheus-k8s.yml").read_text())
    (scrape_job,) = scrape["scrape_configs"]
    # alerts.yml selects on this job name.
    assert scrape_job["job_name"] == "scirs2-training"
    assert 'job="scirs2-training"' in (PROMETHEUS / "alerts.yml").read_text()
    assert scrape["rule_files"] == ["alerts.yml"]
    (sd,) = scrape_job["dns_sd_configs"]
    assert sd["type"] == "SRV"
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["metrics"]["port"] == _ports(_container(job))["metrics"]
    assert sd["names"] == [f"_metrics._tcp.{service['metadata']['name']}.default.svc.cluster.local"]

    # Prometheus relabel regexes are anchored at both ends (RE2; Python's syntax agrees here).
    relabel = {rule["target_label"]: rule["regex"] for rule in scrape_job["relabel_configs"]}
    for index in range(job["spec"]["completions"]):
        pod = f"{job['metadata']['name']}-{index}"
        target = f"{pod}.{service['metadata']['name']}.default.svc.cluster.local."
        assert re.fullmatch(relabel["pod"], target).group(1) == pod
        assert re.fullmatch(relabel["process_id"], target).group(1) == str(index)


def test_image_builds_the_kernels_ahead_of_time() -> None:
    """The image's first training step must not wait for the C++ compiler."""
    text = DOCKERFILE.read_text()
    assert re.search(r"SCIRS2_OPTIM_KERNEL_CACHE=/opt/scirs2-optim-jax/cache", text)
    assert "scirs2-optim kernels build" in text
    assert re.search(r"apt-get install -y --no-install-recommends g\+\+", text)
    assert "chown -R scirs2:scirs2 /opt/scirs2-optim-jax/cache" in text
