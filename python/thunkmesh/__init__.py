"""thunkmesh from Python: build a job in code and run it with the `thunkmesh` binary.

A thin wrapper over the command line and its JSON job format (docs/jobs.md): `Job` builds the
same structure a job file holds, `Job.run` writes it as JSON and runs `thunkmesh run` on it,
and the summary comes back as a dict (its schema is in docs/jobs.md). Every check of a job is
the binary's: a bad job raises `ThunkmeshError` with the binary's one-line message and exit
status 2.

    from thunkmesh import Job

    job = Job()
    words = job.value("words.txt")
    upper = job.thunk("upper", host="/bin/sh", args=["-c", "tr a-z A-Z < in > out"],
                      inputs={"in": words}, outputs=["out"])
    job.target("upper.txt", upper["out"])
    summary = job.run(out="out")
    print(summary["thunks_executed"], "thunk(s) ran")

The binary is `$THUNKMESH` if set, else `thunkmesh` on `PATH`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

__all__ = ["Job", "Ref", "Thunk", "ThunkmeshError", "binary"]
__version__ = "0.1.0"


class ThunkmeshError(Exception):
    """A run that did not succeed: the binary's error line, its exit status (1 the job or a
    thunk failed, 2 a bad job or flag, 130 interrupted) and the summary JSON it wrote, if any."""

    def __init__(self, message: str, exit_status: int, summary: dict | None = None):
        super().__init__(message)
        self.exit_status = exit_status
        self.summary = summary


@dataclass(frozen=True)
class Ref:
    """A value or a thunk's output, as a job names it: `name` or `thunk#output`."""

    name: str

    def __str__(self) -> str:
        return self.name


@dataclass
class Thunk:
    """A thunk added to a job; `thunk["out"]` is the ref of its output `out`."""

    name: str
    spec: dict = field(repr=False)

    def __getitem__(self, output: str) -> Ref:
        return Ref(f"{self.name}#{output}")


def binary() -> str:
    """The `thunkmesh` program this package runs."""
    found = os.environ.get("THUNKMESH") or shutil.which("thunkmesh")
    if not found:
        raise ThunkmeshError("no thunkmesh binary: put it on PATH or set THUNKMESH", 2)
    return found


def _ref(source: Ref | str) -> str:
    if isinstance(source, (Ref, str)):
        return str(source)
    raise TypeError(f"a ref is a Ref or a str such as 'thunk#output', not {type(source).__name__}")


class Job:
    """A job under construction: values (files), thunks and targets."""

    def __init__(self) -> None:
        self._values: dict[str, str] = {}
        self._thunks: list[dict] = []
        self._targets: dict[str, str] = {}

    def value(self, path: str | os.PathLike, name: str | None = None) -> Ref:
        """The file at `path` as a value (its bytes are hashed when the job runs)."""
        path = os.path.abspath(os.fspath(path))
        if name is None:
            stem = re.sub(r"[#/]", "_", os.path.basename(path)) or "value"
            name, n = stem, 1
            while name in self._values:
                n += 1
                name = f"{stem}-{n}"
        self._values[name] = path
        return Ref(name)

    def thunk(
        self,
        name: str,
        *,
        host: str | None = None,
        program: Ref | str | None = None,
        args: Iterable[str] = (),
        env: Mapping[str, str] | None = None,
        inputs: Mapping[str, Ref | str] | None = None,
        outputs: Iterable[str] = (),
        timeout: str | None = None,
        network: bool = False,
        stdout: bool = False,
        dir: str | None = None,
        ship: Iterable[str | Mapping[str, Any]] = (),
    ) -> Thunk:
        """A thunk running the node's program `host` (an absolute path) or `program` (a ref).

        `ship` lists what the thunk brings as its own root, so a node without it runs the thunk:
        absolute paths of programs (with their shared libraries) and folders, and
        `{"python": "/usr/bin/python3", "modules": ["cv2"]}` for an interpreter with the modules a
        step imports (docs/jobs.md, "Shipping programs")."""
        if (host is None) == (program is None):
            raise ValueError(f"thunk {name!r}: give exactly one of host= and program=")
        spec: dict[str, Any] = {
            "name": name,
            "program": {"host": host} if host is not None else _ref(program),
            "args": [str(a) for a in args],
            "env": dict(env or {}),
            "inputs": {path: _ref(source) for path, source in (inputs or {}).items()},
            "outputs": list(outputs),
        }
        shipped = [dict(item) if isinstance(item, Mapping) else str(item) for item in ship]
        optional = {
            "timeout": timeout,
            "network": network or None,
            "stdout": stdout or None,
            "dir": dir,
            "ship": shipped or None,
        }
        spec.update({key: value for key, value in optional.items() if value is not None})
        self._thunks.append(spec)
        return Thunk(name, spec)

    def target(self, file: str, source: Ref | str) -> None:
        """Write `source`'s bytes to `file` in the output folder."""
        self._targets[file] = _ref(source)

    def to_dict(self) -> dict:
        """The job in the JSON job format."""
        return {"values": dict(self._values), "thunk": list(self._thunks), "targets": dict(self._targets)}

    def write(self, path: str | os.PathLike) -> None:
        """Writes the job as a JSON job file (`thunkmesh run FILE.json` runs it)."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")

    def run(self, out: str | os.PathLike = "out", args: Iterable[str] = (), cwd: str | None = None) -> dict:
        """Runs the job with `thunkmesh run` (extra flags in `args`, such as `["-j", "4"]` or
        `["--rendezvous", "host:7700", "--fingerprint", "..."]`) and returns its summary.

        Raises `ThunkmeshError` if the run did not succeed."""
        with tempfile.TemporaryDirectory(prefix="thunkmesh-job-") as tmp:
            job_file = os.path.join(tmp, "job.json")
            self.write(job_file)
            command = [binary(), "run", job_file, "--out", os.fspath(out), "--summary-json", "-", "-q", *args]
            done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
        summary = None
        try:
            summary = json.loads(done.stdout) if done.stdout.strip() else None
        except json.JSONDecodeError:
            pass
        if done.returncode != 0:
            said = (summary or {}).get("error") or done.stderr.strip() or f"thunkmesh exited {done.returncode}"
            raise ThunkmeshError(said, done.returncode, summary)
        return summary or {}
