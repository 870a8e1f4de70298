"""The PERSON gazetteer: names from first/last name lists and cue words, for the names spaCy's small
model misses (names at a line start, in lists, foreign names).

The lists live in include/presidio/names (the `name_lists:` section of the recognizers YAML says
which files); they load once per process. name_list_spans reads a text, and the recognizer built by
name_list_recognizer hands its spans to Presidio. The NER gate (tasks.pii.gate) uses the same
vocabulary to skip sentences that cannot hold a name.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from pathlib import Path
from typing import NamedTuple

from tasks.pii.spec import NameListSpec

# A word, with inner apostrophes and hyphens ("O'Brien", "Jean-Luc") but not a possessive "'s".
_NAME_WORD = re.compile(r"[^\W\d_]+(?:['’-](?![sS]\b)[^\W\d_]+)*\.?")
# Lower-case particles inside a name: "Sietske van der Wardt", "Christiane de Vaan".
_NAME_PARTICLES = frozenset(
    {
        "van",
        "von",
        "der",
        "den",
        "de",
        "del",
        "della",
        "di",
        "da",
        "dos",
        "das",
        "du",
        "le",
        "la",
        "ten",
        "ter",
        "bin",
        "ibn",
        "al",
        "el",
    }
)
# At a sentence or line start a capitalised stop word ("My", "Else") is not taken as a name.
_SENTENCE_START = re.compile(r"(?:^|[.!?:;\n\"(]|\\n)\s*$")
_HOUSE_NUMBER = re.compile(r"\d[\w/-]*\s+$")
# Endings of terms, not names, for words no list knows in uncased text ("preauthorization", "telehealth").
_TERM_ENDINGS = (
    "tion",
    "sion",
    "ment",
    "ness",
    "ism",
    "ogy",
    "ics",
    "itis",
    "osis",
    "ectomy",
    "otomy",
    "plasty",
    "scopy",
    "graphy",
    "gram",
    "ide",
    "ase",
    "health",
    "care",
    "pay",
    "pays",
    "able",
    "ible",
    "ium",
    "mab",
    "nib",
    "pril",
)
# After a name at a sentence start: punctuation of a name's place, or a verb people take.
_NAME_SLOT_AFTER = re.compile(
    r"(?:\s*[,:]|['’]s\b|\s+(?:is|was|has|had|said|says|told|asked|shouted|began|spent|lives|lived|works|worked|"
    r"wrote|called|came|went|left|and|were)\b)",
    re.IGNORECASE,
)


class NameLists(NamedTuple):
    """The gazetteer's word sets, case-folded."""

    first: frozenset  # first names (never-names taken out)
    last: frozenset  # last names (never-names taken out)
    never: frozenset  # never a name: not_names.txt and English stop words
    stop: frozenset  # English stop words (spaCy's)
    listed_never: frozenset  # the not_names.txt words alone
    gate_skip: frozenset  # the NER gate's vocabulary: never a name, and no list has it as one
    # First names that not_names.txt keeps out because they are domain words too ("grace period", "June"): in
    # text without capitals they are a first name only beside a listed last name ("grace fischer").
    ambiguous_first: frozenset


_NAME_LISTS: dict[tuple, NameLists] = {}


def read_word_list(paths: tuple[Path, ...]) -> frozenset[str]:
    """The entries of word-list files (one per line, `#` comments), NFC and case-folded, inner spaces
    collapsed: the name lists here, the place gazetteer in tasks.pii.places."""
    words = set()
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                words.add(" ".join(unicodedata.normalize("NFC", line).casefold().split()))
    return frozenset(words)


@functools.lru_cache(maxsize=4)
def english_lexicon(model: str) -> tuple[frozenset, tuple]:
    """(English words, suffix rules) from the spaCy model's lemmatizer tables (WordNet's index,
    ~83,000 words): read from the installed package, without loading the pipeline."""
    import spacy.util
    from spacy.lookups import Lookups

    folders = sorted(spacy.util.get_package_path(model).rglob("lemmatizer"))
    if not folders:
        raise ValueError(f"spaCy model {model} has no lemmatizer tables; set lowercase_not_english: false")
    lookups = Lookups().from_disk(folders[0] / "lookups" if (folders[0] / "lookups").is_dir() else folders[0])
    words: set[str] = set()
    for table in ("lemma_index", "lemma_exc"):
        for forms in lookups.get_table(table).values():
            words.update(forms if isinstance(forms, list) else [f for fs in forms.values() for f in fs])
    for forms in lookups.get_table("lemma_exc").values():
        words.update(forms)  # the irregular forms themselves ("went", "children")
    rules = {tuple(r) for rs in lookups.get_table("lemma_rules").values() for r in rs if r[0]}
    return frozenset(w for w in words if w.isalpha()), tuple(sorted(rules) + [("ing", ""), ("ing", "e"), ("ly", "")])


def is_english(word: str, lexicon: tuple[frozenset, tuple]) -> bool:
    """`word` (lower case) or a lemma a suffix rule makes of it is in the English word list."""
    words, rules = lexicon
    return word in words or any(
        word.endswith(old) and word[: len(word) - len(old)] + new in words for old, new in rules
    )


def name_lists(spec: NameListSpec) -> NameLists:
    """The name lists of `spec`, loaded once per process (and again when a file changes)."""
    key = (
        spec.first_names,
        spec.last_names,
        spec.not_names,
        tuple(p.stat().st_mtime_ns for p in spec.first_names + spec.last_names + spec.not_names),
    )
    if key not in _NAME_LISTS:
        from spacy.lang.en.stop_words import STOP_WORDS

        stop = frozenset(w.casefold() for w in STOP_WORDS)
        listed_never = read_word_list(spec.not_names)
        never = listed_never | stop
        first, last = read_word_list(spec.first_names), read_word_list(spec.last_names)
        # The NER gate's vocabulary: words that are never names and that no list has as a name
        # either ("Question", "Prior"; not "Grace", which the lists have and not_names keeps out).
        gate_skip = never - first - last
        ambiguous = (first & listed_never) - stop
        _NAME_LISTS[key] = NameLists(first - never, last - never, never, stop, listed_never, gate_skip, ambiguous)
    return _NAME_LISTS[key]


def _words(scan: str) -> list[tuple[int, int, str, str]]:
    """(start, end, folded core, kind) per word; kind is "cap", "initial", "lower", "upper" (all
    capitals, two letters or more) or "other". An initial's span takes its full stop ("M."),
    another word's does not."""
    words = []
    for m in _NAME_WORD.finditer(scan):
        token = m.group()
        core = token.rstrip(".")
        if len(core) == 1 and core.isupper():
            kind = "initial"
        elif core[0].isupper() and not core.isupper():
            kind = "cap"
        elif core.islower():
            kind = "lower"
        elif core.isupper():
            kind = "upper"
        else:
            kind = "other"
        end = m.end() if kind == "initial" else m.start() + len(core)
        words.append((m.start(), end, core.casefold(), kind))
    return words


class _NameScan:
    """One text's words, read against the name lists: the tests name_list_spans applies to word i."""

    def __init__(self, text: str, spec: NameListSpec):
        self.text, self.spec = text, spec
        self.lists = name_lists(spec)
        # Templates and exports often hold a literal "\\n" ("\\N" in capitals): read it as the line break.
        self.scan = re.sub(r"\\[nN]", "\n ", text) if "\\" in text else text
        self.words = _words(self.scan)
        self.cued = {m.end() for m in spec.cues.finditer(self.scan)} if spec.cues is not None else set()
        self.english = english_lexicon(spec.english_model) if spec.english_model else None
        # The casings the lower-case rules read: capitals too with upper_case ("NAME: KHASBULAT SHISHANI").
        self.uncased = ("lower", "upper") if spec.upper_case else ("lower",)
        # No capitals to go by: a lower-case text (a capital first letter at most) or one in capitals.
        kinds = [w[3] for w in self.words[1:]]
        self.uncased_text = bool(kinds) and (
            ("cap" not in kinds and "upper" not in kinds)
            or (spec.upper_case and "cap" not in kinds and "lower" not in kinds)
        )
        lower_cues = spec.lowercase_cues
        self.lower_cued = {m.end() for m in lower_cues.finditer(self.scan)} if lower_cues is not None else set()

    def joined(self, a: int, b: int) -> bool:
        """Words a and b are neighbours in one name."""
        return self.scan[self.words[a][1] : self.words[b][0]] in (" ", "  ")

    def name_word(self, a: int) -> bool:
        return self.words[a][3] == "cap" and self.words[a][2] not in self.lists.never

    def listed(self, i: int) -> bool:
        return self.words[i][2] in self.lists.first or self.words[i][2] in self.lists.last

    def first_before_surname(self, i: int, j: int) -> bool:
        """Word i is a first name next to word j, the surname: a listed first name, or an ambiguous one
        (`NameLists.ambiguous_first`: "grace", "june") when word j is a listed last name or no English word
        ("grace kowalski", not "grace period")."""
        first = self.words[i][2]
        if first in self.lists.first:
            return True
        return first in self.lists.ambiguous_first and (self.words[j][2] in self.lists.last or self.foreign(j))

    def lowercase_name(self, i: int) -> bool:
        """Word i (lower case) and the next: a listed first name, then a listed last name ("sofia brandt"),
        or, with lowercase_not_english, a word that is no English word ("thea kokshoorn")."""
        words, n = self.words, len(self.words)
        return bool(
            self.spec.lowercase
            and i + 1 < n
            and self.first_before_surname(i, i + 1)
            and words[i + 1][3] == "lower"
            and (words[i + 1][2] in self.lists.last or self.foreign(i + 1))
            and self.joined(i, i + 1)
        )

    def uncased_first_name(self, i: int) -> bool:
        """In a text without capitals to go by (all lower case or all capitals), a listed name (a first
        name, or a last name in a list or at a sentence start) in a name's place (`name_position`):
        "bryan: remember me", "djevad, can i", "here's david's address", "dawn, tony, tiffany and carol",
        "i'm so jealous! to thomas", "dahl and petersen were". The word lists count many names as English
        words (the lexicon holds proper nouns), so position decides."""
        word = self.words[i]
        if self.english is None or not self.uncased_text or len(word[2]) < 3:
            return False
        if word[2] in self.lists.first:
            return self.name_position(i)
        return word[2] in self.lists.last and self.name_position(i, strict=True)

    def name_position(self, i: int, strict: bool = False) -> bool:
        """Word i stands where a name stands: at a sentence or line start before ",", ":", "'s" or a verb
        people take ("tokareva began", "chiyuri, can i"); before ":", "," or "'s" after a comma, a colon,
        "and" or "here's"; in a list ("yue, lindsey and deanna"; "dahl and petersen were"); or after "to",
        "at", "by", "with", "me", "says" before the end of a clause ("leave me taiji, four", "says wuori.").
        `strict` (a listed last name, often an English word too): a list or a sentence start only."""
        start, end = self.words[i][0], self.words[i][1]
        before, after = self.scan[max(0, start - 12) : start], self.scan[end : end + 12]
        first = _SENTENCE_START.search(before) is not None and _NAME_SLOT_AFTER.match(after) is not None
        listed = re.search(r"(?:,\s|\band\s)$", before) and re.match(
            r"(?:,|\s+and\b|\.|\s+(?:were|are)\b)", after, re.IGNORECASE
        )
        if strict:
            return bool(first or listed)
        slot = re.match(r"(?:'s\b|’s\b|:|,)", after) and re.search(r"(?:^|\n\s*|[,:]\s|\band\s|\bhere's\s)$", before)
        tail = re.search(r"\b(?:to|at|by|with|me|says|said)\s$", before, re.IGNORECASE) and re.match(
            r"\s*(?:[.,:!?\"]|$)", after
        )
        return bool(first or slot or listed or tail)

    def lowercase_cued(self, i: int) -> int:
        """A lower-case name after a `lowercase_after_words` cue: a listed word or one that is no
        English word (lowercase_not_english), and the next lower-case word that is no stop word
        after a listed first name, or no English word ("patient maria zbyszewska", "mr smith",
        "name: khasbulat shishani"): the index of its last word, or -1. The lists lack many surnames, and lower-case
        text has no capitals to tell them apart; the cue does."""
        words, n = self.words, len(self.words)
        if words[i][3] not in self.uncased or words[i][0] not in self.lower_cued:
            return -1
        if not (self.listed(i) or self.foreign(i)):
            return -1
        nxt = i + 1
        if (
            nxt < n
            and words[nxt][3] == words[i][3]
            and self.joined(i, nxt)
            and words[nxt][2] not in self.lists.never
            and (words[i][2] in self.lists.first or self.foreign(nxt))
        ):
            return nxt
        return i

    def foreign(self, i: int) -> bool:
        """Word i is lower case, three letters or more, and neither a never-name nor an English word."""
        word = self.words[i]
        return (
            self.english is not None
            and word[3] in self.uncased
            and len(word[2]) >= 3
            and word[2] not in self.lists.never
            and not is_english(word[2], self.english)
        )

    def initialled_uncased(self, i: int) -> int:
        """In a text without capitals to go by, a name with a middle initial: two words, each listed or no
        English word, around one letter ("KLAUDIJO E KUNDID", "elbek b. eldarkhanov"): the index of the
        last word, or -1. An article between two English words is none ("PLAN A COVERS")."""
        words, n = self.words, len(self.words)
        if not self.uncased_text or self.english is None or i + 2 >= n or words[i][3] not in self.uncased:
            return -1
        initial = words[i + 1][2]
        if len(initial) != 1 or not (
            self.joined(i, i + 1) and self.scan[words[i + 1][1] : words[i + 2][0]] in (" ", ". ")
        ):
            return -1
        if words[i + 2][3] != words[i][3] or not all(self.listed(k) or self.foreign(k) for k in (i, i + 2)):
            return -1
        return i + 2

    def unknown_uncased(self, i: int) -> bool:
        """In a text without capitals to go by (all lower case or all capitals), word i is a name unlisted:
        no English word, no never-name, all letters, four letters or more (five in capitals, where an
        acronym is common), no ending of a term ("-tion", "-itis", "-care"), and in a name's place: next to
        another such word ("aemi nakamoto"), or at a sentence or line start before ",", ":", "'s" or a verb
        people take ("tokareva began writing", "chiyuri, can i"). Cased text tells such a word by its
        capital; uncased text does not, and a name or a place is what such a word mostly is (both masked)."""
        word = self.words[i]
        if not (
            self.uncased_text
            and word[2].isalpha()
            and len(word[2]) >= (5 if word[3] == "upper" else 4)
            and word[2] not in self.lists.stop
            and not word[2].endswith(_TERM_ENDINGS)
        ):
            return False
        n = len(self.words)
        pair = (i + 1 < n and self.joined(i, i + 1) and self.foreign(i + 1)) or (
            i > 0 and self.joined(i - 1, i) and self.foreign(i - 1)
        )
        return bool(pair or self.name_position(i))

    def unknown_cased(self, i: int) -> bool:
        """Word i is capitalised, unlisted, no English word, no never-name, all letters, four letters or more,
        no ending of a term, in a name's place (`name_position`): "Czcibor is very reliable", "says Wuori.",
        "Hamanová and Olson were". Needs the English word list (lowercase_not_english)."""
        word = self.words[i]
        return (
            self.english is not None
            and word[3] == "cap"
            and word[2].isalpha()
            and len(word[2]) >= 4
            and not self.listed(i)
            and word[2] not in self.lists.never
            and not word[2].endswith(_TERM_ENDINGS)
            and not is_english(word[2], self.english)
            and self.name_position(i)
        )

    def lowercase_not_english(self, i: int) -> tuple[int, int]:
        """A lower-case name around word i: a listed name that is no English word ("tamara", "sylwia"),
        with up to two neighbours that are no English words either ("sylwia ostrowska", "tempeste
        descoteaux"): (first, last) word index, or (-1, -1)."""
        nxt = i + 1
        # Two such words, one with a letter English does not use, are a name unlisted ("miłosław kozłowski").
        pair = (
            nxt < len(self.words)
            and self.foreign(nxt)
            and self.joined(i, nxt)
            and not (self.words[i][2] + self.words[nxt][2]).isascii()
        )
        if not (self.foreign(i) and (self.listed(i) or pair or self.unknown_uncased(i))):
            return -1, -1
        k = i - 1 if i > 0 and self.foreign(i - 1) and self.joined(i - 1, i) else i
        j = i
        while j + 1 < len(self.words) and j - k < 2 and self.foreign(j + 1) and self.joined(j, j + 1):
            j += 1
        return k, j

    def upper_name(self, i: int) -> int:
        """Words from i in capitals that are a name ("ROBERT KOWALSKI", "ROBERT J KOWALSKI", or listed
        words after a cue: "Attn: KOWALSKI"): the index of its last word, or -1."""
        words, n = self.words, len(self.words)
        ambiguous = words[i][2] in self.lists.ambiguous_first  # a never-name unless a surname follows
        if not self.spec.upper_case or words[i][3] != "upper" or (words[i][2] in self.lists.never and not ambiguous):
            return -1
        j = i + 1
        if j + 1 < n and words[j][3] == "initial" and self.joined(i, j):
            j += 1  # a middle initial
        # After a listed first name any capitalised word but a never-name is a surname: the lists
        # lack many ("KOWALSKI"), and all-capital text has no lower-case words to tell them apart.
        last = j < n and words[j][3] == "upper" and self.joined(j - 1, j) and words[j][2] not in self.lists.never
        if last and self.first_before_surname(i, j):
            return j
        if ambiguous:
            return -1
        # "KOWALSKI, ROBERT": a listed surname (or no English word), a comma, a listed first name.
        comma = i + 1 < n and self.scan[words[i][1] : words[i + 1][0]] == ", " and words[i + 1][3] == "upper"
        surname = words[i][2] in self.lists.last or self.foreign(i)
        if comma and surname and self.first_before_surname(i + 1, i):
            return i + 1
        if words[i][0] in self.cued and self.listed(i):
            return i
        return -1

    def starts_name(self, i: int) -> bool:
        """Word i (a name word) starts a name: it is listed, follows a cue, or has a middle initial after it."""
        words, n = self.words, len(self.words)
        initialled = (
            i + 2 < n
            and words[i + 1][3] == "initial"
            and self.joined(i, i + 1)
            and self.joined(i + 1, i + 2)
            and (self.name_word(i + 2) or words[i + 2][2] in _NAME_PARTICLES)
        )
        return self.listed(i) or initialled or words[i][0] in self.cued

    def last_word(self, i: int) -> int:
        """The name starting at word i ends at the returned word: capitalised words, initials and
        particles ("van der Wardt") joined to it, up to five words."""
        words, n = self.words, len(self.words)
        j = i
        while j + 1 < n and j - i < 4:
            if (self.name_word(j + 1) or words[j + 1][3] == "initial") and self.joined(j, j + 1):
                j += 1
                continue
            p = j + 1  # "van der Wardt"
            while (
                p < n
                and p - j <= 2
                and words[p][3] == "lower"
                and words[p][2] in _NAME_PARTICLES
                and self.joined(p - 1, p)
            ):
                p += 1
            if p > j + 1 and p < n and self.name_word(p) and self.joined(p - 1, p):
                j = p
                continue
            break
        return j

    def first_word(self, i: int) -> int:
        """The name found at word i starts at the returned word: one unlisted capitalised word before
        a listed name ("Tzigane Lantos"), maybe with an initial; none after a cue."""
        words, text = self.words, self.text
        if not self.listed(i) or words[i][0] in self.cued:
            return i
        if (
            i > 0
            and self.joined(i - 1, i)
            and (
                self.name_word(i - 1)
                or (
                    words[i - 1][3] == "cap"
                    and words[i - 1][2] in self.lists.stop
                    and words[i - 1][2] not in self.lists.listed_never
                    and not _SENTENCE_START.search(text, max(0, words[i - 1][0] - 8), words[i - 1][0])
                )
            )
        ):
            return i - 1
        if (
            i > 1
            and words[i - 1][3] == "initial"
            and self.name_word(i - 2)
            and self.joined(i - 2, i - 1)
            and self.joined(i - 1, i)
        ):
            return i - 2
        return i

    def blocked(self, k: int, j: int) -> bool:
        """Words k..j are not a name: a not_names word follows ("Morris Street") or a house number
        precedes ("500 Forbes Road")."""
        words, nxt = self.words, j + 1
        return bool(
            (nxt < len(words) and words[nxt][2] in self.lists.never and words[nxt][3] == "cap" and self.joined(j, nxt))
            or _HOUSE_NUMBER.search(self.text, max(0, words[k][0] - 24), words[k][0])
        )


def name_list_spans(text: str, spec: NameListSpec) -> list[tuple[int, int, float]]:
    """PERSON spans from the name lists and name cues: (start, end, score).

    A name starts at a capitalised word that is listed ("Sofia"), follows a cue word from
    `after_words` ("spoke with Aslak", "Hi Proclus"), or is followed by a middle initial and a
    capitalised word ("Qoqa M Arsanukayev"). It takes in the capitalised words and initials
    joined to it by spaces (and particles: "van der"), up to five words, and one unlisted
    capitalised word before it ("Tzigane Lantos"). In lower case only a listed first name
    followed by a listed last name counts ("sofia brandt"), and with `upper_case` the same in
    capitals ("SOFIA BRANDT", or a listed word in capitals after a cue). Never a name: a word in not_names.txt or spaCy's stop words; a
    span right before a not_names word ("Morris Street", "Hope Clinic") or right after a house
    number ("500 Forbes Road") is dropped.
    """
    names = _NameScan(text, spec)
    words = names.words
    spans: list[tuple[int, int, float]] = []
    n, i = len(words), 0
    while i < n:
        if (last := names.upper_name(i)) >= 0:
            spans.append((words[i][0], words[last][1], spec.full_name_score))
            i = last + 1
            continue
        if (last := names.lowercase_cued(i)) >= 0:
            spans.append((words[i][0], words[last][1], spec.full_name_score if last > i else spec.score))
            i = last + 1
            continue
        if (last := names.initialled_uncased(i)) >= 0:
            spans.append((words[i][0], words[last][1], spec.full_name_score))
            i = last + 1
            continue
        if words[i][3] in names.uncased:
            k, j = names.lowercase_not_english(i)
            if words[i][3] == "lower" and names.lowercase_name(i):
                spans.append((words[i][0], words[i + 1][1], spec.score))
                i += 2
            elif j < 0 and names.uncased_first_name(i):
                spans.append((words[i][0], words[i][1], spec.score))
                i += 1
            elif j >= 0:
                start = words[k][0] if not spans or spans[-1][1] <= words[k][0] else words[i][0]
                spans.append((start, words[j][1], spec.full_name_score if j > k else spec.score))
                i = j + 1
            else:
                i += 1
            continue
        if names.unknown_cased(i):
            spans.append((words[i][0], words[i][1], spec.score))
            i += 1
            continue
        if not (names.name_word(i) and names.starts_name(i)):
            i += 1
            continue
        j, k = names.last_word(i), names.first_word(i)
        if not names.blocked(k, j):
            strong = j > k or words[i][0] in names.cued
            spans.append((words[k][0], words[j][1], spec.full_name_score if strong else spec.score))
        i = j + 1
    return spans


def name_list_recognizer(spec: NameListSpec, language: str):
    """A Presidio recognizer for PERSON over name_list_spans (built here: Presidio loads lazily)."""
    from presidio_analyzer import EntityRecognizer, RecognizerResult

    class NameListRecognizer(EntityRecognizer):
        """PERSON from first/last name lists (include/presidio/names): catches names spaCy's
        small model misses (names at a line start, in lists, foreign names)."""

        def load(self) -> None:
            name_lists(spec)

        def analyze(self, text, entities, nlp_artifacts=None):
            if "PERSON" not in entities:
                return []
            return [
                RecognizerResult(
                    "PERSON",
                    s,
                    e,
                    score,
                    recognition_metadata={
                        RecognizerResult.RECOGNIZER_NAME_KEY: self.name,
                        RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id,
                    },
                )
                for s, e, score in name_list_spans(text, spec)
            ]

    return NameListRecognizer(supported_entities=["PERSON"], name="NameListRecognizer", supported_language=language)
