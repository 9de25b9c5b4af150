"""The index's database file: one DuckDB file per workspace, shared by every tina process.

DuckDB lets one process at a time open the file for writing, and a reader cannot open it while a
writer holds it. The TUI and the CLI run side by side, so every operation opens a short-lived
connection, retries on the lock with jittered back-off, and closes it again; nothing keeps the file
open across TUI refreshes. A damaged file is named with the way to mend it (it is only a cache).
"""

from __future__ import annotations

import hashlib
import os
import random
import secrets
import stat
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import duckdb

from tina_core.rundir import TinaError
from tina_core.store.schema import SCHEMA, SCHEMA_VERSION, TABLES

DB_NAME = "tina.duckdb"
LOCK_TIMEOUT_S = 5.0
WAIT_NOTICE_S, WAIT_YIELD_S = 0.3, 0.03  # a waiter's notice counts this long; a holder yields this


def _is_lock_error(e: Exception) -> bool:
    msg = str(e).lower()
    # "unique file handle conflict": this process already has the file open another way
    return "lock" in msg or "different configuration" in msg or "file handle conflict" in msg


def sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def sql_ident(s: str) -> str:
    return '"' + s.replace('"', '""') + '"'


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """BEGIN ... COMMIT, rolled back whatever ends it early (any exception, Ctrl-C): a connection
    left inside an open transaction refuses every later BEGIN, and a long-lived reader (the
    cockpit) would then fail every ingest after one bad one."""
    con.execute("BEGIN")
    try:
        yield
    except BaseException:
        try:
            con.execute("ROLLBACK")
        except duckdb.Error:
            pass
        raise
    con.execute("COMMIT")


# What reading a damaged database file raises (a truncated file, garbage inside it).
_DAMAGE_ERRORS = (duckdb.IOException, duckdb.SerializationException, duckdb.InternalException, duckdb.FatalException)


class _Attachments:
    """The process's one in-memory DuckDB instance and the database files attached to it, counted
    so that overlapping sessions (threads, several Store objects) share one attachment and the
    file is detached, its lock released, when the last session ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._instance: duckdb.DuckDBPyConnection | None = None
        self._users: dict[Path, int] = {}

    @staticmethod
    def alias(path: Path) -> str:
        return "ws_" + hashlib.sha1(str(path).encode()).hexdigest()[:16]

    def acquire(self, path: Path) -> duckdb.DuckDBPyConnection:
        path = path.resolve()
        alias = self.alias(path)
        with self._lock:
            if self._instance is None:
                self._instance = duckdb.connect(":memory:")
            if not self._users.get(path):
                self._instance.execute(f"ATTACH {sql_str(str(path))} AS {alias}")
            self._users[path] = self._users.get(path, 0) + 1
            con = self._instance.cursor()
        con.execute(f"USE {alias}")
        return con

    def release(self, path: Path, con: duckdb.DuckDBPyConnection) -> None:
        path = path.resolve()
        con.close()
        with self._lock:
            self._users[path] -= 1
            if not self._users[path] and self._instance is not None:
                del self._users[path]
                self._instance.execute(f"DETACH {self.alias(path)}")


_ATTACHED = _Attachments()


def index_path(home: Path) -> Path:
    """The workspace's index file: ``$TINA_HOME/tina.duckdb``, or with ``$TINA_INDEX_DIR`` a file of
    this workspace's in that folder. A workspace on a cluster's shared filesystem keeps its index on
    each machine's local disk that way: DuckDB's lock is never asked of the network filesystem, and
    no file is written from two machines (the index is a cache of the run directories)."""
    local = os.environ.get("TINA_INDEX_DIR")
    if not local:
        return Path(home) / DB_NAME
    key = hashlib.sha1(str(Path(home).resolve()).encode()).hexdigest()[:12]
    return Path(local).expanduser().resolve() / f"tina-{key}.duckdb"


class Database:
    """Connections to one workspace's index file. Holds none between calls."""

    def __init__(self, home: Path):
        self.home = Path(home)
        self.path = index_path(self.home)
        self._waiting = self.path.with_name(self.path.name + ".waiting")  # pid of a process waiting for the lock
        self._con: duckdb.DuckDBPyConnection | None = None
        self._batch = 0          # depth of batch() blocks: their connection is let go by the outermost
        self._file_id: str | None = None  # the index file this process has checked the schema of
        self._generation = 0              # ...and the count of ingests it has seen written to it
        # what was done to the file unasked (set aside) is said through this, once
        self.on_note: Callable[[str], None] = lambda text: print(f"tina: note: {text}", file=sys.stderr, flush=True)

    def _new_file(self, con: duckdb.DuckDBPyConnection, *, known: bool) -> None:
        """The index file is not the one this process knew (first open, or ``known``: it was
        deleted, replaced or rebuilt since, or emptied for another schema version): subclasses
        forget what they knew of it, and fill it again with what they had put in the old one."""

    # --- connections ---------------------------------------------------------------------------
    def _open(self) -> duckdb.DuckDBPyConnection:
        """A connection with the workspace file attached and in use. Starting a DuckDB instance
        costs tens of milliseconds; attaching a file to a running one costs about one, so the
        process keeps one in-memory instance and attaches the file per session. Detaching releases
        the file lock just as closing a connection did."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._let_waiter_in()
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        delay = 0.005
        while True:
            try:
                con = _ATTACHED.acquire(self.path)
                break
            except duckdb.Error as e:
                if not _is_lock_error(e):
                    if self._set_aside():
                        continue  # a new index takes its place
                    raise TinaError(f"cannot open {self.path}: {e} (try `tina ingest --rebuild`)") from e
                if time.monotonic() >= deadline:
                    raise TinaError(f"{self.path} is busy (another tina process holds it); try again") from e
                self._waiting.write_text(str(os.getpid()))
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.05)
        try:
            with self._damage_said(con):
                self._check_file(con)
        except BaseException:
            _ATTACHED.release(self.path, con)
            raise
        return con

    def _set_aside(self) -> bool:
        """An index file that cannot be one (empty: the disk filled before its first write; a
        directory, or anything else but a regular file) is renamed out of the way, with a note, and
        a new index is built in its place: it is only a cache of the run directories. A file with
        content is left alone (another DuckDB version's index is one): `tina ingest --rebuild`."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return False
        regular = stat.S_ISREG(st.st_mode)
        if regular and st.st_size > 0:
            return False
        what = "empty (0 bytes)" if regular else "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        aside = self.path.with_name(f"{self.path.name}.unusable-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return True  # another process set it aside first
        except OSError:
            return False
        self.on_note(f"{self.path} was {what}, not an index: set aside as {aside.name}; the index is built "
                     "again from the run directories")
        return True

    def _check_file(self, con: duckdb.DuckDBPyConnection) -> None:
        """Is the file still the one this process knows? Each index file carries a random id (a
        rebuild draws a new one) and a count of the ingests written to it. A deleted file comes
        back empty from ATTACH, another file has another id, an older copy a lower count: either
        way the schema is made sure of, everything known of the old file forgotten and what this
        process had ingested ingested again, so a long-lived reader (the cockpit) recovers by
        itself before it answers anything from the new file."""
        try:
            row = con.execute("SELECT id, generation FROM index_id").fetchone()
        except duckdb.CatalogException:
            row = None
        if row is not None and row[0] == self._file_id and row[1] >= self._generation:
            self._generation = row[1]
            return
        known, self._file_id = self._file_id, None
        self._create(con)
        row = con.execute("SELECT id, generation FROM index_id").fetchone()
        self._file_id, self._generation = row or self._new_id(con)
        self._new_file(con, known=known is not None)

    def _new_id(self, con: duckdb.DuckDBPyConnection) -> tuple[str, int]:
        """Give the file (a new index) its id; its count of ingests starts at 0."""
        con.execute("DELETE FROM index_id")
        row = (secrets.token_hex(8), 0)
        con.execute("INSERT INTO index_id VALUES (?, ?)", list(row))
        return row

    def _wrote(self, con: duckdb.DuckDBPyConnection) -> None:
        """Count an ingest written to the file (see _check_file)."""
        row = con.execute("UPDATE index_id SET generation = generation + 1 RETURNING generation").fetchone()
        if row is not None:
            self._generation = row[0]

    @contextmanager
    def _damage_said(self, con: duckdb.DuckDBPyConnection) -> Iterator[None]:
        """A damaged file attaches fine and fails once the damaged part is read: say so, and how
        to mend it (as a TinaError, which every reader answers by showing the run directories),
        and end the transaction it broke, so the rest of a refresh gets that message too."""
        try:
            yield
        except duckdb.Error as e:
            # a bad checksum comes as a bare duckdb.Error
            if not isinstance(e, _DAMAGE_ERRORS) and type(e) is not duckdb.Error:
                raise
            try:
                con.execute("ROLLBACK")
            except duckdb.Error:
                pass
            raise TinaError(f"cannot read {self.path}: {e} (try `tina ingest --rebuild`)") from e

    def _create(self, con) -> None:
        con.execute(SCHEMA)
        if con.execute("SELECT max(schema_version) FROM meta").fetchone()[0] != SCHEMA_VERSION:
            with transaction(con):
                for t in (*TABLES, "meta"):
                    con.execute(f"DROP TABLE IF EXISTS {t} CASCADE")
                con.execute(SCHEMA)
                con.execute("INSERT INTO meta VALUES (?)", [SCHEMA_VERSION])
                con.execute("DELETE FROM index_id")  # emptied: a new index

    def _let_waiter_in(self) -> None:
        """A process that just let the file go would take it straight back before a waiting one
        polls again: when another process said it is waiting, give it a moment first."""
        try:
            if time.time() - os.stat(self._waiting).st_mtime < WAIT_NOTICE_S \
                    and self._waiting.read_text() != str(os.getpid()):
                time.sleep(WAIT_YIELD_S)
        except (FileNotFoundError, ValueError):
            pass

    @contextmanager
    def session(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One connection for several calls; the file is let go when it ends (or when the
        ``batch`` it is in ends)."""
        if self._con is not None:
            with self._damage_said(self._con):
                yield self._con
            return
        self._con = self._open()
        try:
            with self._damage_said(self._con):
                yield self._con
        finally:
            if not self._batch:
                self._let_go()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """The calls inside share one connection, opened by the first that needs the database: a
        cockpit refresh whose answers are all kept never touches the file (nor locks out others)."""
        opened_before = self._con is not None  # by an enclosing session, which lets it go itself
        self._batch += 1
        try:
            yield
        finally:
            self._batch -= 1
            if not self._batch and not opened_before and self._con is not None:
                self._let_go()

    def _let_go(self) -> None:
        con, self._con = self._con, None
        if con is not None:
            _ATTACHED.release(self.path, con)

    def _query(self, sql: str, params: list | tuple = ()) -> list[tuple]:
        with self.session() as con:
            return con.execute(sql, params).fetchall()

