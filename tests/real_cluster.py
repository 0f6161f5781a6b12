"""Real cluster software on this one machine, for the cluster tests: a SLURM cluster (Debian's slurm-wlm and
munge: munged, slurmctld and one slurmd per node) and a two-node Ray cluster.

SLURM nodes are made to look like separate hosts as far as one machine allows: each slurmd (and every job
process it starts) lives in its own PID namespace, so `ps`, `ray symmetric-run`'s "is Ray already running
here" check and its closing `ray stop` see only that node's processes, and has its own /tmp/ray (a mount
namespace), as Ray's session files are per host; and the second node gets its own
network namespace with its own address (a veth pair), so a Ray head must advertise an address other nodes
can reach, exactly as across real hosts. Where network namespaces are unavailable both nodes share this
machine's addresses (``SlurmCluster.separate_hosts`` is False) and the tests that need distinct addresses
skip, saying so. The filesystem is shared, as a cluster's shared home is.

Every process is a child of the test session, in its own process group, stopped by that group's id at the
end; ending a node's namespace init ends every process of that node. Nothing here calls `ray stop`,
`scontrol shutdown` or kills by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

SLURM_PROGRAMS = ("munged", "munge", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "sinfo", "squeue",
                  "scancel")

# PID 1 of a node's PID and mount namespace: gives the node its own /tmp/ray (Ray's session files are
# per host; nodes sharing one folder mix them up) and, in its own network, its own resolv.conf; starts
# slurmd, forwards SIGTERM to it, reaps every orphan (Ray's daemons outlive the commands that start them),
# and ends when slurmd ends, which ends the namespace.
_NODE_INIT = r"""
import json, os, signal, subprocess, sys
for src, dst in json.loads(sys.argv.pop(1)).items():  # this node's own files over the machine's
    if os.path.isdir(src):
        os.makedirs(dst, exist_ok=True)
    subprocess.run(["mount", "--bind", src, dst], check=True)
child = subprocess.Popen(sys.argv[1:])
signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGTERM))
while True:
    try:
        pid, _ = os.waitpid(-1, 0)
    except ChildProcessError:
        break
    if pid == child.pid:
        break
"""


def _end_with_parent() -> None:
    """In a child before exec: SIGTERM when the test session dies without its teardown (a kill -9)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct free ports: all bound at once, as the kernel may hand a just-released port out again."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


def listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def slurm_missing() -> str | None:
    """Why a SLURM cluster cannot run here, or None."""
    if os.geteuid() != 0:
        return "a SLURM cluster on this machine needs root (slurmd runs jobs as their user)"
    missing = [p for p in SLURM_PROGRAMS if not (shutil.which(p) or shutil.which(p, path="/usr/sbin:/sbin"))]
    if missing:
        return f"SLURM or munge not installed (missing {', '.join(missing)}): apt-get install slurm-wlm munge"
    return None


def _program(name: str) -> str:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin") or name


# SIGTERM to SIGKILL for the tests' Ray nodes: a graceful `ray start --block` stop takes about 30 s, and a
# test cluster keeps nothing worth it (SIGKILL to the group leaves no process behind)
RAY_STOP_GRACE_S = 5.0


@contextlib.contextmanager
def ray_head(log_path: Path, gpus: int = 0):
    """A local Ray head of 2 CPUs and ``gpus`` *declared* GPUs (Ray counts what it is told: none need exist),
    without token authentication; yields its address. Started with --block in its own process group and
    stopped by signalling that group, so concurrent test sessions on one machine never stop each other's
    clusters (`ray stop` would stop every one)."""
    port = free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    with open(log_path, "w") as log:
        head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
                                 f"--port={port}", "--num-cpus=2", f"--num-gpus={gpus}", "--include-dashboard=false",
                                 "--disable-usage-stats"],
                                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            deadline = time.time() + 60
            while not listening("127.0.0.1", port):
                if head.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"ray head did not start: see {log_path}")
                time.sleep(0.2)
            yield f"127.0.0.1:{port}"
        finally:
            _stop_group(head, grace=RAY_STOP_GRACE_S)


def _stop_group(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM to the process group this session started, SIGKILL to what is left after ``grace``."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


class _NetNs:
    """A network namespace joined to this one by a veth pair: HOST_IP here, NODE_IP inside."""

    def __init__(self, tag: str, subnet: int):
        self.name = f"zoo-slurm-{tag}"
        self.host_if, self.node_if = f"zs{tag}h", f"zs{tag}n"
        self.host_ip, self.node_ip = f"10.231.{subnet}.1", f"10.231.{subnet}.2"

    def create(self) -> None:
        steps = [["ip", "netns", "add", self.name],
                 ["ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.node_if],
                 ["ip", "link", "set", self.node_if, "netns", self.name],
                 ["ip", "addr", "add", f"{self.host_ip}/24", "dev", self.host_if],
                 ["ip", "link", "set", self.host_if, "up"],
                 *[["ip", "netns", "exec", self.name, *c] for c in (
                     ["ip", "addr", "add", f"{self.node_ip}/24", "dev", self.node_if],
                     ["ip", "link", "set", self.node_if, "up"],
                     ["ip", "link", "set", "lo", "up"],
                     ["ip", "route", "add", "default", "via", self.host_ip])]]
        for cmd in steps:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            if r.returncode != 0:
                self.delete()
                raise OSError(f"{' '.join(cmd)}: {r.stderr.strip()}")

    def prefix(self) -> list[str]:
        # only the network namespace: `ip netns exec` would also remount /sys, hiding the cgroup tree slurmd reads
        return ["nsenter", f"--net=/run/netns/{self.name}"]

    def delete(self) -> None:
        # the namespace and the veth separately: some kernels (gVisor) keep the pair when the namespace goes
        for cmd in (["ip", "link", "del", self.host_if], ["ip", "netns", "del", self.name]):
            subprocess.run(cmd, capture_output=True, timeout=30)


def _delete_stale_netns() -> None:
    """Namespaces of earlier sessions whose process is gone (a session killed before its teardown)."""
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    for line in r.stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        if name.startswith("zoo-slurm-") and name[10:].isdigit() and not Path(f"/proc/{name[10:]}").exists():
            _NetNs(name[10:], 0).delete()


class SlurmCluster:
    """munged, slurmctld and ``nodes`` slurmds (n1, n2, ...) of one partition, one CPU each, under ``root``."""

    def __init__(self, root: Path, nodes: int = 2):
        self.root = Path(root)
        self.names = [f"n{i + 1}" for i in range(nodes)]
        self.procs: list[subprocess.Popen] = []
        self.netns: _NetNs | None = None
        self.isolated = False  # each node in its own PID namespace
        self.ctld_ip = "127.0.0.1"
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.notes: list[str] = []

    # ------------------------------------------------------------------ what tests use
    @property
    def separate_hosts(self) -> bool:
        """Whether the nodes have addresses of their own (the second node in its own network namespace)."""
        return self.netns is not None

    @property
    def store_host(self) -> str:
        """An address of this machine that every node reaches (servers listening there serve all nodes)."""
        return self.netns.host_ip if self.netns else "127.0.0.1"

    def env(self, base: dict | None = None) -> dict:
        """An environment for SLURM commands of this cluster, without the caller's SLURM_* settings."""
        env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("SLURM_")}
        env["SLURM_CONF"] = str(self.conf)
        return env

    def cmd(self, *args: str, timeout: float = 60) -> str:
        r = subprocess.run([_program(args[0]), *args[1:]], capture_output=True, text=True, env=self.env(),
                           timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip() or r.stdout.strip()}")
        return r.stdout

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job ID` as KEY -> VALUE (the first record: an array's first task)."""
        return self.jobs(job_id)[0]

    def jobs(self, job_id: str) -> list[dict[str, str]]:
        """Every record of `scontrol show job -o ID` (one per array task)."""
        out = self.cmd("scontrol", "show", "job", "-o", job_id)
        return [_fields(line) for line in out.splitlines() if line.strip()]

    def wait_job(self, job_id: str, timeout: float = 900) -> list[dict[str, str]]:
        """Wait until every task of the job has ended; their records."""
        deadline = time.time() + timeout
        while True:
            recs = self.jobs(job_id)
            if recs and all(r["JobState"] not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED")
                            for r in recs):
                return recs
            if time.time() > deadline:
                raise TimeoutError(f"SLURM job {job_id} still {[r['JobState'] for r in recs]} after {timeout:.0f} s")
            time.sleep(2)

    def log_tail(self, n: int = 60) -> str:
        parts = []
        for f in sorted((self.root / "log").glob("*.log")):
            lines = f.read_text(errors="replace").splitlines()[-n:]
            parts.append(f"== {f.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    # ------------------------------------------------------------------ start / stop
    def start(self, timeout: float = 120) -> SlurmCluster:
        for d in ("munge", "state", "log", *[f"spool-{n}" for n in self.names]):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        (self.root / "munge").chmod(0o711)
        self._isolation()
        self._start_munge()
        self._write_conf()
        ctld = self._spawn("slurmctld", [_program("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._wait(lambda: listening(self.ctld_ip, self.ctld_port), ctld, "slurmctld", timeout)
        for name in self.names:
            self._spawn(f"slurmd-{name}", self._node_cmd(name))
        self._wait(self._all_idle, None, "the nodes to be idle in sinfo", timeout)
        return self

    def stop(self) -> None:
        for proc in reversed(self.procs):
            _stop_group(proc)
        self.procs.clear()
        if self.netns is not None:
            self.netns.delete()

    def _isolation(self) -> None:
        probe = self.root / "probe"
        probe.mkdir(exist_ok=True)
        r = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "mount", "--bind", str(probe), str(probe)],
                           capture_output=True, text=True)
        self.isolated = r.returncode == 0
        if not self.isolated:
            self.notes.append(f"no PID and mount namespaces ({r.stderr.strip()}): nodes share one process table")
        if len(self.names) < 2:
            return
        _delete_stale_netns()
        ns = _NetNs(str(os.getpid()), 1 + os.getpid() % 250)
        try:
            ns.create()
        except (OSError, subprocess.TimeoutExpired) as e:
            self.notes.append(f"no network namespace for the second node ({e}): all nodes share this host's addresses")
            return
        self.netns = ns
        self.ctld_ip = ns.host_ip

    def _start_munge(self) -> None:
        key = self.root / "munge" / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        d = self.root / "munge"
        proc = self._spawn("munged", [_program("munged"), "-F", "--force", f"--socket={self.munge_socket}",
                                      f"--key-file={key}", f"--pid-file={d / 'munged.pid'}",
                                      f"--seed-file={d / 'munged.seed'}", f"--log-file={d / 'munged.log'}"])

        def works():
            r = subprocess.run([_program("munge"), "-n", "-S", str(self.munge_socket)], capture_output=True)
            return r.returncode == 0

        self._wait(works, proc, "munged", 30)

    def _write_conf(self) -> None:
        self.ctld_port, *node_ports = free_ports(1 + len(self.names))
        host = socket.gethostname().split(".")[0]
        r = self.root
        lines = [
            "ClusterName=zootest",
            f"SlurmctldHost={host}({self.ctld_ip})",
            f"SlurmctldPort={self.ctld_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r}/spool-%n",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}",
            f"SlurmdPidFile={r}/slurmd-%n.pid",
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={r}/log/slurmd-%n.log",
            "ProctrackType=proctrack/linuxproc",  # no cgroups in a container
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",  # no slurmdbd: `scontrol show job` has the end state
            "JobCompType=jobcomp/none",
            "MinJobAge=86400",  # ended jobs stay visible to scontrol for the whole session
            "KillWait=10",
            "MailProg=/bin/true",
            "MpiDefault=none",
            "SwitchType=switch/none",
            "SchedulerType=sched/backfill",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "SlurmdParameters=config_overrides",  # one CPU per node whatever the machine has
            "ReturnToService=2",
            "SlurmdTimeout=120",
        ]
        for i, name in enumerate(self.names):
            addr = self.netns.node_ip if (self.netns and i > 0) else "127.0.0.1"
            lines.append(f"NodeName={name} NodeHostname=localhost NodeAddr={addr} Port={node_ports[i]} CPUs=1 "
                         "RealMemory=2000 State=UNKNOWN")
        lines.append(f"PartitionName=main Nodes={','.join(self.names)} Default=YES MaxTime=INFINITE State=UP")
        self.conf.write_text("\n".join(lines) + "\n")

    def _node_cmd(self, name: str) -> list[str]:
        cmd = [_program("slurmd"), "-D", "-N", name, "-f", str(self.conf)]
        if self.isolated:
            mounts = {str(self._node_dir(name, "tmp-ray")): "/tmp/ray"}
            if self.netns is not None and name != self.names[0]:
                # no name server answers inside the namespace: fail lookups at once, as on the host, instead of
                # after seconds of timeouts (Ray's agents look names up while they start)
                resolv = self.root / f"resolv-{name}.conf"
                resolv.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
                mounts[str(resolv)] = "/etc/resolv.conf"
            cmd = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child=SIGTERM", sys.executable, "-c",
                   _NODE_INIT, json.dumps(mounts), *cmd]
        if self.netns is not None and name != self.names[0]:
            cmd = [*self.netns.prefix(), *cmd]
        return cmd

    def _node_dir(self, name: str, what: str) -> Path:
        d = self.root / f"{what}-{name}"
        d.mkdir(exist_ok=True)
        return d

    def _spawn(self, what: str, cmd: list[str]) -> subprocess.Popen:
        log = open(self.root / "log" / f"{what}.out", "w")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env(), start_new_session=True,
                                preexec_fn=_end_with_parent)
        log.close()
        self.procs.append(proc)
        return proc

    def _all_idle(self) -> bool:
        r = subprocess.run([_program("sinfo"), "-h", "-N", "-o", "%N %t"], capture_output=True, text=True,
                           env=self.env())
        states = dict(line.split() for line in r.stdout.splitlines() if line.strip())
        return r.returncode == 0 and all(states.get(n) == "idle" for n in self.names)

    def _wait(self, ok, proc, what: str, timeout: float) -> None:
        deadline = time.time() + timeout
        while not ok():
            if (proc is not None and proc.poll() is not None) or time.time() > deadline:
                raise RuntimeError(f"waiting for {what} failed:\n{self.log_tail()}\n" + "\n".join(
                    f"== {f.name}\n{f.read_text(errors='replace')[-3000:]}" for f in (self.root / "log").glob("*.out")))
            time.sleep(0.5)


def _fields(line: str) -> dict[str, str]:
    """KEY=VALUE pairs of a one-line scontrol record (values without spaces, which is all the tests read)."""
    out = {}
    for tok in line.split():
        if "=" in tok:
            k, v = tok.split("=", 1)
            out.setdefault(k, v)
    return out


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


class TcpRelay:
    """Forwards connections from HOST:PORT to TARGET_HOST:TARGET_PORT (a server bound to loopback, made
    reachable from a node with its own network namespace)."""

    def __init__(self, host: str, target: tuple[str, int]):
        self.target = target
        self.server = socket.create_server((host, 0))
        self.address = self.server.getsockname()[:2]
        self._stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        self.server.settimeout(0.5)
        while not self._stop.is_set():
            try:
                client, _ = self.server.accept()
            except (TimeoutError, OSError):
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket):
        src.settimeout(None)
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self._stop.set()
        self.server.close()


class RayPair:
    """A two-node Ray cluster on this machine: a head with resource ``node_a`` and a node joining it with
    ``node_b``, one CPU each, token authentication on, each with its own temp dir and ports, each in its own
    process group, stopped by signalling that group."""

    def __init__(self, root: Path, ray_bin: Path, token_path: Path):
        self.root = Path(root)
        self.ray = str(ray_bin)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"}
        self.env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path),
                        PATH=f"{Path(ray_bin).parent}:{os.environ['PATH']}")
        self.head: subprocess.Popen | None = None
        self.node: subprocess.Popen | None = None

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        tmp = self.root / name
        tmp.mkdir(parents=True, exist_ok=True)
        log = open(self.root / f"{name}.log", "a")
        proc = subprocess.Popen([self.ray, "start", "--block", "--num-cpus=1", "--num-gpus=0",
                                 "--node-ip-address=127.0.0.1", "--disable-usage-stats", f"--temp-dir={tmp}",
                                 f"--dashboard-agent-listen-port={free_port()}", *args],
                                stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        log.close()
        return proc

    def start(self, timeout: float = 180) -> RayPair:
        self.head = self._start("head", ["--head", f"--port={self.port}", "--include-dashboard=false",
                                         f"--resources={json.dumps({'node_a': 1})}"])
        deadline = time.time() + timeout
        while not listening("127.0.0.1", self.port):
            if self.head.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the Ray head did not start: see {self.root / 'head.log'}")
            time.sleep(0.5)
        self.start_node(timeout)
        return self

    def start_node(self, timeout: float = 180) -> None:
        """(Re)start the second node and wait until the cluster has both."""
        if self.node is not None:
            _stop_group(self.node, grace=RAY_STOP_GRACE_S)
        self.node = self._start("node", [f"--address={self.address}", f"--resources={json.dumps({'node_b': 1})}"])
        self.wait_nodes(2, timeout)

    def alive_nodes(self) -> list[dict]:
        # only the first piece is an f-string: the braces of the others are the child's own Python
        code = (f"import json, ray; ray.init(address={self.address!r}, logging_level='ERROR'); "
                "print(json.dumps([{'id': n['NodeID'], 'resources': n['Resources']} for n in ray.nodes() "
                "if n['Alive']]))")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=self.env, timeout=120)
        if r.returncode != 0:
            return []
        return json.loads(r.stdout.strip().splitlines()[-1])

    def wait_nodes(self, n: int, timeout: float = 180) -> list[dict]:
        deadline = time.time() + timeout
        while True:
            nodes = self.alive_nodes()
            if len(nodes) == n:
                return nodes
            if time.time() > deadline:
                raise RuntimeError(f"{len(nodes)} of {n} Ray nodes alive after {timeout:.0f} s: see {self.root}")
            time.sleep(2)

    def node_raylet_pid(self) -> int:
        """The raylet of the second node (a descendant of its `ray start --block`)."""
        for pid in _descendants(self.node.pid):
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "raylet":
                    return pid
            except OSError:
                continue
        raise RuntimeError("the second node has no raylet")

    def stop(self) -> None:
        for proc in (self.node, self.head):
            if proc is not None:
                _stop_group(proc, grace=RAY_STOP_GRACE_S)
