"""The registry's two hot statements, composed once from LiveSession's metadata.

Every session costs one insert and one delete on the group-commit writer's thread. Through
the ORM (`bulk_create`, a queryset's `delete()`) a batch of two inserts and two deletes
took 325 µs of that thread's CPU on the bench machine, against 159 µs for the same
statements on the same cursor: the ORM builds a model instance per row, compiles its SQL
and runs the deletion collector on every batch. Here each statement's SQL is composed once
per database vendor from the model's columns, and every value still goes through its
field's own `get_db_prep_save`, so a row is what `bulk_create` would write
(tests/test_registry_rows.py compares them on SQLite and PostgreSQL).
"""

from collections.abc import Iterable, Sequence
from functools import cache
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.backends.base.base import BaseDatabaseWrapper

from .models import LiveSession

Row = dict[str, Any]


@cache
def _insert_sql(vendor: str) -> str:
    quote = connections[DEFAULT_DB_ALIAS].ops.quote_name  # the same for every connection of a vendor
    fields = LiveSession._meta.concrete_fields
    columns = ", ".join(quote(field.column) for field in fields)
    placeholders = ", ".join(["%s"] * len(fields))
    return f"INSERT INTO {quote(LiveSession._meta.db_table)} ({columns}) VALUES ({placeholders})"


@cache
def _delete_sql(vendor: str, count: int) -> str:
    quote = connections[DEFAULT_DB_ALIAS].ops.quote_name
    table, key = quote(LiveSession._meta.db_table), quote(LiveSession._meta.pk.column)
    return f"DELETE FROM {table} WHERE {key} IN ({', '.join(['%s'] * count)})"


def _prepared(row: Row, db: BaseDatabaseWrapper) -> list[Any]:
    """A row's values in column order, each prepared by its field; defaults for what `row` omits."""
    return [
        field.get_db_prep_save(row[field.attname] if field.attname in row else field.get_default(), db)
        for field in LiveSession._meta.concrete_fields
    ]


def rows_insert(rows: Sequence[Row]) -> None:
    """INSERT these rows (attribute name to value) in the current transaction."""
    if rows:
        db = connections[DEFAULT_DB_ALIAS]  # the thread's own wrapper, not the proxy's lookup per use
        with db.cursor() as cursor:
            cursor.executemany(_insert_sql(db.vendor), [_prepared(row, db) for row in rows])


def rows_delete(session_ids: Iterable[Any]) -> None:
    """DELETE the rows with these ids in the current transaction (events go with them: ON DELETE CASCADE)."""
    db = connections[DEFAULT_DB_ALIAS]
    ids = [LiveSession._meta.pk.get_db_prep_value(session_id, db) for session_id in session_ids]
    if ids:
        with db.cursor() as cursor:
            cursor.execute(_delete_sql(db.vendor, len(ids)), ids)
