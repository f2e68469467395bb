"""The tools people use today for this job, driven with the same containers as ours.

Every tool gets its input from the product's own render of one topology (``ContainerSpec``s), so
all of them run the same images with the same command lines, mounts, host networking and restart
policy on the same engines. What differs is only how each gets there:

- ``shell``: the blog's recipe, a shell script of ``docker -H <host> run`` lines, one host after
  the other. Not idempotent: running it again fails on the names, so it has no no-op figure; its
  change script is ``docker rm -f`` + ``docker run`` on the hosts whose container changes.
- ``compose``: docker-compose 1.29, one project per host, ``up -d`` on each host in turn.
- ``ansible``: ``ansible-playbook`` with community.docker's ``docker_container``, one inventory
  host per engine (local connection, ``docker_host`` per host), ``forks`` as given.
- ``ours``: ``consul-reconciler apply`` (one process, one pass, hosts in parallel).

Each ``Tool`` writes its files under its own folder and returns the command it runs; the caller
times the command. The scripts stay on disk so anyone can read what was timed.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import yaml

from desired_state.spec import ContainerSpec, DesiredFleet

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


class PeerError(RuntimeError):
    """A tool failed or is missing; the message names the tool and its output's tail."""


@dataclass(frozen=True)
class Step:
    """One timed command: argv, its environment additions and where it runs."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path

    def display(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return (env + " " if env else "") + shlex.join(self.argv)


@dataclass(frozen=True)
class Outcome:
    """A timed command's wall time, CPU time (its own processes; the whole machine), and output."""

    seconds: float
    output: str
    own_cpu_s: float = 0.0  # user+system of the command and every child it waited for
    machine_cpu_s: float = 0.0  # busy CPU time of the whole machine (engines included)


def machine_busy_seconds() -> float:
    """CPU seconds the machine has spent not idle since boot (all cores), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_step(tool: str, step: Step, timeout: float = 1800) -> Outcome:
    """Run ``step`` and time it (wall clock, process start to exit); raise PeerError on failure."""
    env = {**os.environ, **step.env}
    cpu0, busy0 = _children_cpu(), machine_busy_seconds()
    started = time.perf_counter()
    proc = subprocess.run(
        step.argv,
        cwd=step.cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
    seconds = time.perf_counter() - started
    own, busy = _children_cpu() - cpu0, machine_busy_seconds() - busy0
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-25:])
        raise PeerError(f"{tool}: `{step.display()}` exited {proc.returncode}:\n{tail}")
    return Outcome(seconds, proc.stdout, own, busy)


class Tool(Protocol):
    """A way of converging the fleet: the commands for converge, no-op and change."""

    name: str

    def converge(self, fleet: DesiredFleet) -> Step: ...

    def noop(self, fleet: DesiredFleet) -> Step | None:
        """The same desired state again (None: the tool cannot be re-run safely)."""
        ...

    def change(self, before: DesiredFleet, after: DesiredFleet) -> Step: ...

    def check_noop(self, outcome: Outcome) -> None:
        """Raise PeerError if a no-op run reports that it changed something."""
        ...


def _no_secrets(spec: ContainerSpec) -> ContainerSpec:
    if spec.secret_files:
        raise PeerError(f"{spec.host}/{spec.name}: the peers get no secrets in this benchmark")
    return spec


def _docker_run_args(spec: ContainerSpec) -> list[str]:
    """``docker run`` arguments that make exactly this container (as the product would)."""
    _no_secrets(spec)
    args = [
        "run",
        "-d",
        "--name",
        spec.name,
        "--network",
        spec.network_mode,
        "--restart",
        spec.restart_policy,
    ]
    for mount in spec.mounts:
        args += ["-v", f"{mount.source}:{mount.target}" + (":ro" if mount.read_only else "")]
    for key, value in spec.env:
        args += ["-e", f"{key}={value}"]
    for port in spec.ports:
        host = f"{port.host_ip}:" if port.host_ip else ""
        args += ["-p", f"{host}{port.host_port}:{port.container_port}/{port.protocol}"]
    return [*args, spec.image, *spec.command]


def _write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


class ShellLoop:
    """The blog's recipe: ``docker run`` per container, host after host, in one shell script."""

    name = "shell"

    def __init__(self, workdir: Path, docker_cli: str = "docker") -> None:
        self.workdir = workdir
        self.docker_cli = docker_cli

    def _script(self, name: str, lines: list[str]) -> Step:
        body = "#!/bin/sh\nset -e\n" + "\n".join(lines) + "\n"
        path = _write(self.workdir / name, body, 0o755)
        return Step(["sh", str(path)], {}, self.workdir)

    def converge(self, fleet: DesiredFleet) -> Step:
        lines = []
        for host in fleet.hosts:
            for spec in host.specs:
                lines.append(shlex.join([self.docker_cli, "-H", host.endpoint.url, *_docker_run_args(spec)]))
        return self._script("converge.sh", lines)

    def noop(self, fleet: DesiredFleet) -> Step | None:
        return None  # `docker run` again fails: the names are taken. Nothing to time.

    def change(self, before: DesiredFleet, after: DesiredFleet) -> Step:
        old = {(s.host, s.name): s for h in before.hosts for s in h.specs}
        lines = []
        for host in after.hosts:
            for spec in host.specs:
                if old.get((spec.host, spec.name)) != spec:
                    docker = [self.docker_cli, "-H", host.endpoint.url]
                    lines.append(shlex.join([*docker, "rm", "-f", spec.name]))
                    lines.append(shlex.join([*docker, *_docker_run_args(spec)]))
        return self._script("change.sh", lines)

    def check_noop(self, outcome: Outcome) -> None:
        return None


class Compose:
    """docker-compose 1.29: one project per host, ``up -d`` on each host in turn (a shell loop)."""

    name = "compose"

    def __init__(self, workdir: Path, compose_cli: str = "docker-compose") -> None:
        self.workdir = workdir
        self.compose_cli = compose_cli

    def _project(self, host: str, specs: Sequence[ContainerSpec]) -> Path:
        services: dict[str, object] = {}
        for spec in map(_no_secrets, specs):
            service: dict[str, object] = {
                "image": spec.image,
                "container_name": spec.name,
                "command": list(spec.command),
                "network_mode": spec.network_mode,
                "restart": spec.restart_policy,
            }
            if spec.mounts:
                service["volumes"] = [
                    f"{m.source}:{m.target}" + (":ro" if m.read_only else "") for m in spec.mounts
                ]
            if spec.env:
                service["environment"] = dict(spec.env)
            services[spec.name] = service
        document = {"version": "2.4", "services": services}
        return _write(self.workdir / host / "docker-compose.yml", yaml.safe_dump(document, sort_keys=False))

    def _loop(self, name: str, fleet: DesiredFleet) -> Step:
        lines = ["#!/bin/sh", "set -e"]
        for host in fleet.hosts:
            path = self._project(host.name, host.specs)
            lines.append(
                f"DOCKER_HOST={shlex.quote(host.endpoint.url)} "
                + shlex.join([self.compose_cli, "-p", host.name, "-f", str(path), "up", "-d"])
            )
        script = _write(self.workdir / name, "\n".join(lines) + "\n", 0o755)
        return Step(["sh", str(script)], {}, self.workdir)

    def converge(self, fleet: DesiredFleet) -> Step:
        return self._loop("up.sh", fleet)

    def noop(self, fleet: DesiredFleet) -> Step | None:
        return self._loop("up.sh", fleet)

    def change(self, before: DesiredFleet, after: DesiredFleet) -> Step:
        return self._loop("up.sh", after)

    def check_noop(self, outcome: Outcome) -> None:
        changed = [line for line in outcome.output.splitlines() if re.search(r"(Creating|Recreating) ", line)]
        if changed:
            raise PeerError("compose: the no-op run changed containers:\n" + "\n".join(changed[:10]))


_PLAYBOOK = """\
- name: Consul agents and Registrator on every Docker host
  hosts: all
  gather_facts: false
  tasks:
    - name: Containers
      community.docker.docker_container:
        docker_host: "{{ docker_host }}"
        name: "{{ item.name }}"
        image: "{{ item.image }}"
        command: "{{ item.command }}"
        network_mode: "{{ item.network_mode }}"
        restart_policy: "{{ item.restart_policy }}"
        volumes: "{{ item.volumes }}"
        env: "{{ item.env }}"
        state: started
      loop: "{{ containers }}"
      loop_control:
        label: "{{ item.name }}"
"""


class Ansible:
    """ansible-playbook with community.docker.docker_container; ``forks`` hosts at a time."""

    def __init__(self, workdir: Path, forks: int | None = None) -> None:
        self.workdir = workdir
        self.forks = forks
        self.name = "ansible" if forks is None else f"ansible-f{forks}"

    def _inventory(self, fleet: DesiredFleet) -> Path:
        hosts: dict[str, object] = {}
        for host in fleet.hosts:
            containers = []
            for spec in map(_no_secrets, host.specs):
                containers.append(
                    {
                        "name": spec.name,
                        "image": spec.image,
                        "command": list(spec.command),
                        "network_mode": spec.network_mode,
                        "restart_policy": spec.restart_policy,
                        "volumes": [
                            f"{m.source}:{m.target}:" + ("ro" if m.read_only else "rw") for m in spec.mounts
                        ],
                        "env": dict(spec.env),
                    }
                )
            hosts[host.name] = {"docker_host": host.endpoint.url, "containers": containers}
        document = {
            "all": {
                "hosts": hosts,
                "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable},
            }
        }
        return _write(self.workdir / "inventory.yml", yaml.safe_dump(document, sort_keys=False))

    def _play(self, fleet: DesiredFleet) -> Step:
        playbook = _write(self.workdir / "playbook.yml", _PLAYBOOK)
        inventory = self._inventory(fleet)
        argv = [
            str(VENV_BIN / "ansible-playbook"),
            "-i",
            str(inventory),
            str(playbook),
            "-e",
            f"ansible_python_interpreter={sys.executable}",
        ]
        if self.forks is not None:
            argv += ["--forks", str(self.forks)]
        env = {
            "ANSIBLE_LOCAL_TEMP": str(self.workdir / "tmp"),
            "ANSIBLE_REMOTE_TEMP": str(self.workdir / "tmp"),
            "ANSIBLE_RETRY_FILES_ENABLED": "false",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_HOST_KEY_CHECKING": "false",
            "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
        }
        return Step(argv, env, self.workdir)

    def converge(self, fleet: DesiredFleet) -> Step:
        return self._play(fleet)

    def noop(self, fleet: DesiredFleet) -> Step | None:
        return self._play(fleet)

    def change(self, before: DesiredFleet, after: DesiredFleet) -> Step:
        return self._play(after)

    def check_noop(self, outcome: Outcome) -> None:
        changed = [int(n) for n in re.findall(r"\bchanged=(\d+)", outcome.output)]
        if not changed or any(changed):
            recap = outcome.output[outcome.output.rfind("PLAY RECAP") :]
            raise PeerError(f"{self.name}: the no-op run reported changes:\n{recap[:2000]}")


class Ours:
    """``consul-reconciler apply``: one process, one pass over every host in parallel."""

    name = "ours"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir

    def topology_path(self) -> Path:
        return self.workdir / "topology.yaml"

    def write_topology(self, document: dict[str, object]) -> Path:
        return _write(self.topology_path(), yaml.safe_dump(document, sort_keys=False))

    def _apply(self) -> Step:
        argv = [
            str(VENV_BIN / "consul-reconciler"),
            "apply",
            str(self.topology_path()),
            "--db",
            str(self.workdir / "audit.db"),
            "--no-pull",
            "--json",
        ]
        return Step(argv, {}, self.workdir)

    # The topology file is written by the caller (the same document the fleet was rendered from).
    def converge(self, fleet: DesiredFleet) -> Step:
        return self._apply()

    def noop(self, fleet: DesiredFleet) -> Step | None:
        return self._apply()

    def change(self, before: DesiredFleet, after: DesiredFleet) -> Step:
        return self._apply()

    def check_noop(self, outcome: Outcome) -> None:
        report = json.loads(outcome.output)
        if report["results"]:
            raise PeerError(f"ours: the no-op apply did something: {report['results'][:5]}")


def require(tool: str) -> None:
    """PeerError naming the missing program, with how bench/run.sh installs it."""
    programs = {
        "shell": "docker",
        "compose": "docker-compose",
        "ansible": str(VENV_BIN / "ansible-playbook"),
    }
    program = programs.get(tool.split("-f")[0])
    if program and shutil.which(program) is None:
        raise PeerError(f"{tool}: `{program}` is not installed (bash bench/run.sh installs the peers)")
