"""`manage.py asyncapi`: write docs/asyncapi.yaml from the template and the declared message types."""

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from sessions_app.asyncapi import document_text
from sessions_app.message_types import registry


class Command(BaseCommand):
    help = (
        "Generate the AsyncAPI document from sessions_app/asyncapi.template.yaml and the client "
        "message types every installed app declares; --check only compares."
    )
    requires_system_checks = []  # the document is written even while a check fails

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--output", type=Path, default=Path(settings.BASE_DIR) / "docs" / "asyncapi.yaml", help="Where to write."
        )
        parser.add_argument("--check", action="store_true", help="Exit 1 when the file differs; write nothing.")

    def handle(self, *args, output: Path, check: bool, **options) -> None:
        text = document_text(registry())
        current = output.read_text() if output.exists() else None
        if check:
            if current != text:
                raise CommandError(f"{output} is out of date: run `manage.py asyncapi`.")
            self.stdout.write(f"{output} is up to date.")
            return
        if current != text:
            output.write_text(text)
        self.stdout.write(f"Wrote {output}." if current != text else f"{output} was already up to date.")
