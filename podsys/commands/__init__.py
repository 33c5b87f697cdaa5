"""CLI verbs. Each module has `register(app: typer.Typer)`; keep them thin."""
