"""Build places.txt (the LOCATION gazetteer of the safe_harbor profile) from Faker's address and geo
providers, offline.

    python include/presidio/places/build_place_list.py

Faker ships, per locale, real city and town names (Italy's 16,000 comuni, the Netherlands', Belgium's,
Slovakia's, Denmark's, Finland's...), counties (Great Britain, Ireland, Hungary), regions, and a
world list of ~1,000 populated places with their coordinates (the geo provider, US cities included).
Names in Latin script are kept as they are; other scripts are left out (the stage masks English
text). Words that are far more often plain words ("Mobile", "Reading", "Bath") go to not_places.txt
instead of out of the list, like not_names.txt: spaCy's English stop words, Faker's English lorem
words and names shorter than four letters are dropped here. The benchmark's evaluation data
(presidio-evaluator's FakeNameGenerator table) is deliberately not a source.
A customer adds places by appending lines (no rebuild needed).
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import unicodedata
from pathlib import Path

HERE = Path(__file__).resolve().parent
LATIN = re.compile(r"^[A-Za-zÀ-ɏḀ-ỿ'’. -]+$")
# Provider attributes that hold real place names (not formats, prefixes or suffixes).
PLACE_ATTRIBUTES = ("cities", "city_names", "real_city_names", "counties", "regions", "metropolitan_cities")


def _faker_places() -> set[str]:
    import faker.providers.address as address
    import faker.providers.geo as geo

    found: set[str] = set()
    for module in pkgutil.iter_modules(address.__path__):
        provider = getattr(importlib.import_module(f"{address.__name__}.{module.name}"), "Provider", None)
        for attr in PLACE_ATTRIBUTES:
            values = getattr(provider, attr, None) or ()
            found.update(v for v in values if isinstance(v, str))
    for module in pkgutil.iter_modules(geo.__path__):
        provider = getattr(importlib.import_module(f"{geo.__name__}.{module.name}"), "Provider", None)
        # (lat, lon, "Carrish on Shannon, Leitrim,", country, tz): the place, then its county.
        for row in getattr(provider, "land_coords", None) or ():
            found.update(part for part in row[2].split(",") if part.strip())
    return found


def _dropped_words() -> set[str]:
    from faker.providers.lorem.en_US import Provider as Lorem
    from spacy.lang.en.stop_words import STOP_WORDS

    return {w.casefold() for w in STOP_WORDS} | {w.casefold() for w in Lorem.word_list}


def build() -> list[str]:
    """The sorted, de-duplicated place names."""
    dropped = _dropped_words()
    out = set()
    for raw in _faker_places():
        name = " ".join(unicodedata.normalize("NFC", raw).split()).strip(" .")
        if len(name) >= 4 and LATIN.match(name) and name.casefold() not in dropped:
            out.add(name)
    return sorted(out, key=lambda n: (n.casefold(), n))


def main() -> None:
    names = build()
    header = "# Built by build_place_list.py from Faker's address and geo providers; one place per line.\n"
    (HERE / "places.txt").write_text(header + "\n".join(names) + "\n", encoding="utf-8")
    print(f"{len(names)} places -> {HERE / 'places.txt'}")


if __name__ == "__main__":
    main()
