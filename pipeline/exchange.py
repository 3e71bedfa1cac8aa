"""Labels in and out of Neuronpedia and EleutherAI's delphi, in their own formats.

Neuronpedia keeps an explanation as an `Explanation` row (hijohnnylin/neuronpedia,
apps/webapp/prisma/schema.prisma): modelId, layer (the SAE or source id, such as
20-gemmascope-res-16k), index (a string), description, authorId, typeName,
explanationModelName, notes; its scores are `ExplanationScore` rows (value,
explanationScoreTypeName, explanationScoreModelName, jsonDetails). Its explanation
exports (`/api/explanation/export`, and the explanations/batch-N.jsonl.gz files of its
datasets, which its admin import loads) are lists of such rows. gloss writes a JSON
array of them, each with its scores nested under `scores` (the row's relation of that
name), and reads a JSON array, JSON Lines, either gzipped, a folder of such files, or a
feature as its API returns it (the rows under `explanations`).

delphi writes, under a run folder, `explanations/{module}_latent{index}.txt` holding the
explanation as a JSON string and `scores/{scorer}/{module}_latent{index}.txt` (a "/"
of the module written "--") holding a JSON list of per-sample records: str_tokens,
activations, distance, activating, prediction, probability, correct (EleutherAI/delphi,
delphi/__main__.py and delphi/scorers/classifier/sample.py). The run's
`run_config.json` names the model that explained and scored (`explainer_model`).

Scores cross over only where they measure the same thing:

    gloss detection   delphi detection, Neuronpedia eleuther_recall: an LLM told which of
                      the active and silent windows fire; balanced accuracy
    gloss embedding   Neuronpedia eleuther_embedding: AUC of label-to-window similarity

delphi's fuzz and Neuronpedia's eleuther_fuzz take silent windows with random marks as
their negatives, where gloss's fuzzing takes active windows with misplaced marks: they
are kept in the imported label's details, like every other score without an equal,
and gloss's fuzzing and simulation scores are not exported.

Imported labels are machine labels (author kind model, the tool as author name), added
by the store's replace rule (`Store.import_labels`); a label whose feature already has
its text is skipped, so importing a file twice adds nothing. A file that is not what its
format says is a one-line error naming it, raised before anything is written.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gloss.pipeline.scoring import auc, balanced_accuracy
from gloss.store import ConfigError, ExampleOut, InputError, ScoreInfo, Store
from gloss.store.base import clean_text
from gloss.store.types import ImportedLabel, ImportedScore

NEURONPEDIA_SCORES = {"detection": "eleuther_recall", "embedding": "eleuther_embedding"}
DELPHI_SCORES = {"detection": "detection"}
_LATENT = re.compile(r"(?P<module>.+)_latent(?P<index>\d+)\.txt")
_NEURONPEDIA_FILES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")


# ---------------------------------------------------------------- where sources live


def targets(
    store: Store, tool: str, pairs: Sequence[str], path: str | None = None
) -> dict[str, str]:
    """Each gloss source's name in the other tool, from `--map SOURCE=ID` and `--map-file`.

    A delphi module defaults to the source's hook point where no other source has that
    hook; a Neuronpedia id is MODEL/SOURCE (gemma-2-2b/20-gemmascope-res-16k) and has no
    default, since Neuronpedia names its SAEs its own way.
    """
    given = _map_file(path) if path else {}
    for pair in pairs:
        name, equals, target = pair.rpartition("=")
        if not equals or not name.strip() or not target.strip():
            raise ConfigError(f"--map takes SOURCE=ID, not {pair!r}")
        given[name.strip()] = target.strip()
    for name in given:
        store.source(name)  # NotFoundError naming the sources there are
    if tool == "neuronpedia":
        for target in given.values():
            model, slash, layer = target.partition("/")
            if not (model and slash and layer) or "/" in layer:
                raise ConfigError(
                    f"a Neuronpedia id is MODEL/SOURCE (gemma-2-2b/20-gemmascope-res-16k), "
                    f"not {target!r}"
                )
        result = given
    else:
        sources = store.sources()
        hooks = Counter(s.hook for s in sources)
        defaults = {s.name: s.hook for s in sources if hooks[s.hook] == 1}
        taken = set(given.values())
        result = {k: v for k, v in defaults.items() if v not in taken} | given
    twice = sorted(t for t, n in Counter(result.values()).items() if n > 1)
    if twice:
        names = ", ".join(sorted(k for k, v in result.items() if v == twice[0]))
        raise ConfigError(f"{names} all map to {twice[0]!r}: give each source its own --map")
    return result


def _map_file(path: str) -> dict[str, str]:
    data = _read_json(Path(path), "a mapping file")
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in data.items()
    ):
        raise ConfigError(f'{path}: a mapping file is a JSON object {{"SOURCE": "ID", ...}}')
    return {k.strip(): v.strip() for k, v in data.items()}


def _chosen(mapped: dict[str, str], source: str | None, example: str) -> dict[str, str]:
    """The sources to export: `source` alone, or every mapped one."""
    if source is not None:
        if source not in mapped:
            raise ConfigError(f"where does {source} live there? pass --map {source}={example}")
        return {source: mapped[source]}
    if not mapped:
        raise ConfigError(f"no source to export: pass --map SOURCE={example}")
    return mapped


# ---------------------------------------------------------------- export


@dataclass
class _Exported:
    labels: int = 0
    scores: Counter[str] = field(default_factory=Counter)
    left_out: Counter[str] = field(default_factory=Counter)

    def line(self, where: str) -> str:
        scores = ", ".join(f"{n} {method}" for method, n in sorted(self.scores.items()))
        left = ", ".join(f"{n} {why}" for why, n in sorted(self.left_out.items()))
        return (
            f"exported {self.labels} labels to {where}"
            + (f" with scores ({scores})" if scores else "")
            + (f"; left out {left}" if left else "")
        )


def _labels(store: Store, chosen: dict[str, str], done: _Exported) -> Iterator[dict[str, Any]]:
    """Export rows of the chosen sources' current labels; baseline token lists stay home."""
    for name in chosen:
        for row in store.export(source=name):
            if row["label"] is None:
                done.left_out["unlabeled features"] += 1
            elif row["author_kind"] == "baseline":
                done.left_out["baseline labels"] += 1
            else:
                yield row


def _scores(store: Store, row: dict[str, Any], methods: Sequence[str]) -> list[ScoreInfo]:
    """The label's scores of `methods` that have a value, newest first."""
    if not set(row["scores"]) & set(methods):
        return []
    scores = store.explanation(row["explanation_id"]).scores
    return [s for s in reversed(scores) if s.method in methods and s.value is not None]


def export_neuronpedia(
    store: Store,
    out: str,
    mapped: dict[str, str],
    *,
    source: str | None = None,
    author: str | None = None,
) -> str:
    """Write the current labels of the mapped sources as Neuronpedia explanation rows."""
    chosen = _chosen(mapped, source, "MODEL/SOURCE")
    done = _Exported()
    records = []
    for row in _labels(store, chosen, done):
        model_id, layer = chosen[row["source"]].split("/")
        windows: dict[int, ExampleOut] | None = None
        scores, written = [], set()
        for score in _scores(store, row, tuple(NEURONPEDIA_SCORES)):
            if (score.method, score.simulator_model) in written:
                continue
            written.add((score.method, score.simulator_model))
            if windows is None:
                windows = _windows(store, row["feature_id"])
            scores.append(
                {
                    "explanationScoreTypeName": NEURONPEDIA_SCORES[score.method],
                    "explanationScoreModelName": score.simulator_model,
                    "value": score.value,
                    "jsonDetails": json.dumps(_neuronpedia_details(score, windows)),
                }
            )
            done.scores[score.method] += 1
        records.append(
            {
                "id": _record_id(model_id, layer, row["index"], row["label"]),
                "modelId": model_id,
                "layer": layer,
                "index": str(row["index"]),
                "description": row["label"],
                **({"authorId": author} if author else {}),
                "typeName": None,
                "explanationModelName": row["model"],
                "notes": _notes(row),
                "createdAt": row["labeled_at"],
                "scores": scores,
            }
        )
        done.labels += 1
    try:
        Path(out).write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot write {out}: {error.strerror}") from None
    line = done.line(out)
    if not author and records:
        line += "; authorId left out: Neuronpedia's importer needs --neuronpedia-author USER_ID"
    return line


def export_delphi(
    store: Store, out: str, mapped: dict[str, str], *, source: str | None = None
) -> str:
    """Write the current labels of the mapped sources, and their detection scores, as a
    delphi run folder; `run_config.json` names the explainer model when one model wrote
    every label and score, as in a delphi run, and is left alone where there is one."""
    chosen = _chosen(mapped, source, "MODULE")
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{out} is a file: delphi's layout is a folder")
    done = _Exported()
    files: dict[Path, Any] = {}
    models: set[str | None] = set()
    for row in _labels(store, chosen, done):
        module = chosen[row["source"]]
        files[root / "explanations" / f"{module}_latent{row['index']}.txt"] = row["label"]
        models.add(row["model"])
        done.labels += 1
        for score in _scores(store, row, tuple(DELPHI_SCORES))[:1]:
            stem = f"{module.replace('/', '--')}_latent{row['index']}"
            records = _classifier_records(score, _windows(store, row["feature_id"]))
            files[root / "scores" / DELPHI_SCORES[score.method] / f"{stem}.txt"] = records
            models.add(score.simulator_model)
            done.scores[score.method] += 1
    config: dict[str, Any] = {"hookpoints": sorted(set(chosen.values()))}
    config["scorers"] = sorted(DELPHI_SCORES[m] for m in done.scores)
    if len(models) == 1 and None not in models:
        config["explainer_model"] = models.pop()
    if not (root / "run_config.json").exists():
        files[root / "run_config.json"] = config
    try:
        for path, content in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(content, ensure_ascii=False), encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot write {out}: {error.strerror}") from None
    return done.line(out)


def _windows(store: Store, feature_id: int) -> dict[int, ExampleOut]:
    return {e.window_id: e for e in store.examples(feature_id, "holdout")}


def _record_id(model_id: str, layer: str, index: int, text: str) -> str:
    """A stable Explanation id: the same label exported twice is the same row there."""
    key = "\x1f".join((model_id, layer, str(index), text)).encode()
    return "gloss-" + hashlib.sha256(key).hexdigest()[:24]


def _notes(row: dict[str, Any]) -> str:
    prompt = f", prompt {row['prompt_name']} v{row['prompt_version']}" if row["prompt_name"] else ""
    return (
        f"gloss label #{row['explanation_id']} of {row['source']}:{row['index']} by "
        f"{row['author_kind']} {row['author_name']}{prompt}"
    )


def _classifier_records(score: ScoreInfo, windows: dict[int, ExampleOut]) -> list[dict[str, Any]]:
    """A detection score's per-window answers as delphi's per-sample records.

    `distance` is the window's gloss quantile when it was drawn from one (0 for another
    active window) and -1 for a silent one, as delphi writes random non-activating
    windows. A score imported from delphi gives back the records it came with.
    """
    if "records" in score.details:
        return list(score.details["records"])
    records = []
    for example in score.details.get("examples", []):
        window = windows.get(example.get("window_id", -1))
        kind = example.get("kind", "")
        active = bool(example.get("active"))
        said = example.get("said")
        prediction = None if said is None else bool(said)
        if kind.startswith("quantile:"):
            distance = int(kind.split(":")[1])
        else:
            distance = 0 if active else -1
        records.append(
            {
                "str_tokens": window.tokens if window else [],
                "activations": window.acts if window else [],
                "distance": distance,
                "activating": active,
                "prediction": prediction,
                "probability": example.get("p"),
                "correct": None if prediction is None else prediction == active,
            }
        )
    return records


def _neuronpedia_details(score: ScoreInfo, windows: dict[int, ExampleOut]) -> Any:
    """jsonDetails in the shape Neuronpedia stores for its eleuther scores."""
    if "json_details" in score.details:
        return score.details["json_details"]
    if score.method == "embedding":
        return [
            {
                "text": "".join(w.tokens) if w else "",
                "distance": 0 if e.get("active") else -1,
                "similarity": e.get("similarity"),
                "activations": w.acts if w else [],
                "str_tokens": w.tokens if w else [],
            }
            for e in score.details.get("examples", [])
            for w in [windows.get(e.get("window_id", -1))]
        ]
    return [
        {
            "text": "".join(r["str_tokens"]),
            "distance": r["distance"],
            "ground_truth": r["activating"],
            "prediction": r["prediction"],
            "highlighted": False,
            "correct": r["correct"],
            "probability": r["probability"],
            "conditional_probability": r["probability"],
            "activations": r["activations"],
            "str_tokens": r["str_tokens"],
        }
        for r in _classifier_records(score, windows)
    ]


# ---------------------------------------------------------------- import


@dataclass
class Incoming:
    """One label read from another tool's file, before it is matched to a feature."""

    target: str  # a delphi module, or a Neuronpedia MODEL/SOURCE
    index: int
    text: str
    model: str | None
    origin: dict[str, Any]  # the tool, the file, its own fields
    scores: list[ImportedScore] = field(default_factory=list)
    kept: dict[str, Any] = field(default_factory=dict)  # scores without a gloss equal


@dataclass
class ImportSummary:
    """What an import did, counted, and the lines `gloss import` prints."""

    tool: str
    path: str
    outcomes: Counter[str] = field(default_factory=Counter)
    scores: Counter[str] = field(default_factory=Counter)
    kept: Counter[str] = field(default_factory=Counter)
    unmapped: Counter[str] = field(default_factory=Counter)
    unknown: list[str] = field(default_factory=list)
    empty: int = 0
    not_read: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        added = self.outcomes["current"] + self.outcomes["candidate"]
        noun = "module" if self.tool == "delphi" else "MODEL/SOURCE"
        why = " (beside a label a human wrote or accepted, or another imported one)"
        lines = [
            f"imported {added} labels from {self.tool} {self.path}: "
            f"{self.outcomes['current']} current, {self.outcomes['candidate']} candidates"
            + (why if self.outcomes["candidate"] else "")
        ]
        if self.outcomes["present"]:
            lines.append(
                f"skipped {self.outcomes['present']} labels already in the store "
                "(same feature, same text)"
            )
        if self.scores:
            lines.append("scores: " + _counts(self.scores))
        if self.kept:
            lines.append("kept in the labels' details (no gloss equal): " + _counts(self.kept))
        if self.unmapped:
            lines.append(
                f"skipped {sum(self.unmapped.values())} labels of unmapped {noun}s "
                f"({_counts(self.unmapped)}): map one with --map SOURCE={noun.upper()}"
            )
        if self.unknown:
            shown = ", ".join(self.unknown[:5]) + (", ..." if len(self.unknown) > 5 else "")
            lines.append(
                f"skipped {len(self.unknown)} labels of features not in the store: {shown}"
            )
        if self.empty:
            lines.append(f"skipped {self.empty} empty descriptions")
        if self.not_read:
            lines.append("not read (no gloss equal): " + ", ".join(self.not_read))
        return lines


def _counts(counts: Counter[str]) -> str:
    return ", ".join(f"{name} {n}" for name, n in sorted(counts.items()))


def import_labels(store: Store, tool: str, path: str, mapped: dict[str, str]) -> ImportSummary:
    """Read a delphi run folder or a Neuronpedia file whole, then add its labels to the
    features they map to, in one transaction. Labels of unmapped modules or sources, and
    of features the store lacks, are skipped and counted; a file none of whose labels
    maps to a source is an error, as that is a missing --map."""
    summary = ImportSummary(tool, path)
    if tool == "delphi":
        incoming, summary.not_read = read_delphi(path)
    else:
        incoming, summary.empty = read_neuronpedia(path)
    sources = {target: store.source(name) for name, target in mapped.items()}
    wanted: dict[int, set[int]] = {}
    for item in incoming:
        if item.target in sources:
            wanted.setdefault(sources[item.target].id, set()).add(item.index)
        else:
            summary.unmapped[item.target] += 1
    if incoming and not wanted:
        noun = "module" if tool == "delphi" else "MODEL/SOURCE"
        names = ", ".join(sorted(summary.unmapped)[:5])
        raise InputError(
            f"{path}: none of its {noun}s ({names}) maps to a gloss source: "
            f"pass --map SOURCE={noun.upper()}"
        )
    features = {
        (source_id, f.index): f.id
        for source_id, indices in wanted.items()
        for f in store.features(source_id, indices=sorted(indices))
    }
    labels, added = [], []
    for item in incoming:
        source = sources.get(item.target)
        if source is None:
            continue
        feature_id = features.get((source.id, item.index))
        if feature_id is None:
            summary.unknown.append(f"{source.name}:{item.index}")
            continue
        details = {"imported": item.origin | ({"scores": item.kept} if item.kept else {})}
        labels.append(
            ImportedLabel(feature_id, item.text, tool, item.model, details, tuple(item.scores))
        )
        added.append(item)
    for outcome, item in zip(store.import_labels(labels), added, strict=True):
        summary.outcomes[outcome] += 1
        if outcome != "present":
            summary.scores.update(s.method for s in item.scores)
            summary.kept.update(item.kept.keys())
    return summary


# ---------------------------------------------------------------- reading delphi


def read_delphi(folder: str) -> tuple[list[Incoming], list[str]]:
    """A delphi run folder's explanations with their detection and fuzz scores, and the
    score folders it holds that gloss does not read."""
    root = Path(folder)
    explanations = root / "explanations"
    if not root.is_dir():
        raise InputError(f"{folder}: no such folder (a delphi run folder, results/NAME)")
    if not explanations.is_dir():
        raise InputError(f"{folder} holds no explanations/ folder: point at a delphi run folder")
    config_path = root / "run_config.json"
    config = _read_json(config_path, "delphi's run_config") if config_path.exists() else {}
    if not isinstance(config, dict):
        raise InputError(f"{config_path}: delphi writes a JSON object here")
    model = config.get("explainer_model")
    model = model if isinstance(model, str) and model else None
    scored: dict[str, dict[str, list[dict[str, Any]]]] = {"detection": {}, "fuzz": {}}
    not_read = []
    for scorer in sorted(p for p in (root / "scores").glob("*") if p.is_dir()):
        if scorer.name not in scored:
            not_read.append(f"scores/{scorer.name}")
            continue
        for path in sorted(scorer.glob("*.txt")):
            scored[scorer.name][path.stem] = _delphi_records(path)
    incoming = []
    for path in sorted(explanations.rglob("*.txt")):
        match = _LATENT.fullmatch(path.relative_to(explanations).as_posix())
        if match is None:
            raise InputError(f"{path}: not a delphi explanation file (MODULE_latentINDEX.txt)")
        text = _read_json(path, "a delphi explanation")
        if not isinstance(text, str):
            raise InputError(f"{path}: a delphi explanation file holds a JSON string")
        module, index = match["module"], int(match["index"])
        stem = f"{module.replace('/', '--')}_latent{index}"
        origin = {"tool": "delphi", "file": str(path.resolve()), "module": module}
        if model:
            origin["explainer_model"] = model
        item = Incoming(module, index, _clean(text, path), model, origin)
        if stem in scored["detection"]:
            path_of = root / "scores" / "detection" / f"{stem}.txt"
            value, details = _classified(scored["detection"][stem])
            details["imported"] = {"tool": "delphi", "file": str(path_of.resolve())}
            details["records"] = scored["detection"][stem]
            item.scores.append(ImportedScore("detection", value, details, model))
        if stem in scored["fuzz"]:
            value, details = _classified(scored["fuzz"][stem])
            item.kept["delphi fuzz"] = {"value": value, **details}
        incoming.append(item)
    if not incoming:
        raise InputError(f"{explanations} holds no explanation files")
    return incoming, not_read


def _delphi_records(path: Path) -> list[dict[str, Any]]:
    records = _read_json(path, "a delphi score")
    if not isinstance(records, list) or not all(
        isinstance(r, dict)
        and isinstance(r.get("activating"), bool | int)
        and r.get("prediction", None) in (True, False, None)
        for r in records
    ):
        raise InputError(
            f"{path}: a delphi score file holds a JSON list of per-sample records "
            "with activating and prediction"
        )
    return records


def _classified(records: list[dict[str, Any]]) -> tuple[float | None, dict[str, Any]]:
    """Balanced accuracy of a classifier scorer's answers, as delphi's own summary counts
    it (samples the LLM failed to answer left out), with the AUC where it gave
    probabilities."""
    answered = [r for r in records if r.get("prediction") is not None]
    truth = [bool(r["activating"]) for r in answered]
    value, reason = balanced_accuracy(truth, [bool(r["prediction"]) for r in answered])
    details: dict[str, Any] = {
        "n_active": sum(bool(r["activating"]) for r in records),
        "n_silent": sum(not r["activating"] for r in records),
        "n_unanswered": len(records) - len(answered),
    }
    if reason:
        details["reason"] = reason
    probabilities = [r.get("probability") for r in answered]
    if answered and all(isinstance(p, int | float) for p in probabilities):
        details["auc"], _ = auc(truth, [float(p) for p in probabilities])
    return value, details


# ---------------------------------------------------------------- reading Neuronpedia


def read_neuronpedia(path: str) -> tuple[list[Incoming], int]:
    """Neuronpedia explanation rows with their eleuther_recall and eleuther_embedding
    scores, and how many had an empty description (skipped)."""
    root = Path(path)
    if root.is_dir():
        files = sorted(p for p in root.iterdir() if p.name.endswith(_NEURONPEDIA_FILES))
        if not files:
            raise InputError(f"{path} holds no .json, .jsonl or .jsonl.gz files")
    elif root.exists():
        files = [root]
    else:
        raise InputError(f"{path}: no such file")
    incoming, empty = [], 0
    for file in files:
        for number, record in enumerate(_neuronpedia_rows(file), 1):
            item = _neuronpedia_label(record, file, number)
            if item is None:
                empty += 1
            else:
                incoming.append(item)
    return incoming, empty


def _neuronpedia_rows(file: Path) -> list[Any]:
    """A file's rows: a JSON array (or one feature's `explanations`), or JSON Lines."""
    try:
        data = file.read_bytes()
        if file.name.endswith(".gz"):
            data = gzip.decompress(data)
        text = data.decode("utf-8")
    except OSError as error:
        raise InputError(f"{file}: cannot read it ({error.strerror or error})") from None
    except (UnicodeDecodeError, EOFError):
        raise InputError(f"{file}: not UTF-8 JSON text") from None
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise InputError(
                        f"{file}: not JSON or JSON Lines (line {number}: {error.msg})"
                    ) from None
        return rows
    if isinstance(whole, dict) and isinstance(whole.get("explanations"), list):
        return whole["explanations"]
    return whole if isinstance(whole, list) else [whole]


def _neuronpedia_label(record: Any, file: Path, number: int) -> Incoming | None:
    where = f"{file}: record {number}"
    if not isinstance(record, dict):
        raise InputError(f"{where} is not a JSON object")
    for key in ("modelId", "layer"):
        if not isinstance(record.get(key), str) or not record[key].strip():
            raise InputError(
                f"{where} has no {key}: Neuronpedia explanations name modelId, layer, index"
            )
    index = record.get("index")
    if isinstance(index, str) and index.isascii() and index.isdigit():
        index = int(index)
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise InputError(f"{where}: index {record.get('index')!r} is not a feature index")
    description = record.get("description")
    if not isinstance(description, str):
        raise InputError(f"{where} has no description")
    if not description.strip():
        return None
    model = record.get("explanationModelName")
    origin = {
        "tool": "neuronpedia",
        "file": str(file.resolve()),
        "record": number,
        "fields": {k: v for k, v in record.items() if k not in ("embedding", "scores")},
    }
    item = Incoming(
        f"{record['modelId']}/{record['layer']}",
        index,
        _clean(description, file),
        model if isinstance(model, str) and model else None,
        origin,
    )
    scores = record.get("scores") or []
    if not isinstance(scores, list):
        raise InputError(f"{where}: scores is not a list")
    methods = {v: k for k, v in NEURONPEDIA_SCORES.items()}
    seen = set()
    for score in scores:
        kind, value = _neuronpedia_score(score, where)
        scorer = score.get("explanationScoreModelName") or None
        method = methods.get(kind)
        if method is None:
            item.kept.setdefault(kind, []).append({"value": value, "model": scorer})
        elif (method, scorer) not in seen:
            seen.add((method, scorer))
            details = _json_details(score.get("jsonDetails"))
            details["imported"] = {
                "tool": "neuronpedia",
                "file": str(file.resolve()),
                "type": kind,
                "id": score.get("id"),
            }
            item.scores.append(ImportedScore(method, value, details, scorer))
    return item


def _neuronpedia_score(score: Any, where: str) -> tuple[str, float]:
    if not isinstance(score, dict) or not isinstance(score.get("explanationScoreTypeName"), str):
        raise InputError(f"{where}: a score names no explanationScoreTypeName")
    value = score.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InputError(f"{where}: score value {value!r} is not a finite number")
    return score["explanationScoreTypeName"], float(value)


def _json_details(raw: Any) -> dict[str, Any]:
    """jsonDetails (a JSON string in Neuronpedia) parsed where it is JSON, kept as given else."""
    if isinstance(raw, str) and raw:
        try:
            return {"json_details": json.loads(raw)}
        except json.JSONDecodeError:
            return {"json_details": raw}
    return {}


# ---------------------------------------------------------------- files


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_bytes())
    except OSError as error:
        raise InputError(f"{path}: cannot read {what} ({error.strerror or error})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        reason = error.msg if isinstance(error, json.JSONDecodeError) else "not UTF-8"
        raise InputError(f"{path}: {what} file is JSON, and this is not ({reason})") from None


def _clean(text: str, path: Path) -> str:
    try:
        return clean_text(text, "a label")
    except InputError as error:
        raise InputError(f"{path}: {error}") from None
