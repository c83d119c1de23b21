"""`python -m gridwatch.dashboards_gen [--out DIR] [--check] [--settings FILE]`.

Writes every generated file under dashboards/ (default: the repository's, when run from a
checkout) and removes generated dashboards that no longer exist; `--check` only compares and
exits 1 on any difference (CI and tests use it to keep the committed JSON honest).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from gridwatch.dashboards_gen.dashboards import FOLDERS, DashboardSettings
from gridwatch.dashboards_gen.provisioning import render_files


def default_out() -> Path | None:
    """The checkout's dashboards/ directory, if this module runs from a checkout."""
    root = Path(__file__).resolve().parents[2]
    return root / "dashboards" if (root / "pyproject.toml").is_file() else None


def differences(out: Path, files: dict[str, str]) -> list[str]:
    """Paths (relative to `out`) that are missing, different, or stale generated dashboards."""
    diff = [
        rel
        for rel, text in files.items()
        if not (out / rel).is_file() or (out / rel).read_text("utf-8") != text
    ]
    for folder in FOLDERS:
        for p in sorted((out / folder.directory).glob("*.json")):
            rel = p.relative_to(out).as_posix()
            if rel not in files:
                diff.append(f"{rel} (stale)")
    return diff


def write(out: Path, files: dict[str, str]) -> list[str]:
    changed = differences(out, files)
    for rel, text in files.items():
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.is_file() or target.read_text("utf-8") != text:
            target.write_text(text, encoding="utf-8")
    for entry in changed:
        if entry.endswith(" (stale)"):
            (out / entry.removesuffix(" (stale)")).unlink()
    return changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m gridwatch.dashboards_gen", description=__doc__.splitlines()[0]
    )
    ap.add_argument(
        "--out", type=Path, default=None, help="Output directory (default: the checkout's dashboards/)."
    )
    ap.add_argument("--check", action="store_true", help="Only compare; exit 1 if anything differs.")
    ap.add_argument(
        "--settings", type=Path, default=None, help="YAML file of DashboardSettings (targets, time zone)."
    )
    args = ap.parse_args(argv)
    out = args.out or default_out()
    if out is None:
        ap.error("not running from a checkout: give --out DIR")
    settings = DashboardSettings()
    if args.settings:
        settings = DashboardSettings.model_validate(yaml.safe_load(args.settings.read_text("utf-8")) or {})
    files = render_files(settings)
    if args.check:
        diff = differences(out, files)
        for d in diff:
            print(f"differs: {d}", file=sys.stderr)
        if diff:
            print("run `python -m gridwatch.dashboards_gen` and commit dashboards/", file=sys.stderr)
        return 1 if diff else 0
    changed = write(out, files)
    print(
        f"{len(files)} files in {out}; {len(changed)} changed"
        + (f": {', '.join(changed)}" if changed else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
