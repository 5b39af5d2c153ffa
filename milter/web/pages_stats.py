"""The statistics pages: the dashboard and the monthly summary (counts, no persons)."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, date, datetime, timedelta
from urllib.parse import urlencode

from milter import csvcells
from milter.audit import search
from milter.audit.store import OUTCOMES
from milter.web import charts, terms
from milter.web.base import (
    PageBase,
    Session,
    _nl,
)
from milter.web.texts import T


class StatsPages(PageBase):
    """Counts per rule, article and month: all a statistics account sees."""

    # -- statistics --------------------------------------------------------------------------
    def _dashboard(self, session: Session, q: dict[str, str]) -> None:
        t = T[self._lang()]
        lang = self._lang()
        days = int(q["days"]) if q.get("days", "").isdigit() else 30
        days = min(max(days, 1), 366)
        today = datetime.now(UTC).astimezone(terms.LOCAL).date()
        first = today - timedelta(days=days - 1)
        since, until = terms.day_start(first), terms.day_start(today + timedelta(days=1))
        store = self._searchable()
        per_day: dict[date, dict[str, int]] = {}
        days_of: dict[str, date] = {}  # a year has 8 760 hours but ten times as many rows
        for hour, event, n in search.events_by_hour(store, terms.stored_ts(since),
                                                    terms.stored_ts(until)):
            day = days_of.get(hour)
            if day is None:
                day = days_of[hour] = terms.local_day(hour + ":00:00Z")
            counts = per_day.setdefault(day, {})
            counts[event] = counts.get(event, 0) + n
        span = {"since": _nl(first), "until": _nl(today)}
        colors = dict(zip(OUTCOMES, charts.PALETTE, strict=False))
        daily = []
        notices = []
        for i in range(days):
            day = first + timedelta(days=i)
            counts = per_day.get(day, {})
            one = {"since": _nl(day), "until": _nl(day)}
            daily.append((day.strftime("%d-%m"), [
                charts.Bar(terms.word(terms.OUTCOME_WORDS, o, lang), counts.get(o, 0),
                           "/messages?" + urlencode({**one, "outcome": o}), colors[o],
                           f"{day.isoformat()}:{o}") for o in OUTCOMES]))
            notices.append((day.strftime("%d-%m"), [
                charts.Bar(terms.word(terms.EVENT_WORDS, ev, lang), counts.get(ev, 0),
                           "/records?" + urlencode({**one, "event": ev}), color,
                           f"{day.isoformat()}:{ev}")
                for ev, color in (("notice-sent", charts.PALETTE[3]),
                                  ("notice-suppressed", charts.PALETTE[2]),
                                  ("notice-failed", charts.PALETTE[1]))]))
        s_ts, u_ts = terms.stored_ts(since), terms.stored_ts(until)
        rules = [charts.Bar(f"{r} ({a})", n, "/messages?" + urlencode({**span, "rule": r}),
                            key=r) for r, a, n in search.rules_between(store, s_ts, u_ts)]
        senders = [charts.Bar(sender, n, "/messages?" + urlencode({**span, "sender": sender}),
                              charts.PALETTE[1], key=sender)
                   for sender, n in search.top_senders(store, s_ts, u_ts)]
        months = []
        month = date(today.year, today.month, 1)
        starts = []
        for _ in range(12):
            starts.append(month)
            month = (month - timedelta(days=1)).replace(day=1)
        article_colors: dict[str, str] = {}
        for m in reversed(starts):
            nxt = (m + timedelta(days=32)).replace(day=1)
            bars = []
            for article, n in search.articles_between(store, terms.stored_ts(
                    terms.day_start(m)), terms.stored_ts(terms.day_start(nxt))):
                color = article_colors.setdefault(
                    article, charts.PALETTE[len(article_colors) % len(charts.PALETTE)])
                bars.append(charts.Bar(article, n, "/messages?" + urlencode(
                    {"since": _nl(m), "until": _nl(nxt - timedelta(days=1)),
                     "article": article}), color, f"{m:%Y-%m}:{article}"))
            months.append((f"{m:%m-%Y}", bars))
        held = self._held()
        ages = [(t["age_1"], 0, 1), (t["age_7"], 1, 7), (t["age_30"], 7, 30),
                (t["age_old"], 30, 10**6)]
        q_bars = [charts.Bar(label, sum(1 for h in held if lo <= h.age_days < hi),
                             "/quarantine", charts.PALETTE[2], f"age:{lo}")
                  for label, lo, hi in ages]
        self.app.audit(session, "viewed", {"page": "dashboard", "days": days})
        self._render(
            "dashboard.html", t["dashboard"], session, days=days, first=first, today=today,
            daily=charts.columns("chart-daily", t["chart_daily"], daily),
            notices=charts.columns("chart-notices", t["chart_notices"], notices),
            rules=charts.hbars("chart-rules", t["chart_rules"], rules),
            senders=(charts.hbars("chart-senders", t["chart_senders"], senders)
                     if session.role != "statistics" else ""),
            articles=charts.columns("chart-articles", t["chart_articles"], months),
            quarantine=charts.hbars("chart-quarantine", t["chart_quarantine"], q_bars),
            held_count=len(held), held_bytes=sum(h.size for h in held),
            legend=[(terms.word(terms.OUTCOME_WORDS, o, lang), colors[o]) for o in OUTCOMES],
            article_legend=sorted(article_colors.items()),
            this_month=f"{today:%Y-%m}")

    def _summary(self, session: Session, q: dict[str, str]) -> None:
        """The month's decisions per article, for the board (HTML and CSV)."""
        t = T[self._lang()]
        lang = self._lang()
        m = re.match(r"^(\d{4})-(\d{1,2})$", q.get("month", ""))
        today = datetime.now(UTC).astimezone(terms.LOCAL).date()
        try:
            start = date(int(m.group(1)), int(m.group(2)), 1) if m else today.replace(day=1)
        except ValueError:
            start = today.replace(day=1)
        end = (start + timedelta(days=32)).replace(day=1)
        rows = search.articles_by_outcome(self._searchable(),
                                          terms.stored_ts(terms.day_start(start)),
                                          terms.stored_ts(terms.day_start(end)))
        fmt = q.get("format", "html")
        self.app.audit(session, "exported" if fmt == "csv" else "viewed",
                       {"page": "summary", "month": f"{start:%Y-%m}", "format": fmt})
        header = [t["article"], *(terms.word(terms.OUTCOME_WORDS, o, lang) for o in OUTCOMES),
                  t["total"]]
        table = []
        for article, counts in sorted(rows.items()):
            table.append([article, *(counts.get(o, 0) for o in OUTCOMES),
                          sum(counts.values())])
        if fmt == "csv":
            buf = io.StringIO()
            w = csv.writer(buf)
            w.writerow(csvcells.row(header))
            w.writerows(csvcells.row(r) for r in table)
            self._send(200, buf.getvalue().encode(), "text/csv; charset=utf-8",
                       extra={"Content-Disposition": f'attachment; filename="summary-'
                                                     f'{start:%Y-%m}.csv"'})
            return
        prev = (start - timedelta(days=1)).replace(day=1)
        self._render("summary.html", f"{t['summary']} {start:%m-%Y}", session, header=header,
                     table=table, month=f"{start:%Y-%m}", prev=f"{prev:%Y-%m}",
                     next=f"{end:%Y-%m}", outcomes=OUTCOMES,
                     span={"since": _nl(start), "until": _nl(end - timedelta(days=1))})
