"""The driver of ``benchmarks/accelerator_check.sh``: the accelerator path, proven in one run.

On a machine with an accelerator (one NVIDIA GPU, say) and the CUDA build of JAX already
installed, it installs this package without dependencies (``pip install --no-deps -e .``,
no index needed) unless the interpreter already imports it from this checkout, then runs,
each section with its own time limit inside one overall budget (8 minutes by default):

1. ``environment``: the interpreter, JAX and its devices, the packages the checks need;
2. ``install``: the package importable from outside the checkout;
3. ``kernels``: the one-pass CPU kernels built (the host update of ``offload(...,
   compute="host")`` runs them);
4. the tests, in one pytest run (one process start instead of five; one time limit, and
   180 s per test where pytest-timeout is installed; pytest-xdist workers on an
   accelerator) on the accelerator's backend (``JAX_PLATFORMS=cuda,cpu``: JAX's default
   device is the accelerator, the host's CPU is there too), counted per section:
   ``parity`` (our optimizers against optax's), ``fallback`` (the one-pass step takes its
   XLA form off the CPU), ``zero`` (ZeRO on one device, with and without offload),
   ``offload`` (the state in host memory), ``checkpoint`` (a checkpoint written by a
   process on the CPU backend restored on the accelerator, and the offload checkpoints);
5. ``bench``: ``scirs2-optim bench`` configs a-i;
6. ``offload_bench``: ``scirs2-optim bench --offload`` at 1B and 4B parameters.

Without an accelerator it runs the same sections on the CPU, with a clear "skipped" line
for what needs one: the bench runs configs a and g only (i needs an accelerator), the
offload rows run at 10M parameters, and the checkpoint goes from CPU to CPU.

It writes ``accelerator_check.json`` (each section's status -- pass, fail or skip -- with
its time and figures, the JAX version and the devices), ``accelerator_check.log`` (every
line of every command), ``bench.json`` and ``offload.json`` into the output directory, and
exits 1 if any section failed, 0 otherwise. Standard library only: it runs before the
package is installed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ACCELERATOR_TESTS = "tests/bench/test_accelerator_check.py"

# Section -> what it runs: a path or glob, and of its tests all, those whose names start
# with "prefix", or those in "names". "cpu_only" files and "cpu_only_names" tests need
# several devices (the suite's eight CPU devices) and are left out on an accelerator, which
# has one device here.
TEST_SECTIONS: dict[str, list[dict[str, Any]]] = {
    "parity": [
        {"path": "tests/core/test_parity.py"},
        {"path": ACCELERATOR_TESTS, "prefix": "test_parity_"},
    ],
    "fallback": [
        {
            "path": "tests/engine/test_fused.py",
            "names": [
                "test_fallback_for_bf16_and_errors_when_required",
                "test_bad_fused_arguments",
                "test_chain_without_a_fused_step_is_optax_chain",
                "test_state_is_the_chains_state",
            ],
        },
        {"path": ACCELERATOR_TESTS, "prefix": "test_fallback_"},
    ],
    "zero": [{"path": ACCELERATOR_TESTS, "prefix": "test_zero_"}],
    "offload": [
        {"path": "tests/engine/test_offload*.py"},
        {"path": "tests/flax/test_offload*.py"},
        {"path": "tests/parallel/test_offload*.py", "cpu_only": True},
        {"path": ACCELERATOR_TESTS, "prefix": "test_offload_"},
    ],
    "checkpoint": [
        {
            "path": "tests/checkpoint/test_offload_checkpoint.py",
            "cpu_only_names": ["test_target_memory_kind_is_kept"],  # a 2-device mesh
        },
        {"path": ACCELERATOR_TESTS, "prefix": "test_checkpoint_"},
    ],
}

BENCH_CONFIGS = {"accelerator": "a b c d e f g h i", "cpu": "a g"}
OFFLOAD_PARAMS = {"accelerator": "1B,4B", "cpu": "10M"}

# Seconds: each section's own limit, and the least it is worth starting with.
LIMITS = {
    "environment": (90, 10),
    "install": (180, 10),
    "kernels": (120, 10),
    "tests": (240, 60),
    "bench": (150, 45),
    "offload_bench": (240, 60),
}
# What the later sections are guaranteed of the budget when an earlier one runs long.
RESERVE = {"tests": 45 + 60, "bench": 60}

PROBE = r"""
import json, sys
from importlib import metadata
out = {"python": sys.version.split()[0], "executable": sys.executable, "packages": {}}
for name in ("jax", "jaxlib", "optax", "flax", "orbax-checkpoint", "xxhash", "numpy", "pytest",
             "pytest-xdist", "pytest-timeout", "setuptools", "pip"):
    try:
        out["packages"][name] = metadata.version(name)
    except metadata.PackageNotFoundError:
        out["packages"][name] = None
try:
    import jax
    out["jax"] = jax.__version__
    out["backend"] = jax.default_backend()
    out["devices"] = []
    for d in jax.devices():
        stats = d.memory_stats() or {}
        out["devices"].append({
            "id": d.id, "platform": d.platform, "kind": d.device_kind,
            "memory_kinds": [m.kind for m in d.addressable_memories()],
            "bytes_limit": stats.get("bytes_limit"),
        })
    out["cpu_devices"] = len(jax.devices("cpu"))
except Exception as err:
    out["error"] = repr(err)
print("PROBE " + json.dumps(out))
"""

INSTALLED = "import scirs2_optim_jax, sys; print('FROM ' + scirs2_optim_jax.__file__)"

# A file pytest could not collect (its -rfE summary line).
_COLLECTION_ERROR = re.compile(r"^ERROR (?P<path>\S+\.py)(?:\s|$)")
# --durations=0 lines: "0.52s call     tests/x.py::test_y[a]".
_DURATION = re.compile(r"^(?P<s>\d+(?:\.\d+)?)s\s+(?:setup|call|teardown)\s+(?P<id>\S+::\S+)")
# pytest -v lines, with or without xdist's "[gw0] [ 10%]" prefix.
_OUTCOME = re.compile(
    r"(?:^|\s)(?P<a>\S+::\S+)\s+(?P<o1>PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b"
    r"|\b(?P<o2>PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\s+(?P<b>\S+::\S+)"
)


@dataclasses.dataclass
class Section:
    """One section's result."""

    name: str
    status: str = "pending"  # pass, fail or skip
    seconds: float = 0.0
    detail: str = ""
    data: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Command:
    """What a command did."""

    returncode: int | None
    output: str
    seconds: float
    timed_out: bool


class Check:
    """Runs the sections in order, logging everything, within one budget."""

    def __init__(self, out: Path, budget: float, python: str, mode: str | None) -> None:
        self.out = out
        self.budget = budget
        self.python = python
        self.forced_mode = mode
        self.start = time.monotonic()
        self.started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        self.log = (out / "accelerator_check.log").open("w", encoding="utf-8")
        self.sections: dict[str, Section] = {}
        self.environment: dict[str, Any] = {}
        self.mode = "cpu"
        self.test_platforms: str | None = None
        self.env = dict(os.environ)
        self.env["PYTHONUNBUFFERED"] = "1"
        self.bench_configs: str | None = None  # else BENCH_CONFIGS[mode]
        self.offload_params: str | None = None  # else OFFLOAD_PARAMS[mode]
        self.notes: list[str] = []  # what was left out, and why

    # -- output ------------------------------------------------------------------------

    def say(self, text: str) -> None:
        print(text, flush=True)
        self.log.write(text + "\n")
        self.log.flush()

    def note(self, text: str) -> None:
        """Says and keeps (in the JSON's notes) what is left out."""
        self.say(text)
        self.notes.append(text)

    def remaining(self) -> float:
        return self.budget - (time.monotonic() - self.start)

    def run(
        self, argv: list[str], timeout: float, env: dict[str, str] | None = None, cwd: Path = REPO
    ) -> Command:
        """Runs ``argv``, every output line to the log and the console, killed (with its
        process group) after ``timeout`` seconds."""
        shown = ["<program>" if "\n" in arg else arg for arg in argv]
        self.say(f"$ {' '.join(shown)}   (limit {timeout:.0f} s)")
        start = time.monotonic()
        process = subprocess.Popen(  # noqa: S603  our interpreter or pip, fixed arguments
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env=env or self.env,
            cwd=cwd,
            start_new_session=True,
        )
        lines: list[str] = []

        stream = process.stdout  # a pipe: stdout=PIPE

        def read() -> None:
            for line in stream or ():
                lines.append(line)
                self.say("  | " + line.rstrip("\n"))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        timed_out = False
        try:
            process.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            timed_out = True
            self.say(f"  ! over its {timeout:.0f} s limit: killing process group {process.pid}")
            with contextlib.suppress(ProcessLookupError):  # it ended on its own meanwhile
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        reader.join(timeout=10)
        if stream is not None and not reader.is_alive():
            stream.close()
        return Command(process.returncode, "".join(lines), time.monotonic() - start, timed_out)

    def limit(self, name: str, reserve: float = 0.0) -> float | None:
        """The time ``name`` may take now: its own limit, less what is left of the budget
        after ``reserve``; None when that is below the least worth starting."""
        cap, least = LIMITS[name]
        allowed = min(cap, self.remaining() - reserve)
        return allowed if allowed >= least else None

    def section(self, name: str) -> Section:
        section = Section(name)
        self.sections[name] = section
        self.say(f"\n=== {name} ({self.remaining():.0f} s of the budget left)")
        return section

    def finish(self, section: Section, status: str, detail: str = "") -> None:
        section.status = status
        section.detail = detail
        mark = {"pass": "ok", "fail": "FAILED", "skip": "skipped"}[status]
        self.say(f"--- {section.name}: {mark}" + (f": {detail}" if detail else ""))

    def out_of_time(self, section: Section) -> None:
        self.finish(section, "fail", f"not started: {self.remaining():.0f} s of the budget left")

    # -- sections ----------------------------------------------------------------------

    def check_environment(self) -> bool:
        section = self.section("environment")
        start = time.monotonic()
        env = dict(self.env)
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        result = self.run([self.python, "-c", PROBE], self.limit("environment") or 30, env=env)
        section.seconds = time.monotonic() - start
        probe = _probe_line(result.output)
        if probe is None or "error" in probe:
            why = probe.get("error") if probe else f"exit {result.returncode}"
            self.finish(section, "fail", f"JAX does not start here: {why}")
            return False
        self.environment = probe
        backend = probe["backend"]
        self.mode = self.forced_mode or ("cpu" if backend == "cpu" else "accelerator")
        gpus = self.nvidia_gpus()
        if gpus:
            probe["nvidia_smi"] = gpus
        if gpus and backend == "cpu" and self.forced_mode is None:
            section.data = probe
            self.finish(
                section,
                "fail",
                f"an NVIDIA GPU is here ({gpus[0]}) but JAX's default backend is the CPU: "
                "JAX's CUDA plugin is missing or did not start (see the log); --mode cpu "
                "checks the CPU alone",
            )
            return False
        if self.mode == "cpu":
            self.env["JAX_PLATFORMS"] = "cpu"  # also where an accelerator is left unused
        section.data = {"mode": self.mode, **probe}
        if self.mode == "accelerator":
            platforms = self.find_test_platforms(backend)
            if platforms is None:
                self.finish(section, "fail", f"no JAX_PLATFORMS value makes {backend} default")
                return False
            section.data["test_platforms"] = self.test_platforms = platforms
        devices = ", ".join(f"{d['platform']}:{d['kind']}" for d in probe["devices"])
        self.finish(
            section,
            "pass",
            f"{self.mode} mode: jax {probe['jax']}, backend {backend}, devices {devices}",
        )
        if self.mode == "cpu":
            skipped = self.section("accelerator_only")
            self.finish(
                skipped,
                "skip",
                "no accelerator here: the checks run on the CPU backend (the bench at configs "
                "a and g, the offload rows at 10M parameters, the checkpoint from CPU to "
                "CPU); the accelerator-only parts (the tests on an accelerator backend, bench "
                "config i, the offload rows at 1B and 4B parameters) are skipped",
            )
        return True

    def nvidia_gpus(self) -> list[str]:
        """``nvidia-smi``'s name, memory and driver of each NVIDIA GPU here (none: [])."""
        smi = shutil.which("nvidia-smi")
        if smi is None:
            return []
        query = "--query-gpu=name,memory.total,driver_version"
        result = self.run([smi, query, "--format=csv,noheader"], 30)
        if result.returncode != 0:  # no GPU it can reach (its message is in the log)
            return []
        return [line.strip() for line in result.output.splitlines() if line.strip()]

    def find_test_platforms(self, backend: str) -> str | None:
        """The ``JAX_PLATFORMS`` that makes the accelerator JAX's default backend with the
        CPU beside it (the tests' conftest would otherwise pick the CPU alone)."""
        candidates = {"gpu": ["cuda,cpu", "rocm,cpu", "gpu,cpu"]}.get(backend, [f"{backend},cpu"])
        code = "import jax; print('BACKEND', jax.default_backend(), len(jax.devices('cpu')))"
        for candidate in candidates:
            env = dict(self.env, JAX_PLATFORMS=candidate, XLA_PYTHON_CLIENT_PREALLOCATE="false")
            result = self.run([self.python, "-c", code], 60, env=env)
            words = result.output.split()
            if "BACKEND" in words and words[words.index("BACKEND") + 1] == backend:
                return candidate
        return None

    def check_install(self) -> None:
        section = self.section("install")
        start = time.monotonic()
        where = self.installed_from()
        if where is not None:
            section.data["module"] = where
            section.seconds = time.monotonic() - start
            self.finish(section, "pass", f"already installed from this checkout: {where}")
            return
        limit = self.limit("install")
        if limit is None:
            self.out_of_time(section)
            return
        pip = [self.python, "-m", "pip", "install", "--no-deps", "--no-build-isolation"]
        result = self.run([*pip, "--no-index", "-e", str(REPO)], limit)
        where = self.installed_from()
        section.seconds = time.monotonic() - start
        if where is None:
            # The checks still run from the checkout itself, so the run tells all it can.
            self.env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(REPO), self.env.get("PYTHONPATH")) if p
            )
            self.finish(
                section,
                "fail",
                f"pip install --no-deps -e . failed (exit {result.returncode}); the "
                "remaining sections import the package from the checkout (PYTHONPATH)",
            )
            return
        section.data["module"] = where
        self.finish(section, "pass", f"pip install --no-deps -e . -> {where}")

    def installed_from(self) -> str | None:
        """Where the interpreter imports the package from when started outside the checkout
        (so not from the current directory); None unless from this checkout."""
        env = {k: v for k, v in self.env.items() if k != "PYTHONPATH"}
        env["JAX_PLATFORMS"] = "cpu"
        result = self.run([self.python, "-c", INSTALLED], 60, env=env, cwd=Path("/"))
        for line in result.output.splitlines():
            if line.startswith("FROM "):
                path = Path(line[5:]).resolve()
                return str(path) if path.is_relative_to(REPO) else None
        return None

    def check_kernels(self) -> None:
        section = self.section("kernels")
        limit = self.limit("kernels")
        if limit is None:
            self.out_of_time(section)
            return
        env = dict(self.env, JAX_PLATFORMS="cpu")
        result = self.run([self.python, "-m", "scirs2_optim_jax", "kernels", "build"], limit, env)
        section.seconds = result.seconds
        if result.returncode == 0:
            self.finish(section, "pass", result.output.strip().splitlines()[0])
        else:
            self.finish(section, "fail", _why(result))

    def test_selection(self) -> tuple[list[str], dict[str, list[dict[str, Any]]], list[str]]:
        """The pytest arguments, each section's entries resolved to files, and the notes
        on what is left out."""
        arguments: list[str] = []
        resolved: dict[str, list[dict[str, Any]]] = {}
        notes: list[str] = []
        for name, entries in TEST_SECTIONS.items():
            resolved[name] = []
            for entry in entries:
                files = sorted(REPO.glob(entry["path"]))
                if entry.get("cpu_only") and self.mode == "accelerator":
                    notes.append(
                        f"[skip] {name}: {entry['path']} needs the suite's 8 CPU devices; on "
                        "the accelerator ZeRO and offload run on one device "
                        f"({ACCELERATOR_TESTS} -k zero)"
                    )
                    continue
                if not files:
                    notes.append(f"[missing] {name}: no test file matches {entry['path']}")
                    resolved[name].append({**entry, "files": [], "missing": [entry["path"]]})
                    continue
                missing = []
                for file in files:
                    relative = file.relative_to(REPO).as_posix()
                    if self.mode == "accelerator":
                        for test in entry.get("cpu_only_names", []):
                            arguments += ["--deselect", f"{relative}::{test}"]
                            notes.append(f"[skip] {name}: {relative}::{test} needs several devices")
                    names = entry.get("names")
                    if names is None:
                        if relative not in arguments:
                            arguments.append(relative)
                        continue
                    text = file.read_text(encoding="utf-8")
                    for test in names:
                        if re.search(rf"^def {re.escape(test)}\(", text, re.MULTILINE):
                            arguments.append(f"{relative}::{test}")
                        else:
                            missing.append(f"{relative}::{test}")
                files_rel = [f.relative_to(REPO).as_posix() for f in files]
                resolved[name].append({**entry, "files": files_rel, "missing": missing})
        return arguments, resolved, notes

    def check_tests(self) -> None:
        arguments, resolved, notes = self.test_selection()
        sections = {name: self.section(name) for name in TEST_SECTIONS}
        for note in notes:
            self.say(note)
        self.notes += notes
        limit = self.limit("tests", reserve=RESERVE["tests"])
        if limit is None:
            for section in sections.values():
                self.out_of_time(section)
            return
        env = dict(self.env)
        pytest = [self.python, "-m", "pytest", "-v", "-rfE", "--tb=short", "-p", "no:cacheprovider"]
        pytest += ["--continue-on-collection-errors", "--durations=0", "--durations-min=0"]
        # Plugins an image may carry that these tests do not use (pytest-benchmark warns
        # under xdist, and the suite turns warnings into errors).
        pytest += ["-p", "no:benchmark", "-p", "no:pytest_cov"]
        packages = self.environment.get("packages", {})
        if self.mode == "accelerator":
            env["JAX_PLATFORMS"] = self.test_platforms or ""
            # Several test processes share the device: each takes memory as it needs it.
            env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
            if packages.get("pytest-xdist"):
                workers = max(1, min(8, (os.cpu_count() or 2) // 2))
                pytest += ["-n", str(workers)]
        elif packages.get("pytest-xdist"):
            pytest += ["-n", "0"]
        if packages.get("pytest-timeout"):
            pytest += ["--timeout", "180"]
        result = self.run([*pytest, *arguments], limit, env=env)
        outcomes = _outcomes(result.output)
        durations: dict[str, float] = {}
        for line in result.output.splitlines():
            if m := _DURATION.match(line.strip()):
                durations[m.group("id")] = durations.get(m.group("id"), 0.0) + float(m.group("s"))
        broken = {
            m.group("path")
            for line in result.output.splitlines()
            if (m := _COLLECTION_ERROR.match(line.strip()))
        }
        for name, section in sections.items():
            self.score(section, resolved[name], outcomes, result, broken, durations)

    def score(
        self,
        section: Section,
        entries: list[dict[str, Any]],
        outcomes: dict[str, str],
        result: Command,
        broken: set[str],
        durations: dict[str, float],
    ) -> None:
        """A test section's status from the outcomes of its tests in the pytest run."""
        counts: dict[str, int] = {}
        failed = sorted(f"{f} (not collected)" for e in entries for f in e["files"] if f in broken)
        missing = [m for e in entries for m in e["missing"]]
        ran = 0
        seconds = 0.0
        for nodeid, outcome in outcomes.items():
            if not any(_belongs(nodeid, e) for e in entries):
                continue
            ran += 1
            seconds += durations.get(nodeid, 0.0)
            counts[outcome] = counts.get(outcome, 0) + 1
            if outcome in ("FAILED", "ERROR", "XPASS"):
                failed.append(nodeid)
        # The tests' own time (setup, call, teardown); the pytest run's wall time is shared.
        section.seconds = seconds
        section.data = {
            "pytest_wall_s": round(result.seconds, 1),
            "files": sorted({f for e in entries for f in e["files"]}),
            "counts": counts,
            "failed": failed,
            "missing": missing,
        }
        summary = ", ".join(f"{n} {o.lower()}" for o, n in sorted(counts.items())) or "no tests"
        if failed:
            self.finish(section, "fail", f"{summary}: {', '.join(failed[:5])}")
        elif result.timed_out and ran == 0:
            self.finish(section, "fail", "the test run ran out of time before these ran")
        elif result.timed_out:
            self.finish(section, "fail", f"{summary}; the test run ran out of time")
        elif ran == 0:
            self.finish(section, "fail", f"no test ran (pytest exit {result.returncode})")
        elif missing:
            self.finish(section, "fail", f"{summary}; missing: {', '.join(missing)}")
        elif result.returncode not in (0, 1):
            self.finish(section, "fail", f"{summary}; pytest exit {result.returncode}")
        else:
            self.finish(section, "pass", summary)

    def check_bench(self) -> None:
        section = self.section("bench")
        configs = self.bench_configs or BENCH_CONFIGS[self.mode]
        if self.mode == "cpu" and self.bench_configs is None:
            self.note(
                "[skip] bench: configs a and g only on the CPU, 3 repeats (i is accelerator-"
                "only; the GPU run takes a-i)"
            )
        limit = self.limit("bench", reserve=RESERVE["bench"])
        if limit is None:
            self.out_of_time(section)
            return
        target = self.out / "bench.json"
        repeats = "5" if self.mode == "accelerator" else "3"
        argv = [self.python, "-m", "scirs2_optim_jax", "bench", *configs.split()]
        argv += ["--repeats", repeats, "--no-torch", "--json", str(target)]
        result = self.run(argv, limit)
        section.seconds = result.seconds
        rows = _json_rows(target, "results")
        section.data = {"configs": configs.split(), "results": rows}
        if result.returncode != 0 or rows is None:
            self.finish(section, "fail", _why(result))
            return
        got = [row["config"] for row in rows]
        if got != configs.split():
            self.finish(section, "fail", f"expected configs {configs}, got {' '.join(got)}")
            return
        shown = ", ".join(
            f"{r['config']} {r['ours_ms']:.2f} ms ({r['speedup']:.2f}x)" for r in rows
        )
        self.finish(section, "pass", shown)

    def check_offload_bench(self) -> None:
        section = self.section("offload_bench")
        params = self.offload_params or OFFLOAD_PARAMS[self.mode]
        if self.mode == "cpu" and self.offload_params is None:
            self.note("[skip] offload rows at 1B and 4B parameters need an accelerator: 10M here")
        limit = self.limit("offload_bench")
        if limit is None:
            self.out_of_time(section)
            return
        target = self.out / "offload.json"
        argv = [self.python, "-m", "scirs2_optim_jax", "bench", "--offload", "--params", params]
        argv += ["--repeats", "3", "--json", str(target)]
        env = dict(self.env)
        if self.mode == "accelerator":
            env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.9")
        result = self.run(argv, limit, env=env)
        section.seconds = result.seconds
        rows = _json_rows(target, "offload")
        section.data = {"params": params, "rows": rows}
        if result.returncode != 0 or rows is None:
            self.finish(section, "fail", _why(result))
            return
        expected = 5 * len(params.split(","))
        bad = [r["variant"] for r in rows if not (r["ms"] > 0)]
        if len(rows) != expected or bad:
            self.finish(section, "fail", f"expected {expected} rows with times, got {len(rows)}")
            return
        shown = "; ".join(
            f"{r['variant']}@{_count(r['num_params'])} {r['ms']:.1f} ms"
            + (f" ({r['ratio']:.2f}x)" if r["ratio"] is not None else "")
            for r in rows
        )
        self.finish(section, "pass", shown)

    # -- the whole run ------------------------------------------------------------------

    def main(self) -> int:
        self.say(f"accelerator check of {REPO} with {self.python}, budget {self.budget:.0f} s")
        self.say(f"output: {self.out}")
        try:
            if self.check_environment():
                self.check_install()
                self.check_kernels()
                self.check_tests()
                self.check_bench()
                self.check_offload_bench()
        except Exception as err:  # the JSON and the log are written whatever broke
            self.finish(self.section("driver"), "fail", f"the check itself broke: {err!r}")
        return self.write()

    def write(self) -> int:
        failed = [s.name for s in self.sections.values() if s.status == "fail"]
        wall = time.monotonic() - self.start
        document = {
            "ok": not failed,
            "failed": failed,
            "mode": self.mode,
            "started": self.started,
            "wall_s": round(wall, 1),
            "budget_s": self.budget,
            "repo": str(REPO),
            "python": self.python,
            "jax": self.environment.get("jax"),
            "backend": self.environment.get("backend"),
            "devices": self.environment.get("devices"),
            "sections": {name: dataclasses.asdict(s) for name, s in self.sections.items()},
            "notes": self.notes,
        }
        path = self.out / "accelerator_check.json"
        path.write_text(json.dumps(document, indent=2, default=str), encoding="utf-8")
        self.say("\n=== summary")
        for section in self.sections.values():
            self.say(
                f"{section.name:<17}{section.status:<6}{section.seconds:>7.1f} s  {section.detail}"
            )
        verdict = "FAILED: " + ", ".join(failed) if failed else "all checks passed"
        self.say(f"{verdict} in {wall:.0f} s; wrote {path} and {self.log.name}")
        self.log.close()
        return 1 if failed else 0


def _count(n: int) -> str:
    for unit, scale in (("B", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def _probe_line(output: str) -> dict[str, Any] | None:
    for line in output.splitlines():
        if line.startswith("PROBE "):
            return json.loads(line[6:])
    return None


def _why(result: Command) -> str:
    if result.timed_out:
        return f"over its time limit after {result.seconds:.0f} s"
    tail = [line for line in result.output.strip().splitlines() if line.strip()][-1:]
    return f"exit {result.returncode}" + (f": {tail[0][:300]}" if tail else "")


def _outcomes(output: str) -> dict[str, str]:
    """Each test's outcome from pytest's -v lines (the last word for a test wins: a test
    that passed and then errored in teardown counts as an error)."""
    outcomes: dict[str, str] = {}
    for line in output.splitlines():
        match = _OUTCOME.search(line)
        if match is None:
            continue
        nodeid = match.group("a") or match.group("b")
        outcome = match.group("o1") or match.group("o2")
        if outcomes.get(nodeid) in ("FAILED", "ERROR"):
            continue
        outcomes[nodeid] = outcome
    return outcomes


def _belongs(nodeid: str, entry: dict[str, Any]) -> bool:
    path, _, test = nodeid.partition("::")
    if path not in entry["files"]:
        return False
    function = test.split("[", 1)[0]
    if "prefix" in entry:
        return function.startswith(entry["prefix"])
    if "names" in entry:
        return function in entry["names"]
    return True


def _json_rows(path: Path, key: str) -> list[dict[str, Any]] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))[key]
    except (OSError, ValueError, KeyError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="benchmarks/accelerator_check.sh", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument(
        "--budget", type=float, default=480.0, help="seconds for the whole run (default 480)"
    )
    parser.add_argument(
        "--mode",
        choices=("accelerator", "cpu"),
        default=None,
        help="force a mode (default: accelerator when JAX's default backend is not the CPU)",
    )
    parser.add_argument(
        "--bench-configs",
        default=None,
        metavar="CONFIGS",
        help=f"the bench configs, space-separated (default: {BENCH_CONFIGS['accelerator']!r} on "
        f"an accelerator, {BENCH_CONFIGS['cpu']!r} on the CPU)",
    )
    parser.add_argument(
        "--offload-params",
        default=None,
        metavar="COUNTS",
        help=f"the offload rows' parameter counts (default: {OFFLOAD_PARAMS['accelerator']} on "
        f"an accelerator, {OFFLOAD_PARAMS['cpu']} on the CPU)",
    )
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="the interpreter the checks run with (default: this one)",
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    checker = Check(args.out.resolve(), args.budget, args.python, args.mode)
    checker.bench_configs = args.bench_configs
    checker.offload_params = args.offload_params
    return checker.main()


if __name__ == "__main__":
    sys.exit(main())
