"""Hold a real registry lock from another connection, so the server's own calls get stuck in the database."""

import asyncio
import contextlib
import os
import sqlite3
import threading
import uuid
from collections.abc import AsyncIterator, Iterator

import psycopg
from django.db import connection, transaction

from sessions_app.models import ServerInstance

from .polling import wait_until
from .servers import suite_database_url


@contextlib.contextmanager
def sessions_table_locked() -> Iterator[None]:
    """Hold the session table's write lock from outside the server until the block ends, on either registry.

    Every session insert and delete waits (PostgreSQL: up to DATABASE_LOCK_TIMEOUT); the
    instance rows, and so the heartbeat, stay free on PostgreSQL.
    """
    params = connection.settings_dict
    if connection.vendor == "sqlite":
        holder = sqlite3.connect(params["NAME"], isolation_level=None, timeout=5)
        holder.execute("BEGIN IMMEDIATE")
    else:
        holder = psycopg.connect(suite_database_url())
        holder.execute("LOCK TABLE sessions_app_livesession IN EXCLUSIVE MODE")
    try:
        yield
    finally:
        holder.rollback()
        holder.close()


@contextlib.asynccontextmanager
async def instance_locked(instance_id: uuid.UUID) -> AsyncIterator[None]:
    """Lock a ServerInstance row (FOR UPDATE) until the block ends.

    PostgreSQL: the row's heartbeat update, its deletion and every session insert naming it
    (the foreign key share-locks it) wait, up to DATABASE_LOCK_TIMEOUT. SQLite has no row
    locks: the whole database's write lock is held instead.
    """
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        try:
            with transaction.atomic():
                list(ServerInstance.objects.select_for_update().filter(pk=instance_id))
                if connection.vendor == "sqlite":
                    ServerInstance.objects.filter(pk=instance_id).update(pid=os.getpid())  # take the write lock
                locked.set()
                release.wait(timeout=30)
        finally:
            connection.close()

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    await wait_until(locked.is_set, 10, what="the registry lock")
    try:
        yield
    finally:
        release.set()
        await asyncio.to_thread(holder.join, 10)
