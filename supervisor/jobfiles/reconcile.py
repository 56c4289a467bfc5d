"""Reconciler: what the jobs directory says, turned into changes to the job table.

Pure bookkeeping: no threads, no clock, and file reading is injected, so every rule of
the contract's "Job files" and "Live reload" sections is table-testable here:

- a ``job_id`` belongs to the file that claimed it first; later claimants wait (reported
  as conflicts) and the earliest of them takes over when the owner lets it go;
- a valid job edited into an invalid state keeps its last good version scheduled (and
  keeps its ``job_id``) until the file is fixed or deleted;
- a rename inside the directory is the same job with a new ``file``, never remove + add
  (the renamed file, known by its inode, stays the owner ahead of waiting claimants),
  even when the new name is reconciled before the old one;
- re-reading unchanged content changes nothing.

Within one call, releases (deleted files, changed job_ids) happen before claims,
and claims are made in sorted path order, so results do not depend on event order.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from supervisor.jobfiles.jobdir import FileStamp, is_job_file_name
from supervisor.jobfiles.jobspec import JobFileError, JobSpec

KEPT_SUFFIX = "; the previous version stays scheduled until the file is fixed or deleted"


@dataclass(frozen=True, slots=True)
class FileProblem:
    file: str
    message: str
    kept_previous: bool  # a last good version of this file's job stays scheduled


@dataclass(slots=True)
class Changes:
    """What one reconciliation changed; apply ``removed`` and ``upserted`` to the schedule."""

    upserted: list[JobSpec] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    errors: list[FileProblem] = field(default_factory=list)
    cleared: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.upserted or self.removed or self.errors or self.cleared)


@dataclass(slots=True)
class _File:
    stamp: FileStamp
    spec: JobSpec | None  # the file's current content, when valid
    error: JobFileError | None  # why the current content is unusable
    owns: str | None = None  # the job_id this file owns (maybe through a last good version)
    kept: JobSpec | None = None  # that last good version, while the content is unusable

    def table_spec(self) -> JobSpec | None:
        """What the job table holds for the job this file owns."""
        return self.spec if self.spec is not None else self.kept


_Observed = tuple[FileStamp, JobSpec | None, JobFileError | None] | None  # None: gone


class Reconciler:
    """``read(path)`` gives a file's job and the stamp of what it read (see
    ``jobspec.read_stamped_job_file``); it raises JobFileError for an unusable file."""

    def __init__(self, read: Callable[[str], tuple[JobSpec, FileStamp]]) -> None:
        self._read = read
        self._files: dict[str, _File] = {}
        # job_id -> path; the job table is what each owner file holds (_File.table_spec)
        self._owner: dict[str, str] = {}
        # job_id -> every valid file naming that job_id: its path when it is the only one
        # (nearly always, and a dict per job would be most of a job's memory), else
        # {path: claim number}, where the smallest number among non-owners is next in line.
        self._claims: dict[str, str | dict[str, int]] = {}
        self._claim_numbers = itertools.count()
        self._errors: dict[str, str] = {}

    # -- queries ------------------------------------------------------------------------

    def jobs(self) -> dict[str, JobSpec]:
        return {job_id: self._files[path].table_spec() for job_id, path in self._owner.items()}

    def errors(self) -> dict[str, str]:
        return dict(self._errors)

    def owner(self, job_id: str) -> str | None:
        return self._owner.get(job_id)

    # -- inputs -------------------------------------------------------------------------

    def full(self, snapshot: dict[str, FileStamp]) -> Changes:
        """Reconcile against a whole-directory snapshot (start-up, reload, safety net)."""
        wanted: dict[str, FileStamp | None] = dict(snapshot)
        for path in self._files:
            wanted.setdefault(path, None)
        return self._apply(self._observe(wanted, stat=None))

    def paths(self, paths: Iterable[str],
              stat: Callable[[str], FileStamp | None]) -> Changes:
        """Reconcile only ``paths`` (settled watcher events); ``stat`` None = gone.

        A file claiming a job_id whose owner's file is gone brings that owner along: the
        watcher hands over a rename's new name at once but lets the old name settle (an
        editor may be about to reuse it), and only seen together are the two one job
        renamed rather than a conflict. When the old name comes later, it is already
        known to be gone.
        """
        wanted = {path: stat(path) for path in set(paths)
                  if is_job_file_name(os.path.basename(path))}
        observed = self._observe(wanted, stat)
        for owner in self._owners_of(observed):
            if owner not in wanted and stat(owner) is None:
                observed[owner] = None
        return self._apply(dict(sorted(observed.items(), key=lambda item: item[0])))

    # -- the work -----------------------------------------------------------------------

    def _owners_of(self, observed: dict[str, _Observed]) -> set[str]:
        """The files that own the job_ids the ``observed`` files now claim."""
        owners = set()
        for new in observed.values():
            if new is not None and new[1] is not None:
                owner = self._owner.get(new[1].job_id)
                if owner is not None:
                    owners.add(owner)
        return owners

    def _apply(self, observed: dict[str, _Observed]) -> Changes:
        """Apply what ``_observe`` saw, given in sorted path order (the order claims are
        made in)."""
        before: dict[str, JobSpec | None] = {}  # job_id -> spec before this call
        departed: dict[str, int] = {}  # job_id -> inode of its owner's file, now gone
        for path, new in observed.items():
            self._release(path, new, before, departed)
        for path, new in observed.items():
            self._claim(path, new, before, departed)
        for job_id in sorted(before):
            if job_id not in self._owner and job_id in self._claims:
                self._hand_over(job_id)
        changes = Changes()
        self._diff_jobs(before, changes)
        touched = set(observed)
        for job_id in before:
            touched.update(self._claimants(job_id))
        self._diff_errors(touched, changes)
        return changes

    def _observe(self, wanted: dict[str, FileStamp | None],
                 stat: Callable[[str], FileStamp | None] | None) -> dict[str, _Observed]:
        """Read what changed, in sorted path order (the order claims are made in)."""
        observed: dict[str, _Observed] = {}
        for path in sorted(wanted):
            stamp, known = wanted[path], self._files.get(path)
            if stamp is None:
                if known is not None:
                    observed[path] = None
                continue
            if known is not None and known.stamp == stamp:
                continue
            try:
                spec, stamp = self._read(path)  # the stamp of what was read, not listed
                observed[path] = (stamp, spec, None)
            except JobFileError as error:
                # The listed stamp stays (UNSTAMPED at the first load: then the first
                # rescan reads the file once more and finds the same problem).
                if stat is not None and stat(path) is None:
                    # Gone between stat and read (a save in progress): a deletion, not an
                    # unreadable file; the event for whatever replaces it comes next.
                    if known is not None:
                        observed[path] = None
                    continue
                observed[path] = (stamp, None, _without_frames(error))
        return observed

    def _release(self, path: str, new: _Observed, before: dict[str, JobSpec | None],
                 departed: dict[str, int]) -> None:
        """Withdraw the claims this file no longer makes; apply an owner's new content."""
        known = self._files.get(path)
        old_id = known.spec.job_id if known is not None and known.spec is not None else None
        new_spec = new[1] if new is not None else None
        new_id = new_spec.job_id if new_spec is not None else None
        if old_id is not None and old_id != new_id:
            self._withdraw_claim(old_id, path)
        owned = known.owns if known is not None else None
        kept = None
        if owned is not None and known is not None:  # (known: always, as it owns)
            before.setdefault(owned, known.table_spec())
            if new is not None and new_spec is None:
                kept = known.table_spec()  # invalid content: the last good version stays
            elif new is None or new_id != owned:
                # Deleted, or now names another job_id: let it go.
                del self._owner[owned]
                if new is None:
                    departed[owned] = known.stamp.inode
                owned = None
        if new is None:
            del self._files[path]
        else:
            self._files[path] = _File(*new, owns=owned, kept=kept)

    def _claim(self, path: str, new: _Observed, before: dict[str, JobSpec | None],
               departed: dict[str, int]) -> None:
        if new is None or new[1] is None:
            return
        job_id = new[1].job_id
        if self._add_claim(job_id, path):
            before.setdefault(job_id, self._table(job_id))
        if departed.get(job_id) == new[0].inode and job_id not in self._owner:
            # The owner's file itself, renamed: it stays the owner, ahead of any claimant
            # already waiting ("renamed inside the directory: same job").
            self._take(job_id, path)

    def _table(self, job_id: str) -> JobSpec | None:
        """The job table's spec for ``job_id`` (maybe a last good version)."""
        path = self._owner.get(job_id)
        return None if path is None else self._files[path].table_spec()

    def _hand_over(self, job_id: str) -> None:
        claims = self._claims[job_id]
        if isinstance(claims, str):
            self._take(job_id, claims)
        else:
            self._take(job_id, min(claims, key=claims.__getitem__))

    # -- claims: a path, or {path: claim number} -----------------------------------------

    def _claimants(self, job_id: str) -> tuple[str, ...]:
        claims = self._claims.get(job_id)
        if claims is None:
            return ()
        return (claims,) if isinstance(claims, str) else tuple(claims)

    def _add_claim(self, job_id: str, path: str) -> bool:
        """Record that ``path`` names ``job_id``; False if it already did."""
        claims = self._claims.get(job_id)
        if claims is None:
            self._claims[job_id] = path
            return True
        if isinstance(claims, str):
            if claims == path:
                return False
            # The one claimant so far claimed before this one: it keeps its place in line.
            claims = self._claims[job_id] = {claims: next(self._claim_numbers)}
        elif path in claims:
            return False
        claims[path] = next(self._claim_numbers)
        return True

    def _withdraw_claim(self, job_id: str, path: str) -> None:
        claims = self._claims[job_id]
        if isinstance(claims, str):
            assert claims == path
            del self._claims[job_id]
            return
        del claims[path]
        if len(claims) == 1:
            self._claims[job_id] = next(iter(claims))

    def _take(self, job_id: str, path: str) -> None:
        spec = self._files[path].spec
        assert spec is not None  # only valid files hold claims
        self._owner[job_id] = path
        self._files[path].owns = job_id

    def _diff_jobs(self, before: dict[str, JobSpec | None], changes: Changes) -> None:
        for job_id in sorted(before):
            old, new = before[job_id], self._table(job_id)
            if new is None:
                if old is not None:
                    changes.removed.append(job_id)
                    changes.events.append(_event("job_removed", "info", old.file, job_id))
                continue
            if old is None:
                changes.upserted.append(new)
                changes.events.append(_event("job_added", "info", new.file, job_id))
            elif not _same(old, new):
                changes.upserted.append(new)
                if old.file == new.file:
                    changes.events.append(_event("job_updated", "info", new.file, job_id))
                else:
                    renamed = _same(old, dataclasses.replace(new, file=old.file))
                    kind = "job_renamed" if renamed else "job_updated"
                    changes.events.append(
                        _event(kind, "info", new.file, job_id, old_file=old.file))

    def _diff_errors(self, paths: set[str], changes: Changes) -> None:
        reported = {event["file"] for event in changes.events}
        for path in sorted(paths):
            old, new = self._errors.get(path), self._problem(path)
            if (new and new.message) == old:
                continue
            if new is None:
                del self._errors[path]
                changes.cleared.append(path)
                if path not in reported:  # a job event for the file already says it is fine
                    changes.events.append(_event("job_error_cleared", "info", path))
                continue
            self._errors[path] = new.message
            changes.errors.append(new)
            known = self._files[path]
            if known.spec is None:
                changes.events.append(_event("job_invalid", "error", path,
                                             known.owns, error=new.message))
            else:
                changes.events.append(_event("job_conflict", "error", path, known.spec.job_id,
                                             error=new.message,
                                             owner=self._owner[known.spec.job_id]))

    def _problem(self, path: str) -> FileProblem | None:
        known = self._files.get(path)
        if known is None:
            return None
        if known.error is not None:
            kept = known.owns is not None
            return FileProblem(path, str(known.error) + (KEPT_SUFFIX if kept else ""), kept)
        assert known.spec is not None
        owner = self._owner[known.spec.job_id]
        if owner == path:
            return None
        reason = f'job_id "{known.spec.job_id}" is already claimed by {owner}'
        return FileProblem(path, str(JobFileError(path, reason)), False)


def _without_frames(error: JobFileError) -> JobFileError:
    """The error without its traceback and the exception it replaced: kept with the file,
    those would hold the frame that caught it, with every file read in that call, in a
    reference cycle (only the cyclic collector frees it, and never once frozen)."""
    error.__traceback__ = error.__context__ = error.__cause__ = None
    return error


def _same(old: JobSpec, new: JobSpec) -> bool:
    """Equal specs. A trigger is fully determined by (schedule, timezone), so compare
    those rather than trigger objects, which need not define equality."""
    if old.schedule != new.schedule or old.timezone != new.timezone:
        return False
    return old == dataclasses.replace(new, trigger=old.trigger)


def _event(name: str, level: str, file: str, job_id: str | None = None,
           **extra: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"event": name, "level": level, "file": file}
    if job_id is not None:
        event["job_id"] = job_id
    event.update(extra)
    return event
