"""The project file `semrec.toml`: find it, load and validate it, write it with every default spelled out."""

import copy
import dataclasses
import difflib
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from semrec.errors import SemrecError
from semrec.io import atomic_write_text
from semrec.registry import REGISTRIES
from semrec.settings import MOVED_KEYS, PRESETS, Settings

PROJECT_FILE = "semrec.toml"


@dataclass
class Project:
    """A loaded project: its file, its settings, and the workspace folder that holds it."""

    path: Path
    settings: Settings
    notices: list[str] = field(default_factory=list)  # keys read from where they used to be

    @property
    def root(self) -> Path:
        return self.path.parent


def find_project_file(start: Path, explicit: Path | None = None) -> Path:
    """The project file named by `--project`, else `semrec.toml` in `start` or a parent (like git)."""
    if explicit is not None:
        path = explicit / PROJECT_FILE if explicit.is_dir() else explicit
        if not path.is_file():
            raise SemrecError(f"no project file at {path}", "run `semrec init PRESET` to create one")
        return path.resolve()
    start = start.resolve()
    for folder in (start, *start.parents):
        if (folder / PROJECT_FILE).is_file():
            return folder / PROJECT_FILE
    raise SemrecError(
        f"no {PROJECT_FILE} in {start} or any parent folder",
        "run `semrec init demo` (or another preset) here, or pass --project PATH",
    )


def load_project(start: Path | None = None, explicit: Path | None = None) -> Project:
    path = find_project_file(start or Path.cwd(), explicit)
    notices: list[str] = []
    return Project(path=path, settings=load_settings(path, notices), notices=notices)


def load_settings(path: Path, notices: list[str] | None = None) -> Settings:
    """The settings of a project file; keys found at an old place are moved, with a line in `notices`."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise SemrecError(f"{path}: malformed TOML: {e}", "fix the line named above") from e
    except UnicodeDecodeError as e:
        raise SemrecError(f"{path}: not UTF-8 text", "save the project file as UTF-8") from e
    return settings_from_dict(raw, source=str(path), notices=notices)


def settings_from_dict(raw: dict, source: str = "settings", notices: list[str] | None = None) -> Settings:
    raw = copy.deepcopy(raw)
    moved = _move_old_keys(raw, source)
    if notices is not None:
        notices.extend(moved)
    return _build(Settings, raw, prefix="", source=source)


def _move_old_keys(raw: dict, source: str) -> list[str]:
    """Move every key of `MOVED_KEYS` found at its old place to its new one (in place); say so per key."""
    notices = []
    for old, new in MOVED_KEYS.items():
        *old_tables, old_key = old.split(".")
        table = raw
        for name in old_tables:
            table = table.get(name) if isinstance(table, dict) else None
        if not isinstance(table, dict) or old_key not in table or isinstance(table[old_key], dict):
            continue
        value = table.pop(old_key)
        *new_tables, new_key = new.split(".")
        target = raw
        for name in new_tables:
            target = target.setdefault(name, {})
        if new_key in target:
            raise SemrecError(f"{source}: {old} and {new} are both set", f"{old} moved to {new}: delete the old line")
        target[new_key] = value
        notices.append(f"{source}: {old} is now {new}; read from its old place (move it there to silence this)")
    return notices


def preset_settings(preset: str) -> Settings:
    if preset not in PRESETS:
        raise SemrecError(
            f"unknown preset {preset!r}", f"choose one of: {', '.join(PRESETS)}" + _did_you_mean(preset, PRESETS)
        )
    overrides = copy.deepcopy(PRESETS[preset])
    overrides.setdefault("project", {}).update({"name": preset, "preset": preset})
    return settings_from_dict(overrides, source=f"preset {preset}")


def settings_to_dict(settings) -> dict:
    return dataclasses.asdict(settings)


def _did_you_mean(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _build(cls, raw: dict, prefix: str, source: str, base=None):
    """An instance of the settings dataclass `cls` from a table: `base` (else the class defaults) with
    the table's keys checked and applied."""
    if not isinstance(raw, dict):
        where = prefix.rstrip(".") or "the file"
        raise SemrecError(f"{source}: [{where}] must be a table, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            raise SemrecError(
                f"{source}: unknown key {prefix}{key}" + _did_you_mean(key, fields),
                f"valid keys here: {', '.join(fields)}",
            )
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in fields.items():
        if name not in raw:
            continue
        values[name] = _check_value(hints[name], raw[name], f, f"{prefix}{name}", source)
    return dataclasses.replace(base, **values) if base is not None else cls(**values)


def _check_value(hint, value, f, keypath: str, source: str):
    if dataclasses.is_dataclass(hint):
        # a sub-table starts from its field's own defaults (the retriever's training block is not the tokenizer's)
        base = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        return _build(hint, value, prefix=keypath + ".", source=source, base=base)
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise SemrecError(
                f"{source}: {keypath} = {value!r} is not allowed" + _did_you_mean(str(value), allowed),
                f"allowed: {', '.join(repr(a) for a in allowed)}",
            )
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise SemrecError(f"{source}: {keypath} = {value!r} must be true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SemrecError(f"{source}: {keypath} = {value!r} must be a whole number")
        return _check_bounds(value, f, keypath, source)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SemrecError(f"{source}: {keypath} = {value!r} must be a number")
        return _check_bounds(float(value), f, keypath, source)
    if hint is str:
        if not isinstance(value, str):
            raise SemrecError(f"{source}: {keypath} = {value!r} must be a string (in quotes)")
        registry = f.metadata.get("choices")
        if registry and value not in REGISTRIES[registry]:
            allowed = REGISTRIES[registry]
            raise SemrecError(
                f"{source}: {keypath} = {value!r} is not allowed" + _did_you_mean(value, allowed),
                f"allowed: {', '.join(repr(a) for a in allowed)}",
            )
        return value
    if hint is list or origin is list:
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else []
        if not isinstance(value, list):
            raise SemrecError(f"{source}: {keypath} = {value!r} must be a list, like {default!r}")
        kinds = {type(x) for x in default}
        if kinds and value and not all(type(x) in kinds or (float in kinds and type(x) is int) for x in value):
            names = "/".join(sorted(k.__name__ for k in kinds))
            raise SemrecError(f"{source}: {keypath} = {value!r} must be a list of {names}, like {default!r}")
        return value
    if isinstance(hint, types.UnionType):
        raise TypeError(f"settings field {keypath}: unions are not supported")
    raise TypeError(f"settings field {keypath}: unsupported type {hint!r}")


def _check_bounds(value, f, keypath: str, source: str):
    low, high = f.metadata.get("min"), f.metadata.get("max")
    if low is not None and value < low:
        raise SemrecError(f"{source}: {keypath} = {value!r} is below the minimum {low}")
    if high is not None and value > high:
        raise SemrecError(f"{source}: {keypath} = {value!r} is above the maximum {high}")
    return value


def render_toml(settings: Settings) -> str:
    """The project file: every section and key with its value and a comment saying what it does."""
    import tomli_w

    lines = [
        "# semrec project file. Every setting is spelled out with its default; edit freely.",
        "# `semrec status` shows which stages a change makes stale.",
    ]

    def emit(obj, name: str) -> None:
        lines.append("")
        doc = (type(obj).__doc__ or "").strip()
        if doc:
            lines.append(f"# {doc}")
        lines.append(f"[{name}]")
        nested = []
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                nested.append((value, f"{name}.{f.name}"))
                continue
            lines.append(f"# {f.metadata['help']}")
            lines.append(tomli_w.dumps({f.name: value}).strip())
        for value, sub in nested:
            emit(value, sub)

    for f in dataclasses.fields(settings):
        emit(getattr(settings, f.name), f.name)
    return "\n".join(lines) + "\n"


def init_project(preset: str, folder: Path, force: bool = False) -> Path:
    """Write `semrec.toml` for a preset into `folder`; refuse to overwrite unless `force`."""
    settings = preset_settings(preset)
    path = folder / PROJECT_FILE
    if path.exists() and not force:
        raise SemrecError(f"{path} already exists", "pass --force to overwrite it")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SemrecError(f"cannot create the folder {folder}: {e.strerror}", "choose a folder you can write to") from e
    atomic_write_text(path, render_toml(settings))
    return path
