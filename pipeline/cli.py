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


# ---------------------------------------------------------------- mining (gloss mine)


def _feature_range(text: str | None) -> range | None:
    """`0:512` -> range(0, 512); `7` -> range(7, 8); None -> all features."""
    if text is None:
        return None
    start, colon, stop = text.partition(":")
    try:
        if not colon:
            return range(int(start), int(start) + 1)
        return range(int(start or 0), int(stop))
    except ValueError:
        from store.errors import InputError

        raise InputError(f"bad --features {text!r}: use START:STOP (0:512) or one index") from None


def cmd_mine(args: argparse.Namespace) -> int:
    import time

    from pipeline.corpus import DEFAULT_CORPUS, Corpus, CorpusConfig
    from pipeline.mining import MiningConfig, mine
    from pipeline.sources import load_source
    from pipeline.subjects import load_subject
    from store import open_store

    started = time.perf_counter()
    features = _feature_range(args.features)
    mining = MiningConfig(top_explain=args.top_k, batch_size=args.batch_size, seed=args.seed)
    corpus_config = CorpusConfig(
        paths=tuple(args.corpus or [DEFAULT_CORPUS]),
        field=args.field,
        ctx_len=args.ctx_len,
        max_tokens=args.max_tokens,
        seed=args.seed,
    )
    subject = load_subject(args.model, gguf_file=args.gguf_file, device=args.device)
    source = load_source(args.source, subject.hook_width(args.hook))
    store = open_store(args.database)
    corpus = Corpus(corpus_config, subject.encode)
    result = mine(
        store, subject, source, args.hook, corpus, mining, features,
        force=args.force, progress=not args.json,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    summary = {
        "source": store.source(result.source_id).name,
        "run": result.run_id,
        "features": result.features,
        "dead": result.dead,
        "skipped": result.skipped,
        "tokens": result.tokens,
        "windows": result.windows,
        "seconds": round(seconds, 1),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"mined {result.features} features of {summary['source']} "
            f"({result.dead} dead, {result.skipped} already mined) over {result.tokens:,} tokens "
            f"in {result.windows:,} windows; {seconds:.1f} s; run {result.run_id}"
        )
    return 0


def add_mine_parser(sub) -> None:
    p = sub.add_parser("mine", help="find the top, quantile and random contexts of features")
    p.add_argument(
        "--model", default="minilm", help="minilm, gemma-3-270m, a folder, .gguf or hub id"
    )
    p.add_argument("--gguf-file", default=None, help="GGUF file name inside --model's folder")
    p.add_argument("--hook", required=True, help="layer.N.mlp or layer.N.resid")
    p.add_argument(
        "--source", default="neurons", help="neurons, sae:FOLDER, dictionary:FOLDER or FOLDER"
    )
    p.add_argument("--features", default=None, help="START:STOP (default: all)")
    p.add_argument("--corpus", action="append", help="file, folder or glob (repeatable)")
    p.add_argument("--field", default="text", help="text field of JSONL/Parquet records")
    p.add_argument("--ctx-len", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--top-k", type=int, default=20, help="top windows to explain from")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--force", action="store_true", help="mine again features already mined")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_mine)


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

    add_mine_parser(sub)
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
