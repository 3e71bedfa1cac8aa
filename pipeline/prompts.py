"""Prompt templates: files in `prompts/`, each with a stable name, a version and a content hash.

A template file starts with a small header, then a `---` line, then the text:

    name: explain-openai
    version: 1
    ---
    ... {{examples}} ...

`{{key}}` placeholders are filled in one pass, so a value (corpus text) that itself
contains `{{...}}` is never expanded. The hash covers the whole file, so every label
and score records exactly which wording produced it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from gloss.store import ConfigError, PromptRef

PROMPTS_DIR = Path(str(resources.files("gloss.prompts")))
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


@dataclass(frozen=True)
class Prompt:
    name: str
    version: str
    hash: str
    text: str
    path: Path

    @property
    def ref(self) -> PromptRef:
        return PromptRef(self.name, self.version, self.hash)

    @property
    def placeholders(self) -> set[str]:
        return set(_PLACEHOLDER.findall(self.text))

    def render(self, **values: str) -> str:
        missing = self.placeholders - values.keys()
        if missing:
            raise ConfigError(f"prompt {self.name} needs values for {', '.join(sorted(missing))}")
        return _PLACEHOLDER.sub(lambda m: values[m.group(1)], self.text)


def load_prompt(name_or_path: str | Path) -> Prompt:
    """A template by file name in prompts/ (`explain_openai`, `explain_openai.txt`) or by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = path.with_suffix(".txt")
    if not path.is_file():
        path = PROMPTS_DIR / path.name
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROMPTS_DIR.glob("*.txt")))
        raise ConfigError(f"no prompt template {str(name_or_path)!r}; known templates: {known}")
    raw = path.read_text(encoding="utf-8")
    header, sep, text = raw.partition("\n---\n")
    if not sep:
        raise ConfigError(
            f"prompt {path} has no header: start it with 'name: ...', 'version: ...', '---'"
        )
    fields = {}
    for line in header.splitlines():
        key, colon, value = line.partition(":")
        if colon:
            fields[key.strip()] = value.strip()
    for key in ("name", "version"):
        if not fields.get(key):
            raise ConfigError(f"prompt {path} header lacks '{key}: ...'")
    return Prompt(
        name=fields["name"],
        version=fields["version"],
        hash=hashlib.sha256(raw.encode()).hexdigest(),
        text=text.rstrip("\n"),
        path=path,
    )


# Corpus text goes into prompts as data: these keep it from closing our delimiters
# (<start>/<end>, <<marks>>) or breaking the one-token-per-line layout.
_DELIMITERS = {"<start>": "‹start›", "<end>": "‹end›", "<<": "‹‹", ">>": "››"}
_BRACKETS = str.maketrans({"<": "‹", ">": "›"})
_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}
# Category Cc (C0, DEL, C1) and the line and paragraph separators (Zl, Zp): everything
# `str.splitlines` breaks on and everything a terminal may take as a control sequence.
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029<>]")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """`text` with every control character and line separator shown as a visible escape
    (`\\n`, `\\x1b`, `\\u2028`), so it can neither break a line nor drive a terminal."""
    if not _CONTROLS.search(text):
        return text
    return _CONTROLS.sub(_escape, text)


def neutralize(text: str, *, brackets: bool = False) -> str:
    """Corpus text with our delimiters and layout characters made inert.

    `brackets` turns every `<` and `>` into `‹` `›`: for text that we then mark with
    `<<`/`>>` ourselves, where a run ending in `<end` would otherwise complete a delimiter.
    """
    if not _UNSAFE.search(text):  # most tokens: nothing to do
        return text
    text = printable(text)
    if brackets:
        return text.translate(_BRACKETS)
    for raw, safe in _DELIMITERS.items():
        text = text.replace(raw, safe)
    return text


def spell(tokens: list[str]) -> list[tuple[str, str]]:
    """(gap, text) per token, so a window reads as text.

    Byte-level BPE tokens carry their own leading spaces; WordPiece tokens (BERT)
    do not, so those get a space before each word and `##` continuations are glued on.
    """
    if any(t[:1].isspace() for t in tokens):
        return [("", t) for t in tokens]
    spelled = []
    for i, token in enumerate(tokens):
        if token.startswith("##") and len(token) > 2:
            spelled.append(("", token[2:]))
        else:
            spelled.append(("" if i == 0 else " ", token))
    return spelled
