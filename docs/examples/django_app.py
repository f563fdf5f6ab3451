"""A one-file Django app that archives chat messages through one SyncArchivist.

No project directory: ``configure()`` sets Django up in-process and opens the
archivist once, at startup; every request thread shares it, and it is closed at
interpreter exit (or call ``ARCHIVIST.close()``). Run it:

    .venv/bin/python docs/examples/django_app.py runserver --noreload

(``--noreload``: the autoreloader runs the app in a second process, which would
open a second archivist on the same journal.) Under gunicorn, open it in each
worker (no ``--preload``), since an archivist cannot cross a fork: see
docs/blocking.md.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from typing import TYPE_CHECKING

import django
from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from journal_archivist import (
    MessageRecord,
    Registration,
    SyncArchivist,
    ValidationError,
)
from journal_archivist.backends import SqliteArchive

if TYPE_CHECKING:
    from uuid import UUID

#: The app's archivist, opened by ``configure()``.
ARCHIVIST: SyncArchivist | None = None


def configure(data_dir: str) -> SyncArchivist:
    """Set Django up (once per process) and open the archivist in ``data_dir``."""
    global ARCHIVIST
    if not settings.configured:
        settings.configure(
            DEBUG=False,
            # Unused by this app (no sessions, no signing), but Django wants one.
            SECRET_KEY=os.environ.get("DJANGO_SECRET_KEY") or secrets.token_urlsafe(),
            ROOT_URLCONF=__name__,
            ALLOWED_HOSTS=["localhost", "127.0.0.1", "testserver"],
            INSTALLED_APPS=[],
            MIDDLEWARE=[],
        )
        django.setup()
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    archive = SqliteArchive(os.path.join(data_dir, "archive.db"))
    ARCHIVIST = SyncArchivist.open(
        os.path.join(data_dir, "journal.db"),
        [Registration(name="archive", backend=archive)],
    )
    return ARCHIVIST


@csrf_exempt  # a JSON API for other services, not a browser form
@require_http_methods(["GET", "POST"])
def messages(request: HttpRequest, session: UUID) -> JsonResponse:
    """POST appends one message (durable on return); GET reads the session."""
    assert ARCHIVIST is not None, "call configure() first"
    if request.method == "POST":
        try:
            body = json.loads(request.body or b"{}")
            record = MessageRecord(
                session=session,
                role=str(body.get("role", "")),
                content_md=str(body.get("content", "")),
            )
            ARCHIVIST.append_messages(session, [record])
        except (ValidationError, ValueError, AttributeError) as exc:  # or bad JSON
            return JsonResponse({"error": str(exc)}, status=400)
        return JsonResponse({"message_id": str(record.message_id)}, status=201)
    records = ARCHIVIST.read_session(session)
    return JsonResponse(
        {
            "messages": [
                {"id": str(r.message_id), "role": r.role, "content": r.content_md}
                for r in records
            ]
        }
    )


urlpatterns = [path("sessions/<uuid:session>/messages", messages)]


if __name__ == "__main__":
    from django.core.management import execute_from_command_line

    configure(os.environ.get("ARCHIVIST_DATA", "data"))
    execute_from_command_line(sys.argv)
