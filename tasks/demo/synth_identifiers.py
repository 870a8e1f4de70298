"""The Safe Harbor identifier kinds for the demo generator (tasks.demo.synth, `identifiers="safe_harbor"`).

HIPAA Safe Harbor (45 CFR 164.514(b)(2)) lists identifiers the minimal generator never writes:
international addresses, cities and ZIP/postal codes, dates tied to a person (birth, admission,
discharge, service, death) in several formats, names in any casing, ages over 89, licence,
vehicle, device and account numbers, fax numbers and URLs. Here they are written as free prose,
the way an adjuster or an agent would note them, not in "Member: X, ID Y" slots.

Every value that Safe Harbor requires removed goes to the PII key through `note(type, value)`
(the generator's key: tasks.demo.synth.PiiFactory). Values Safe Harbor lets stay are written but
not keyed: ages up to 89, states, countries. An address is keyed by its parts (street, city,
ZIP): a masking that hides the street but leaves the city must still count as a leak.

The sentences draw from their own random stream (IdentifierProse's rng), so turning them on
leaves every other byte of the records, facts and QA files as they were.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

# US addresses beyond the minimal generator's six cities: (city, state, ZIP prefix).
US_CITIES = [
    ("Tucson", "AZ", "857"),
    ("Boise", "ID", "837"),
    ("Dayton", "OH", "454"),
    ("Fresno", "CA", "937"),
    ("Duluth", "MN", "558"),
    ("Savannah", "GA", "314"),
    ("Boise", "ID", "837"),  # not Spokane (992): its ZIP codes share the 992xx of the procedure codes the domain states
    ("Wichita", "KS", "672"),
    ("Lubbock", "TX", "794"),
    ("Scranton", "PA", "185"),
]
US_STREETS = ["Sycamore Street", "Ridge Road", "Mill Lane", "Prospect Avenue", "Hillcrest Drive", "Orchard Way"]
# International addresses: (street format, city, postal code format, country). {n} a house number,
# {d} a digit, {L} a capital letter. Formats follow each country's postal convention.
INTERNATIONAL = [
    ("{n} rue des Lilas", "Lyon", "690{d}{d}", "France"),
    ("{n} avenue Victor Hugo", "Bordeaux", "330{d}{d}", "France"),
    ("Lindenstraße {n}", "Leipzig", "041{d}{d}", "Germany"),
    ("Kastanienweg {n}", "Freiburg", "791{d}{d}", "Germany"),
    ("Via Garibaldi {n}", "Bologna", "401{d}{d}", "Italy"),
    ("Calle Mayor {n}", "Zaragoza", "500{d}{d}", "Spain"),
    ("Rua das Flores {n}", "Coimbra", "3000-{d}{d}{d}", "Portugal"),
    ("Keizersgracht {n}", "Amsterdam", "10{d}{d} {L}{L}", "the Netherlands"),
    ("{n} Aldwick Road", "Leeds", "LS{d} {d}{L}{L}", "the United Kingdom"),
    ("{n} Queen Street West", "Toronto", "M5H {d}{L}{d}", "Canada"),
    ("Storgatan {n}", "Uppsala", "753 {d}{d}", "Sweden"),
    ("ul. Długa {n}", "Gdańsk", "80-{d}{d}{d}", "Poland"),
]
# Templates for one international address: street, postal code and city in the country's order.
INTERNATIONAL_LAYOUT = {
    "France": "{street}, {zip} {city}, {country}",
    "Germany": "{street}, {zip} {city}, {country}",
    "Italy": "{street}, {zip} {city}, {country}",
    "Spain": "{street}, {zip} {city}, {country}",
    "Portugal": "{street}, {zip} {city}, {country}",
    "the Netherlands": "{street}, {zip} {city}, {country}",
    "the United Kingdom": "{street}, {city} {zip}, {country}",
    "Canada": "{street}, {city}, ON {zip}, {country}",
    "Sweden": "{street}, {zip} {city}, {country}",
    "Poland": "{street}, {zip} {city}, {country}",
}
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
# Date formats for one (year, month, day): US numeric, short year, ISO, written month, day first,
# abbreviated month, European dots, ordinal.
DATE_FORMATS = [
    lambda y, m, d: f"{m:02d}/{d:02d}/{y}",
    lambda y, m, d: f"{m}/{d}/{y % 100:02d}",
    lambda y, m, d: f"{y}-{m:02d}-{d:02d}",
    lambda y, m, d: f"{MONTHS[m - 1]} {d}, {y}",
    lambda y, m, d: f"{d} {MONTHS[m - 1]} {y}",
    lambda y, m, d: f"{MONTHS[m - 1][:3]}. {d}, {y}",
    lambda y, m, d: f"{d:02d}.{m:02d}.{y}",
    lambda y, m, d: f"{MONTHS[m - 1]} {d}th, {y}" if d in range(4, 21) else f"{MONTHS[m - 1]} {d}, {y}",
]
FAX_FORMATS = ["({a}) {e}-{l}", "{a}-{e}-{l}", "{a}.{e}.{l}", "+1 {a} {e} {l}"]
URL_FORMATS = [
    "https://www.{first}{last}.example.com",
    "http://{first}-{last}.example.net/about",
    "https://social.example.org/@{first}{last}{n}",
    "https://photos.example.com/u/{first}.{last}",
]
LICENCE_STATES = ["IL", "OH", "WI", "NY", "AZ", "NC", "CA", "TX"]
DEVICES = ["insulin pump", "CPAP machine", "glucose monitor", "hearing aid", "pacemaker", "wheelchair"]
RELATIVES = ["daughter", "son", "wife", "husband", "niece", "caregiver"]


class IdentifierProse:
    """Free-prose sentences holding the Safe Harbor identifier kinds; each keyed value through `note`."""

    def __init__(
        self,
        rng: random.Random,
        note: Callable[[str, str], str],
        first: list[str],
        last: list[str],
        zip_code: Callable[[Callable[[], str]], str] | None = None,
    ):
        self.rng, self.note, self.first, self.last = rng, note, first, last
        # keys a ZIP code drawn by its argument (PiiFactory.zip_code: never a number the domain states)
        self.zip_code = zip_code or (lambda draw: self.note("ZIP_CODE", draw()))

    def prose(self) -> str:
        """One to three sentences, each of a different kind."""
        makers = self.rng.sample(SENTENCES, k=self.rng.randint(1, 3))
        return " ".join(make(self) for make in makers)

    # ------------------------------------------------------------ values
    def name(self) -> str:
        """A name in one of several casings and orders: "maria gonzalez", "MARIA GONZALEZ", "Gonzalez, Maria"."""
        first, last = self.rng.choice(self.first), self.rng.choice(self.last)
        shape = self.rng.choice(["lower", "upper", "last_first", "title"])
        value = {
            "lower": f"{first} {last}".lower(),
            "upper": f"{first} {last}".upper(),
            "last_first": f"{last.upper()}, {first.upper()}" if self.rng.random() < 0.5 else f"{last}, {first}",
            "title": f"{first} {last}",
        }[shape]
        return self.note("PERSON", value)

    def date(self, kind: str, years: tuple[int, int] = (2024, 2026)) -> str:
        y, m, d = self.rng.randint(*years), self.rng.randint(1, 12), self.rng.randint(1, 28)
        return self.note(kind, self.rng.choice(DATE_FORMATS)(y, m, d))

    def age(self) -> str:
        """An age phrase; keyed only over 89 (Safe Harbor lets younger ages stay)."""
        age = self.rng.choice([self.rng.randint(90, 104), self.rng.randint(90, 99), self.rng.randint(40, 89)])
        phrase = self.rng.choice(["{a} years old", "aged {a}", "a {a}-year-old", "{a} y/o", "age {a}"]).format(a=age)
        if age > 89:
            self.note("AGE", phrase.removeprefix("a "))
        return phrase

    def digits(self, n: int) -> str:
        return "".join(self.rng.choice("0123456789") for _ in range(n))

    def letters(self, n: int) -> str:
        return "".join(self.rng.choice("ABCDEFGHJKLMNPRSTUVWXYZ") for _ in range(n))

    def city(self) -> str:
        return self.note("CITY", self.rng.choice([c for c, _, _ in US_CITIES] + [c[1] for c in INTERNATIONAL]))

    def us_address(self) -> str:
        city, state, zip3 = self.rng.choice(US_CITIES)
        street = self.note("ADDRESS", f"{self.rng.randint(12, 9899)} {self.rng.choice(US_STREETS)}")
        zip_code = self.zip_code(lambda: f"{zip3}{self.digits(2)}")
        return f"{street}, {self.note('CITY', city)}, {state} {zip_code}"

    def international_address(self) -> str:
        street, city, zip_format, country = self.rng.choice(INTERNATIONAL)
        street = self.note("ADDRESS", street.format(n=self.rng.randint(2, 180)))

        def draw() -> str:
            return re.sub(r"\{([dL])\}", lambda m: self.digits(1) if m[1] == "d" else self.letters(1), zip_format)

        parts = {"street": street, "zip": self.zip_code(draw), "city": self.note("CITY", city)}
        return INTERNATIONAL_LAYOUT[country].format(**parts, country=country)

    def fax(self) -> str:
        line = f"{self.rng.randint(100, 199)}{self.rng.randint(0, 9)}"
        area, exchange = self.rng.choice(["312", "614", "773", "503"]), self.rng.randint(201, 989)
        return self.note("FAX_NUMBER", self.rng.choice(FAX_FORMATS).format(a=area, e=exchange, l=line))

    def url(self) -> str:
        first, last = self.rng.choice(self.first).lower(), self.rng.choice(self.last).lower()
        return self.note("URL", self.rng.choice(URL_FORMATS).format(first=first, last=last, n=self.rng.randint(2, 99)))

    def licence(self) -> str:
        long_form = f"{self.letters(1)}{self.digits(3)}-{self.digits(4)}-{self.digits(4)}"
        return self.note("LICENSE_NUMBER", self.rng.choice([f"{self.letters(1)}{self.digits(7)}", long_form]))

    def vin(self) -> str:
        vin = f"{self.digits(1)}{self.letters(4)}{self.digits(2)}{self.letters(2)}{self.digits(8)}"
        return self.note("VEHICLE_ID", vin)

    def plate(self) -> str:
        return self.note("VEHICLE_ID", f"{self.letters(3)} {self.digits(4)}")

    def device(self) -> str:
        serial = self.rng.choice([f"SN-{self.digits(6)}{self.letters(1)}", f"{self.letters(2)}{self.digits(8)}"])
        return self.note("DEVICE_ID", serial)

    def account(self) -> str:
        number = self.rng.choice([self.digits(10), f"{self.digits(4)}-{self.digits(4)}-{self.digits(2)}"])
        return self.note("ACCOUNT_NUMBER", number)


# One sentence each, as an agent or adjuster writes them; several kinds per sentence. Evaluated left
# to right, so the draws (and the key's order) are deterministic.
SENTENCES: list[Callable[[IdentifierProse], str]] = [
    lambda p: f"Spoke with {p.name()}, {p.age()}, about the claim.",
    lambda p: (
        f"patient {p.name()} was admitted on {p.date('ADMISSION_DATE')} and discharged on {p.date('DISCHARGE_DATE')}."
    ),
    lambda p: (
        f"{p.name()} (date of birth {p.date('DATE_OF_BIRTH', (1920, 1990))}) was seen for service on {p.date('SERVICE_DATE')}."
    ),
    lambda p: f"Per the {p.rng.choice(RELATIVES)}, {p.name()} is {p.age()} and now lives at {p.us_address()}.",
    lambda p: f"The member moved abroad; new cards go to {p.international_address()}.",
    lambda p: f"Mail the replacement card to {p.us_address()}.",
    lambda p: f"The member grew up in {p.city()} and was born on {p.date('DATE_OF_BIRTH', (1920, 1990))}.",
    lambda p: f"Accident report: VIN {p.vin()}, license plate {p.plate()}, driver's license {p.licence()}.",
    lambda p: (
        f"The {p.rng.choice(DEVICES)} (serial number {p.device()}) was replaced after the visit on {p.date('SERVICE_DATE')}."
    ),
    lambda p: f"Refund to checking account number {p.account()} as the member asked.",
    lambda p: f"Fax the records to {p.fax()}, attention {p.name()}.",
    lambda p: f"The member's page {p.url()} was shared with the agent.",
    lambda p: (
        f"The {p.rng.choice(RELATIVES)} reported that {p.name()} died on {p.date('DATE_OF_DEATH')} in {p.city()}."
    ),
    lambda p: f"Letter returned for {p.name()}; the address on file is {p.international_address()}.",
]
