"""`manage.py create_token <username> [--name NAME]`: print a new API token, once.

Management commands run as the operator of the machine: whoever can run them holds the
database's credentials and the signing key, so they are not asked for Django permissions.
"""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from sessions_app.tokens import token_create


class Command(BaseCommand):
    help = "Create an API token for a user and print it. Only its hash is stored: copy it now."

    def add_arguments(self, parser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="command line", help="What the token is for.")

    def handle(self, *args, username: str, name: str, **options) -> None:
        try:
            user = get_user_model().objects.get_by_natural_key(username)
        except get_user_model().DoesNotExist:
            raise CommandError(f"No user {username!r}.") from None
        _, raw = token_create(user=user, name=name)
        self.stdout.write(raw)
