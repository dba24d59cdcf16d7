"""The example app: a client message type declared outside sessions_app."""

from django.apps import AppConfig


class WorkspaceFilesConfig(AppConfig):
    name = "workspace_files"
    verbose_name = "Workspace files"
