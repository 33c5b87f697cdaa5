"""Where node images are built from: the package source the manifest gives its nodes, reached
from the machine podsys runs on (the head, at a site; the lab's host in the lab).

  packages.source: online  -> the upstream mirror (packages.upstream, or the distribution's).
  packages.source: proxy   -> the upstream mirror through packages.proxy when one is set (the
                              same proxy the head's package cache goes through), else directly:
                              the head then reaches upstream itself.
  packages.source: bundle  -> the head's /repo/ (the offline bundle's repository), which the
                              head's boot services serve once deployed.

Never the internet behind the site's back: exactly what the nodes' packages come through."""

from __future__ import annotations

from dataclasses import dataclass

from podsys.cluster.model import Cluster
from podsys.provision.render import PUBLIC_MIRRORS, urls_for


@dataclass(frozen=True)
class ImageSource:
    mirror: str
    apt_options: tuple[str, ...] = ()

    def describe(self) -> str:
        proxy = [o for o in self.apt_options if o.startswith("Acquire::http::Proxy")]
        return self.mirror + (f" via {proxy[0].split(None, 1)[1].strip(chr(34))}" if proxy else "")


def image_source(cluster: Cluster) -> ImageSource:
    packages = cluster.manifest.packages
    upstream = (packages.upstream or PUBLIC_MIRRORS[cluster.manifest.os.distro]).rstrip("/")
    if packages.source == "online":
        return ImageSource(upstream)
    if packages.source == "proxy":
        if packages.proxy:
            return ImageSource(upstream, (f'Acquire::http::Proxy "{packages.proxy.rstrip("/")}/"',))
        return ImageSource(upstream)
    return ImageSource(urls_for(cluster).repo)
