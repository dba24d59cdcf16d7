"""The project's settings with the broken app installed."""

from wssproject.settings import *  # noqa: F403
from wssproject.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.msgapp_duplicate"]
