#!/usr/bin/env python3
"""Build the labelled evaluation clips from the real footage (detectors/eval_clips.py).

    .venv/bin/python scripts/make_eval_clips.py                 # all clips -> var/eval-clips/
    .venv/bin/python scripts/make_eval_clips.py --only crowd_square van_stops_road --out /tmp/clips
    .venv/bin/python scripts/make_eval_clips.py --write-sidecars  # rewrite eval/clips/*.json from the recipes
    .venv/bin/python scripts/make_eval_clips.py --check           # do the committed sidecars match?

Needs var/footage/vtest.avi (scripts/fetch_footage.sh). Videos are H.264 through ffmpeg (OpenCV's
mp4v without it); each gets a copy of its committed sidecar, and MANIFEST.json records what the
set was built from, so `--if-stale` (and the tests) rebuild only when the generator, the footage
or a sidecar changed. Then: `gridwatch eval detectors var/eval-clips`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from gridwatch.detectors import eval_clips as E


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=E.OUT_DIR, help=f"output folder (default {E.OUT_DIR})")
    ap.add_argument("--footage", type=Path, default=E.FOOTAGE, help=f"vtest.avi (default {E.FOOTAGE})")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="just these clips")
    ap.add_argument("--if-stale", action="store_true", help="do nothing if the output is up to date")
    ap.add_argument("--write-sidecars", action="store_true", help=f"rewrite {E.SIDECAR_DIR} from the recipes")
    ap.add_argument(
        "--check", action="store_true", help="only compare the committed sidecars with the recipes"
    )
    ap.add_argument("--list", action="store_true", help="list the clips and their events")
    args = ap.parse_args(argv)
    console = Console(stderr=True)

    if args.list:
        for r in E.recipes():
            events = E.sidecar(r)["events"]
            evs = ", ".join(f"{e['category']}@{e['zone']} {e['start_s']:g}-{e['end_s']:g}s" for e in events)
            line = f"{r.name:26} {r.layout:6} {r.duration_s:4.0f} s  {evs or 'negative'}"
            console.print(line, highlight=False, soft_wrap=True)
        return 0
    if args.write_sidecars:
        for p in E.write_sidecars():
            console.print(f"wrote {p}")
        return 0
    problems = E.check_sidecars(E.SIDECAR_DIR, args.only)
    if args.check or problems:
        for p in problems:
            console.print(f"[red]{p}[/red]", highlight=False)
        if problems:
            console.print("run with --write-sidecars to rewrite them from the recipes, then review the diff")
            return 1
        console.print("[green]committed sidecars agree with the recipes[/green]")
        return 0
    if not args.footage.is_file():
        console.print(f"[red]footage {args.footage} missing[/red]: run scripts/fetch_footage.sh")
        return 2
    if E.Footage(args.footage).sha256() != E.VTEST_SHA256:
        console.print(
            f"[yellow]warning[/yellow]: {args.footage} is not the vtest.avi the set was made from "
            "(Debian 12 opencv-doc); the clips will differ from those measured in docs/EVALUATION.md"
        )
    if args.if_stale and E.up_to_date(args.out, args.only, args.footage):
        console.print(f"{args.out}: up to date")
        return 0

    t0 = time.perf_counter()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("footage", total=len(args.only or E.recipes()))

        def step(name: str, done: int, total: int) -> None:
            progress.update(task, completed=done, description=name or "done")

        paths = E.build_clips(args.out, names=args.only, footage_path=args.footage, progress=step)
    console.print(f"{len(paths)} clips in {args.out} ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
