#!/usr/bin/env python3
"""Inject faults into real training and preprocessing runs and check that each one is survived.

Every fault runs the real command (pretrain_ponder.py or tools/preprocess_data.py, as
subprocesses, on CPU with a tiny model) and is judged "survived" when either

* the run continued: resubmitting the same command finished the training with losses and a
  final checkpoint bit-identical to those of an uninterrupted reference run (kills, SIGTERM,
  damaged checkpoints: the resume cases), or went on as documented (NaN with --rollback-on-nan);
* or it stopped cleanly: a non-zero exit status, no Python traceback, one ``error:`` line on
  stderr naming the problem, and nothing written half (no checkpoint directory or output file
  left that a later run would trust).

"data lost" is "yes" when a fault left something wrong that a later run would use (a
checkpoint or dataset file written half, losses that differ from the reference), else "no".

    python tools/fault_injection.py --quick               # >= 20 faults, minutes on 2 cores
    python tools/fault_injection.py                       # more kill points, every fault
    python tools/fault_injection.py --faults layout-tp-heads preprocess-empty-input
    python tools/fault_injection.py --list                # the fault names

Prints a table (fault, tried, survived, data lost) and as its last line
``faults: N injected, M survived, L lost``; ``--json PATH`` writes the results. The exit status
is 1 when a fault was not survived. ``--seed`` fixes the random kill moments (the moments are
in units of the reference run's own iteration time, so they land at the same place in the run
on a faster or slower machine).

This file is the command line; the faults live in tools/faults/ (the shared harness, one module
per kind of fault, and the catalogue of names).
"""

import argparse
import dataclasses
import json
import os
import random
import shutil
import sys
import tempfile
import time
from typing import Callable, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # this checkout

from tools.faults.catalogue import Fault, build_faults  # noqa: E402
from tools.faults.harness import Outcome, Workspace  # noqa: E402


def run_faults(faults: List[Fault], workspace: Workspace,
               progress: Optional[Callable[[Outcome], None]] = None) -> List[Outcome]:
    outcomes = []
    for fault in faults:
        start = time.monotonic()
        try:
            outcome = fault.inject(workspace, fault.name)
        except Exception as error:  # the tool's own failure: reported, never hidden
            outcome = Outcome(fault.name, "(the injection itself failed)", False, False,
                              f"{type(error).__name__}: {error}")
        outcome.seconds = round(time.monotonic() - start, 1)
        outcomes.append(outcome)
        if progress is not None:
            progress(outcome)
    return outcomes


def format_table(outcomes: List[Outcome]) -> str:
    rows = [("fault", "tried", "survived", "data lost")]
    for outcome in outcomes:
        rows.append((outcome.fault, outcome.tried,
                     ("yes" if outcome.survived else "NO") if outcome.injected
                     else "not injected", "YES" if outcome.data_lost else "no"))
    lines = ["| " + " | ".join(row) + " |" for row in rows]
    lines.insert(1, "|---|---|---|---|")
    return "\n".join(lines)


def summary_line(outcomes: List[Outcome]) -> str:
    injected = [o for o in outcomes if o.injected]
    survived = sum(o.survived for o in injected)
    lost = sum(o.data_lost for o in outcomes)
    return f"faults: {len(injected)} injected, {survived} survived, {lost} lost"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="the quick subset (>= 20 faults, a few kill points)")
    parser.add_argument("--faults", nargs="+", metavar="NAME",
                        help="run only these faults (see --list)")
    parser.add_argument("--list", action="store_true", help="print the fault names and exit")
    parser.add_argument("--seed", type=int, default=1234,
                        help="seed of the random kill moments (default: %(default)s)")
    parser.add_argument("--json", metavar="PATH", help="write the results here as JSON")
    parser.add_argument("--workdir", help="keep the runs' files here (default: a temporary "
                        "folder, deleted at the end)")
    parser.add_argument("--timeout", type=float, default=900,
                        help="seconds one command may run (default: %(default)s)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    faults = build_faults(full=not args.quick, rng=random.Random(args.seed))
    if args.list:
        for fault in faults:
            print(f"{fault.name}{'  (quick)' if fault.quick else ''}")
        return 0
    if args.faults:
        known = {fault.name: fault for fault in faults}
        unknown = [name for name in args.faults if name not in known]
        if unknown:
            print(f"error: unknown faults {unknown}; --list shows them", file=sys.stderr)
            return 2
        faults = [known[name] for name in args.faults]
    elif args.quick:
        faults = [fault for fault in faults if fault.quick]
    root = args.workdir or tempfile.mkdtemp(prefix="fault_injection_")
    os.makedirs(root, exist_ok=True)
    workspace = Workspace(root, args.seed, args.timeout)
    start = time.monotonic()

    def report(outcome: Outcome) -> None:
        verdict = ("survived" if outcome.survived else "NOT SURVIVED") if outcome.injected \
            else "not injected"
        print(f"[{outcome.seconds:6.1f}s] {outcome.fault}: {verdict}: {outcome.detail}",
              flush=True)

    try:
        outcomes = run_faults(faults, workspace, report)
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    seconds = time.monotonic() - start
    print()
    print(format_table(outcomes))
    print(f"wall time: {seconds:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"outcomes": [dataclasses.asdict(o) for o in outcomes],
                       "summary": summary_line(outcomes), "seed": args.seed,
                       "quick": args.quick, "seconds": round(seconds, 1)}, f, indent=1)
    print(summary_line(outcomes))
    injected = [o for o in outcomes if o.injected]
    return 0 if all(o.survived for o in injected) and not any(o.data_lost for o in outcomes) \
        else 1


if __name__ == "__main__":
    sys.exit(main())
