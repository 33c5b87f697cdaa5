"""Bare-metal provisioning: the head's PXE boot services, installer configs, boot state,
install status, BMC power and installer media.

Kept import-light on purpose: state.py and status.py are stdlib-only so the head can run the
status service without the rest of podsys's dependencies."""
