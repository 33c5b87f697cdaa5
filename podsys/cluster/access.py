"""How podsys reaches the cluster over SSH, resolved once from the manifest's `access` section.

The Ansible inventory, `podsys check`'s paramiko connections and the installers' authorized
keys all read this one model, so a key path means the same file everywhere: `~` expands to
the user's home, and a relative path is relative to the manifest's directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from podsys.cluster.schema import Manifest


def resolve_path(value: str | None, base_dir: Path) -> Path | None:
    """A path as the manifest spells it -> absolute: `~` first, then relative to base_dir."""
    if value is None:
        return None
    return (base_dir / Path(value).expanduser()).resolve()


@dataclass(frozen=True)
class SSHAccess:
    user: str
    port: int
    private_key_file: Path | None  # absolute
    known_hosts_file: Path | None  # absolute
    head_name: str
    head_address: str  # where podsys reaches the head: head.ssh_address, else head.address
    via_head: bool  # compute nodes are reached through the head (a jump host), not directly

    @classmethod
    def from_manifest(cls, manifest: Manifest, base_dir: Path) -> "SSHAccess":
        access, head = manifest.access, manifest.head
        return cls(
            user=access.user,
            port=access.port,
            private_key_file=resolve_path(access.private_key_file, base_dir),
            known_hosts_file=resolve_path(access.known_hosts_file, base_dir),
            head_name=head.hostname,
            head_address=str(head.ssh_address or head.address),
            via_head=access.via_head,
        )

    @property
    def public_key_file(self) -> Path | None:
        """<key>.pub next to the private key, as ssh-keygen writes it."""
        if self.private_key_file is None:
            return None
        return self.private_key_file.with_name(self.private_key_file.name + ".pub")

    def jump_host(self, host: str) -> str | None:
        """The head's address when `host` is reached through it, else None."""
        return self.head_address if self.via_head and host != self.head_name else None

    def ssh_options(self) -> list[str]:
        """OpenSSH -o options every connection uses: pinned host keys when a known_hosts file is
        given (never trust on first use)."""
        if self.known_hosts_file is None:
            return []
        return [f"-o UserKnownHostsFile={self.known_hosts_file}", "-o StrictHostKeyChecking=yes"]

    def proxy_command(self) -> str:
        """`ssh -W` through the head with the same user, port, key and known_hosts as the final
        connection, so the hop needs nothing the user has not already configured."""
        jump = ["ssh", "-W", "%h:%p", "-p", str(self.port)]
        if self.private_key_file is not None:
            jump += ["-i", str(self.private_key_file)]
        if self.known_hosts_file is not None:
            jump += ["-o", f"UserKnownHostsFile={self.known_hosts_file}", "-o", "StrictHostKeyChecking=yes"]
        jump.append(f"{self.user}@{self.head_address}")
        return " ".join(jump)
