"""The `gloss` command.

Each subcommand is a small function `cmd_<name>(args) -> int`; `build_parser`
wires them up. Errors from the gloss hierarchy print one line and exit non-zero.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from store.errors import GlossError


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from store.db import upgrade

    before, after = upgrade(args.database)
    print(f"database at {after}" + ("" if before == after else f" (was {before or 'empty'})"))
    return 0


def cmd_db_current(args: argparse.Namespace) -> int:
    from store.db import current_revision, head_revision

    current = current_revision(args.database)
    head = head_revision()
    if args.json:
        print(json.dumps({"current": current, "head": head}))
    else:
        print(f"{current or 'empty'}" + (" (head)" if current == head else f" (head is {head})"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gloss", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database",
        "--db",
        default=None,
        help="SQLAlchemy URL; default $GLOSS_DATABASE_URL or sqlite:///gloss.db",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    db = sub.add_parser("db", help="database migrations").add_subparsers(
        dest="db_command", required=True
    )
    p = db.add_parser("upgrade", help="migrate the database to the newest schema")
    p.set_defaults(func=cmd_db_upgrade)
    p = db.add_parser("current", help="print the database's schema revision")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_db_current)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except GlossError as error:
        print(f"gloss: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("gloss: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
