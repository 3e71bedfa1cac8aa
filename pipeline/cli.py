"""The `gloss` command.

Each subcommand is a small function `cmd_<name>(args) -> int`; `build_parser`
wires them up. Errors from the gloss hierarchy print one line and exit non-zero.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading

from gloss.store.errors import GlossError
from gloss.store.statuses import STATUS_FILTERS


class Deprecated(argparse.Action):
    """An old flag name that still works for one release and says which name replaced it."""

    def __init__(self, option_strings, dest, *, new: str, **kwargs):
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        print(
            f"gloss: warning: {option_string} is deprecated here: use {self.new}", file=sys.stderr
        )
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from gloss.store.db import upgrade

    before, after = upgrade(args.database)
    print(f"database at {after}" + ("" if before == after else f" (was {before or 'empty'})"))
    return 0


def cmd_db_current(args: argparse.Namespace) -> int:
    from gloss.store.db import current_revision, head_revision, must_exist, resolve_url

    must_exist(resolve_url(args.database))
    current = current_revision(args.database)
    head = head_revision()
    if args.json:
        print(json.dumps({"current": current, "head": head}))
    else:
        print(f"{current or 'empty'}" + (" (head)" if current == head else f" (head is {head})"))
    return 0


# ---------------------------------------------------------------- mining (gloss mine)


def cmd_mine(args: argparse.Namespace) -> int:
    import time
    from dataclasses import replace

    from gloss.pipeline.config import DEFAULT_PATH, parse_features
    from gloss.pipeline.corpus import Corpus
    from gloss.pipeline.mining import mine
    from gloss.pipeline.run import open_source
    from gloss.store import open_store

    started = time.perf_counter()
    config = _stage_config(args)
    s = replace(
        config.subject,
        **_given(
            model=args.model,
            gguf_file=args.gguf_file,
            hook=args.hook,
            source=args.source,
            device=args.device,
        ),
    )
    # The settings file's selector is what `gloss run` mines; without a file, all features.
    has_file = args.config is not None or DEFAULT_PATH.exists()
    features = parse_features(args.features or (s.features if has_file else None))
    mining = replace(
        config.mining, **_given(top_explain=args.top_k, batch_size=args.batch_size, seed=args.seed)
    )
    corpus_config = replace(
        config.corpus,
        **_given(
            paths=tuple(args.corpus) if args.corpus else None,
            field=args.field,
            ctx_len=args.ctx_len,
            max_tokens=args.max_tokens,
            seed=args.seed,
        ),
    )
    store = open_store(args.database)
    config = replace(config, subject=s, corpus=corpus_config, mining=mining)
    subject, source, _ = open_source(store, config)  # source "learn" learns it first
    corpus = Corpus(corpus_config, subject.encode)
    result = mine(
        store, subject, source, s.hook, corpus, mining, features,
        force=args.remine, progress=not args.json,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    summary = {
        "source": store.source(result.source_id).name,
        "run": result.run_id,
        "features": result.features,
        "dead": result.dead,
        "skipped": result.skipped,
        "stale": len(result.stale),
        "elsewhere": result.elsewhere,
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
        if result.stale:
            print(
                f"{len(result.stale)} already mined features were mined over another corpus "
                "or with other settings: --remine mines them again"
            )
        if result.elsewhere:
            print(f"{result.elsewhere} features were left to other processes mining this source")
    return 0


def add_mine_parser(sub) -> None:
    p = sub.add_parser("mine", help="find the top, quantile and random contexts of features")
    p.add_argument(
        "--config", help="settings file (default ./gloss.toml if present); flags override it"
    )
    p.add_argument(
        "--subject",
        dest="model",
        metavar="NAME",
        help="minilm (default), gemma-3-270m, a folder, .gguf or hub id",
    )
    p.add_argument("--model", dest="model", action=Deprecated, new="--subject")
    p.add_argument("--gguf-file", help="GGUF file name inside --subject's folder")
    p.add_argument(
        "--hook",
        help="layer.N.mlp or layer.N.resid (default layer.3.mlp); a dictionary shared by "
        "several points is mined at all of them: layer.0-5.resid",
    )
    p.add_argument(
        "--source",
        help="neurons (default), sae:FOLDER, dictionary:FOLDER, FOLDER, saelens:RELEASE/SAE_ID, "
        "hf:REPO_ID/PATH, or learn (the [learn] dictionary at --hook, learned first if need be)",
    )
    p.add_argument("--features", help="START:STOP, 7 or 1,2,5:9 (default: all)")
    p.add_argument(
        "--corpus",
        action="append",
        help="file, folder, glob or hf:NAME[:CONFIG[:SPLIT]] (repeatable)",
    )
    p.add_argument("--field", help="text field of JSONL/Parquet records and dataset rows (text)")
    p.add_argument("--ctx-len", type=int, help="tokens per window (64)")
    p.add_argument("--corpus-tokens", dest="max_tokens", type=int, help="cap on corpus tokens read")
    p.add_argument(
        "--max-tokens", dest="max_tokens", type=int, action=Deprecated, new="--corpus-tokens"
    )
    p.add_argument("--top-k", type=int, help="top windows to explain from (20)")
    p.add_argument("--batch-size", type=int, help="windows per forward pass (32)")
    p.add_argument("--seed", type=int, help="sampling seed (0)")
    p.add_argument("--device", help="cpu (default), cuda, cuda:1, mps")
    p.add_argument("--remine", action="store_true", help="mine again features already mined")
    p.add_argument("--force", dest="remine", action=Deprecated, new="--remine", nargs=0, const=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_mine)


# ---------------------------------------------------------------- dictionaries (gloss learn)


def cmd_learn(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from gloss.pipeline.corpus import Corpus
    from gloss.pipeline.learn import learn
    from gloss.pipeline.subjects import load_subject, parse_device
    from gloss.store import open_store

    config = _stage_config(args)
    settings = replace(
        config.learn,
        **_given(width=args.width, k=args.k, train_tokens=args.tokens),
    )
    hook = args.hook or config.subject.hook
    device = args.device or config.subject.device
    parse_device(device)
    subject = load_subject(config.subject.model, gguf_file=config.subject.gguf_file, device=device)
    subject.hook_width(hook)
    corpus = Corpus(config.corpus, subject.encode)
    with open_store(args.database) as store:
        result = learn(store, subject, hook, corpus, settings, out=args.out, progress=not args.json)
        name = store.source(result.source_id).name
    m, q = result.manifest, result.quality
    training = m.get("training", {})
    if args.json:
        print(
            json.dumps(
                {
                    "source": name,
                    "source_id": result.source_id,
                    "run": result.run_id,
                    "path": str(result.folder),
                    "reused": result.reused,
                    "hooks": m.get("hooks"),
                    "width": m.get("width"),
                    "k": m.get("k"),
                    "tokens": training.get("tokens"),
                    "steps": training.get("steps"),
                    "seconds": round(result.seconds, 1),
                    "quality": q,
                }
            )
        )
        return 0
    how = "reused the dictionary learned before" if result.reused else "learned a dictionary"
    hooks = m.get("hooks", [])
    where = f"shared by the {len(hooks)} points" if len(hooks) > 1 else "at"
    print(
        f"{how}: {m.get('width')} latents, k={m.get('k')}, {where} {hook} of "
        f"{subject.name}; {training.get('tokens', 0):,} tokens, "
        f"{training.get('steps', 0):,} steps; {result.seconds:.1f} s"
    )
    print(f"  folder  {result.folder}")
    print(f"  source  {name} (id {result.source_id}); run {result.run_id}")
    if q:
        print(
            f"  held-out quality on {q.get('holdout_tokens', 0):,} tokens: FVU {q['fvu']:.3f}, "
            f"L0 {q['l0']:.1f}, dead {q['dead_share']:.1%}"
        )
        for hook, figures in q.get("per_hook", {}).items():
            print(f"    {hook:<16} FVU {figures['fvu']:.3f}")
        lm = q.get("lm_loss")
        if lm:
            print(
                f"  LM loss: clean {lm['clean']:.3f}, reconstruction spliced in {lm['spliced']:.3f}"
            )
    return 0


def add_learn_parser(sub) -> None:
    p = sub.add_parser(
        "learn", help="train a sparse dictionary (TopK SAE) on the corpus; register it as a source"
    )
    p.add_argument(
        "--config", help="settings file (default ./gloss.toml if present); flags override it"
    )
    p.add_argument(
        "--hook",
        help="hook point(s), default [subject] hook: layer.3.resid, or layer.0-5.resid for one "
        "dictionary shared by blocks 0 to 5",
    )
    p.add_argument("--width", type=int, help="latents (1024)")
    p.add_argument("--k", type=int, help="latents active per token (16)")
    p.add_argument("--tokens", type=int, help="corpus tokens to train on (1000000)")
    p.add_argument("--device", help="cpu (default), cuda, cuda:1, mps")
    p.add_argument("--out", help="folder to write (default $GLOSS_CACHE/dictionaries/<key>)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_learn)


# ---------------------------------------------------------------- explain / score / llm (issue 4)


def at_least_one(text: str) -> int:
    """argparse type of --limit: a count of features, so 0 and negatives are refused."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is below 1; omit --limit for no limit")
    return value


def select_features(store, args: argparse.Namespace) -> list[int]:
    """Mined feature ids matching --source, --features and --limit, in id order.

    The selector is clipped to the widest source it can apply to, so `0:3000000000`
    costs what the sources hold.
    """
    from gloss.pipeline.config import parse_features

    source = store.source(args.source) if args.source else None
    widths = [source.width] if source else [s.width for s in store.sources()]
    indices = parse_features(args.features, width=max(widths, default=0))
    source_id = source.id if source else None
    ids = [f.id for f in store.features(source_id, status="mined", indices=indices)]
    return ids[: args.limit] if args.limit else ids


def _stage_config(args: argparse.Namespace):
    """Settings for mine, explain and score: --config or ./gloss.toml, then the environment;
    the caller lays the flags that were given on top."""
    from gloss.pipeline import config as cfg

    return cfg.load(args.config, template_if_missing=False)


def _scoring(args: argparse.Namespace, config):
    """[scoring] under --methods and --primary; given methods without the primary, the
    first label method of them ranks."""
    from dataclasses import replace

    from gloss.pipeline.settings import FEATURE_METHODS

    scoring = config.scoring
    methods = (
        tuple(m.strip() for m in args.methods.split(",") if m.strip()) if args.methods else None
    )
    primary = args.primary
    if methods and primary is None and scoring.primary not in methods:
        primary = next((m for m in methods if m not in FEATURE_METHODS), scoring.primary)
    fields = _given(methods=methods, primary=primary)
    return replace(scoring, **fields)


def _add_scoring_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--methods",
        metavar="M,M",
        help="scorers to run: simulation, detection, fuzzing, embedding, intruder "
        "([scoring] methods; default simulation)",
    )
    p.add_argument("--primary", help="the score method labels are ranked by ([scoring] primary)")


def _given(**flags) -> dict:
    return {name: value for name, value in flags.items() if value is not None}


def _llm_config(args: argparse.Namespace, config):
    """The config's [llm.*] endpoints under the flags: --model, --base-url and --api set both
    roles unless --simulator-* says otherwise; limits and prices apply to both."""
    from dataclasses import replace

    from gloss.pipeline.llm import LLMConfig

    both = _given(
        model=args.model,
        base_url=args.base_url,
        api=args.api,
        concurrency=args.concurrency,
        timeout_s=args.timeout,
        price_in=args.price_in,
        price_out=args.price_out,
    )
    simulator = both | _given(
        model=args.simulator_model, base_url=args.simulator_base_url, api=args.simulator_api
    )
    return LLMConfig(
        explainer=replace(config.llm.explainer, **both),
        simulator=replace(config.llm.simulator, **simulator),
    )


def _print_summary(summary, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary.as_dict(), default=str))
    else:
        print("\n".join(summary.lines()))


def cmd_explain(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from gloss.pipeline.explainers.baseline import baseline_explain
    from gloss.pipeline.labeling import explain_features
    from gloss.store import open_store

    config = _stage_config(args)
    with open_store(args.database) as store:
        ids = select_features(store, args)
        if not ids:
            print("no mined features match: run gloss mine first, or check --source/--features")
            return 0
        if args.baseline:
            summary = baseline_explain(store, ids)
        else:
            explainer = replace(
                config.explainer,
                **_given(
                    style=args.style,
                    prompt=args.prompt,
                    candidates=args.candidates,
                    max_examples=args.max_examples,
                    score=False if args.no_score else None,
                ),
            )
            summary = explain_features(
                store,
                ids,
                _llm_config(args, config),
                explainer=explainer,
                simulator=replace(config.simulator, **_given(method=args.method)),
                scoring=_scoring(args, config),
                relabel=args.relabel,
                relabel_human=args.relabel_human,
            )
    _print_summary(summary, args.json)
    return 1 if summary.failed and not (summary.explained or summary.scored) else 0


def cmd_score(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from gloss.pipeline.labeling import score_features
    from gloss.store import open_store

    config = _stage_config(args)
    with open_store(args.database) as store:
        ids = select_features(store, args)
        if not ids:
            print("no mined features match: run gloss mine first, or check --source/--features")
            return 0
        summary = score_features(
            store,
            ids,
            _llm_config(args, config),
            simulator=replace(
                config.simulator, **_given(method=args.method, prompt=args.simulator_prompt)
            ),
            scoring=_scoring(args, config),
            rescore=args.rescore,
            baseline=args.baseline,
        )
    _print_summary(summary, args.json)
    return 1 if summary.failed and not summary.scored else 0


def cmd_eval(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from gloss.pipeline.evaluate import compare_prompts, evaluate
    from gloss.store import ConfigError, open_store

    config = _stage_config(args)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds:
        raise ConfigError(f"--seeds {args.seeds!r} is not a list of seeds: give e.g. 0,1")
    prompts = tuple(p.strip() for p in (args.compare or "").split(","))
    if args.compare is not None and (len(prompts) != 2 or not all(prompts)):
        raise ConfigError(
            f"--compare {args.compare!r} is not two prompt names: give e.g. "
            "explain-v1,explain-output"
        )
    with open_store(args.database) as store:
        limit, args.limit = args.limit, None  # a limit on labeled features, not mined ones
        ids = select_features(store, args)
        common = dict(
            simulator=replace(config.simulator, **_given(method=args.method)),
            scoring=_scoring(args, config),
            seeds=seeds,
            limit=limit,
        )
        if args.compare is not None:
            report = compare_prompts(store, ids, prompts, _llm_config(args, config), **common)
        else:
            report = evaluate(
                store, ids, _llm_config(args, config), baseline=args.baseline, **common
            )
    if args.json:
        print(json.dumps(report.as_dict()))
    else:
        print("\n".join(report.lines()))
    return 0


def cmd_llm_serve(args: argparse.Namespace) -> int:
    import time

    # SIGTERM unwinds like Ctrl-C, so the server process is stopped with us.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    from gloss.pipeline.local_llm import LocalServerConfig, local_server

    config = LocalServerConfig(model_path=args.model, n_ctx=args.n_ctx)
    if args.port:
        config.port = args.port
    with local_server(config) as url:
        print(f"serving {args.model or 'the bundled Gemma 3 270M'} at {url} (Ctrl-C stops)")
        print(f"use it with: OPENAI_BASE_URL={url} gloss explain ...")
        while True:
            time.sleep(3600)


def _add_llm_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", help="settings file (default ./gloss.toml if present); flags override it"
    )
    p.add_argument("--source", help="feature source name (see gloss sources); default all")
    p.add_argument("--features", help="feature indices: 0:100, 7 or 1,2,5:9")
    p.add_argument("--limit", type=at_least_one, help="at most this many features")
    p.add_argument(
        "--base-url",
        help="OpenAI-compatible endpoint; default $OPENAI_BASE_URL, else the bundled local "
        "model ('local', started for the run)",
    )
    p.add_argument(
        "--llm-model",
        dest="model",
        metavar="NAME",
        help="LLM model name at the endpoint, for both roles unless --simulator-model "
        "(default gemma-3-270m)",
    )
    p.add_argument("--model", dest="model", action=Deprecated, new="--llm-model")
    p.add_argument("--api", choices=["completions", "chat"], help="default completions")
    p.add_argument("--simulator-base-url", help="simulator endpoint if not the explainer's")
    p.add_argument("--simulator-model", help="simulator model if not the explainer's")
    p.add_argument("--simulator-api", choices=["completions", "chat"])
    p.add_argument(
        "--method",
        choices=["auto", "logprobs", "integers"],
        help="simulation: expected values from logprobs (completions + echo) or JSON "
        "integers; auto picks logprobs, or grammar-constrained integers on the local model",
    )
    p.add_argument("--concurrency", type=int, help="requests in flight per endpoint (8)")
    p.add_argument("--timeout", type=float, help="seconds per request (120)")
    p.add_argument("--price-in", type=float, help="$ per million prompt tokens (0)")
    p.add_argument("--price-out", type=float, help="$ per million answer tokens (0)")
    p.add_argument("--baseline", action="store_true", help="the no-LLM baseline labels")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def add_llm_commands(sub) -> None:
    p = sub.add_parser(
        "explain", help="label mined features with the explainer LLM (and score them)"
    )
    _add_llm_arguments(p)
    p.add_argument(
        "--style",
        choices=["auto", "openai", "delphi", "local", "contrastive", "output"],
        help="explainer prompt: token<TAB>value listing (openai), <<marked>> text (delphi), "
        "worked examples and active words for small local models (local), delphi with near "
        "misses (contrastive), or delphi with the feature's output effects from gloss effects "
        "(output); auto: local on the bundled model, openai elsewhere",
    )
    p.add_argument("--prompt", help="explainer template name or path (default per style)")
    p.add_argument("--candidates", type=int, help="best-of-n labels by simulation score (1)")
    p.add_argument("--max-examples", type=int, help="explain windows shown (10)")
    p.add_argument("--no-score", action="store_true", help="label only; score later")
    _add_scoring_arguments(p)
    p.add_argument(
        "--relabel",
        action="store_true",
        help="explain again features whose current label this explainer wrote (model labels); "
        "a label a human wrote or accepted is kept",
    )
    p.add_argument(
        "--force", dest="relabel", action=Deprecated, new="--relabel", nargs=0, const=True
    )
    p.add_argument(
        "--relabel-human",
        action="store_true",
        help="replace labels a human wrote or accepted too",
    )
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser(
        "eval",
        help="do the scores mean anything? own labels against other features' labels",
    )
    _add_llm_arguments(p)
    _add_scoring_arguments(p)
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds, one AUC each (0,1)")
    p.add_argument(
        "--compare",
        metavar="A,B",
        help="let the labels two explainer prompts wrote compete on the features that have "
        "both (e.g. explain-v1,explain-output): per scorer, mean scores, B - A with a 95%% "
        "bootstrap interval over features, and how often B wins",
    )
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("score", help="score current labels with the simulator LLM")
    _add_llm_arguments(p)
    p.add_argument("--simulator-prompt", help="simulator template name or path")
    _add_scoring_arguments(p)
    p.add_argument(
        "--rescore",
        action="store_true",
        help="score current labels again, replacing each scorer's earlier score",
    )
    p.add_argument(
        "--force", dest="rescore", action=Deprecated, new="--rescore", nargs=0, const=True
    )
    p.set_defaults(func=cmd_score)

    llm = sub.add_parser("llm", help="the bundled local LLM").add_subparsers(
        dest="llm_command", required=True
    )
    p = llm.add_parser("serve", help="run the local OpenAI-compatible server until Ctrl-C")
    p.add_argument("--model", help="GGUF file (default: the bundled Gemma 3 270M)")
    p.add_argument("--port", type=int, default=None, help="default $GLOSS_LOCAL_LLM_PORT or 8767")
    p.add_argument("--n-ctx", type=int, default=8192, help="context length")
    p.set_defaults(func=cmd_llm_serve)


# ---------------------------------------------------------------- query and review (issue 6)


def _open(args: argparse.Namespace):
    """The database a query or review command reads: it must exist already."""
    from gloss.store import open_store

    return open_store(args.database, read_only=True)


def cmd_search(args: argparse.Namespace) -> int:
    from gloss.pipeline.terminal import format_rows, row_dict

    with _open(args) as store:
        filters = dict(
            min_score=args.min_score,
            max_score=args.max_score,
            source=args.source,
            status=args.status,
            reviewed=args.reviewed,
        )
        rows = store.search(
            args.text, order=args.order, limit=args.limit, offset=args.offset, like=args.like,
            **filters,
        )  # fmt: skip
        if args.json:
            print(json.dumps([row_dict(r) for r in rows], ensure_ascii=False))
        else:
            print(format_rows(rows, store.count(args.text, like=args.like, **filters)))
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    with _open(args) as store:
        dropped = store.drop_label_vectors() if args.again else 0
        todo = len(store.labels_without_vector())
        with tqdm(total=todo, unit="label", disable=None, file=sys.stderr) as bar:
            done = store.embed_labels(on_batch=lambda n: bar.update(n - bar.n))
    again = f" (dropped {dropped} old vectors)" if args.again else ""
    print(f"embedded {done} labels with {store.encoder.name}{again}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from gloss.pipeline.terminal import format_card, to_json

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

    from gloss.store import EXPORT_FIELDS, ConfigError

    if args.format in ("neuronpedia", "delphi"):
        return _exchange_export(args)
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
                    writer.writerow(
                        {
                            **row,
                            "scores": json.dumps(row["scores"]),
                            "feature_scores": json.dumps(row["feature_scores"]),
                            "effects": json.dumps(row["effects"], ensure_ascii=False),
                        }
                    )
                else:
                    out.write(json.dumps(row, ensure_ascii=False) + "\n")
                count += 1
    finally:
        if args.out:
            out.close()
    if args.out:
        print(f"exported {count} features to {args.out}", file=sys.stderr)
    return 0


def _exchange_export(args: argparse.Namespace) -> int:
    from gloss.pipeline import exchange
    from gloss.store import ConfigError

    if not args.out:
        raise ConfigError(f"--format {args.format} needs --out (a file, or a folder for delphi)")
    with _open(args) as store:
        mapped = exchange.targets(store, args.format, args.map, args.map_file)
        if args.format == "neuronpedia":
            line = exchange.export_neuronpedia(
                store, args.out, mapped, source=args.source, author=args.neuronpedia_author
            )
        else:
            line = exchange.export_delphi(store, args.out, mapped, source=args.source)
    print(line, file=sys.stderr)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from gloss.pipeline import exchange

    with _open(args) as store:
        mapped = exchange.targets(store, args.format, args.map, args.map_file)
        summary = exchange.import_labels(store, args.format, args.path, mapped)
        embedded = store.embed_labels()  # imported labels are searchable by meaning at once
    print("\n".join(summary.lines()))
    print(f"embedded {embedded} new labels for search by meaning")
    return 0


def _add_map_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="SOURCE=ID",
        help="a gloss source and its name in the other tool: a delphi module (default: the "
        "source's hook) or a Neuronpedia MODEL/SOURCE (gemma-2-2b/20-gemmascope-res-16k); "
        "repeatable",
    )
    p.add_argument("--map-file", metavar="FILE", help='the same as a JSON object {"SOURCE": "ID"}')


def cmd_label(args: argparse.Namespace) -> int:
    import os

    from gloss.store import ConfigError

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
            from gloss.pipeline.rescore import rescore

            value = rescore(
                store,
                explanation_id,
                _simulator_llm(args),
                on_estimate=lambda line: print(line, file=sys.stderr, flush=True),
            )
            print(f"simulation score: {'undefined' if value is None else f'{value:.3f}'}")
    return 0


def cmd_fires(args: argparse.Namespace) -> int:
    from gloss.pipeline.fires import fires
    from gloss.pipeline.prompts import printable
    from gloss.pipeline.terminal import to_json

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
                f"       {f.relative:5.0%} of max  {f.activation:8.3f}  {printable(f.ref)}  "
                f"{printable(f.label or '')}{score}"
            )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    import uvicorn

    from gloss.pipeline.rescore import rescore
    from gloss.review.app import create_app, is_loopback, load_tokens, secure_cookies_wanted
    from gloss.store import ConfigError

    tokens = load_tokens(args.tokens_file) if args.tokens_file else None
    reviewer = args.reviewer or os.environ.get("USER")
    if tokens is None and not reviewer:
        raise ConfigError("who is reviewing? pass --reviewer NAME (or --tokens-file for a team)")
    if tokens is None and not is_loopback(args.host):
        print(
            f"gloss: warning: serving on {args.host} without --tokens-file: anyone who can "
            f"reach it acts as {reviewer!r}",
            file=sys.stderr,
        )
    secure = secure_cookies_wanted(
        args.host, tls_proxy=args.tls_proxy, explicit=args.secure_cookies
    )
    if tokens is not None and not secure and not is_loopback(args.host):
        print(
            "gloss: warning: login cookies are not marked Secure: serve the app behind a "
            "TLS proxy and pass --tls-proxy (or --secure-cookies)",
            file=sys.stderr,
        )
    llm = _simulator_llm(args)
    app = create_app(
        _open(args),
        reviewer=reviewer,
        tokens=tokens,
        rescorer=lambda store, explanation_id: rescore(store, explanation_id, llm),
        secure_cookies=secure,
    )
    mode = f"team mode, {len(tokens)} reviewers" if tokens else f"reviewer {reviewer}"
    mode += ", Secure cookies" if secure else ""
    print(f"gloss review app on http://{args.host}:{args.port} ({mode})", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _simulator_llm(args: argparse.Namespace):
    """The simulator endpoint for re-scoring; None means the defaults ($OPENAI_BASE_URL or local)."""
    if not (args.simulator_base_url or args.simulator_model):
        return None
    from gloss.pipeline.llm import EndpointConfig, LLMConfig

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
    p = sub.add_parser("search", help="search current labels by words or by meaning")
    p.add_argument("text", nargs="?", default="", help="words to look for (empty: all)")
    p.add_argument("--min-score", type=float)
    p.add_argument("--max-score", type=float)
    p.add_argument("--source", help="feature source name")
    p.add_argument(
        "--status", choices=STATUS_FILTERS, metavar="STATUS", help=", ".join(STATUS_FILTERS)
    )
    p.add_argument("--reviewed", action="store_true", default=None, help="only reviewed features")
    p.add_argument(
        "--unreviewed", dest="reviewed", action="store_false", help="only unreviewed features"
    )
    p.add_argument(
        "--like",
        metavar="TEXT",
        help="rank labels by meaning: cosine similarity of their embeddings with TEXT's",
    )
    p.add_argument("--order", default="rank", choices=["rank", "score", "-score", "id"])
    p.add_argument("--limit", type=at_least_one, default=20)
    p.add_argument("--offset", type=int, default=0, help="skip this many results (paging)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser(
        "embed", help="embed current labels that have no vector yet, for search by meaning"
    )
    p.add_argument(
        "--again", action="store_true", help="drop every vector first (another embedder)"
    )
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("show", help="a feature card: stats, labels, scores, contexts")
    p.add_argument("feature", help="feature id (42) or SOURCE:INDEX")
    p.add_argument("--examples", type=int, default=5, help="contexts shown per kind")
    p.add_argument("--color", choices=["auto", "always", "never"], default="auto")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("export", help="every feature with its current label and scores")
    p.add_argument("--format", choices=["jsonl", "csv", "neuronpedia", "delphi"], default="jsonl")
    p.add_argument("--out", help="file to write (default stdout); a folder for delphi")
    p.add_argument("--source", help="only this feature source")
    _add_map_arguments(p)
    p.add_argument(
        "--neuronpedia-author", metavar="USER_ID", help="authorId of the Neuronpedia rows"
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import", help="labels and scores from a delphi run or a Neuronpedia file")
    p.add_argument("format", choices=["delphi", "neuronpedia"])
    p.add_argument("path", help="a delphi run folder, or Neuronpedia JSON / JSON Lines (.gz)")
    _add_map_arguments(p)
    p.set_defaults(func=cmd_import)

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
    p.add_argument(
        "--tls-proxy",
        action="store_true",
        help="a TLS-terminating proxy serves the app to browsers (cookies become Secure "
        "unless --host is loopback)",
    )
    p.add_argument(
        "--secure-cookies",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mark cookies Secure (browsers then send them over https only); "
        "default: on with --tls-proxy and a non-loopback --host",
    )
    _add_simulator_arguments(p)
    p.set_defaults(func=cmd_serve)


# ---------------------------------------------------------------- end of query and review


# ---------------------------------------------------------------- decompose (issue 12)


def cmd_decompose(args: argparse.Namespace) -> int:
    from gloss.pipeline.decompose import decompose, text_lines
    from gloss.pipeline.terminal import to_json

    with _open(args) as store:
        result = decompose(
            store,
            args.word,
            args.context or [],
            source=args.source,
            hooks=args.hook,
            top=args.top,
        )
    print(to_json(result) if args.json else "\n".join(text_lines(result)))
    return 0


def add_decompose_parser(sub) -> None:
    p = sub.add_parser(
        "decompose",
        help="the features active on a word in context, per hook point; with several "
        "contexts, which features they share and which tell them apart",
    )
    p.add_argument("word", help="the word to open up (whole word, any case)")
    p.add_argument(
        "--context",
        action="append",
        help="a text that contains the word (repeatable: compare its senses)",
    )
    p.add_argument(
        "--source",
        help="feature source name (see gloss search); default: the newest learned "
        "dictionary, else the only source",
    )
    p.add_argument("--hook", help="only these of the source's points, e.g. layer.2-4.resid")
    p.add_argument("--top", type=int, default=10, help="features listed per context and point")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_decompose)


# ---------------------------------------------------------------- layers (issue 12)


def cmd_layers(args: argparse.Namespace) -> int:
    from gloss.pipeline.terminal import format_layer_peaks, layer_peaks_dict

    with _open(args) as store:
        source = store.source(args.source)
        peaks = store.layer_peaks(source.id, top=args.top)
    if args.json:
        print(json.dumps(layer_peaks_dict(source, peaks), ensure_ascii=False))
    else:
        print(format_layer_peaks(source, peaks))
    return 0


def add_layers_parser(sub) -> None:
    p = sub.add_parser(
        "layers",
        help="a dictionary shared by several hook points: per point, the features that peak there",
    )
    p.add_argument("source", help="feature source name or id (see gloss search)")
    p.add_argument("--top", type=at_least_one, default=10, help="features listed per point")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_layers)


# ---------------------------------------------------------------- interventions (issue 18)


def cmd_effects(args: argparse.Namespace) -> int:
    import time
    from dataclasses import replace

    from gloss.pipeline.effects import compute_effects
    from gloss.pipeline.fires import source_of, subject_of
    from gloss.store import InputError, open_store

    config = _stage_config(args)
    effects = replace(
        config.effects,
        **_given(windows=args.windows, scale=args.scale, ablation=args.ablation, batch=args.batch),
    )
    started = time.perf_counter()
    totals = {"measured": 0, "skipped": 0}
    with open_store(args.database) as store:
        infos = [store.source(args.source)] if args.source else store.sources()
        if not infos:
            raise InputError("no feature sources in this database: run gloss mine first")
        chosen = select_features(store, args) if args.features or args.limit else None
        for info in infos:
            subject = subject_of(store, info.id, args.device or config.subject.device)
            if not subject.causal and not args.source:
                print(f"{info.name}: skipped, {subject.name} is not a causal LM", file=sys.stderr)
                continue
            source = source_of(info, subject.hook_width(info.hook))
            counts = compute_effects(
                store, subject, source, info, effects, again=args.again,
                feature_ids=chosen, progress=not args.json,
            )  # fmt: skip
            for key in totals:
                totals[key] += counts[key]
            if not args.json:
                print(f"{info.name}: measured {counts['measured']} features", file=sys.stderr)
    seconds = time.perf_counter() - started
    if args.json:
        print(json.dumps({**totals, "seconds": round(seconds, 1)}))
    else:
        print(
            f"effects of {totals['measured']} features measured in {seconds:.1f} s"
            + (f"; {totals['skipped']} done by another process" if totals["skipped"] else "")
        )
    return 0


def cmd_intervene(args: argparse.Namespace) -> int:
    from gloss.pipeline.fires import source_of, subject_of
    from gloss.pipeline.interventions import compare, edit_for
    from gloss.pipeline.terminal import intervention_lines
    from gloss.store import InputError

    if args.mean and args.steer is not None:
        raise InputError("--mean is a kind of ablation: give --ablate --mean, or --steer SCALE")
    with _open(args) as store:
        card = store.feature_card(args.feature)
        mode = "steer" if args.steer is not None else "mean" if args.mean else "zero"
        edit, described = edit_for(card.feature, mode, args.steer)
        subject = subject_of(store, card.source.id, args.device)
        source = source_of(card.source, subject.hook_width(card.source.hook))
    result = compare(
        subject, source, card.source.hook, edit, args.text, tokens=args.tokens, top=args.top
    )
    result.update(feature=card.feature.ref, edit=described)
    result["label"] = card.current.text if card.current else None
    print(json.dumps(result, ensure_ascii=False) if args.json else intervention_lines(result))
    return 0


def add_intervention_commands(sub) -> None:
    p = sub.add_parser(
        "effects",
        help="measure what ablating each feature costs the model and which tokens steering "
        "it pushes (causal subjects), for features that lack it",
    )
    p.add_argument("source", nargs="?", help="feature source name (default: every source)")
    p.add_argument("--features", help="START:STOP, 7 or 1,2,5:9 (default: all mined)")
    p.add_argument("--limit", type=at_least_one, help="at most this many features")
    p.add_argument("--again", action="store_true", help="measure again features that have them")
    p.add_argument("--windows", type=int, help="top windows per feature ([effects] windows, 8)")
    p.add_argument("--scale", type=float, help="steer by this many times the peak (4)")
    p.add_argument("--ablation", choices=["zero", "mean"], help="ablate to zero or to the mean")
    p.add_argument("--batch", type=int, help="windows per forward pass (8)")
    p.add_argument("--config", help="settings file (default ./gloss.toml if present)")
    p.add_argument("--device", help="cpu (default: [subject] device), cuda, cuda:1, mps")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_effects)

    p = sub.add_parser(
        "intervene",
        help="run a prompt with and without a feature ablated or steered, side by side",
    )
    p.add_argument("feature", help="feature id (42) or SOURCE:INDEX")
    p.add_argument("--text", required=True, help="the prompt")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--ablate", action="store_true", help="set the feature to 0 (the default)")
    how.add_argument("--steer", type=float, metavar="SCALE", help="add SCALE x its peak activation")
    p.add_argument("--mean", action="store_true", help="with --ablate: set it to its mean")
    p.add_argument("--tokens", type=int, default=12, help="tokens to generate greedily (12)")
    p.add_argument("--top", type=int, default=10, help="next tokens listed per side (10)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, mps")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_intervene)


# ---------------------------------------------------------------- nightly runs (gloss run)


def _run_config(args: argparse.Namespace):
    from gloss.pipeline import config as cfg

    config = cfg.load(args.config)
    if args.database:
        config.database = args.database
    for flag, where in [
        ("limit", "run.limit"),
        ("max_tokens", "run.max_llm_tokens"),
        ("max_cost", "run.max_cost"),
        ("features", "subject.features"),
        ("device", "subject.device"),
        ("log_file", "run.log_file"),
    ]:
        value = getattr(args, flag, None)
        if value is not None:
            cfg.set_path(config, where, value)
    if getattr(args, "relabel_human", False):
        config.run.relabel_human = True
    return config


def cmd_run(args: argparse.Namespace) -> int:
    from gloss.pipeline.run import group_status, nightly, plan, status_lines
    from gloss.store import open_store

    config = _run_config(args)
    if args.status:
        with open_store(config.database, read_only=True) as store:
            status = group_status(store, config)
        if args.json:
            print(json.dumps(status, default=str))
        elif status is None:
            print("no run of this plan has started yet: gloss run starts one")
        else:
            print("\n".join(status_lines(status)))
        return 0
    if config.run.log_file:
        handler = logging.FileHandler(config.run.log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)
    if args.dry_run:
        with open_store(config.database) as store:
            the_plan = plan(store, config)
        if args.json:
            print(json.dumps(the_plan.__dict__))
        else:
            print("\n".join(["plan (dry run, nothing done):", *the_plan.lines()]))
        return 0
    report = nightly(config)
    if args.json:
        print(json.dumps({**report.__dict__, "exit_code": report.exit_code}, default=str))
    else:
        print("\n".join(report.lines()))
    logging.getLogger("gloss.run").info("run %s ended: %s", report.run_id, report.status)
    return report.exit_code


def cmd_init(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gloss.pipeline.config import template
    from gloss.store import ConfigError

    path = Path(args.path)
    if path.exists() and not args.force:
        raise ConfigError(f"{path} exists; pass --force to overwrite it")
    path.write_text(template(), encoding="utf-8")
    print(f"wrote {path}: every setting with its default; edit it, then gloss run")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from gloss.pipeline.prompts import printable

    with _open(args) as store:
        runs = store.runs(args.limit)
    if args.json:
        print(json.dumps([r.__dict__ for r in runs], default=str))
        return 0
    for r in runs:
        took = (r.finished_at - r.started_at).total_seconds() if r.finished_at else None
        where = f"  {r.holder}" + (f" {r.device}" if r.device else "") if r.holder else ""
        budget = f" of {r.max_tokens:,}" if r.max_tokens is not None else ""
        print(
            f"{r.id:>5}  {r.kind:<8} {r.status:<12} {r.started_at:%Y-%m-%d %H:%M}  "
            + (f"{took:7.1f}s" if took is not None else "   ...  ")
            + f"  tokens {r.tokens_in + r.tokens_out:>9,}{budget}  cost {r.cost:.4f}  {r.code_version}"
            + (f"  in {'group' if r.kind == 'run' else 'run'} {r.parent_id}" if r.parent_id else "")
            + where
            + (f"  {printable(r.message)}" if r.message else "")
        )
    return 0


def add_run_commands(sub) -> None:
    p = sub.add_parser("run", help="the nightly job: mine, explain and score what is missing")
    p.add_argument("--config", default=None, help="config file (default ./gloss.toml)")
    p.add_argument(
        "--limit", type=at_least_one, default=None, help="at most N features per LLM stage"
    )
    p.add_argument("--features", default=None, help="feature selector: 0:100, 7, 1,2,5:9")
    p.add_argument(
        "--device", default=None, help="mine on this device: cpu, cuda, cuda:1 (one worker a GPU)"
    )
    p.add_argument(
        "--max-llm-tokens",
        dest="max_tokens",
        type=int,
        metavar="N",
        help="LLM token budget for this run",
    )
    p.add_argument(
        "--max-tokens", dest="max_tokens", type=int, action=Deprecated, new="--max-llm-tokens"
    )
    p.add_argument("--max-cost", type=float, default=None, help="LLM cost budget (needs prices)")
    p.add_argument("--relabel-human", action="store_true", help="relabel human-written/accepted")
    p.add_argument("--dry-run", action="store_true", help="print the plan and do nothing")
    p.add_argument(
        "--status",
        action="store_true",
        help="show the newest run group of this plan: its workers, spending and work left",
    )
    p.add_argument("--log-file", default=None, help="also log to this file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("init", help="write a commented gloss.toml with every setting")
    p.add_argument("path", nargs="?", default="gloss.toml")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("runs", help="list recent runs")
    p.add_argument("--limit", type=at_least_one, default=20)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_runs)


def _configured_database(path: str | None) -> str | None:
    """The database a settings file names, so every command opens the one `gloss run` fills."""
    from gloss.pipeline import config as cfg

    if path is None and not cfg.DEFAULT_PATH.exists():
        return None
    return cfg.load(path).database


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gloss", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database",
        "--db",
        default=None,
        help="SQLAlchemy URL; default $GLOSS_DATABASE_URL, else ./gloss.toml's, else "
        "sqlite:///gloss.db",
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
    add_learn_parser(sub)
    add_llm_commands(sub)
    _add_query_commands(sub)
    add_run_commands(sub)
    add_decompose_parser(sub)
    add_layers_parser(sub)
    add_intervention_commands(sub)
    return parser


def _stop_on_sigterm() -> None:
    """SIGTERM (systemd, timeout, a CI job) stops gloss the way Ctrl-C does.

    It calls whatever handles Ctrl-C at that moment: inside an event loop that cancels
    the work, which records its run as interrupted and stops the local LLM server.
    """

    def interrupt(signum: int, frame: object) -> None:
        handler = signal.getsignal(signal.SIGINT)
        if not callable(handler):
            raise KeyboardInterrupt
        handler(signal.SIGINT, frame)

    signal.signal(signal.SIGTERM, interrupt)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        _stop_on_sigterm()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:  # one line per HTTP request or migration step is noise
        for name in ("httpx", "httpx2", "httpcore", "alembic", "openai"):
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        if args.database is None and args.command not in ("init", "run"):
            args.database = _configured_database(getattr(args, "config", None))
        return args.func(args)
    except GlossError as error:
        print(f"gloss: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("gloss: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
