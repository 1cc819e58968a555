"""{{ cookiecutter.__project_name }}: a queue worker built on QuasiQueue."""

__version__ = "0.1.0"
