"""`python -m gridwatch.console hash-password` | `demo [--screenshots DIR] [--bulk N]`."""

from __future__ import annotations

import argparse
import getpass
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gridwatch.console")
    sub = ap.add_subparsers(dest="cmd", required=True)
    hp = sub.add_parser("hash-password", help="print a password hash for a console user entry")
    hp.add_argument("--stdin", action="store_true", help="read the password from stdin (scripts)")
    dm = sub.add_parser("demo", help="run the console on demo data (and optionally take screenshots)")
    dm.add_argument("--port", type=int, default=0)
    dm.add_argument("--bulk", type=int, default=0, help="add this many synthetic open incidents")
    dm.add_argument("--screenshots", metavar="DIR", help="render pages with headless chromium, then exit")
    args = ap.parse_args(argv)
    if args.cmd == "hash-password":
        from gridwatch.console.auth import hash_password

        if args.stdin:
            pw = sys.stdin.readline().rstrip("\n")
        else:
            pw = getpass.getpass("password: ")
            if pw != getpass.getpass("again: "):
                print("passwords differ", file=sys.stderr)
                return 1
        print(hash_password(pw))
        return 0
    from gridwatch.console.demo import run_demo

    return run_demo(port=args.port, bulk=args.bulk, screenshots=args.screenshots)


if __name__ == "__main__":
    sys.exit(main())
