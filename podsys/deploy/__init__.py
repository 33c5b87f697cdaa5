"""Deploying: Ansible driven from Python (runner, progress, lock, resume)."""
