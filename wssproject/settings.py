"""Settings for wssproject, read from the environment with safe defaults for a laptop.

Every knob is listed, with its default, in the README's configuration table.
The embedded default is SQLite in the project folder and the in-memory channel layer;
DATABASE_URL and REDIS_URL switch to PostgreSQL and channels-redis.
"""

import os
import warnings
from pathlib import Path

import dj_database_url

from sessions_app import conf as wss_conf
from wssproject.secretkey import secret_key_load_or_create

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    """Read a boolean: 1/true/yes/on are true, 0/false/no/off are false."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{name}={raw!r} is not a boolean (use 1/0, true/false, yes/no, on/off)")


def env_list(name: str, default: list[str]) -> list[str]:
    """Read a comma-separated list; blank items are dropped."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_number(name: str, default: float, cast: type = int) -> float:
    """Read an int or float."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return cast(raw)
    except ValueError as error:
        raise ValueError(f"{name}={raw!r} is not a number") from error


def env_setting(name: str) -> object:
    """Read one of the app's WSS_ knobs, parsed as its default in sessions_app.conf.DEFAULTS is."""
    default = wss_conf.DEFAULTS[name]
    if isinstance(default, bool):
        return env_bool(name, default)
    if isinstance(default, list):
        return env_list(name, list(default))
    if isinstance(default, int):
        return int(env_number(name, default))
    if isinstance(default, float):
        return env_number(name, default, float)
    return os.environ.get(name, default)


# Safe by default (docs/security.md): debug only when asked for (`make run` asks), and never
# a public signing key: without DJANGO_SECRET_KEY, a random key generated on first use and
# kept in DJANGO_SECRET_KEY_FILE (mode 0600, git-ignored).
DEBUG = env_bool("DJANGO_DEBUG", False)
SECRET_KEY_FILE = Path(os.environ.get("DJANGO_SECRET_KEY_FILE", "") or BASE_DIR / ".secret_key")
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "") or secret_key_load_or_create(SECRET_KEY_FILE)

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "sessions_app.apps.WssAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    "rest_framework",
    "sessions_app",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "wssproject.urls"
ASGI_APPLICATION = "wssproject.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# The registry. SQLite is tuned for many short writes from one process: WAL lets the
# admin read while the server writes, synchronous=NORMAL is durable across process
# crashes (not power loss), and IMMEDIATE transactions avoid lock-upgrade deadlocks.
DATABASE_URL = os.environ.get("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}")
DATABASES = {"default": dj_database_url.parse(DATABASE_URL)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
    # A file, not pytest-django's in-memory default, so live-server tests can share it.
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / ".test-db.sqlite3")}
else:
    # Persistent connections: a thread that writes the registry reuses its connection between
    # calls in quick succession (the registry writer closes it after 2 s idle).
    DATABASES["default"]["CONN_MAX_AGE"] = env_number("DATABASE_CONN_MAX_AGE", 600)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    # Bounded calls: a hung query or a silent peer must surface as an error, not a thread
    # stuck forever. The server cancels a statement (or a lock wait) that runs too long;
    # TCP keepalives notice a database host that vanished without a reset. libpq knobs, in ms
    # for the timeouts (0 turns one off, e.g. for a long `migrate`).
    statement_ms = int(env_number("DATABASE_STATEMENT_TIMEOUT", 5, float) * 1000)
    lock_ms = int(env_number("DATABASE_LOCK_TIMEOUT", 2, float) * 1000)
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "connect_timeout": int(env_number("DATABASE_CONNECT_TIMEOUT", 5)),
            "options": f"-c statement_timeout={statement_ms} -c lock_timeout={lock_ms}",
            "keepalives": 1,
            "keepalives_idle": int(env_number("DATABASE_KEEPALIVES_IDLE", 10)),
            "keepalives_interval": int(env_number("DATABASE_KEEPALIVES_INTERVAL", 5)),
            "keepalives_count": int(env_number("DATABASE_KEEPALIVES_COUNT", 3)),
            # Keepalives probe only an idle link; this bounds bytes sent and never acknowledged
            # (a host that vanished mid-query), which TCP would otherwise retry for ~15 minutes.
            "tcp_user_timeout": int(env_number("DATABASE_TCP_USER_TIMEOUT", 30, float) * 1000),
        }
    )

REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "sessions_app.layers.RedisChannelLayer",
            "CONFIG": {
                # redis-py 8 reads with a 5 s socket timeout by default, the same 5 s that
                # channels-redis blocks in BZPOPMIN: an idle consumer's read then times out
                # and the exception kills its connection (1011). Read longer than the block.
                "hosts": [{"address": REDIS_URL, "socket_timeout": 15}],
                "prefix": os.environ.get("WSS_REDIS_PREFIX", "wss"),
            },
        }
    }
else:
    # Channels' layer, minus a walk over every channel on each receive (sessions_app/layers.py).
    CHANNEL_LAYERS = {"default": {"BACKEND": "sessions_app.layers.InMemoryChannelLayer"}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# Serve straight from the apps' static folders: no collectstatic step before daphne starts.
WHITENOISE_USE_FINDERS = True
# Served from the finders, STATIC_ROOT exists only after a collectstatic; WhiteNoise would
# warn at every start that it is missing.
warnings.filterwarnings("ignore", message="No directory at: ", category=UserWarning)
WHITENOISE_AUTOREFRESH = DEBUG

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# WSS_LOG_FORMAT=json writes one JSON object per line, with the event fields as keys.
WSS_LOG_FORMAT = os.environ.get("WSS_LOG_FORMAT", "plain").strip().lower()
if WSS_LOG_FORMAT not in {"plain", "json"}:
    raise ValueError(f"WSS_LOG_FORMAT={WSS_LOG_FORMAT!r} must be plain or json")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"()": "sessions_app.logqueue.Formatter", "format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        },
    },
    # Formatted and written on a thread, not on the event loop (sessions_app/logqueue.py).
    "handlers": {"console": {"()": "sessions_app.logqueue.ThreadedStreamHandler", "formatter": WSS_LOG_FORMAT}},
    "loggers": {
        # Not propagated: daphne configures the root logger too, which would print each line twice.
        "sessions_app": {"handlers": ["console"], "level": os.environ.get("WSS_LOG_LEVEL", "INFO"), "propagate": False},
    },
}

# --- wss-sessions: app knobs, all under WSS_, read by sessions_app.conf ------------------
# Each is stated once, with its default, in sessions_app.conf.DEFAULTS (and the README's
# table), and read here from the environment variable of the same name.
globals().update({name: env_setting(name) for name in wss_conf.DEFAULTS})

# The sessions API (/api/sessions): users with the model permissions the admin asks for
# (view to read, delete to terminate), by bearer token (sessions_app.authentication, which
# looks tokens up with sessions_app.tokens.token_authenticate) or the admin's cookie.
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "sessions_app.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["sessions_app.permissions.ModelPermissions"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
}

# --- Security (docs/security.md): cookies over TLS, masked settings ---------------------------
# Behind a TLS-terminating proxy: session and CSRF cookies only over HTTPS. The redirect to
# HTTPS and HSTS belong to that proxy (docs/security.md, `check --deploy`).
if env_bool("DJANGO_HTTPS", False):
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True
# Error pages (debug, and the e-mailed reports) mask URLs with credentials and every secret.
DEFAULT_EXCEPTION_REPORTER_FILTER = "sessions_app.reporting.CredentialMaskingFilter"
