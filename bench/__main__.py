"""``python -m bench run --out bench/results/latest.json``: the whole comparison in one invocation."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

from bench import wrk
from bench.capacity import CAPACITY_COMMANDS, add_capacity_commands, run_capacity_command
from bench.front_door import COMMAND as FRONT_DOOR
from bench.front_door import add_front_door_command, run_front_door
from bench.run import Config, run
from bench.workers import WORKER_COMMANDS, add_worker_commands, run_worker_command

BEGIN, END = "<!-- bench report: begin -->", "<!-- bench report: end -->"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run every scenario; write JSON (and a PNG chart beside it)")
    p.add_argument("--out", type=Path, default=Path("bench/results/latest.json"))
    p.add_argument("--quick", action="store_true", help="a smoke run: a few hundred tasks, every scenario once")
    p.add_argument("--tasks", type=int, help="tasks per throughput run (default 3000)")
    p.add_argument("--http-tasks", type=int, help="single-request HTTP submissions per run (default 2000)")
    p.add_argument("--repeats", type=int, help="runs per scenario (default 5)")
    p.add_argument("--wrk-rounds", type=int, help="alternating wrk rounds of the front doors (default 5)")
    p.add_argument("--wrk-seconds", type=float, help="seconds of each wrk run (default 10)")
    p.add_argument("--monitor-seconds", type=float, help="sustained synthetic load on the monitor (default 60)")
    p.add_argument("--no-flower", action="store_true", help="skip the Flower comparison")
    p.add_argument("--no-chart", action="store_true", help="write only the JSON")
    p.add_argument("--profile", type=Path, help="py-spy the mallops processes into this directory (raw stacks)")
    p.add_argument("--workdir", type=Path, help="keep logs and data here (default: a temporary directory)")
    rp = sub.add_parser("report", help="print a report's tables as Markdown (for docs/performance.md)")
    rp.add_argument("file", type=Path)
    rp.add_argument(
        "--into",
        type=Path,
        help=f"replace the generated part of this Markdown file (between {BEGIN!r} and {END!r}) instead of printing",
    )
    add_capacity_commands(sub)
    add_worker_commands(sub)
    add_front_door_command(sub)
    cp = sub.add_parser("console-pages", help="each console page's p95 with 100,000 history rows (SQLite, PostgreSQL)")
    cp.add_argument("--rows", type=int, default=100_000)
    cp.add_argument("--requests", type=int, default=100, help="timed requests per page")
    cp.add_argument("--database", choices=("sqlite", "postgres", "both"), default="both")
    cp.add_argument("--out", type=Path, default=Path("bench/results/console-pages.json"))
    args = parser.parse_args(argv)
    if args.command in WORKER_COMMANDS:
        run_worker_command(args)
        return
    if args.command == FRONT_DOOR:
        if wrk.binary() is None:
            parser.error(wrk.WRK_MISSING)
        run_front_door(args)
        return
    if args.command in CAPACITY_COMMANDS:
        run_capacity_command(args)
        return
    if args.command == "console-pages":
        from bench import console_pages

        databases = ["sqlite", "postgres"] if args.database == "both" else [args.database]
        console_pages.run(databases, args.rows, args.requests, args.out)
        return
    if args.command == "report":
        from bench.report import markdown

        text = markdown(json.loads(args.file.read_text()))
        if args.into is None:
            print(text, end="")
            return
        doc = args.into.read_text()
        head, _, rest = doc.partition(BEGIN)
        _, found, tail = rest.partition(END)
        if not found:
            parser.error(f"{args.into} has no {BEGIN} ... {END} block")
        args.into.write_text(f"{head}{BEGIN}\n{text}{END}{tail}")
        return

    if wrk.binary() is None:
        parser.error(wrk.WRK_MISSING)
    config = Config.quick() if args.quick else Config()
    for field in ("tasks", "http_tasks", "repeats", "monitor_seconds", "wrk_rounds", "wrk_seconds"):
        if getattr(args, field) is not None:
            setattr(config, field, getattr(args, field))
    if args.profile:
        config.profile_dir = str(args.profile)
    if args.no_flower:
        config.flower = False
    chart = not args.no_chart and importlib.util.find_spec("matplotlib") is not None
    run(config, args.out, chart=chart, workdir=args.workdir)


if __name__ == "__main__":
    main()
