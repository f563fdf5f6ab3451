"""A Flask app that archives chat messages through one SyncArchivist.

One ``SyncArchivist`` is opened when the app is created and shared by every
request thread; it is closed at interpreter exit (or call ``close()``). Run it:

    .venv/bin/flask --app 'docs/examples/flask_app.py:create_app("data")' run

    curl -X POST localhost:5000/sessions/$(uuidgen)/messages \\
         -H 'content-type: application/json' -d '{"role": "user", "content": "hi"}'

Under gunicorn, create the app in each worker (no ``--preload``), since an
archivist cannot cross a fork: see docs/blocking.md.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from flask import Flask, request

from journal_archivist import (
    MessageRecord,
    Registration,
    SyncArchivist,
    ValidationError,
)
from journal_archivist.backends import SqliteArchive

if TYPE_CHECKING:
    from uuid import UUID


def create_app(data_dir: str) -> Flask:
    """The app, with its archivist: journal and SQLite archive in ``data_dir``."""
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    archive = SqliteArchive(os.path.join(data_dir, "archive.db"))
    archivist = SyncArchivist.open(
        os.path.join(data_dir, "journal.db"),
        [Registration(name="archive", backend=archive)],
    )
    app = Flask(__name__)
    app.extensions["archivist"] = archivist

    @app.post("/sessions/<uuid:session>/messages")
    def append(session: UUID) -> tuple[dict[str, Any], int]:
        body = request.get_json(silent=True) or {}
        try:
            record = MessageRecord(
                session=session,
                role=str(body.get("role", "")),
                content_md=str(body.get("content", "")),
            )
            archivist.append_messages(session, [record])  # durable on return
        except ValidationError as exc:
            return {"error": str(exc)}, 400
        return {"message_id": str(record.message_id)}, 201

    @app.get("/sessions/<uuid:session>/messages")
    def read(session: UUID) -> dict[str, Any]:
        records = archivist.read_session(session)
        return {
            "messages": [
                {"id": str(r.message_id), "role": r.role, "content": r.content_md}
                for r in records
            ]
        }

    return app
