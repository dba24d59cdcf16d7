"""Django settings for the floor baseline: only what Channels needs to serve a consumer.

No database, no middleware, no apps but Channels: what the leanest Channels deployment
would carry (bench/baseline_channels.py runs under it).
"""

SECRET_KEY = "bench-floor-only-not-for-deployment-0123456789abcdef"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["channels"]
USE_TZ = True
ASGI_APPLICATION = "bench.baseline_channels.application"
CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
LOGGING_CONFIG = None
