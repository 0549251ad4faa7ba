"""The gateway's ``SubscriptionStore`` in SQLite (stdlib), the embedded default: one file, written on each
change, read once at start. Several sipfed instances for one domain would share these tables in PostgreSQL
instead (README, XMPP federation): the calls are the same five."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from proxy.xmpp.policy import XmppConfig
from proxy.xmpp.store import MemoryStore, SubscriptionStore, Watch, Watcher, to_json, watch_from_json, watcher_from_json

SCHEMA = """
CREATE TABLE IF NOT EXISTS watches (key TEXT PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS watchers (key TEXT PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS invites (sip_user TEXT NOT NULL, jid TEXT NOT NULL, PRIMARY KEY (sip_user, jid));
"""


class SqliteStore:
    """Subscriptions and invitations in a SQLite file (WAL: a write does not wait for a reader)."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self.db = sqlite3.connect(self.path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def load(self) -> tuple[list[Watch], list[Watcher], set[tuple[str, str]]]:
        watches = [watch_from_json(row[0]) for row in self.db.execute("SELECT record FROM watches")]
        watchers = [watcher_from_json(row[0]) for row in self.db.execute("SELECT record FROM watchers")]
        invites = {(row[0], row[1]) for row in self.db.execute("SELECT sip_user, jid FROM invites")}
        return watches, watchers, invites

    def put_watch(self, watch: Watch) -> None:
        self.db.execute("INSERT OR REPLACE INTO watches VALUES (?, ?)", (json.dumps(watch.key), to_json(watch)))

    def drop_watch(self, key: tuple[str, str]) -> None:
        self.db.execute("DELETE FROM watches WHERE key = ?", (json.dumps(list(key)),))

    def put_watcher(self, watcher: Watcher) -> None:
        self.db.execute("INSERT OR REPLACE INTO watchers VALUES (?, ?)", (json.dumps(watcher.key), to_json(watcher)))

    def drop_watcher(self, key: tuple[str, str]) -> None:
        self.db.execute("DELETE FROM watchers WHERE key = ?", (json.dumps(list(key)),))

    def add_invite(self, sip_user: str, jid: str) -> None:
        self.db.execute("INSERT OR IGNORE INTO invites VALUES (?, ?)", (sip_user, jid))

    def close(self) -> None:
        self.db.close()


def open_store(config: XmppConfig, config_path: Path) -> SubscriptionStore:
    """``[xmpp] store``: a SQLite file (default ``xmpp-subscriptions.sqlite3`` beside the config file), or
    ``:memory:`` for nothing kept across a restart."""
    if config.store is not None and config.store.name == ":memory:":
        return MemoryStore()
    return SqliteStore(config.store or config_path.parent / "xmpp-subscriptions.sqlite3")
