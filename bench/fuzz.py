"""Fuzz afmc with hostile input for as long as asked: ``python bench/fuzz.py --cases 10000``.

Cases come from ``afmc.fuzz`` (mutated sample models, target TOML files and IR text; the kinds
are listed in its docstring and by ``--list``). Each case runs ``afmc ir`` / ``afmc check`` (or
``afmc targets`` / ``afmc check --target FILE``) in a worker process whose address space is
capped at 2 GiB (``RLIMIT_AS``), so that an allocation past it fails instead of swapping. The
parent kills and restarts a worker whose case overstays 10 s per command, and restarts one that
dies (a segfault, an abort in a C library). Every case must end in exit 0 or 2 (3: check's "does
not fit") with at most one ``afmc: error:`` line, no traceback, within 10 s and 2 GiB.

Options:
  --cases N        how many cases (default 10000)     --seed S      which cases (default 0)
  --workers W      parallel workers (default: CPUs)   --quick       check without the placement
                                                                    search (``afmc.fuzz.QUICK_PIPELINE``)
  --kinds K,K      only these mutation kinds (family:kind, comma-separated)
  --json FILE      also write the summary and every problem as JSON
  --replay CASE    run one case (``family:kind:seed``, as printed) here and show its output
  --list           list the mutation kinds

Exit status: 0 when no case broke the contract, 1 otherwise. Never run as a test.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from afmc.fuzz import (
    CASE_MEMORY,
    CASE_SECONDS,
    FAMILIES,
    Case,
    case_at,
    commands,
    kinds,
    limit_memory,
    run_case,
)

#: A case runs two commands; its worker gets this long before it counts as hung.
CASE_BUDGET = 2 * CASE_SECONDS + 5.0


@dataclass
class Worker:
    """One ``python -m afmc.fuzz worker`` process and the case it is running."""

    root: Path
    quick: bool
    log: IO[bytes]
    process: subprocess.Popen[bytes] = field(init=False)
    case: Case | None = None
    started: float = 0.0
    buffer: bytes = b""

    def __post_init__(self) -> None:
        self.start()

    def start(self) -> None:
        argv = [sys.executable, "-m", "afmc.fuzz", "worker", str(self.root)] + (["--quick"] if self.quick else [])
        self.process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
            preexec_fn=limit_memory, start_new_session=True,  # noqa: PLW1509  (no threads here)
        )
        self.buffer = b""
        os.set_blocking(self.process.stdout.fileno(), False)  # type: ignore[union-attr]

    def send(self, case: Case) -> None:
        self.case, self.started = case, time.monotonic()
        assert self.process.stdin is not None
        self.process.stdin.write(f"{case}\n".encode())
        self.process.stdin.flush()

    def kill(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()

    def restart(self) -> None:
        self.kill()
        self.start()


def run(args: argparse.Namespace) -> int:
    if args.kinds:
        chosen = [kind.split(":", 1) for kind in args.kinds.split(",")]
        cases = [Case.parse(f"{':'.join(chosen[i % len(chosen)])}:{args.seed * 1_000_003 + i}") for i in range(args.cases)]
    else:
        cases = [case_at(i, args.seed) for i in range(args.cases)]
    pending = collections.deque(cases)
    results: dict[str, dict[str, Any]] = {}
    selector = selectors.DefaultSelector()
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="afmc-fuzz-") as tmp:
        log = open(Path(tmp) / "workers.log", "wb")  # noqa: SIM115  (closed below)
        workers = [Worker(Path(tmp) / f"w{i}", args.quick, log) for i in range(args.workers)]

        def feed(worker: Worker) -> None:
            worker.case = None
            if pending:
                worker.send(pending.popleft())
                selector.register(worker.process.stdout, selectors.EVENT_READ, worker)  # type: ignore[arg-type]

        def record(case: Case, seconds: float, payload: dict[str, Any]) -> None:
            payload.update(case=str(case), seconds=round(seconds, 3))
            results[str(case)] = payload
            if payload["problems"]:
                print(f"PROBLEM {case}:", *payload["problems"], sep="\n  ", flush=True)
            if len(results) % 500 == 0 or len(results) == len(cases):
                print(f"{len(results)}/{len(cases)} cases, {time.monotonic() - start:.0f}s", flush=True)

        def finish(worker: Worker, payload: dict[str, Any]) -> None:
            selector.unregister(worker.process.stdout)  # type: ignore[arg-type]
            assert worker.case is not None
            record(worker.case, time.monotonic() - worker.started, payload)
            feed(worker)

        def retire(worker: Worker, problem: str) -> None:
            """The worker's case ended without a result (it died or hung): restart it."""
            assert worker.case is not None
            selector.unregister(worker.process.stdout)  # type: ignore[arg-type]
            case, seconds = worker.case, time.monotonic() - worker.started
            worker.restart()
            record(case, seconds, {"outcomes": [], "problems": [problem]})
            feed(worker)

        try:
            for worker in workers:
                feed(worker)
            while any(w.case is not None for w in workers):
                for key, _ in selector.select(timeout=1.0):
                    worker = key.data
                    chunk = worker.process.stdout.read()  # type: ignore[union-attr]
                    if chunk is None:  # nothing to read after all
                        continue
                    if chunk == b"":
                        code = worker.process.wait()
                        retire(worker, f"worker died with status {code}" + (f" (signal {-code})" if code < 0 else ""))
                        continue
                    worker.buffer += chunk
                    if b"\n" in worker.buffer:
                        line, worker.buffer = worker.buffer.split(b"\n", 1)
                        finish(worker, json.loads(line))
                now = time.monotonic()
                for worker in workers:
                    if worker.case is not None and now - worker.started > CASE_BUDGET:
                        retire(worker, f"hung: no result after {CASE_BUDGET:.0f}s (killed)")
        finally:  # also on Ctrl-C or SIGTERM (see main): no orphaned workers
            for worker in workers:
                worker.kill()
            log.close()
        worker_log = (Path(tmp) / "workers.log").read_text(errors="replace")
    elapsed = time.monotonic() - start
    return report(args, cases, results, elapsed, worker_log)


def report(args: argparse.Namespace, cases: list[Case], results: dict[str, dict[str, Any]], elapsed: float,
           worker_log: str) -> int:
    by_kind: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    commands_run = 0
    slowest = max((max((o[2] for o in r["outcomes"]), default=0.0), r["case"]) for r in results.values())
    for result in results.values():
        family_kind = result["case"].rsplit(":", 1)[0]
        for command, code, _ in result["outcomes"]:
            by_kind[family_kind][f"{command}:{code}"] += 1
            commands_run += 1
        if result["problems"]:
            by_kind[family_kind]["PROBLEM"] += 1
    problems = {name: r["problems"] for name, r in results.items() if r["problems"]}
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"\nafmc fuzz: {len(results)} cases ({commands_run} commands), seed {args.seed}, {args.workers} workers, "
          f"{'quick' if args.quick else 'full'} pipeline, {elapsed:.0f}s ({elapsed / max(len(results), 1) * 1000:.0f} ms/case "
          f"wall); slowest command {slowest[0]:.2f}s ({slowest[1]}); peak worker RSS "
          f"{children.ru_maxrss / 1024:.0f} MiB (limit {CASE_MEMORY >> 20} MiB address space)")
    print(f"{'family:kind':<28} outcomes (command:exit code)")
    for family_kind in sorted(by_kind):
        counts = ", ".join(f"{k} {v}" for k, v in sorted(by_kind[family_kind].items()))
        print(f"{family_kind:<28} {counts}")
    if worker_log.strip():
        print(f"\nworker stderr (C libraries):\n{worker_log[-2000:]}")
    print(f"\n{len(problems)} problem cases" + (": replay with python bench/fuzz.py --replay CASE" if problems else ""))
    for name, items in sorted(problems.items()):
        print(f"  {name}: {items[0][:300]}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "cases": len(results), "commands": commands_run, "seconds": round(elapsed, 1), "seed": args.seed,
            "workers": args.workers, "quick": args.quick, "peak_worker_rss_mib": children.ru_maxrss // 1024,
            "by_kind": {k: dict(v) for k, v in sorted(by_kind.items())}, "problems": problems,
        }, indent=2) + "\n")
    return 1 if problems else 0


def replay(text: str, quick: bool) -> int:
    """Run one case in this process and show what each command printed."""
    case = Case.parse(text)
    with tempfile.TemporaryDirectory(prefix="afmc-replay-") as tmp:
        result = run_case(case, Path(tmp), quick)
        for outcome in result.outcomes:
            print(f"$ afmc {' '.join(outcome.argv)}\nexit {outcome.code} in {outcome.seconds:.2f}s")
            print(outcome.stderr.rstrip() or "(no stderr)")
            print(f"-> {outcome.problem or 'ok'}\n")
    print("the mutated input is re-created by afmc.fuzz.write_case(Case.parse(...), Workspace(dir)); commands:",
          commands(case, Path("FILE"), quick))
    return 1 if result.problems else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--cases", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json")
    parser.add_argument("--kinds", help="only these, e.g. model:attribute,toml:value")
    parser.add_argument("--replay", nargs="+")
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # run the cleanup
    if args.list:
        for family in FAMILIES:
            print(f"{family}: {', '.join(kinds(family))}")
        return 0
    if args.replay:
        return max(replay(text, args.quick) for text in args.replay)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
