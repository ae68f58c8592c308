"""Settings changed for one benchmark run, written and checked as `semrec` reads a project file.

A value is TOML (`lr=0.002`, `ks=[5, 10]`, `compile=true`); a bare word is a string (`loss=sampled`).
"""

import dataclasses
import tomllib

from semrec.project import settings_from_dict


def parse_pair(pair: str) -> tuple[str, object]:
    """KEY=VALUE -> (key, value)."""
    key, sep, text = pair.partition("=")
    if not sep:
        raise SystemExit(f"{pair!r} is not KEY=VALUE")
    try:
        return key.strip(), tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return key.strip(), text.strip()


def with_settings(settings, values: dict[str, object]):
    """A copy of `settings` with each dotted key set to its value, checked like a project file's values."""
    raw = dataclasses.asdict(settings)
    for key, value in values.items():
        *tables, last = key.split(".")
        table = raw
        for name in tables:
            table = table.get(name) if isinstance(table, dict) else None
        if not isinstance(table, dict) or last not in table:
            raise SystemExit(f"unknown setting {key!r}")
        table[last] = value
    return settings_from_dict(raw, source="the benchmark's settings")
