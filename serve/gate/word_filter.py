"""Word filter: every blocklisted word in a prompt becomes ❤️, the rest of the prompt is kept.

Matching runs on a normalized copy of the prompt that remembers, for every normalized letter, the
span of the original text it came from, so replacements land on the original characters:

- Unicode NFKC (fullwidth and mathematical letters), case folding, diacritics stripped;
- format characters (zero-width spaces and joiners, soft hyphens, bidi marks) dropped;
- confusable letters folded (Cyrillic/Greek look-alikes of Latin letters);
- common digit/symbol substitutions (0→o, 1→i/l, 3→e, 4→a, 5→s, 7→t, @→a, $→s, ...);
- letters split by separators ("n.u.d.e", "n u d e", "n-u-d-e") joined back;
- runs of three or more equal letters collapsed ("nuuude").

A match must cover whole words of the normalized text, so an innocent word that merely contains a
blocked one ("Scunthorpe", "classic", "therapist") is left alone.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

HEART = "\u2764\ufe0f"

# Cyrillic and Greek letters that render like Latin ones (lower case; input is case-folded first).
_CONFUSABLES = {
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c",
    "т": "t", "у": "y", "х": "x", "і": "i", "ї": "i", "ј": "j", "ѕ": "s", "ԁ": "d", "ɡ": "g", "ɑ": "a",
    "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t",
    "υ": "u", "χ": "x", "ω": "w", "ς": "s", "σ": "o",
}
# Capitals that differ from their lower case look (Greek Ν is N, its lower case ν looks like v).
_UPPER_CONFUSABLES = {
    "Α": "a", "Β": "b", "Ε": "e", "Ζ": "z", "Η": "h", "Ι": "i", "Κ": "k", "Μ": "m", "Ν": "n", "Ο": "o",
    "Ρ": "p", "Τ": "t", "Υ": "y", "Χ": "x", "А": "a", "В": "b", "Е": "e", "К": "k", "М": "m", "Н": "h",
    "О": "o", "Р": "p", "С": "c", "Т": "t", "Х": "x", "У": "y",
}
# Substitutions inside words; a character may stand for several letters.
_SUBSTITUTES = {
    "0": "o", "1": "il", "2": "z", "3": "e", "4": "a", "5": "s", "6": "g", "7": "t", "8": "b", "9": "g",
    "@": "a", "$": "s", "!": "i", "|": "l", "+": "t", "€": "e", "¢": "c", "£": "l",
}
# Characters that may split the letters of one word ("n.u.d.e", "n_u_d_e").
_SEPARATORS = set(" \t\n.-_*·,|/\\~'\"`^:;")
_MAX_VARIANTS = 16
_MAX_JOIN = 24  # longest run of fragments tried as one word


@dataclass(frozen=True)
class _Letter:
    options: tuple[str, ...]  # what this position may read as: a letter, or "" (a stray symbol)
    start: int  # span in the original text
    end: int


@dataclass(frozen=True)
class _Word:
    letters: tuple[_Letter, ...]
    gap_before: str  # original text between the previous word and this one

    @property
    def start(self) -> int:
        return self.letters[0].start

    @property
    def end(self) -> int:
        return self.letters[-1].end


def _fold(char: str) -> str:
    """NFKC, case fold, strip diacritics and format characters, fold confusables."""
    out = []
    upper_folded = "".join(_UPPER_CONFUSABLES.get(c, c) for c in unicodedata.normalize("NFKC", char))
    for c in upper_folded.casefold():
        for d in unicodedata.normalize("NFKD", c):
            if unicodedata.category(d) in ("Mn", "Me", "Cf"):
                continue
            out.append(_CONFUSABLES.get(d, d))
    return "".join(out)


def _letters(text: str) -> list[_Letter | str]:
    """The text as normalized letters (with their original spans) and raw non-letter characters."""
    stream: list[_Letter | str] = []
    for index, char in enumerate(text):
        if unicodedata.category(char) == "Cf":
            continue  # zero-width characters vanish: they neither join nor split
        folded = _fold(char)
        if not folded:
            continue  # a lone combining mark: part of the previous letter
        for piece in folded:
            if piece.isalpha():
                stream.append(_Letter((piece,), index, index + 1))
            elif piece in _SUBSTITUTES and _between_letters(text, index):
                # "nude!" is "nude" with an exclamation mark as much as "nudei"; try both.
                stream.append(_Letter((*_SUBSTITUTES[piece], ""), index, index + 1))
            else:
                stream.append(piece)
    return stream


def _between_letters(text: str, index: int) -> bool:
    """A digit/symbol counts as a letter only next to a letter or another substitute ("p0rn", "s3x")."""
    def letterish(i: int) -> bool:
        return 0 <= i < len(text) and (text[i].isalpha() or text[i] in _SUBSTITUTES)

    return letterish(index - 1) or letterish(index + 1)


def _words(text: str) -> list[_Word]:
    words: list[_Word] = []
    current: list[_Letter] = []
    gap: list[str] = []
    last_end = 0
    for item in _letters(text):
        if isinstance(item, _Letter):
            if not current:
                gap_text = text[last_end:item.start]
                gap = [gap_text]
            current.append(item)
        elif current:
            words.append(_Word(tuple(current), "".join(gap)))
            last_end = current[-1].end
            current = []
    if current:
        words.append(_Word(tuple(current), "".join(gap)))
    return words


def _spellings(letters: list[_Letter]) -> set[str]:
    """Readings of these letters (substitutes have several), with long repeats collapsed too.

    Bounded: a word full of substitutes is read at most _MAX_VARIANTS ways.
    """
    choices = [letter.options for letter in letters]
    spellings: set[str] = set()
    for combo in itertools.islice(itertools.product(*choices), _MAX_VARIANTS):
        word = "".join(combo)
        spellings.add(word)
        spellings.add(re.sub(r"(.)\1{2,}", r"\1", word))
        spellings.add(re.sub(r"(.)\1{2,}", r"\1\1", word))
    return spellings


def _joinable(gap: str, fragments: list[_Word]) -> bool:
    """May the next fragment be read as part of the same word as the previous ones?"""
    if not gap or len(gap) > 3 or not set(gap) <= _SEPARATORS:
        return False
    if any(c.isspace() for c in gap):
        # Across spaces only single letters join ("n u d e"); "the nude" stays two words.
        return all(len(f.letters) == 1 for f in fragments)
    return True


class WordFilter:
    """Replaces blocklisted words (and multi-word phrases) with ❤️."""

    def __init__(self, words: set[str], replacement: str = HEART) -> None:
        self.replacement = replacement
        self.blocked = {_normalize_entry(w) for w in words if _normalize_entry(w)}
        # Multi-word entries match only as whole-word sequences, never as fragments of one word
        # read across spaces (so "pen is" does not become a blocked single word).
        self.phrases = {_normalize_entry(w) for w in words if len(w.split()) > 1}

    @classmethod
    def from_lists(
        cls, use_default: bool = True, extra_words: list[str] | tuple[str, ...] = (), extra_files: list[str] = ()
    ) -> "WordFilter":
        words: set[str] = set(extra_words)
        if use_default:
            words |= read_list(resources.files("serve.gate").joinpath("blocklists/default.txt").read_text("utf-8"))
        for path in extra_files:
            words |= read_list(Path(path).read_text("utf-8"))
        return cls(words)

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Original-text spans of blocked words, merged and sorted."""
        words = _words(text)
        found: list[tuple[int, int]] = []
        for i in range(len(words)):
            fragments = [words[i]]
            letters = list(words[i].letters)
            for j in range(i, min(len(words), i + _MAX_JOIN)):
                if j > i:
                    if not _joinable(words[j].gap_before, fragments + [words[j]]):
                        break
                    fragments.append(words[j])
                    letters.extend(words[j].letters)
                if self.blocked & _spellings(letters):
                    found.append((words[i].start, words[j].end))
            found.extend(self._phrases(words, i))
        return _merge(found)

    def _phrases(self, words: list[_Word], i: int) -> list[tuple[int, int]]:
        # Multi-word entries ("blow job") are stored without spaces; try up to 4 whole words.
        if not self.phrases:
            return []
        letters: list[_Letter] = list(words[i].letters)
        spans = []
        for j in range(i + 1, min(len(words), i + 4)):
            letters.extend(words[j].letters)
            if self.phrases & _spellings(letters):
                spans.append((words[i].start, words[j].end))
        return spans

    def apply(self, text: str) -> tuple[str, int]:
        """(filtered text, number of replacements)."""
        spans = self.spans(text)
        if not spans:
            return text, 0
        out, last = [], 0
        for start, end in spans:
            out.append(text[last:start])
            out.append(self.replacement)
            last = end
        out.append(text[last:])
        return "".join(out), len(spans)


def _normalize_entry(entry: str) -> str:
    return "".join(c for c in _fold(entry) if c.isalpha())


def read_list(text: str) -> set[str]:
    """Blocklist file format: one word or phrase per line; '#' starts a comment."""
    return {line.split("#", 1)[0].strip() for line in text.splitlines()} - {""}


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged
