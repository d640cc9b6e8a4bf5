"""Subjects written by a user, resolved to the token columns of a prompt.

Every input that names words of the prompt (Subject Tokens' subjects, SynGen's and A-STAR's binding
overrides, relation overrides) goes through this one parser and resolver: a word or phrase
(``"cat"``, ``"teddy bear"``), a repeated word with its occurrence (``"dog#2"``), or, where
columns are allowed, a column index (``"5"``).
"""

from __future__ import annotations

import re

from ..errors import StormError
from .layout import WORD, Subject, TokenLayout

_OCCURRENCE = re.compile(r"^(?P<word>.+?)\s*#\s*(?P<n>\d+)$")


def _normalise(text: str) -> str:
    return "".join(text.lower().split())


def find_word(layout: TokenLayout, query: str, occurrence: int = 1) -> tuple[int, ...] | None:
    """Columns of the ``occurrence``-th match of ``query`` (one or more words) in the prompt.

    Matching is case-insensitive and compares the query, whitespace removed, with the text of
    consecutive words, so ``"teddy bear"``, multi-piece words (``"tiramisu"`` = ``tira`` +
    ``misu``) and words split by punctuation (``"dog's"``) all resolve. Returns ``None`` when
    there is no such occurrence.
    """
    target = _normalise(query)
    if not target:
        return None
    words = layout.words
    seen = 0
    for start in range(len(words)):
        text = ""
        for end in range(start, len(words)):
            text += words[end].text.lower()
            if not target.startswith(text):
                break
            if text == target:
                seen += 1
                if seen == occurrence:
                    return tuple(p for w in words[start:end + 1] for p in w.positions)
                break
    return None


def count_word(layout: TokenLayout, query: str) -> int:
    """How many times ``query`` occurs in the prompt (see :func:`find_word`)."""
    n = 0
    while find_word(layout, query, n + 1) is not None:
        n += 1
    return n


def parse_subject_spec(spec: str) -> list[str]:
    """Split a subject specification (``"cat, dog"``, ``"2, 5"``, ``"dog#2"``) into items.

    Items are separated by commas, semicolons or new lines; blanks are ignored.
    """
    return [item.strip() for item in re.split(r"[,;\n]", spec or "") if item.strip()]


def resolve_subjects(layout: TokenLayout, spec: str) -> tuple[Subject, ...]:
    """Turn a subject specification into token columns of ``layout``.

    Each item is a word or phrase of the prompt (``"cat"``, ``"teddy bear"``), a word with the
    occurrence to use (``"dog#2"`` = the second "dog"), or an explicit column index (``"5"``;
    column 0 is the start token, the first word piece is column 1).

    Raises
    ------
    StormError
        With ``input_name="subjects"``, naming the offending item and listing the prompt's
        tokens with their indices.
    """
    items = parse_subject_spec(spec)
    if not items:
        raise StormError(
            "no subjects given: enter the words of the prompt to guide, separated by commas "
            "(for example 'cat, dog'), or their token indices (for example '2, 5').\n"
            f"Prompt tokens: {layout.describe()}",
            input_name="subjects",
        )
    subjects: list[Subject] = []
    for item in items:
        subject = _resolve_item(layout, item)
        for other in subjects:
            if other.positions == subject.positions:
                raise StormError(
                    f"subject {item!r} selects the same tokens as {other.name!r}; to guide a "
                    f"repeated word use its occurrence, e.g. '{other.name.split('#')[0]}#2'",
                    input_name="subjects",
                )
        subjects.append(subject)
    return tuple(subjects)


def _resolve_item(layout: TokenLayout, item: str) -> Subject:
    listing = f"Use words exactly as they appear in the prompt, or token indices.\nPrompt tokens: {layout.describe()}"
    if item.isdigit():
        index = int(item)
        if index >= layout.length:
            raise StormError(
                f"token index {index} is out of range: the prompt has {layout.length} columns and "
                f"its words sit at indices {_ranges(layout.word_positions)}.\n{listing}",
                input_name="subjects",
            )
        piece = layout.pieces[index]
        if piece.kind != WORD:
            raise StormError(
                f"token index {index} is the {piece.kind} token, not a word of the prompt; "
                f"pick one of the word indices.\n{listing}",
                input_name="subjects",
            )
        return Subject(f"{piece.text}@{index}", (index,))
    return resolve_word(layout, item, input_name="subjects", listing=listing)


def _ranges(positions: tuple[int, ...]) -> str:
    if not positions:
        return "(none: the prompt is empty)"
    out, start, prev = [], positions[0], positions[0]
    for p in positions[1:] + (None,):
        if p is not None and p == prev + 1:
            prev = p
            continue
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
        if p is not None:
            start = prev = p
    return ", ".join(out)


def word_references(layout: TokenLayout) -> list[dict]:
    """Every word of the prompt with its columns and the reference that selects it in a subject list:
    ``{"text": "dog", "positions": [5], "ref": "dog"}``, ``"ref": "dog#2"`` for its second occurrence.
    Punctuation is left out. What the UI shows as token chips."""
    out, seen = [], {}
    for word in layout.words:
        if not any(c.isalnum() for c in word.text):
            continue
        key = word.text.lower()
        seen[key] = seen.get(key, 0) + 1
        ref = word.text if seen[key] == 1 else f"{word.text}#{seen[key]}"
        out.append({"text": word.text, "positions": list(word.positions), "ref": ref})
    return out


def prompt_words(layout: TokenLayout) -> str:
    """The prompt's distinct words, for error messages."""
    return ", ".join(dict.fromkeys(w.text for w in layout.words)) or "(none: the prompt is empty)"


def parse_word_reference(item: str, *, input_name: str) -> tuple[str, int]:
    """``(word, occurrence)`` of a word or phrase written by a user (``"teddy bear"``, ``"dog#2"``).

    Needs no prompt: the syntax only. Raises :class:`StormError` (``input_name``) for an empty
    word or an occurrence below 1.
    """
    item = " ".join(item.split())
    match = _OCCURRENCE.match(item)
    word, occurrence = (match["word"], int(match["n"])) if match else (item, 1)
    if not word:
        raise StormError("an empty word; write a word of the prompt", input_name=input_name)
    if occurrence < 1:
        raise StormError(f"{item!r}: occurrences count from 1 ('{word}#1' is the first {word!r})",
                         input_name=input_name)
    return word, occurrence


def check_subject_spec(spec: str, *, input_name: str = "subjects") -> None:
    """Check the syntax of a subjects text (``"cat, dog#2, 5"``, see :func:`storm_ops.tokens.subjects.resolve_subjects`)
    without the prompt: at least one item, occurrences from 1, no item naming the same word twice.

    Raises
    ------
    StormError
        With ``input_name``, naming the item.
    """
    seen: dict[tuple, str] = {}
    items = parse_subject_spec(spec)
    if not items:
        raise StormError("no subjects given: enter the words of the prompt to guide, separated by commas (for "
                         "example 'cat, dog'), or their token indices (for example '2, 5')", input_name=input_name)
    for item in items:
        if item.isdigit():
            key: tuple = ("column", int(item))
        else:
            word, occurrence = parse_word_reference(item, input_name=input_name)
            key = ("word", "".join(word.casefold().split()), occurrence)
        if key in seen:
            raise StormError(f"subject {item!r} selects the same tokens as {seen[key]!r}; to guide a repeated word "
                             "use its occurrence, e.g. 'dog#2'", input_name=input_name)
        seen[key] = item


def resolve_word(layout: TokenLayout, item: str, *, input_name: str, listing: str | None = None) -> Subject:
    """A word or phrase of the prompt written by a user (``"teddy bear"``, ``"dog#2"``) as a Subject.

    Raises
    ------
    StormError
        With ``input_name``, naming the word and listing the prompt's words (or ``listing``).
    """
    item = " ".join(item.split())
    word, occurrence = parse_word_reference(item, input_name=input_name)
    positions = find_word(layout, word, occurrence)
    if positions is not None:
        return Subject(item, positions)
    listing = listing or f"Prompt words: {prompt_words(layout)}"
    count = count_word(layout, word)
    if count:
        raise StormError(f"{item!r}: the prompt contains {word!r} only {count} time(s) (occurrences count from "
                         f"1). {listing}", input_name=input_name)
    raise StormError(f"{word!r} is not a word of the prompt. {listing}", input_name=input_name)


def masks_by_subject(subjects, masks, names: str, input_name: str = "mask_subjects") -> list | None:
    """One mask (or None) per subject, out of a MASK batch ``(N, H, W)`` (or one ``(H, W)`` mask).

    ``names`` lists the subject each mask belongs to (:func:`parse_subject_spec`); empty means the subjects in
    order. None when there are no masks.
    """
    if masks is None:
        return None
    batch = masks if masks.dim() == 3 else masks[None]
    wanted = parse_subject_spec(names) or [s.name for s in subjects][: batch.shape[0]]
    if len(wanted) != batch.shape[0]:
        raise StormError(f"{batch.shape[0]} masks but {len(wanted)} subject names in mask_subjects; give one name "
                         "per mask", input_name=input_name)
    by_name = {s.name: i for i, s in enumerate(subjects)}
    out: list = [None] * len(subjects)
    for mask, name in zip(batch, wanted, strict=True):
        if name not in by_name:
            raise StormError(f"mask for {name!r}: not one of the subjects {list(by_name)}", input_name=input_name)
        out[by_name[name]] = mask.float()
    return out
