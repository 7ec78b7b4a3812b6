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
from pathlib import Path
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


class Translator:
    """Messages, numbers and times for one language and the mall's timezone."""

    def __init__(self, language: str, timezone: str) -> None:
        self.language = language if language in LANGUAGES else DEFAULT_LANGUAGE
        self.locale = Locale.parse(self.language)
        self.tz = ZoneInfo(timezone)
        self.messages = catalog(self.language)
        # <html lang>: BCP 47
        self.html_lang = self.language.replace("_", "-")

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
                return units.format_unit(round(value / size, 1), f"digital-{unit}", length="short", locale=self.locale)
        return units.format_unit(value, "digital-byte", length="short", locale=self.locale)

    def money(self, value: float | None, currency: str = "CNY") -> str:
        """An amount of money for the language: "CN¥1,234.50" / "¥1,234.50"."""
        return "–" if value is None else numbers.format_currency(value, currency, locale=self.locale)

    def number(self, value: float | None) -> str:
        return "–" if value is None else numbers.format_decimal(value, locale=self.locale)

    def datetime(self, value: dt.datetime | str | None) -> str:
        when = _parse(value)
        if when is None:
            return "–"
        return dates.format_datetime(when, format="medium", tzinfo=self.tz, locale=self.locale)

    def hour(self, value: dt.datetime) -> str:
        return dates.format_time(value, format="HH:mm", tzinfo=self.tz, locale=self.locale)

    def ago(self, value: dt.datetime | str | None, now: dt.datetime | None = None) -> str:
        """ "3 minutes ago" / "3分钟前" (and "in 3 minutes" for a time ahead)."""
        when = _parse(value)
        if when is None:
            return ""
        delta = when - (now or dt.datetime.now(dt.UTC))
        return dates.format_timedelta(delta, add_direction=True, threshold=1.1, locale=self.locale)

    def seconds(self, value: float | None) -> str:
        if value is None:
            return "–"
        return dates.format_timedelta(dt.timedelta(seconds=value), threshold=1.1, format="short", locale=self.locale)

    def period(self, seconds: float) -> str:
        """A schedule's interval: "1 hour", "90 seconds" / "1小时" (exactly, in the largest whole unit)."""
        for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
            if seconds >= size and seconds % size == 0:
                return units.format_unit(seconds // size, f"duration-{unit}", length="long", locale=self.locale)
        return units.format_unit(seconds, "duration-second", length="long", locale=self.locale)

    def iso(self, value: dt.datetime | str | None) -> str:
        when = _parse(value)
        return when.isoformat() if when else ""


def _parse(value: dt.datetime | str | None) -> dt.datetime | None:
    if value is None or value == "":
        return None
    when = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)
