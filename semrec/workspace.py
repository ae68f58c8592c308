"""The workspace: artifact paths, the manifest, fingerprints, and the make-like stage runner.

Every stage records in `manifest.json` a digest of the settings it reads and of the artifacts of
the stages upstream of it. A stage is *done* when its record matches the current settings and
upstream artifacts, *stale* when something it read has changed, *missing* when it never ran (or
was interrupted: a record is dropped before a stage starts and written only once it finished; a
stage that fails before writing anything, not even a checkpoint, gets its record back, so the
manifest is as it was; one that wrote a checkpoint stays missing, so that running it again resumes).
A stage that `shows` artifacts it does not need (the report) also records their digests, and is
stale once one of them changes, appears or goes.

Commands that may write hold the workspace's lock (`Workspace.lock`), one at a time.

Under torchrun every rank runs the command's stage, but rank 0 alone holds the lock and writes the
manifest; the stages upstream must be done already (one rank cannot run them while the others wait).
"""

import hashlib
import importlib
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from semrec.artifacts import MANIFEST
from semrec.errors import SemrecError
from semrec.io import atomic_write_json, remove_stale_temp_files
from semrec.lock import hold_lock
from semrec.pipeline import STAGES, Stage, select_settings
from semrec.project import Project
from semrec.report import Reporter


def digest_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _files(path: Path) -> list[Path]:
    """An artifact's files: itself, or a folder's files without its `checkpoints/` (scratch); none if absent."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and "checkpoints" not in p.parts)


def digest_files(paths: list[Path]) -> str:
    """Content digest of files and folders (a folder's `checkpoints/` is skipped: it is scratch)."""
    h = hashlib.sha256()
    for path in paths:
        for f in _files(path):
            h.update(str(f.relative_to(path.parent)).encode())
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:16]


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in _files(path))


def _stamps(paths: list[Path]) -> dict[str, tuple[int, int, int]]:
    """(inode, size, mtime) of every file under `paths`, checkpoints included.

    An atomic rename changes the inode, so equal stamps before and after a stage mean it wrote nothing.
    """
    stamps = {}
    for path in paths:
        for f in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
            st = f.stat()
            stamps[str(f)] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return stamps


@dataclass
class StageRun:
    """What a stage function is told: its fingerprint (to match checkpoints), whether to start fresh, options."""

    stage: str
    fingerprint: str
    fresh: bool = False
    options: dict = field(default_factory=dict)


@dataclass
class StageState:
    name: str
    state: str  # done | stale | missing
    reason: str
    record: dict | None


class Workspace:
    """A project's folder, its artifacts and its manifest."""

    def __init__(self, project: Project, reporter: Reporter | None = None):
        self.project = project
        self.settings = project.settings
        self.root = project.root
        self.reporter = reporter or Reporter()

    def path(self, artifact: str) -> Path:
        return self.root / artifact

    @contextmanager
    def lock(self, command: str, wait: bool = False):
        """Hold the workspace for `command`, which may write in it; another one waits or is refused.

        Holding it, no other command can be writing here, so the temporary files that atomic writes
        killed with -9 left beside the artifacts are removed (those older than the lock only).
        """
        with hold_lock(self.root, command, wait=wait, on_wait=self.reporter.warn):
            taken = time.time()
            removed = [f for folder in self._artifact_folders() for f in remove_stale_temp_files(folder, taken)]
            if removed:
                self.reporter.info(f"removed {len(removed)} temporary file(s) left by an interrupted command")
            yield

    def _artifact_folders(self) -> set[Path]:
        """Every folder an artifact is written to: the workspace, the outputs' parents and folder outputs."""
        folders = {self.root}
        for stage in STAGES.values():
            for path in (self.path(a) for a in stage.outputs):
                folders.add(path.parent)
                if path.is_dir():
                    folders |= {path, *(p for p in path.rglob("*") if p.is_dir())}
        return folders

    # -- manifest ---------------------------------------------------------------------------
    def manifest(self) -> dict:
        path = self.path(MANIFEST)
        if not path.exists():
            return {}
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise SemrecError(f"{path} is corrupt: {e}", f"delete {path}; every stage will run again") from e

    def _save_manifest(self, manifest: dict) -> None:
        from semrec import distributed  # here: it imports torch, which most commands do without

        if distributed.is_main():
            atomic_write_json(self.path(MANIFEST), manifest)

    def _set_record(self, name: str, record: dict | None) -> None:
        """Put `record` in the manifest as `name`'s (None drops it), writing only if that changes it."""
        manifest = self.manifest()
        if manifest.get(name) == record:
            return
        if record is None:
            del manifest[name]
        else:
            manifest[name] = record
        self._save_manifest(manifest)

    def settings_digest(self, stage: Stage) -> str:
        return digest_json(select_settings(self.settings, stage.settings(self.settings)))

    def shown_digests(self, stage: Stage) -> dict[str, str | None]:
        """The content digest of each artifact `stage` shows, None where it does not exist."""
        return {a: digest_files([self.path(a)]) if self.path(a).exists() else None for a in stage.shows}

    def state(self, name: str, _manifest: dict | None = None) -> StageState:
        manifest = self.manifest() if _manifest is None else _manifest
        stage = STAGES[name]
        record = manifest.get(name)
        if record is None:
            return StageState(name, "missing", "never ran (or was interrupted)", None)
        for artifact, size in record.get("sizes", {}).items():
            path = self.path(artifact)
            if not path.exists():
                return StageState(name, "missing", f"{artifact} is gone", record)
            if _size(path) != size:
                return StageState(name, "stale", f"{artifact} changed on disk", record)
        if record.get("settings") != self.settings_digest(stage):
            return StageState(name, "stale", "its settings changed", record)
        upstream = stage.upstream(self.settings)
        if set(record.get("inputs", {})) != set(upstream):
            return StageState(name, "stale", "its inputs changed", record)
        for up in upstream:
            up_state = self.state(up, manifest)
            if up_state.state != "done":
                return StageState(name, "stale", f"upstream {up} is {up_state.state}", record)
            if record["inputs"][up] != up_state.record.get("output"):
                return StageState(name, "stale", f"upstream {up} was rerun", record)
        if record.get("shown", {}) != self.shown_digests(stage):
            return StageState(name, "stale", "an artifact it shows changed", record)
        return StageState(name, "done", "up to date", record)

    def fingerprint(self, name: str) -> str:
        """Settings digest plus the upstream output digests: what a checkpoint must match to be resumed."""
        stage = STAGES[name]
        manifest = self.manifest()
        inputs = {up: manifest.get(up, {}).get("output") for up in stage.upstream(self.settings)}
        return digest_json([self.settings_digest(stage), inputs])

    # -- running ----------------------------------------------------------------------------
    def ensure(self, name: str, force: bool = False, options: dict | None = None) -> dict:
        """Run what `name` needs upstream (saying why), then `name` itself unless it is up to date."""
        for up in upstream_order(name, self.settings):
            self.require(up)
        state = self.state(name)
        if state.state == "done" and not force:
            self.reporter.info(f"{name}: up to date, skipped (--force reruns it)")
            return state.record.get("figures", {})
        return self._run(name, fresh=force, options=options or {})

    def require(self, name: str) -> None:
        """Make `name` and everything upstream of it up to date, running only what is missing or stale."""
        from semrec import distributed

        for stage in [*upstream_order(name, self.settings), name]:
            state = self.state(stage)
            if state.state != "done" and distributed.world_size() > 1:
                raise distributed.SameOnEveryRank(
                    f"{stage} is {state.state} ({state.reason}): under torchrun only the command's own stage runs",
                    f"run `semrec {stage}` in one process first, then the torchrun command again",
                )
            if state.state != "done":
                self.reporter.info(f"{stage}: {state.state} ({state.reason}); running it first")
                self._run(stage, fresh=False, options={})

    def _run(self, name: str, fresh: bool, options: dict) -> dict:
        from semrec import distributed

        stage = STAGES[name]
        run = StageRun(stage=name, fingerprint=self.fingerprint(name), fresh=fresh, options=options)
        outputs = [self.path(a) for a in stage.outputs]
        previous, before, shown = self.manifest().get(name), _stamps(outputs), self.shown_digests(stage)
        self._set_record(name, None)  # a command killed mid-stage leaves it missing
        module, func = stage.run.split(":")
        started = time.time()
        try:
            figures = getattr(importlib.import_module(module), func)(self, run) or {}
            if not distributed.is_main():  # rank 0 writes the outputs and their record
                return figures
        except BaseException:
            if _stamps(outputs) == before:  # it wrote nothing: its previous outputs and record still hold
                self._set_record(name, previous)
            raise
        missing = [a for a in stage.outputs if not self.path(a).exists()]
        if missing:
            raise SemrecError(f"stage {name} finished without writing {', '.join(missing)}", exit_code=1)
        manifest = self.manifest()
        manifest[name] = {
            "settings": self.settings_digest(stage),
            "inputs": {up: manifest[up]["output"] for up in stage.upstream(self.settings)},
            "output": digest_files([self.path(a) for a in stage.outputs]),
            "sizes": {a: _size(self.path(a)) for a in stage.outputs},
            **({"shown": shown} if shown else {}),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": round(time.time() - started, 2),
            "figures": figures,
        }
        self._save_manifest(manifest)
        return figures

    def record_append(self, stages: list[str]) -> None:
        """Record that the outputs of `stages` grew by consistent rows (cold-start items).

        Their new digests replace the old ones in their own records and in the inputs of the stages
        that read them, so nothing becomes stale merely because items were appended.
        """
        manifest = self.manifest()
        renamed = {}
        for name in stages:
            record = manifest.get(name)
            if record is None:
                continue
            outputs = STAGES[name].outputs
            renamed[name] = (record["output"], digest_files([self.path(a) for a in outputs]))
            record["output"] = renamed[name][1]
            record["sizes"] = {a: _size(self.path(a)) for a in outputs}
        for record in manifest.values():
            for up, digest in record.get("inputs", {}).items():
                if up in renamed and digest == renamed[up][0]:
                    record["inputs"][up] = renamed[up][1]
        self._save_manifest(manifest)

    def status(self) -> list[dict]:
        manifest = self.manifest()
        rows = []
        for name in STAGES:
            s = self.state(name, manifest)
            record = s.record or {}
            rows.append(
                {
                    "stage": name,
                    "state": s.state,
                    "reason": s.reason,
                    "finished_at": record.get("finished_at"),
                    "seconds": record.get("seconds"),
                    "artifacts": {a: self._existing_size(a) for a in STAGES[name].outputs},
                    "figures": record.get("figures", {}),
                }
            )
        return rows

    def _existing_size(self, artifact: str) -> int | None:
        path = self.path(artifact)
        return _size(path) if path.exists() else None


def upstream_order(name: str, settings) -> list[str]:
    """Every stage `name` depends on, upstream first (depth-first topological order)."""
    order: list[str] = []

    def visit(stage: str) -> None:
        for up in STAGES[stage].upstream(settings):
            if up not in order:
                visit(up)
                order.append(up)

    visit(name)
    return order
