"""The console's two languages: messages from a catalog per language (``locales/<lang>.json``), the task
catalog's descriptions (``locales/catalog.<lang>.json``, English in ``shared.catalog`` itself), dates,
times and numbers formatted by Babel (CLDR data) for the language, times shown in ``MALLOPS_TIMEZONE``.

The language is the ``mallops_lang`` cookie (set by the switch) if it names one, else the best match of
``Accept-Language``, else English.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

from babel import Locale, dates, numbers, units

LANGUAGES: tuple[str, ...] = ("en", "zh_CN")
DEFAULT_LANGUAGE = "en"
LANG_COOKIE = "mallops_lang"
LOCALES_DIR = Path(__file__).parent / "locales"
# what each language calls itself, for the switch
NATIVE_NAMES = {"en": "English", "zh_CN": "中文"}


@functools.cache
def catalog(language: str) -> dict[str, str]:
    messages: dict[str, str] = json.loads((LOCALES_DIR / f"{language}.json").read_text(encoding="utf-8"))
    return messages


@functools.cache
def catalog_texts(language: str) -> dict[str, str]:
    """The catalog's descriptions in ``language`` (``locales/catalog.<lang>.json``: ``task.<name>``,
    ``workflow.<name>``); English has none, the catalog itself is in English."""
    path = LOCALES_DIR / f"catalog.{language}.json"
    texts: dict[str, str] = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    return texts


def negotiate(accept_language: str | None, cookie: str | None = None) -> str:
    """The console language for a request: the cookie's, else the best of Accept-Language, else English."""
    if cookie in LANGUAGES:
        return str(cookie)
    preferred: list[tuple[float, int, str]] = []
    for position, part in enumerate((accept_language or "")[:500].split(",")):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if tag and quality > 0:
            preferred.append((-quality, position, tag.strip()))
    tags = [tag for _, _, tag in sorted(preferred)]
    # zh, zh-CN, zh-Hans, zh-SG all read simplified Chinese; zh-TW / zh-HK / zh-Hant do not (English then)
    for tag in tags:
        lowered = tag.lower().replace("_", "-")
        if lowered in ("zh", "zh-cn", "zh-sg") or lowered.startswith("zh-hans"):
            return "zh_CN"
        if lowered == "en" or lowered.startswith("en-"):
            return "en"
    return DEFAULT_LANGUAGE


# Babel's formatting is most of a page's CPU time (a page of 25 rows formats 100 to 150 values, 10 to 25 us
# each). What repeats is kept, per language, bounded: a date's text, a number's, a size's, "3 minutes ago"
# per (unit, count, direction), which is all Babel's text depends on; the time of day is filled into the
# locale's own pattern (test_babel_fast_paths_match_babel compares every second of a day with Babel's).
FORMAT_CACHE = 4096


@functools.lru_cache(maxsize=FORMAT_CACHE)
def _date_text(language: str, day: dt.date) -> str:
    return dates.format_date(day, format="medium", locale=language)


@functools.lru_cache(maxsize=FORMAT_CACHE, typed=True)
def _number_text(language: str, value: float) -> str:
    return numbers.format_decimal(value, locale=language)


@functools.lru_cache(maxsize=FORMAT_CACHE, typed=True)
def _unit_text(language: str, value: float, unit: str, length: Literal["short", "long", "narrow"]) -> str:
    return units.format_unit(value, unit, length=length, locale=language)


_AGO: dict[tuple[str, str, int, bool], str] = {}


def _time_fields(hour: int, minute: int, second: int, periods: Mapping[str, str]) -> dict[str, str]:
    twelve = hour % 12 or 12
    return {
        "h": str(twelve),
        "hh": f"{twelve:02d}",
        "H": str(hour),
        "HH": f"{hour:02d}",
        "mm": f"{minute:02d}",
        "ss": f"{second:02d}",
        "a": periods["pm" if hour >= 12 else "am"],
    }


class Translator:
    """Messages, numbers and times for one language and the mall's timezone."""

    def __init__(self, language: str, timezone: str) -> None:
        self.language = language if language in LANGUAGES else DEFAULT_LANGUAGE
        self.locale = Locale.parse(self.language)
        self.tz = ZoneInfo(timezone)
        self.messages = catalog(self.language)
        # <html lang>: BCP 47
        self.html_lang = self.language.replace("_", "-")
        # the medium datetime as Babel composes it: "{1}, {0}" with the date's and the time's texts
        self._datetime_pattern = str(dates.get_datetime_format("medium", locale=self.locale)).replace("'", "")
        # the time's pattern as a %-format of its fields: "%(h)s:%(mm)s:%(ss)s %(a)s"
        self._time_pattern = str(dates.get_time_format("medium", locale=self.locale).format)
        self._periods = dates.get_period_names(context="format", width="abbreviated", locale=self.locale)

    def __call__(self, key: str, **values: object) -> str:
        text = self.messages.get(key) or catalog(DEFAULT_LANGUAGE).get(key) or key
        return text.format(**values) if values else text

    def maybe(self, key: str, default: str) -> str:
        """The message ``key`` if a catalog has it, else ``default`` (a schema's own title, a value)."""
        return self.messages.get(key) or catalog(DEFAULT_LANGUAGE).get(key) or default

    def catalog_text(self, key: str, default: str) -> str:
        """A description of the catalog (``task.<name>``, ``workflow.<name>``) in this language, else
        ``default`` (the catalog's English)."""
        return catalog_texts(self.language).get(key) or default

    def size(self, value: int | None) -> str:
        """Bytes as "12.3 kB" / "12.3千字节"."""
        if value is None:
            return "–"
        for unit, size in (("gigabyte", 1e9), ("megabyte", 1e6), ("kilobyte", 1e3)):
            if value >= size:
                return _unit_text(self.language, round(value / size, 1), f"digital-{unit}", "short")
        return _unit_text(self.language, value, "digital-byte", "short")

    def money(self, value: float | None, currency: str = "CNY") -> str:
        """An amount of money for the language: "CN¥1,234.50" / "¥1,234.50"."""
        return "–" if value is None else numbers.format_currency(value, currency, locale=self.locale)

    def number(self, value: float | None) -> str:
        return "–" if value is None else _number_text(self.language, value)

    def datetime(self, value: dt.datetime | str | None) -> str:
        when = _parse(value)
        if when is None:
            return "–"
        local = when.astimezone(self.tz)
        try:
            time_text = self._time_pattern % _time_fields(local.hour, local.minute, local.second, self._periods)
        except KeyError:  # a pattern with other fields than these: Babel's own
            time_text = dates.format_time(local, format="medium", locale=self.locale)
        return self._datetime_pattern.replace("{0}", time_text).replace("{1}", _date_text(self.language, local.date()))

    def hour(self, value: dt.datetime) -> str:
        return dates.format_time(value, format="HH:mm", tzinfo=self.tz, locale=self.locale)

    def ago(self, value: dt.datetime | str | None, now: dt.datetime | None = None) -> str:
        """ "3 minutes ago" / "3分钟前" (and "in 3 minutes" for a time ahead)."""
        when = _parse(value)
        if when is None:
            return ""
        seconds = (when - (now or dt.datetime.now(dt.UTC))).total_seconds()
        # Babel's text depends only on the unit it picks, the rounded count and the direction
        unit, count = next(
            ((unit, round(abs(seconds) / size)) for unit, size in dates.TIMEDELTA_UNITS if abs(seconds) / size >= 1.1),
            ("second", max(1, round(abs(seconds))) if seconds else 0),
        )
        key = (self.language, unit, count, seconds >= 0)
        text = _AGO.get(key)
        if text is None:
            delta = dt.timedelta(seconds=seconds)
            text = dates.format_timedelta(delta, add_direction=True, threshold=1.1, locale=self.locale)
            if len(_AGO) < FORMAT_CACHE:
                _AGO[key] = text
        return text

    def seconds(self, value: float | None) -> str:
        if value is None:
            return "–"
        return dates.format_timedelta(dt.timedelta(seconds=value), threshold=1.1, format="short", locale=self.locale)

    def period(self, seconds: float) -> str:
        """A schedule's interval: "1 hour", "90 seconds" / "1小时" (exactly, in the largest whole unit)."""
        for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
            if seconds >= size and seconds % size == 0:
                return _unit_text(self.language, seconds // size, f"duration-{unit}", "long")
        return _unit_text(self.language, seconds, "duration-second", "long")

    def iso(self, value: dt.datetime | str | None) -> str:
        when = _parse(value)
        return when.isoformat() if when else ""


def _parse(value: dt.datetime | str | None) -> dt.datetime | None:
    if value is None or value == "":
        return None
    when = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)
