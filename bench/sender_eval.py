"""False-positive check of the sender-identity rules (issue 15) on ordinary school mail.

    python bench/sender_eval.py [--seed 15] [--count 5000] [--eml DIR] [--show 10]

Builds a seeded sample of ordinary mail around a generated school (60 staff, parents partly
in the directory) and counts how many messages ``B1.sender-headers`` and
``B1.lookalike-sender`` mark, per kind of mail (goal: 0). Names come from pools of common
Dutch first names and surnames, so outside senders share first names and surnames with staff
as they do in life; an outside sender with exactly a staff member's full name (a homonym)
is drawn as its own kind, since the rule cannot tell it from an impostor and marks it by
design. ``--eml DIR`` also runs every ``*.eml`` below DIR (an ordinary-mail corpus, e.g.
the detection evaluation's), its envelope taken from the headers.

For another script: ``marked(runtime, samples)`` and ``runtime_for(tmp, staff_csv)``.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from email.utils import getaddresses
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from milter.core.context import Envelope  # noqa: E402
from milter.core.verdict import FiredRule  # noqa: E402
from milter.runtime import Runtime  # noqa: E402

SENDER_RULES = ("B1.sender-headers", "B1.lookalike-sender")
DOMAIN = "school.example"
PUPILS = "leerling.school.example"
OUTSIDE = "198.51.100.23"
INSIDE = "10.1.2.3"

FIRST = ["Anouk", "Jan", "Sanne", "Daan", "Emma", "Lucas", "Julia", "Sem", "Lotte", "Bram",
         "Fleur", "Thijs", "Eva", "Ruben", "Lisa", "Jesse", "Sophie", "Tim", "Iris", "Lars",
         "Noor", "Milan", "Femke", "Stijn", "Marloes", "Kees", "Ingrid", "Pieter", "Mirjam",
         "Hans", "Esther", "Mark", "Linda", "Erik", "Sandra", "Peter", "Monique", "Rob",
         "Karin", "Wim", "Yasmina", "Mohamed", "Fatima", "Ahmet", "Zeynep", "Anna", "Joost",
         "Renée", "Chloë", "Zoë", "Maaike", "Gert-Jan", "Jan-Willem", "Annemarie", "Sjoerd"]
LAST = ["de Jong", "Jansen", "de Vries", "van den Berg", "van Dijk", "Bakker", "Janssen",
        "Visser", "Smit", "Meijer", "de Boer", "Mulder", "de Groot", "Bos", "Vos", "Peters",
        "Hendriks", "van Leeuwen", "Dekker", "Brouwer", "de Wit", "Dijkstra", "Smits",
        "de Graaf", "van der Meer", "van der Linden", "Kok", "Jacobs", "de Haan", "Vermeulen",
        "van den Heuvel", "van der Veen", "van den Broek", "de Bruijn", "de Bruin",
        "van der Heijden", "Schouten", "van Beek", "Willems", "van Vliet", "van de Ven",
        "Hoekstra", "Maas", "Verhoeven", "Koster", "van Dam", "van der Wal", "Prins",
        "Blom", "Huisman", "Yılmaz", "El Amrani", "Öztürk", "Çelik", "Boukhari"]
FREEMAIL = ["gmail.example", "hotmail.example", "outlook.example", "ziggo.example",
            "kpnmail.example", "live.example", "icloud.example"]
SERVICES = [("Magister", "noreply@magister.example"), ("Parro", "notificaties@parro.example"),
            ("Social Schools", "noreply@socialschools.example"),
            ("Basispoort", "info@basispoort.example"), ("Zoom", "no-reply@zoom.example"),
            ("Microsoft Teams", "noreply@email.teams.example"),
            ("Google Agenda", "calendar-notification@google.example")]
VENDORS = [("Uitgeverij Malmberg", "nieuws@malmberg.example"),
           ("Heutink Onderwijs", "info@heutink.example"),
           ("Gemeente Tilburg", "onderwijs@tilburg.example"),
           ("GGD Hart voor Brabant", "jeugd@ggdhvb.example"),
           ("PO-Raad", "nieuwsbrief@poraad.example")]


@dataclass(frozen=True)
class Sample:
    kind: str
    raw: bytes
    envelope: Envelope


def _slug(name: str) -> str:
    """A name as the local part of an address: ASCII, as school and mail providers make them."""
    folded = unicodedata.normalize("NFKD", name.replace("ı", "i")).encode("ascii", "ignore")
    return "".join(c for c in folded.decode().lower() if c.isalnum() or c == " ").replace(
        " ", ".")


def _msg(frm: str, to: str, subject: str, extra: str = "", body: str = "") -> bytes:
    body = body or "Beste,\r\n\r\nHierbij een kort bericht.\r\n\r\nGroet\r\n"
    return (f"From: {frm}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <x@y>\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n{extra}\r\n"
            f"{body}").encode()


class School:
    """A generated school: staff (school addresses, some declared private ones), pupils,
    parents (some in the directory)."""

    def __init__(self, rng: random.Random, staff: int = 60, parents: int = 400) -> None:
        self.rng = rng
        names: set[tuple[str, str]] = set()
        while len(names) < staff:
            names.add((self.first(), self.last()))
        self.staff = sorted(names)
        self.staff_full = {f"{f} {ln}" for f, ln in self.staff}
        self.parents = []
        while len(self.parents) < parents:
            first, last = self.first(), self.last()
            if f"{first} {last}" not in self.staff_full:
                self.parents.append((first, last))
        self.listed_parents = self.parents[: parents * 7 // 10]

    def first(self) -> str:  # a few names are common, most are rare (as in life)
        return FIRST[min(int(self.rng.paretovariate(1.2)) - 1, len(FIRST) - 1)
                     if self.rng.random() < 0.3 else self.rng.randrange(len(FIRST))]

    def last(self) -> str:
        return LAST[min(int(self.rng.paretovariate(1.2)) - 1, len(LAST) - 1)
                    if self.rng.random() < 0.3 else self.rng.randrange(len(LAST))]

    def staff_address(self, i: int) -> str:
        first, last = self.staff[i]
        return f"{_slug(first)[0]}.{_slug(last).replace('.', '')}{i}@{DOMAIN}"

    def parent_address(self, first: str, last: str) -> str:
        return f"{_slug(first)}.{_slug(last)}@{self.rng.choice(FREEMAIL)}"

    def csv(self) -> str:
        rows = ["address;role;name;private_addresses;supervisor",
                f"administratie@{DOMAIN};other;Administratie;;",
                f"directie@{DOMAIN};staff;Directie;;"]
        for i, (first, last) in enumerate(self.staff):
            private = f"{_slug(first)}{i}@home.example" if i % 5 == 0 else ""
            rows.append(f"{self.staff_address(i)};staff;{first} {last};{private};directie@{DOMAIN}")
        for i in range(30):
            rows.append(f"pupil{i}@{PUPILS};pupil;Leerling {i};;")
        # two parents with the same name share one listed address here: one line each address
        rows += list(dict.fromkeys(f"{_slug(f)}.{_slug(ln)}@ouders.example;parent;{f} {ln};;"
                                   for f, ln in self.listed_parents))
        return "\n".join(rows) + "\n"


def ordinary(seed: int = 15, count: int = 5000) -> tuple[str, list[Sample]]:
    """The directory CSV and ``count`` ordinary messages, the same for the same seed."""
    rng = random.Random(seed)
    school = School(rng)
    out: list[Sample] = []
    kinds = [k for k, w in KINDS.items() for _ in range(w)]
    for _ in range(count):
        kind = rng.choice(kinds)
        out.append(MAKERS[kind](school, rng))
    return school.csv(), out


def _staff(school: School, rng: random.Random) -> tuple[int, str, str]:
    i = rng.randrange(len(school.staff))
    first, last = school.staff[i]
    return i, f"{first} {last}", school.staff_address(i)


def _out(kind: str, raw: bytes, sender: str, rcpt: str, auth: bool) -> Sample:
    login = sender.partition("@")[0] if auth else ""
    return Sample(kind, raw, Envelope(sender, (rcpt,), INSIDE, auth_user=login))


def _in(kind: str, raw: bytes, sender: str, rcpt: str) -> Sample:
    return Sample(kind, raw, Envelope(sender, (rcpt,), OUTSIDE, helo="mx.example"))


def _o_plain(s: School, rng: random.Random) -> Sample:
    i, name, addr = _staff(s, rng)
    parent = s.parent_address(*rng.choice(s.parents))
    extra = rng.choice(["", f"Reply-To: {name} <{addr}>\r\n",
                        f"Disposition-Notification-To: {addr}\r\n",
                        f"Sender: {addr}\r\n", f"Return-Receipt-To: {addr}\r\n"])
    return _out("out: staff to parent", _msg(f"{name} <{addr}>", parent, "Rapportgesprek",
                                             extra), addr, parent, rng.random() < 0.5)


def _o_shared(s: School, rng: random.Random) -> Sample:
    i, name, addr = _staff(s, rng)
    parent = s.parent_address(*rng.choice(s.parents))
    extra = rng.choice([f"Reply-To: Administratie <administratie@{DOMAIN}>\r\n",
                        f"Reply-To: {addr}, administratie@{DOMAIN}\r\n"])
    return _out("out: reply-to the shared mailbox",
                _msg(f"{name} <{addr}>", parent, "Inschrijving", extra), addr, parent, True)


def _o_on_behalf(s: School, rng: random.Random) -> Sample:
    i, name, addr = _staff(s, rng)
    parent = s.parent_address(*rng.choice(s.parents))
    raw = _msg(f"Administratie <administratie@{DOMAIN}>", parent, "Factuur schoolreis",
               f"Sender: {name} <{addr}>\r\n")
    return _out("out: shared mailbox, Sender: own", raw, f"administratie@{DOMAIN}", parent,
                False)


def _o_list(s: School, rng: random.Random) -> Sample:
    i, name, addr = _staff(s, rng)
    raw = _msg(f"{name} <{addr}>", f"team@lists.{DOMAIN}", "Teamoverleg",
               f"Sender: team-bounces@lists.{DOMAIN}\r\nList-Id: <team.lists.{DOMAIN}>\r\n"
               f"Precedence: list\r\n")
    return _out("out: school mailing list resend", raw, f"team-bounces@lists.{DOMAIN}",
                s.staff_address(rng.randrange(len(s.staff))), False)


def _o_list_parent(s: School, rng: random.Random) -> Sample:
    """The school's list server re-posting a parent's message (From: rewritten)."""
    first, last = rng.choice(s.parents)
    addr = s.parent_address(first, last)
    raw = _msg(f"\"'{first} {last}' via Ouders groep 5\" <ouders5@lists.{DOMAIN}>",
               f"ouders5@lists.{DOMAIN}", "Traktatie",
               f"Sender: ouders5-bounces@lists.{DOMAIN}\r\nList-Id: <ouders5.lists.{DOMAIN}>\r\n"
               f"Reply-To: {first} {last} <{addr}>\r\n")
    return _out("out: school list re-posting a parent", raw, f"ouders5-bounces@lists.{DOMAIN}",
                s.parent_address(*rng.choice(s.parents)), False)


def _o_newsletter(s: School, rng: random.Random) -> Sample:
    parent = s.parent_address(*rng.choice(s.parents))
    raw = _msg(f"Nieuwsbrief De Voorbeeld <nieuwsbrief@{DOMAIN}>", parent,
               "Nieuwsbrief week 12", f"Reply-To: administratie@{DOMAIN}\r\n"
               f"List-Unsubscribe: <mailto:nieuwsbrief@{DOMAIN}?subject=afmelden>\r\n")
    return _out("out: school newsletter", raw, f"nieuwsbrief@{DOMAIN}", parent, False)


def _o_auto(s: School, rng: random.Random) -> Sample:
    i, name, addr = _staff(s, rng)
    parent = s.parent_address(*rng.choice(s.parents))
    raw = _msg(f"{name} <{addr}>", parent, "Automatisch antwoord: vraag",
               "Auto-Submitted: auto-replied\r\nX-Auto-Response-Suppress: All\r\n")
    return _out("out: auto-reply", raw, "", parent, False)


def _i_parent(s: School, rng: random.Random) -> Sample:
    first, last = rng.choice(s.parents)
    listed = (first, last) in s.listed_parents
    addr = (f"{_slug(first)}.{_slug(last)}@ouders.example" if listed
            else s.parent_address(first, last))
    shown = rng.choice([f"{first} {last}", f"{last}, {first}", f"{first.upper()} {last}",
                        first, f"{first} {last} (moeder van Sem)", f"Fam. {last}"])
    i, _, staff = _staff(s, rng)
    raw = _msg(f'"{shown}" <{addr}>', staff, "Vraag over huiswerk")
    return _in("in: parent" + (" (in directory)" if listed else ""), raw, addr, staff)


def _i_shares_name(s: School, rng: random.Random) -> Sample:
    """An outside sender who shares a first name or a surname with a staff member."""
    sf, sl = rng.choice(s.staff)
    first, last = (sf, s.last()) if rng.random() < 0.5 else (s.first(), sl)
    if f"{first} {last}" in s.staff_full:
        first = "Wendy" if first != "Wendy" else "Joris"
    addr = s.parent_address(first, last)
    i, _, staff = _staff(s, rng)
    raw = _msg(f'"{first} {last}" <{addr}>', staff, "Afmelding gym")
    return _in("in: shares a first name or surname with staff", raw, addr, staff)


def _i_homonym(s: School, rng: random.Random) -> Sample:
    """An outside person with exactly a staff member's full name (not in the directory)."""
    first, last = rng.choice(s.staff)
    addr = s.parent_address(first, last)
    i, _, staff = _staff(s, rng)
    return _in("in: homonym of a staff member (marked by design)",
               _msg(f'"{first} {last}" <{addr}>', staff, "Vraag"), addr, staff)


def _i_newsletter(s: School, rng: random.Random) -> Sample:
    name, addr = rng.choice(VENDORS)
    i, _, staff = _staff(s, rng)
    raw = _msg(f'"{name}" <{addr}>', staff, "Nieuws voor het onderwijs",
               f"Reply-To: reply-{rng.randrange(10**6)}@mailservice.example\r\n"
               f"List-Unsubscribe: <https://mailservice.example/u/{rng.randrange(10**6)}>\r\n"
               "Precedence: bulk\r\n")
    return _in("in: newsletter (service Reply-To)", raw,
               f"bounce-{rng.randrange(10**6)}@mailservice.example", staff)


def _i_service(s: School, rng: random.Random) -> Sample:
    name, addr = rng.choice(SERVICES)
    i, _, staff = _staff(s, rng)
    raw = _msg(f'"{name}" <{addr}>', staff, "Nieuw bericht", "Auto-Submitted: auto-generated\r\n")
    return _in("in: service notification", raw, addr, staff)


def _i_list(s: School, rng: random.Random) -> Sample:
    first, last = rng.choice(s.parents)
    addr = s.parent_address(first, last)
    i, _, staff = _staff(s, rng)
    raw = _msg(f'"{first} {last}" <{addr}>', staff, "[Ouderraad] Kerstmarkt",
               "Sender: ouderraad-bounces@lists.example\r\nList-Id: <ouderraad.lists.example>\r\n")
    return _in("in: mailing list (Sender: the list)", raw, "ouderraad-bounces@lists.example",
               staff)


def _i_list_staff_post(s: School, rng: random.Random) -> Sample:
    """A staff member's post to an outside group, coming back (From: rewritten)."""
    i, name, addr = _staff(s, rng)
    shown = rng.choice([f"'{name}' via Ouderraad", f"'{addr}' via Ouderraad"])
    j, _, staff = _staff(s, rng)
    raw = _msg(f'"{shown}" <ouderraad@groups.example>', staff, "[Ouderraad] Notulen",
               "Sender: ouderraad@groups.example\r\nList-Id: <ouderraad.groups.example>\r\n"
               f"Reply-To: {name} <{addr}>\r\nX-Original-Sender: {addr}\r\n")
    return _in("in: staff post via an outside list", raw, "ouderraad+bnc@groups.example", staff)


def _i_colleague_elsewhere(s: School, rng: random.Random) -> Sample:
    first, last = s.first(), s.last()
    if f"{first} {last}" in s.staff_full:
        last = "Tromp"
    addr = f"{_slug(first)[0]}.{_slug(last).replace('.', '')}@obsdelinde.example"
    i, _, staff = _staff(s, rng)
    raw = _msg(f'"{first} {last} | OBS De Linde" <{addr}>', staff, "Overdracht leerling")
    return _in("in: colleague at another school", raw, addr, staff)


def _i_address_as_name(s: School, rng: random.Random) -> Sample:
    name, addr = rng.choice(VENDORS)
    i, _, staff = _staff(s, rng)
    return _in("in: own address as display name", _msg(f'"{addr}" <{addr}>', staff, "Offerte"),
               addr, staff)


def _i_bounce(s: School, rng: random.Random) -> Sample:
    i, _, staff = _staff(s, rng)
    raw = _msg("Mail Delivery System <MAILER-DAEMON@mx.provider.example>", staff,
               "Undelivered Mail Returned to Sender", "Auto-Submitted: auto-replied\r\n")
    return _in("in: bounce", raw, "", staff)


MAKERS = {
    "o-plain": _o_plain, "o-shared": _o_shared, "o-on-behalf": _o_on_behalf,
    "o-list": _o_list, "o-list-parent": _o_list_parent, "o-newsletter": _o_newsletter,
    "o-auto": _o_auto,
    "i-parent": _i_parent, "i-shares-name": _i_shares_name, "i-newsletter": _i_newsletter,
    "i-service": _i_service, "i-list": _i_list, "i-list-staff-post": _i_list_staff_post,
    "i-colleague": _i_colleague_elsewhere, "i-address-name": _i_address_as_name,
    "i-bounce": _i_bounce, "i-homonym": _i_homonym,
}
KINDS = {"o-plain": 30, "o-shared": 4, "o-on-behalf": 3, "o-list": 3, "o-list-parent": 2,
         "o-newsletter": 2,
         "o-auto": 2, "i-parent": 25, "i-shares-name": 10, "i-newsletter": 6, "i-service": 6,
         "i-list": 3, "i-list-staff-post": 2, "i-colleague": 3, "i-address-name": 1,
         "i-bounce": 1, "i-homonym": 0}


def runtime_for(tmp: Path, staff_csv: str, allowed: Iterable[str] = (
        f"administratie@{DOMAIN}",)) -> Runtime:
    """The shipped policy with the sender rules enforced, the school's shared box allowed."""
    policy = (ROOT / "policies" / "skot.toml").read_text()
    for rid in SENDER_RULES:
        head = f'[rules."{rid}"]'
        start = policy.index(head)
        end = policy.index("[rules.", start + len(head))
        policy = policy[:start] + policy[start:end].replace(
            'mode = "monitor"', 'mode = "enforce"') + policy[end:]
    listed = ", ".join(f'"{a}"' for a in allowed)
    policy = policy.replace("allowed = []\n# What each header group",
                            f"allowed = [{listed}]\n# What each header group")
    (tmp / "policy.toml").write_text(policy)
    (tmp / "notices").symlink_to(ROOT / "policies" / "notices")
    (tmp / "staff.csv").write_text(staff_csv)
    cfg = tmp / "skot-milter.toml"
    cfg.write_text(f"""[gateway]
listen = "127.0.0.1:0"
next_hop = "maildir:maildir"
hostname = "relay.{DOMAIN}"
internal_networks = ["10.0.0.0/8"]
policy = "policy.toml"
[school]
domains = ["{DOMAIN}"]
postmaster = "postmaster@{DOMAIN}"
[directory]
csv = "staff.csv"
[audit]
url = "sqlite:///audit.sqlite3"
[dns]
authenticate = false
""")
    return Runtime.load(str(cfg))


def marked(runtime: Runtime, samples: Iterable[Sample],
           rules: Iterable[str] = SENDER_RULES) -> list[tuple[Sample, list[FiredRule]]]:
    """The samples on which any of ``rules`` fired (enforced or monitored), with the rules."""
    wanted = set(rules)
    out = []
    for sample in samples:
        fired = [r for r in runtime.evaluate(sample.envelope, sample.raw).verdict.rules
                 if r.id in wanted]
        if fired:
            out.append((sample, fired))
    return out


def eml_samples(directory: Path, school_domain: str = DOMAIN) -> list[Sample]:
    """Every ``*.eml`` below ``directory``: outbound when its From: is a school address
    (from the internal network, not logged in), else inbound from outside."""
    out = []
    for path in sorted(directory.rglob("*.eml")):
        raw = path.read_bytes()
        head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0].decode("utf-8", "replace")
        fields = {k.lower(): v for k, _, v in (line.partition(":") for line in
                                               head.replace("\r\n", "\n").split("\n")) if v}
        frm = next((a for _, a in getaddresses([fields.get("from", "")]) if a), "")
        rcpts = tuple(a for _, a in getaddresses([fields.get("to", ""), fields.get("cc", "")])
                      if a) or (f"someone@{school_domain}",)
        inside = frm.lower().endswith("@" + school_domain)
        out.append(Sample(f"eml: {path.parent.name}", raw,
                          Envelope(frm, rcpts, INSIDE if inside else OUTSIDE)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--count", type=int, default=5000)
    ap.add_argument("--homonyms", type=int, default=0,
                    help="also draw this many outside senders with a staff member's full name")
    ap.add_argument("--eml", type=Path, help="also run every *.eml below this directory")
    ap.add_argument("--show", type=int, default=10, help="marked messages to list")
    args = ap.parse_args()
    staff_csv, samples = ordinary(args.seed, args.count)
    rng = random.Random(args.seed + 1)
    school = School(random.Random(args.seed))
    samples += [_i_homonym(school, rng) for _ in range(args.homonyms)]
    if args.eml:
        samples += eml_samples(args.eml)
    with tempfile.TemporaryDirectory() as tmp:
        rt = runtime_for(Path(tmp), staff_csv)
        hits = marked(rt, samples)
    per_kind = Counter(s.kind for s in samples)
    hit_kind = Counter(s.kind for s, _ in hits)
    print(f"sender rules {', '.join(SENDER_RULES)}; seed {args.seed}; "
          f"{len(samples)} messages")
    print(f"{'kind':<52} {'messages':>8} {'marked':>7}")
    for kind in sorted(per_kind):
        print(f"{kind:<52} {per_kind[kind]:>8} {hit_kind[kind]:>7}")
    ordinary_hits = sum(n for k, n in hit_kind.items() if "marked by design" not in k)
    print(f"ordinary messages marked: {ordinary_hits} of "
          f"{sum(n for k, n in per_kind.items() if 'marked by design' not in k)}")
    for sample, fired in hits[: args.show]:
        print(f"  {sample.kind}: " + "; ".join(f"{r.id} {r.reason}" for r in fired))


if __name__ == "__main__":
    main()
