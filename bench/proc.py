"""A benchmarked subprocess: its log, CPU time and peak RSS (shared by the harnesses)."""

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil


class Proc:
    """A subprocess with a log file, its CPU time and its peak RSS."""

    def __init__(
        self, cmd: list[str], env: dict[str, str], log: Path, marker: str
    ) -> None:
        self.log = log
        self._fh = log.open("wb")
        self.proc = subprocess.Popen(
            cmd, env={**os.environ, **env}, stdout=self._fh, stderr=self._fh
        )
        self.ps = psutil.Process(self.proc.pid)
        self.marker = marker

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.marker not in self.log.read_text(errors="replace"):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(self.log.read_text()[-2000:])
            time.sleep(0.02)

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        return float(t.user + t.system)

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self, timeout: float = 40) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._fh.close()


class ProcGroup:
    """Several processes measured as one replica: CPU and RSS summed."""

    def __init__(self, procs: list[Proc]) -> None:
        self.procs = procs
        self.proc = procs[0].proc  # the one a profiler attaches to
        self.log = procs[0].log

    def wait_ready(self, timeout: float = 30) -> None:
        for p in self.procs:
            p.wait_ready(timeout)

    def cpu(self) -> float:
        return sum(p.cpu() for p in self.procs)

    def peak_rss_mb(self) -> float:
        return sum(p.peak_rss_mb() for p in self.procs)

    def stop(self, timeout: float = 40) -> None:
        for p in self.procs:
            p.stop(timeout)
