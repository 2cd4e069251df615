"""A real single-node SLURM cluster (munged, slurmctld, slurmd, and slurmdbd on MariaDB for sacct) in a temp dir.

Accounting is part of it because submitit learns a job's end state from sacct: without it, a job that
ends without a result (scancel, a node failure) stays UNKNOWN and the Hydra launcher waits forever.

Everything it writes (slurm.conf, munge key and socket, state, spool, logs, pid files) lives in one
directory, on free non-default ports, so it never touches a system SLURM or munge. It needs root (slurmd
starts the jobs' processes) and the Debian packages from `.ci/install-slurm`; without them `start` raises
ClusterUnavailable saying why, which the tests turn into a skip.

    with SlurmCluster() as cluster:               # in Python (tests/e2e/test_slurm.py)
        subprocess.run(["sbatch", "--wrap", "hostname"], env=cluster.env())

    python tests/helpers/slurm_cluster.py start /tmp/slurm  # for a human; then: export SLURM_CONF=/tmp/slurm/slurm.conf
    python tests/helpers/slurm_cluster.py status /tmp/slurm
    python tests/helpers/slurm_cluster.py stop /tmp/slurm
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/local/sbin"])
DAEMONS = ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "squeue", "scancel", "sinfo", "scontrol", "sacct", "sacctmgr", "mariadb-install-db")
# Marks every process this cluster started (daemons and the slurmstepd they spawn), so that stop() ends
# those and only those, even the ones it has no pid file for.
MARK = "BENCHMARK_SLURM_CLUSTER"


class ClusterUnavailable(RuntimeError):
    """The cluster cannot run here (not root, packages missing, a daemon that does not come up)."""


def free_port() -> int:
    """A TCP port nothing listens on now (the kernel's choice), so two clusters or a system SLURM never clash."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 20) -> str:
    """The end of a log, for error messages that say what the daemon said."""
    if not path.exists():
        return f"({path} does not exist)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def node_memory_mb() -> int:
    """RealMemory for slurm.conf: 90% of MemTotal, since slurmd drains a node that has less than configured."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(int(line.split()[1]) / 1024 * 0.9)
    return 1024


class SlurmCluster:
    """A single-node cluster in `root` (a fresh temp dir when None); start() and stop(), or `with`."""

    def __init__(self, root: Path | str | None = None, partition: str = "debug", start_timeout_s: float = 60) -> None:
        """`root` is created if missing and kept after stop() (its logs are the record of what ran)."""
        # A short path: the munge socket's path must fit in a sockaddr_un (108 bytes).
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="slurm-", dir="/tmp"))
        self.partition = partition
        self.start_timeout_s = start_timeout_s
        self.conf = self.root / "slurm.conf"
        self.node = socket.gethostname().split(".")[0]
        self.procs: list[subprocess.Popen] = []  # daemons started by this object, reaped in stop()

    # -- environment -------------------------------------------------------------------------------
    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment for client commands (sbatch, squeue, ...) and the jobs they submit."""
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        env["PATH"] = SBIN_PATH
        env.pop(MARK, None)
        return env

    def run(self, *args: str, check: bool = True, timeout: float = 30) -> str:
        """A client command against this cluster; its stdout."""
        proc = subprocess.run(args, env=self.env(), capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc.stdout

    # -- checks ------------------------------------------------------------------------------------
    def check_can_start(self) -> None:
        """Raise ClusterUnavailable with the exact reason when this machine cannot run the cluster."""
        if sys.platform != "linux":
            raise ClusterUnavailable(f"SLURM test cluster needs Linux, this is {sys.platform}")
        if os.geteuid() != 0:
            raise ClusterUnavailable(
                f"SLURM test cluster needs root (slurmd launches the jobs), euid is {os.geteuid()}"
            )
        missing = [b for b in (*DAEMONS, *CLIENTS) if shutil.which(b, path=SBIN_PATH) is None]
        if missing:
            raise ClusterUnavailable(
                f"SLURM test cluster: not installed: {', '.join(missing)} (run: bash .ci/install-slurm)"
            )

    # -- set-up ------------------------------------------------------------------------------------
    def write_config(self) -> None:
        """slurm.conf, an empty plugstack.conf and a fresh munge key, all under root."""
        for sub in ("state", "spool", "munge", "db"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)  # munged refuses group/world-writable dirs on its paths
        (self.root / "munge").chmod(0o700)
        key = self.root / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        (self.root / "plugstack.conf").write_text("")
        cpus = len(os.sched_getaffinity(0))
        r = self.root
        self.db_port, self.dbd_port = free_port(), free_port()
        dbd = [
            "AuthType=auth/munge",
            f"AuthInfo=socket={r}/munge/munge.socket",
            f"DbdHost={self.node}",
            "DbdAddr=127.0.0.1",
            f"DbdPort={self.dbd_port}",
            "SlurmUser=root",
            "StorageType=accounting_storage/mysql",
            "StorageHost=127.0.0.1",
            f"StoragePort={self.db_port}",
            "StorageUser=root",
            "StorageLoc=slurm_acct_db",
            f"PidFile={r}/slurmdbd.pid.own",
            f"LogFile={r}/slurmdbd.log",
            "DebugLevel=info",
        ]
        # slurmdbd reads slurmdbd.conf next to SLURM_CONF and refuses one that others can read
        dbd_conf = r / "slurmdbd.conf"
        dbd_conf.write_text("\n".join(dbd) + "\n")
        dbd_conf.chmod(0o600)
        lines = [
            "ClusterName=benchtest",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={free_port()}",
            f"SlurmdPort={free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={r}/munge/munge.socket",
            f"StateSaveLocation={r}/state",
            f"SlurmdSpoolDir={r}/spool",
            f"SlurmctldPidFile={r}/slurmctld.pid",
            f"SlurmdPidFile={r}/slurmd.pid",
            f"SlurmctldLogFile={r}/slurmctld.log",
            f"SlurmdLogFile={r}/slurmd.log",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            f"PlugStackConfig={r}/plugstack.conf",
            # No cgroups: processes are tracked through /proc, tasks are not confined.
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/slurmdbd",
            "AccountingStorageHost=127.0.0.1",
            f"AccountingStoragePort={self.dbd_port}",
            # for auth/munge towards slurmdbd this names the munge socket (AuthInfo does not reach sacctmgr)
            f"AccountingStoragePass={r}/munge/munge.socket",
            # Finished jobs (id, state, exit code) are also logged to a plain file, readable without sacct.
            "JobCompType=jobcomp/filetxt",
            f"JobCompLoc={r}/jobcomp.log",
            "MpiDefault=none",
            "MailProg=/bin/true",
            "SwitchType=switch/none",
            "SchedulerType=sched/backfill",
            "SelectType=select/cons_tres",
            # Memory is a consumable too, so a job's --mem (submitit's mem_gb) is what it holds of the node.
            "SelectTypeParameters=CR_CPU_Memory",
            "DefMemPerCPU=1024",
            "ReturnToService=2",
            "KillWait=5",
            "MinJobAge=600",
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={node_memory_mb()} State=UNKNOWN",
            f"PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    def spawn(self, name: str, args: list[str]) -> None:
        """Start one daemon in the foreground, detached from our session; its pid goes to <root>/<name>.pid."""
        env = self.env()
        env[MARK] = str(self.root)
        log = (self.root / f"{name}.out").open("ab")
        proc = subprocess.Popen(
            [shutil.which(name, path=SBIN_PATH) or name, *args],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.procs.append(proc)
        (self.root / f"{name}.pid").write_text(f"{proc.pid}\n")
        time.sleep(0.5)
        if proc.poll() is not None:
            raise ClusterUnavailable(
                f"{name} exited at start with code {proc.returncode}:\n{tail(self.root / f'{name}.out')}\n"
                f"{tail(self.root / f'{name}.log')}"
            )

    def start(self) -> SlurmCluster:
        """Start munged, slurmctld and slurmd; return once sinfo shows the node idle (bounded wait)."""
        self.check_can_start()
        self.write_config()
        m = self.root / "munge"
        try:
            self.spawn("munged", [
                "-F", "--force", f"--socket={m}/munge.socket", f"--key-file={m}/munge.key",
                f"--pid-file={m}/munged.pid.own", f"--log-file={self.root}/munged.log", f"--seed-file={m}/munged.seed",
            ])  # fmt: skip
            self.wait_for(lambda: (m / "munge.socket").exists(), "munged socket", self.root / "munged.log")
            self.start_accounting()
            self.spawn("slurmctld", ["-D", "-i", "-f", str(self.conf)])
            self.spawn("slurmd", ["-D", "-N", self.node, "-f", str(self.conf)])
            self.wait_for(self.node_idle, f"node {self.node} idle in sinfo", self.root / "slurmd.log")
        except BaseException:
            self.stop()
            raise
        return self

    def start_accounting(self) -> None:
        """A throw-away MariaDB (its own datadir and port on 127.0.0.1, no grant checks) and slurmdbd on it."""
        r = self.root
        if not (r / "db" / "mysql").exists():
            proc = subprocess.run(
                ["mariadb-install-db", "--no-defaults", f"--datadir={r}/db", "--user=root", "--skip-test-db",
                 "--auth-root-authentication-method=normal"],
                env=self.env(), capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            if proc.returncode != 0:
                said = (proc.stderr.strip() or proc.stdout.strip())[-2000:]  # 10.11 prints its FATAL ERROR on stdout
                raise ClusterUnavailable(f"mariadb-install-db failed ({proc.returncode}): {said}")
        self.spawn("mariadbd", [
            "--no-defaults", f"--datadir={r}/db", "--user=root", f"--port={self.db_port}", "--bind-address=127.0.0.1",
            f"--socket={r}/db/mysqld.sock", f"--pid-file={r}/db/mariadbd.pid", f"--log-error={r}/mariadbd.log",
            "--skip-grant-tables", "--innodb-buffer-pool-size=32M", "--skip-log-bin",
        ])  # fmt: skip
        self.wait_for(lambda: port_open(self.db_port), "MariaDB listening", r / "mariadbd.log")
        self.spawn("slurmdbd", ["-D"])
        self.wait_for(lambda: port_open(self.dbd_port), "slurmdbd listening", r / "slurmdbd.log")
        out = subprocess.run(
            ["sacctmgr", "-i", "add", "cluster", "benchtest"],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=30,
        )
        if out.returncode != 0 and "already exists" not in out.stdout + out.stderr:
            raise ClusterUnavailable(
                f"sacctmgr add cluster failed: {out.stdout} {out.stderr}\n{tail(r / 'slurmdbd.log')}"
            )

    def node_idle(self) -> bool:
        proc = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%t"], env=self.env(), capture_output=True, text=True, timeout=10
        )
        return proc.returncode == 0 and proc.stdout.strip() == "idle"

    def wait_for(self, ready: object, what: str, log: Path) -> None:
        """Poll ready() until it holds or start_timeout_s passes; then raise with the daemons' log tails."""
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if ready():  # type: ignore[operator]
                return
            for name in DAEMONS:  # a daemon that died will not come up: say so at once
                if name in self.pids() and not alive(self.pids()[name]):
                    break
            else:
                time.sleep(0.5)
                continue
            break
        logs = "\n".join(f"--- {p.name}:\n{tail(p)}" for p in [*sorted(self.root.glob("*.log")), log] if p.exists())
        state = subprocess.run(["sinfo", "-N", "-l"], env=self.env(), capture_output=True, text=True).stdout
        raise ClusterUnavailable(f"SLURM test cluster: no {what} within {self.start_timeout_s} s\n{state}\n{logs}")

    # -- tear-down ---------------------------------------------------------------------------------
    def pids(self) -> dict[str, int]:
        out = {}
        for name in DAEMONS:
            f = self.root / f"{name}.pid"
            if f.exists() and f.read_text().strip().isdigit():
                out[name] = int(f.read_text())
        return out

    def marked_pids(self) -> list[int]:
        """Processes carrying this cluster's mark (daemons, slurmstepd), found through /proc."""
        needle = f"{MARK}={self.root}".encode()
        found = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit() or int(d.name) == os.getpid():
                continue
            try:
                if needle in (d / "environ").read_bytes().split(b"\0"):
                    found.append(int(d.name))
            except OSError:
                continue
        return found

    def stop(self) -> None:
        """Cancel the jobs, then end the daemons and slurmstepds this cluster started (only those).

        The directory stays: its logs are what one reads when something went wrong.
        """
        if alive(self.pids().get("slurmctld", -1)):
            subprocess.run(["scancel", "--full", f"--partition={self.partition}"], env=self.env(), capture_output=True)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                q = subprocess.run(["squeue", "-h"], env=self.env(), capture_output=True, text=True, timeout=10)
                if q.returncode != 0 or not q.stdout.strip():
                    break
                time.sleep(0.5)
        pids = {*self.pids().values(), *self.marked_pids()}
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                if alive(pid) and self.is_ours(pid):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(alive(p) for p in pids):
                time.sleep(0.2)
            pids = {p for p in pids if alive(p)}
            if not pids:
                break
        for proc in self.procs:
            proc.wait(timeout=10)
        self.procs.clear()
        for name in DAEMONS:
            (self.root / f"{name}.pid").unlink(missing_ok=True)

    def is_ours(self, pid: int) -> bool:
        """A pid from a pid file is only signalled while it still carries our mark (pids get reused)."""
        try:
            return f"{MARK}={self.root}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            return False

    def status(self) -> str:
        lines = [f"{n}: pid {p} {'running' if alive(p) else 'dead'}" for n, p in self.pids().items()]
        if alive(self.pids().get("slurmctld", -1)):
            lines += [self.run("sinfo", check=False), self.run("squeue", check=False)]
        return "\n".join(lines)

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def alive(pid: int) -> bool:
    """Running (a zombie counts as gone)."""
    if pid <= 0:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def port_open(port: int) -> bool:
    """Something accepts TCP connections on 127.0.0.1:port."""
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("dir", type=Path, help="where the cluster's config, state and logs live")
    args = parser.parse_args(argv)
    cluster = SlurmCluster(args.dir.resolve())
    if args.action == "start":
        try:
            cluster.start()
        except ClusterUnavailable as err:
            print(err, file=sys.stderr)
            return 1
        print(f"cluster up; use it with: export SLURM_CONF={cluster.conf}")
    elif args.action == "stop":
        cluster.stop()
        print(f"stopped; logs kept in {cluster.root}")
    else:
        print(cluster.status())
    return 0


if __name__ == "__main__":
    sys.exit(main())
