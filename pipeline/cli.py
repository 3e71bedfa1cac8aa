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


# ---------------------------------------------------------------- query and review (issue 6)


def _open(args: argparse.Namespace):
    from store import open_store

    return open_store(args.database)


def cmd_search(args: argparse.Namespace) -> int:
    from pipeline.terminal import format_rows, row_dict

    with _open(args) as store:
        filters = dict(
            min_score=args.min_score,
            max_score=args.max_score,
            source=args.source,
            status=args.status,
            reviewed=args.reviewed,
        )
        rows = store.search(args.text, order=args.order, limit=args.limit, **filters)
        if args.json:
            print(json.dumps([row_dict(r) for r in rows], ensure_ascii=False))
        else:
            print(format_rows(rows, store.count(args.text, **filters)))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from pipeline.terminal import format_card, to_json

    with _open(args) as store:
        card = store.feature_card(args.feature)
    if args.json:
        print(to_json(card))
    else:
        color = sys.stdout.isatty() if args.color == "auto" else args.color == "always"
        print(format_card(card, color=color, per_kind=args.examples))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import csv

    from store import EXPORT_FIELDS, ConfigError

    try:
        out = open(args.out, "w", newline="", encoding="utf-8") if args.out else sys.stdout
    except OSError as error:
        raise ConfigError(f"cannot write {args.out}: {error.strerror}") from None
    count = 0
    try:
        with _open(args) as store:
            writer = csv.DictWriter(out, EXPORT_FIELDS) if args.format == "csv" else None
            if writer:
                writer.writeheader()
            for row in store.export(source=args.source):
                if writer:
                    writer.writerow({**row, "scores": json.dumps(row["scores"])})
                else:
                    out.write(json.dumps(row, ensure_ascii=False) + "\n")
                count += 1
    finally:
        if args.out:
            out.close()
    if args.out:
        print(f"exported {count} features to {args.out}", file=sys.stderr)
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    import os

    from store import ConfigError

    reviewer = args.by or os.environ.get("USER")
    if not reviewer:
        raise ConfigError("who is labeling? pass --by NAME")
    with _open(args) as store:
        feature_id = store.resolve_feature(args.feature)
        explanation_id = store.review(feature_id, "edit", reviewer, text=args.text, note=args.note)
        card = store.feature_card(feature_id)
        print(
            f"feature {card.feature.ref}: label #{explanation_id} by {reviewer}: {card.current.text}"
        )
        if args.rescore:
            from pipeline.rescore import rescore

            value = rescore(store, explanation_id, _simulator_llm(args))
            print(f"simulation score: {'undefined' if value is None else f'{value:.3f}'}")
    return 0


def cmd_fires(args: argparse.Namespace) -> int:
    from pipeline.fires import fires
    from pipeline.terminal import to_json

    with _open(args) as store:
        tokens = fires(store, args.text, source=args.source, top=args.top)
    if args.json:
        print(to_json(tokens))
        return 0
    for t in tokens:
        print(f"{t.position:>4} {t.token!r}")
        for f in t.features:
            score = "" if f.score is None else f"  (score {f.score:.2f})"
            print(
                f"       {f.relative:5.0%} of max  {f.activation:8.3f}  {f.ref}  {f.label}{score}"
            )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    import uvicorn

    from pipeline.rescore import rescore
    from review.app import create_app, load_tokens
    from store import ConfigError

    tokens = load_tokens(args.tokens_file) if args.tokens_file else None
    reviewer = args.reviewer or os.environ.get("USER")
    if tokens is None and not reviewer:
        raise ConfigError("who is reviewing? pass --reviewer NAME (or --tokens-file for a team)")
    if tokens is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"gloss: warning: serving on {args.host} without --tokens-file: anyone who can "
            f"reach it acts as {reviewer!r}",
            file=sys.stderr,
        )
    llm = _simulator_llm(args)
    app = create_app(
        _open(args),
        reviewer=reviewer,
        tokens=tokens,
        rescorer=lambda store, explanation_id: rescore(store, explanation_id, llm),
    )
    mode = f"team mode, {len(tokens)} reviewers" if tokens else f"reviewer {reviewer}"
    print(f"gloss review app on http://{args.host}:{args.port} ({mode})", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _simulator_llm(args: argparse.Namespace):
    """The simulator endpoint for re-scoring; None means the defaults ($OPENAI_BASE_URL or local)."""
    if not (args.simulator_base_url or args.simulator_model):
        return None
    from pipeline.llm import EndpointConfig, LLMConfig

    endpoint = EndpointConfig(
        model=args.simulator_model or EndpointConfig().model, base_url=args.simulator_base_url
    )
    return LLMConfig(explainer=endpoint, simulator=endpoint)


def _add_simulator_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--simulator-base-url",
        help="OpenAI-compatible endpoint for re-scoring; default $OPENAI_BASE_URL, else local",
    )
    p.add_argument("--simulator-model", help="simulator model name (default gemma-3-270m)")


def _add_query_commands(sub) -> None:
    p = sub.add_parser("search", help="full-text search over current labels")
    p.add_argument("text", nargs="?", default="", help="words to look for (empty: all)")
    p.add_argument("--min-score", type=float)
    p.add_argument("--max-score", type=float)
    p.add_argument("--source", help="feature source name")
    p.add_argument("--status", help="proposed, accepted, rejected, unlabeled, dead, ...")
    p.add_argument("--reviewed", action="store_true", default=None, help="only reviewed features")
    p.add_argument(
        "--unreviewed", dest="reviewed", action="store_false", help="only unreviewed features"
    )
    p.add_argument("--order", default="rank", choices=["rank", "score", "-score", "id"])
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("show", help="a feature card: stats, labels, scores, contexts")
    p.add_argument("feature", help="feature id (42) or SOURCE:INDEX")
    p.add_argument("--examples", type=int, default=5, help="contexts shown per kind")
    p.add_argument("--color", choices=["auto", "always", "never"], default="auto")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("export", help="every feature with its current label and scores")
    p.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    p.add_argument("--out", help="file to write (default stdout)")
    p.add_argument("--source", help="only this feature source")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("label", help="set a human label on a feature")
    p.add_argument("feature", help="feature id (42) or SOURCE:INDEX")
    p.add_argument("text", help="the new label")
    p.add_argument("--by", help="your name (default $USER)")
    p.add_argument("--note", help="why")
    p.add_argument("--rescore", action="store_true", help="score the new label with the simulator")
    _add_simulator_arguments(p)
    p.set_defaults(func=cmd_label)

    p = sub.add_parser("fires", help="which labeled features fire on each token of a text")
    p.add_argument("text")
    p.add_argument("--source", help="feature source name (default: every source of the subject)")
    p.add_argument("--top", type=int, default=5, help="features listed per token")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_fires)

    p = sub.add_parser("serve", help="the web app for browsing and reviewing labels")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--reviewer", help="your name in the audit trail (default $USER)")
    p.add_argument(
        "--tokens-file", help="team mode: a file of 'TOKEN NAME' lines; requests need a token"
    )
    _add_simulator_arguments(p)
    p.set_defaults(func=cmd_serve)


# ---------------------------------------------------------------- end of query and review


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

    _add_query_commands(sub)
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
