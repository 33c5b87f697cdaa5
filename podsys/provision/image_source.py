"""Where node images are built from: the package source the manifest gives its nodes, reached
from the machine podsys runs on (the head, at a site; the lab's host in the lab).

  packages.source: online  -> the upstream mirror (packages.upstream, or the distribution's;
                              Rocky images also EPEL: packages.epel, or Fedora's).
  packages.source: proxy   -> the upstream mirror through packages.proxy when one is set (the
                              same proxy the head's package cache goes through), else directly:
                              the head then reaches upstream itself.
  packages.source: bundle  -> the head's /repo/ (the offline bundle's repository), which the
                              head's boot services serve once deployed.

Vendor packages (GPU and InfiniBand images) come the same way: from the vendor repositories
the package plan names (stack_packages.repositories), through packages.proxy as an HTTPS CONNECT
proxy when one is set (stack_packages.vendor_proxy_options, the options the package_source role
gives nodes for the head's cache); with a bundle from the bundle's own repository, which holds
the vendor .debs (pool/vendor) and is signed by the site key.

Never the internet behind the site's back: exactly what the nodes' packages come through."""

from __future__ import annotations

from dataclasses import dataclass

from podsys.bundle.repo import PUBLIC_KEY_ASC
from podsys.cluster.model import Cluster
from podsys.cluster.stack_packages import Repository, vendor_proxy_options
from podsys.provision.image_build import ImageError
from podsys.provision.image import EPEL_MIRROR, BuildRepo, ImageSpec, dnf_distribution_repos
from podsys.provision.render import PUBLIC_MIRRORS, urls_for


@dataclass(frozen=True)
class ImageSource:
    mirror: str
    apt_options: tuple[str, ...] = ()
    source: str = "online"  # packages.source
    proxy: str = ""  # packages.proxy (proxy source): the vendor repositories and their keys too
    bundle_fingerprint: str | None = None  # packages.bundle_fingerprint: the bundle's site key
    epel: str = EPEL_MIRROR  # Rocky images: EPEL's tree (slurm, node_exporter, dkms)
    # The deploy ramdisk is Debian's whatever the nodes run (podsys/provision/ramdisk.py): for
    # Ubuntu and Rocky sites, Debian's public mirror through the same proxy.
    ramdisk_mirror: str = ""

    @property
    def ramdisk_source(self) -> str:
        return self.ramdisk_mirror or self.mirror

    def build_repositories(self, spec: ImageSpec) -> tuple[BuildRepo, ...]:
        """apt: the repositories the image's vendor packages come from (none without vendor
        packages; the mirror is mmdebstrap's own). dnf: every repository the build reads, the
        distribution's and EPEL first, then the vendor's."""
        if spec.family == "dnf":
            return self._dnf_repositories(spec)
        if not spec.vendor_packages:
            return ()
        if self.source == "bundle":
            # The bundle's repository (podsys/bundle/build.py: pool/vendor, podsys-site.asc), as
            # the package_source role's bundle mode names it for nodes.
            return (BuildRepo("bundle", self.mirror, spec.suite or "", "main", f"{self.mirror}/{PUBLIC_KEY_ASC}",
                              self.bundle_fingerprint),)
        return tuple(map(_from_plan, spec.repositories))

    def _dnf_repositories(self, spec: ImageSpec) -> tuple[BuildRepo, ...]:
        if self.source == "bundle":
            # podsys/bundle/build.py writes an apt repository only.
            raise ImageError(f"{spec.os_key} images cannot be built from an offline bundle: bundles carry apt "
                             "repositories only (use packages.source: proxy or online)")
        try:
            base = dnf_distribution_repos(spec, self.mirror, self.epel)
        except ValueError as exc:
            raise ImageError(str(exc)) from None
        vendor = tuple(map(_from_plan, spec.repositories)) if spec.vendor_packages else ()
        return base + vendor

    def build_apt_options(self, spec: ImageSpec, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
        """Every apt option of `spec`'s build: the source's, `extra` (the command line's), the
        vendor repositories' proxy."""
        return (*self.apt_options, *extra, *self.vendor_apt_options(spec))

    def vendor_apt_options(self, spec: ImageSpec) -> tuple[str, ...]:
        """apt options the build adds for the vendor repositories (their proxy)."""
        if self.source == "bundle" or not spec.vendor_packages:
            return ()
        return tuple(vendor_proxy_options(spec.repositories, self.proxy))

    def describe(self) -> str:
        proxy = [o for o in self.apt_options if o.startswith("Acquire::http::Proxy")]
        return self.mirror + (f" via {proxy[0].split(None, 1)[1].strip(chr(34))}" if proxy else "")


def _from_plan(repo: Repository) -> BuildRepo:
    """The plan's repository as the build reaches it directly (apt reads its suite, dnf its
    gpgcheck settings; a dnf repository's suite is empty)."""
    return BuildRepo(repo.name, repo.url, repo.suite, "", repo.key_url, repo.fingerprint, repo.gpgcheck,
                     repo.repo_gpgcheck)


def image_source(cluster: Cluster) -> ImageSource:
    packages = cluster.manifest.packages
    distro = cluster.manifest.os.distro
    upstream = (packages.upstream or PUBLIC_MIRRORS[distro]).rstrip("/")
    ramdisk = "" if distro == "debian" else PUBLIC_MIRRORS["debian"]
    epel = (packages.epel or EPEL_MIRROR).rstrip("/")
    if packages.source == "online":
        return ImageSource(upstream, ramdisk_mirror=ramdisk, epel=epel)
    if packages.source == "proxy":
        if packages.proxy:
            proxy = f'{packages.proxy.rstrip("/")}/'
            return ImageSource(upstream, (f'Acquire::http::Proxy "{proxy}"',), "proxy", proxy, ramdisk_mirror=ramdisk,
                               epel=epel)
        return ImageSource(upstream, (), "proxy", ramdisk_mirror=ramdisk, epel=epel)
    return ImageSource(urls_for(cluster).repo, (), "bundle", bundle_fingerprint=packages.bundle_fingerprint)
