"""The registry's hot statements write what the ORM would, on the suite's database (SQLite, or PostgreSQL)."""

import uuid

import pytest
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from sessions_app import registry_rows
from sessions_app.instances import instance_register_sync
from sessions_app.models import LiveSession, SessionEvent

pytestmark = pytest.mark.django_db(transaction=True)

COLUMNS = [field.column for field in LiveSession._meta.concrete_fields if not field.primary_key]


@pytest.fixture
def instance_id(fresh_process) -> uuid.UUID:
    """A registered instance of a fresh process state, for the rows' foreign key."""
    return instance_register_sync()


def row(instance_id: uuid.UUID, **values) -> dict:
    return {
        "id": uuid.uuid4(),
        "workspace_dir": "/srv/wörkspace",
        "created_at": timezone.now(),
        "channel_name": "specific.abc!def",
        "client_addr": "127.0.0.1:5000",
        "instance_id": instance_id,
        "user_id": None,
        **values,
    }


def stored(session_id: uuid.UUID) -> tuple:
    """The row's columns (all but the key) as the database holds them, no ORM conversion between."""
    quote = connection.ops.quote_name
    columns = ", ".join(quote(column) for column in COLUMNS)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {columns} FROM {quote(LiveSession._meta.db_table)} WHERE id = %s",
            [LiveSession._meta.pk.get_db_prep_value(session_id, connection)],
        )
        return cursor.fetchone()


@pytest.mark.parametrize("resumable", [False, True])
def test_an_inserted_row_is_stored_exactly_as_bulk_create_stores_it(instance_id, resumable):
    values = row(instance_id, resumable=resumable, resume_token_hash="ab" * 32 if resumable else "")
    ours, orms = uuid.uuid4(), uuid.uuid4()
    with transaction.atomic():
        registry_rows.rows_insert([{**values, "id": ours}])
    LiveSession.objects.bulk_create([LiveSession(**{**values, "id": orms})])
    assert stored(ours) == stored(orms)
    assert LiveSession.objects.get(pk=ours).created_at == values["created_at"]


def test_a_delete_removes_exactly_its_rows_and_their_kept_events(instance_id):
    first, second, kept = (row(instance_id) for _ in range(3))
    with transaction.atomic():
        registry_rows.rows_insert([first, second, kept])
    SessionEvent.objects.create(session_id=first["id"], seq=1, event="notice", data={}, sent_at=timezone.now())
    with transaction.atomic():
        registry_rows.rows_delete([first["id"], second["id"]])
        registry_rows.rows_delete([])
    assert list(LiveSession.objects.values_list("id", flat=True)) == [kept["id"]]
    assert not SessionEvent.objects.exists()


def test_a_duplicate_id_raises_the_integrity_error_the_writer_isolates_rows_by(instance_id):
    values = row(instance_id)
    with transaction.atomic():
        registry_rows.rows_insert([values])
    with pytest.raises(IntegrityError), transaction.atomic():
        registry_rows.rows_insert([values])
    assert LiveSession.objects.count() == 1
