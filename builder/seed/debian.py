"""Debian package metadata, as apt reads it: version ordering (dpkg's), deb822 stanzas, dependency fields.

Small on purpose: enough to read Ubuntu's, Docker's and NVIDIA's `Packages` indices and to decide whether
a version satisfies `(= V)`, `(>= V)`, `(<< V)` and friends exactly as `dpkg --compare-versions` would.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# ---------------------------------------------------------------- versions (deb-version(7))


def _order(c: str) -> int:
    """dpkg's character weight in the non-digit parts: '~' sorts before everything, even the end."""
    if c == "~":
        return -1
    if c.isdigit():
        return 0
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


def _verrevcmp(a: str, b: str) -> int:
    i = j = 0
    while i < len(a) or j < len(b):
        first_diff = 0
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ac = _order(a[i]) if i < len(a) else 0
            bc = _order(b[j]) if j < len(b) else 0
            if ac != bc:
                return ac - bc
            i += 1
            j += 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        while i < len(a) and a[i].isdigit() and j < len(b) and b[j].isdigit():
            if not first_diff:
                first_diff = ord(a[i]) - ord(b[j])
            i += 1
            j += 1
        if i < len(a) and a[i].isdigit():
            return 1
        if j < len(b) and b[j].isdigit():
            return -1
        if first_diff:
            return first_diff
    return 0


def split_version(v: str) -> tuple[int, str, str]:
    """(epoch, upstream, revision); a missing epoch is 0, a missing revision is ''."""
    epoch = 0
    if ":" in v:
        e, v = v.split(":", 1)
        epoch = int(e) if e.isdigit() else 0
    upstream, sep, revision = v.rpartition("-")
    if not sep:
        return epoch, v, ""
    return epoch, upstream, revision


def compare_versions(a: str, b: str) -> int:
    """<0, 0, >0 like `dpkg --compare-versions a lt|eq|gt b` (only the sign matters)."""
    ea, ua, ra = split_version(a.strip())
    eb, ub, rb = split_version(b.strip())
    if ea != eb:
        return ea - eb
    return _verrevcmp(ua, ub) or _verrevcmp(ra, rb)


RELATIONS = {
    "<<": lambda c: c < 0, "<=": lambda c: c <= 0, "=": lambda c: c == 0, ">=": lambda c: c >= 0,
    ">>": lambda c: c > 0, "<": lambda c: c <= 0, ">": lambda c: c >= 0,  # obsolete forms mean <= and >=
}


def satisfies(version: str, op: str | None, wanted: str | None) -> bool:
    """Does `version` satisfy `(op wanted)`? No relation: any version does."""
    if op is None or wanted is None:
        return True
    return RELATIONS[op](compare_versions(version, wanted))


# ---------------------------------------------------------------- dependency fields


@dataclass(frozen=True)
class Alternative:
    name: str
    op: str | None = None
    version: str | None = None

    def __str__(self) -> str:
        return self.name if self.op is None else f"{self.name} ({self.op} {self.version})"


_ALT = re.compile(r"^\s*([a-z0-9][a-z0-9.+-]*)(?::[a-z0-9-]+)?\s*(?:\(\s*(<<|<=|=|>=|>>|<|>)\s*([^)\s]+)\s*\))?"
                  r"\s*(?:\[[^]]*\])?\s*(?:<[^>]*>)?\s*$")


def parse_relations(text: str) -> tuple[tuple[Alternative, ...], ...]:
    """`a (>= 1), b | c (= 2)` -> ((a>=1,), (b, c=2)). Unparseable alternatives are skipped."""
    clauses = []
    for clause in text.split(","):
        if not clause.strip():
            continue
        alts = []
        for alt in clause.split("|"):
            m = _ALT.match(alt)
            if m:
                alts.append(Alternative(m.group(1), m.group(2), m.group(3)))
        if alts:
            clauses.append(tuple(alts))
    return tuple(clauses)


# ---------------------------------------------------------------- deb822 stanzas


def parse_stanzas(text: str) -> list[dict[str, str]]:
    """Paragraphs of `Field: value` lines (continuations start with a space); field names as written."""
    out: list[dict[str, str]] = []
    cur: dict[str, str] = {}
    last = ""
    for line in text.splitlines():
        if not line.strip():
            if cur:
                out.append(cur)
            cur, last = {}, ""
            continue
        if line[0] in " \t":
            if last:
                cur[last] += "\n" + line.strip()
            continue
        if line.startswith("#") or ":" not in line:
            continue
        key, _, value = line.partition(":")
        last = key.strip()
        cur[last] = value.strip()
    if cur:
        out.append(cur)
    return out


@dataclass(frozen=True)
class BinaryPackage:
    """One version of one package as one index lists it."""

    name: str
    version: str
    architecture: str
    depends: tuple[tuple[Alternative, ...], ...]
    provides: tuple[Alternative, ...]
    description: str
    origin: str  # which index listed it, e.g. "ubuntu noble-updates/restricted"

    @classmethod
    def from_stanza(cls, st: dict[str, str], origin: str) -> BinaryPackage | None:
        if "Package" not in st or "Version" not in st:
            return None
        deps = parse_relations(st.get("Pre-Depends", "")) + parse_relations(st.get("Depends", ""))
        provides = tuple(a for clause in parse_relations(st.get("Provides", "")) for a in clause)
        return cls(st["Package"], st["Version"], st.get("Architecture", "all"), deps, provides,
                   st.get("Description", "").split("\n", 1)[0], origin)

    @property
    def transitional(self) -> str | None:
        """The package this one only hands over to (a retired branch), or None.

        Said in the description, or only by depending on its own name with another number
        (noble's nvidia-headless-no-dkms-570-server depends on ...-580-server)."""
        stem = re.sub(r"\d+", "#", self.name)
        for clause in self.depends:
            for alt in clause:
                if alt.name != self.name and re.sub(r"\d+", "#", alt.name) == stem:
                    return alt.name
        if "transitional" in self.description.lower() and len(self.depends) == 1:
            return self.depends[0][0].name
        return None
