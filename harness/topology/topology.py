"""The standard topology: one internal network per run, a DNS container and the MTA roles, each on
a static address so zones can be rendered before anything starts."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import io
import ipaddress
import json
import os
import random
import re
import shlex
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
from docker.errors import APIError, DockerException, NotFound
from docker.types import EndpointConfig, IPAMConfig, IPAMPool
from testcontainers.core.container import DockerContainer
from testcontainers.core.network import Network

from harness.dns.dnssec import ZoneSigner
from harness.dns.preflight import wait_until_resolving
from harness.dns.zones import NS_HOST
from harness.errors import ConfigurationError, ContainerExitedError, InfrastructureError
from harness.mta.base import COMPLAINT, TLS_CA, TLS_CERT, TLS_DIR, TLS_KEY, TlsOffer
from harness.report.progress import Progress
from harness.scenario.model import POLICY_ROLE, RESOLVER_ROLE, UNREACHABLE_ROLE, Dnssec, MtaSts, RoleTls
from harness.tls.ca import Credentials, RunTls
from harness.topology.engine import ENGINE_CLIENT
from harness.topology.images import ImageStore
from harness.topology.labels import ROLE_LABEL, remove_run, run_labels
from harness.topology.mta import IMPLEMENTATIONS, MtaImplementation
from harness.topology.readiness import wait_for_greeting, wait_for_listener
from harness.topology.shell import ContainerShell

DNS_ROLE = "dns"
# A scenario with dnssec: the validating resolver (Unbound, in the dns image) the MTAs then use
# (RESOLVER_ROLE).
RESOLVER_HOSTNAME = "resolver.harness.test"
# Where the resolver container reads its configuration (compose/dns/resolver-start).
RESOLVER_CONF_PATH = "/etc/unbound/harness/unbound.conf"
# A scenario with mta_sts: the policy host (POLICY_ROLE: mta-sts.<domain>, openssl s_server in the dns
# image). Where it serves from (compose/dns/policy-start): the policy is <root>/.well-known/mta-sts.txt.
POLICY_ROOT = "/srv/mta-sts"
POLICY_PATH = f"{POLICY_ROOT}/.well-known/mta-sts.txt"
POLICY_PORT = 443
# Host part of each role's address in the run's /24; the gateway (.1) is where the scenario client appears.
HOST_OFFSETS = {DNS_ROLE: 2, RESOLVER_ROLE: 3, POLICY_ROLE: 4, "mx": 10, "relay": 11, "nomail": 12}
# Private /24s for run networks: 172.28.0.0/14 is rarely routed on a LAN, and the engine refuses
# overlaps with its other networks, so two runs at once simply pick again.
SUBNET_POOL = ipaddress.IPv4Network("172.28.0.0/14")
READY_TIMEOUT_S = 30.0
# Bounds on every container of a run. Measured during the bundled matrix on three implementations at
# once (-j 3): an MTA peaks at 15 MB and 21 processes, the dns container at 40 MB (30 MB of it page
# cache). A runaway MTA (a mail loop, a configuration that forks without end) is killed at the bound
# instead of taking the engine's machine down with it (while starting: an infrastructure error, never a
# configuration one, see start_roles). Swap is not a way around the memory bound.
MEMORY_LIMIT = "256m"
PIDS_LIMIT = 256
# What NSD needs: switch to user nsd; dns-start and dns-reload (root) signal it (KILL).
DNS_CAPABILITIES = ("KILL", "SETGID", "SETUID")
# Ports 25 and 53 are bound without NET_BIND_SERVICE: in the container's own network namespace every
# port is unprivileged (Docker 20.10 and later do this by default; said here for the engines that don't).
UNPRIVILEGED_PORTS = {"net.ipv4.ip_unprivileged_port_start": "0"}
# setuid/setgid bits and file capabilities give a process nothing more (where the MTA allows it).
NO_NEW_PRIVILEGES = "no-new-privileges"
# An MTA role's container runs its image's command only once this file is absent (and its capture
# listens). A fault step that starts the container again (a new network namespace, a new capture file)
# closes the gate first and opens it once the harness has kept the last file's contents and follows
# the new one (HopCapture.resume): until then nothing listens on port 25, so no session with the role
# can happen unseen. At the first start the file does not exist.
START_GATE = "/.mailflow-start-gate"
# Every MTA role's hop capture runs in the role's own container (harness.observe.capture), not in a
# container of its own beside it: a companion container cost the engine about 0.5 CPU-s to start and
# remove (measured), and a bundled matrix started 51. Its entrypoint, as root, before anything else:
# the neighbour table tuned (ARP_RETRANS_MS), tcpdump started and listening, then the start gate, then
# the image's command under setpriv, with a bounding set of the MTA's own capabilities and nothing
# inheritable: the MTA and all it runs (a scenario's configuration can run programs) never have the
# capture's. tcpdump drops them itself: it switches to user "tcpdump" once the file is open.
CAPTURE_DIR = "/capture"
CAPTURE_FILE = f"{CAPTURE_DIR}/smtp.pcap"
CAPTURE_LOG = f"{CAPTURE_DIR}/tcpdump.log"
CAPTURE_PID = f"{CAPTURE_DIR}/tcpdump.pid"
# A container started again (a fault step) keeps its last start's capture under this suffix.
PREVIOUS = ".previous"
# NET_RAW: the packet socket; NET_ADMIN: the neighbour table; CHOWN, SETUID, SETGID: tcpdump hands its
# file to user "tcpdump" and switches to it; SETPCAP: setpriv's bounding set.
CAPTURE_CAPS = ("CHOWN", "NET_ADMIN", "NET_RAW", "SETGID", "SETPCAP", "SETUID")
# A neighbour that does not answer ARP (a stopped or disconnected role, a scenario's unreachable address)
# fails a connection with "No route to host" after 3 probes this far apart, not the kernel's 1 s apart:
# the same error, 0.6 s after the SYN instead of 3 s, on a bridge where a live container answers in well
# under a millisecond. Set on every interface but lo, again on one a reconnected role gets.
ARP_RETRANS_MS = 200
TUNE_NEIGHBOURS = ('for dev in $(ls /sys/class/net); do [ "$dev" = lo ] || '
                   f'ip ntable change name arp_cache dev "$dev" retrans {ARP_RETRANS_MS}; done')
# tcpdump, on every interface of the namespace ("any": no promiscuous mode), whole packets (-s: the
# largest IPv4 packet, an offload "super packet", plus the cooked header), each written as it arrives
# (-U) and handed over as it arrives (--immediate-mode: in blocks a packet reached the file about
# 500 ms late), with a 16 MiB ring (-B: 2 MiB lost packets in the bundled matrix, 16 MiB none of
# 3951), no name lookups (-n). Port 25 and ARP: a host that asks for an address nothing answers never
# puts a SYN on the wire, and its unanswered requests show that it tried (hops.unanswered_requests).
TCPDUMP = ("tcpdump -i any -s 65560 -B 16384 -U -n --immediate-mode "
           f"-w {CAPTURE_FILE} 'tcp port 25 or arp' 2>{CAPTURE_LOG} &")
_CAPTURE_START = f"""set -eu
mkdir -p {CAPTURE_DIR}
for f in {CAPTURE_FILE} {CAPTURE_LOG}; do if [ -e "$f" ]; then mv -f "$f" "$f{PREVIOUS}"; fi; done
{TUNE_NEIGHBOURS}
{TCPDUMP}
p=$!
echo "$p" >{CAPTURE_PID}
until grep -q 'listening on' {CAPTURE_LOG}; do
    case $(cut -d' ' -f3 /proc/$p/stat 2>/dev/null || echo X) in
        Z|X) echo "the hop capture (tcpdump) ended before it listened:" >&2; cat {CAPTURE_LOG} >&2; exit 125 ;;
    esac
    sleep 0.01
done
while [ -e {START_GATE} ]; do sleep 0.02; done
exec "$@"
"""
_image_commands: dict[str, list[str]] = {}
_image_commands_lock = threading.Lock()


@dataclass(frozen=True)
class HostPlan:
    role: str
    hostname: str
    mta: MtaImplementation | None  # None for the dns role
    config_dir: Path | None
    settings: Mapping[str, str] = field(default_factory=dict)
    like: str | None = None  # an added role behaves like this standard role
    tls: RoleTls | None = None  # the role offers STARTTLS (its certificate issued when it starts)

    @property
    def base_role(self) -> str:
        return self.like or self.role

    @property
    def tls_offer(self) -> TlsOffer | None:
        if self.tls is None:
            return None
        return TlsOffer(self.hostname, self.tls.require, self.tls.outbound)


@dataclass(frozen=True)
class TopologyPlan:
    hosts: tuple[HostPlan, ...]
    # Signed zones: a resolver role runs, with keys made for the run (None: no DNSSEC).
    dnssec: Dnssec | None = None
    # A destination's MTA-STS policy: a policy host runs (None: no MTA-STS).
    mta_sts: MtaSts | None = None

    @property
    def infrastructure(self) -> tuple[str, ...]:
        """The roles that run no MTA (the dns image's)."""
        return tuple(h.role for h in self.hosts if h.mta is None)


@dataclass(frozen=True)
class ZoneSetup:
    """What the dns container serves: file name -> content, under /etc/nsd/harness/."""

    files: Mapping[str, str]
    probe_zone: str  # a zone whose SOA tells the server is answering
    # The validating resolver's unbound.conf (a scenario with dnssec:), else None.
    resolver_conf: str | None = None


@dataclass(frozen=True)
class RoleChange:
    """A scenario's change to one role, for the implementation under test."""

    config_dir: Path | None = None
    settings: Mapping[str, str] = field(default_factory=dict)
    like: str | None = None
    mta: str | None = None  # run this role on another implementation than the one under test
    tls: RoleTls | None = None


def standard_plan(compose_dir: Path, hostnames: Mapping[str, str], *, mta: str = "postfix",
                  changes: Mapping[str, RoleChange] | None = None, dnssec: Dnssec | None = None,
                  mta_sts: MtaSts | None = None) -> TopologyPlan:
    changes = changes or {}
    hosts = [HostPlan(DNS_ROLE, hostnames[DNS_ROLE], None, None)]
    if dnssec is not None:
        hosts.append(HostPlan(RESOLVER_ROLE, RESOLVER_HOSTNAME, None, None))
    if mta_sts is not None:
        # Its certificate is issued with the MTAs' (create_network), for the name RFC 8461 fetches from.
        hosts.append(HostPlan(POLICY_ROLE, f"mta-sts.{mta_sts.domain}", None, None,
                              tls=RoleTls(POLICY_ROLE, mta_sts.certificate, require=False)))
    roles = list(IMPLEMENTATIONS[mta].roles) + [r for r in changes if r not in IMPLEMENTATIONS[mta].roles]
    for role in roles:
        change = changes.get(role, RoleChange())
        impl = IMPLEMENTATIONS[change.mta or mta]
        base = change.like or role
        hosts.append(HostPlan(role, hostnames.get(role, f"{role}.hosts.test"), impl,
                              change.config_dir or impl.default_config(compose_dir, base),
                              dict(change.settings), change.like, change.tls))
    return TopologyPlan(tuple(hosts), dnssec, mta_sts)


def fresh_archive(files: Iterable[tuple[str, bytes, int]], *, age_s: int = 0) -> bytes:
    """A tar stream of (path, content, mode) files, each with the current time (less ``age_s`` seconds) as
    its mtime (NSD skips a zone file whose mtime is 1970, or did not change on a reload)."""
    buffer = io.BytesIO()
    now = time.time() - age_s
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, content, mode in files:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(content), now, mode
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


@dataclass
class Host:
    role: str
    hostname: str
    address: str
    image: str
    mta: str | None
    container: DockerContainer
    # What the implementation's own configuration check said about this role (warnings), once started.
    check_warnings: tuple[str, ...] = ()
    # The greeting code that says the role is ready (220; 521 for a host that accepts no mail).
    ready_code: int = 220
    # What start_roles ran in the container before its first greeting (resolv.conf, the MTA's companion
    # daemons): run again whenever the container starts again (redo_setup).
    setup_commands: tuple[tuple[str, ...], ...] = ()
    # Whether the container's entrypoint waits at START_GATE (every MTA role's does).
    start_gate: bool = False
    # The prefix (``confined``) every command of the harness in the container runs under: an MTA role's
    # runs with the MTA's own capabilities, never the capture's (its queue listings run the MTA's
    # programs, which read a scenario's configuration).
    confinement: tuple[str, ...] = ()
    # Commands and reads in the container through one shell kept running there (a fork each, not an exec).
    shell: ContainerShell = field(init=False, repr=False, compare=False)
    # The same with the container's every capability, for the neighbour table alone (NET_ADMIN): opened
    # only when first needed, and only the harness's own fixed commands run in it.
    admin_shell: ContainerShell = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.shell = ContainerShell(lambda: self.container.get_wrapped_container(), prefix=self.confinement)
        self.admin_shell = ContainerShell(lambda: self.container.get_wrapped_container())

    @property
    def container_id(self) -> str:
        return str(self.container.get_wrapped_container().id)

    def close_shells(self) -> None:
        self.shell.close()
        self.admin_shell.close()

    def logs(self, tail: int = 30) -> str:
        try:
            raw = self.container.get_wrapped_container().logs(tail=tail)
            return bytes(raw).decode("utf-8", "replace")
        except DockerException as exc:
            return f"(logs unavailable: {exc})"

    def read_tree(self, path: str) -> dict[str, bytes]:
        """Every regular file under ``path`` in the container, named as ``docker cp`` names them (the
        last component of ``path`` first); {} when there is no such path. A tar stream through the
        container's shell; an archive call when that stream cannot be read."""
        parent, _, base = path.rstrip("/").rpartition("/")
        try:
            done = self.shell.run(["sh", "-c", 'if [ -e "$1/$2" ]; then tar cf - -C "$1" "$2"; fi', "sh",
                                   parent or "/", base])
            # tar says "file changed as we read it" (1) of a file being written: the archive still holds
            # every other file, and a Maildir delivery is renamed into place once complete.
            if done.exit_code in (0, 1):
                return tar_files(done.stdout) if done.stdout else {}
        except (DockerException, tarfile.TarError):
            pass
        try:
            stream, _ = self.container.get_wrapped_container().get_archive(path)
        except NotFound:
            return {}
        return tar_files(b"".join(stream))

    def put_files(self, directory: str, files: Mapping[str, bytes], *, age_s: int = 0) -> None:
        """Write ``files`` (name -> content) into ``directory`` of the running container, with the
        current mtime (NSD skips a zone file whose mtime did not change), or one ``age_s`` seconds
        before it, by the container's clock. Through the container's shell; an archive call when that
        cannot write them."""
        paths = [shlex.quote(directory.rstrip("/") + "/" + name) for name in files]
        script = "; ".join(f"printf %s {base64.b64encode(content).decode()} | base64 -d > {path}"
                           for content, path in zip(files.values(), paths, strict=True))
        if age_s:
            script += f"; touch -d @$(($(date +%s) - {int(age_s)})) {' '.join(paths)}"
        with contextlib.suppress(DockerException):
            if self.shell.run(["sh", "-ec", f"umask 022; {script}"]).exit_code == 0:
                return
        archive = fresh_archive(((name, content, 0o644) for name, content in files.items()), age_s=age_s)
        try:
            self.container.get_wrapped_container().put_archive(directory, archive)
        except DockerException as exc:
            raise InfrastructureError(f"could not write {', '.join(files)} into {self.role}:{directory}: {exc}"
                                      ) from exc


@dataclass
class Topology:
    """A running topology. ``destroy()`` removes everything it created (also found by label)."""

    client: docker.DockerClient
    run_id: str
    network_name: str
    subnet: ipaddress.IPv4Network
    hosts: dict[str, Host] = field(default_factory=dict)
    kept: bool = False
    # The address ``address_of: unreachable`` resolves to: in the subnet, reserved, answered by nobody.
    unreachable: str | None = None
    network: Network | None = None
    # The run's CA and the certificates of its TLS roles (None: no role offers TLS).
    tls: RunTls | None = None
    # Each TLS role's credentials, issued before the zones are rendered (their TLSA records need them).
    credentials: dict[str, Credentials] = field(default_factory=dict)
    # The keys of the run's signed zones (None: no dnssec:).
    signer: ZoneSigner | None = None

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)

    def address(self, role: str) -> str:
        return self.hosts[role].address

    def destroy(self) -> None:
        self.close_shells()
        self.forget_keys()
        try:
            remove_run(self.client, self.run_id)
        except DockerException as exc:
            raise InfrastructureError(f"could not remove run {self.run_id}: {exc}") from exc

    def close_shells(self) -> None:
        """End the shell sessions kept in the containers (their sockets are this process's)."""
        for host in self.hosts.values():
            host.close_shells()

    def forget_keys(self) -> None:
        """Remove the run's keys and certificates from the host (those in its containers go with them)."""
        if self.tls is not None:
            self.tls.remove()


def plan_addresses(plan: TopologyPlan, subnet: ipaddress.IPv4Network) -> dict[str, str]:
    addresses = {}
    extra = 20
    for host in plan.hosts:
        offset = HOST_OFFSETS.get(host.role)
        if offset is None:
            offset, extra = extra, extra + 1
        addresses[host.role] = str(subnet.network_address + offset)
    return addresses


def unreachable_address(subnet: str, used: set[str]) -> str:
    """A host address in ``subnet`` that is none of ``used`` (the gateway, the containers'): the highest
    usable one that is free. Nothing answers there, not even ARP, so a connection to it fails the way
    one to a dead host on the same LAN does: after three unanswered ARP requests the kernel reports
    "No route to host" (EHOSTUNREACH; 0.6 s with the probe interval the roles' entrypoints set, 3 s
    with the kernel's), and no TCP segment is ever sent (a capture shows none).
    Postfix, Exim and OpenSMTPD all log that and go on to the next MX. ValueError when every host
    address is taken."""
    network = ipaddress.ip_network(subnet, strict=False)
    taken = {ipaddress.ip_address(a) for a in used}
    first, last = int(network.network_address), int(network.broadcast_address)
    if network.version == 4 and network.prefixlen < 31:
        first, last = first + 1, last - 1  # neither the network nor the broadcast address
    elif network.version == 6:
        first += 1  # the subnet-router anycast address
    for value in range(last, first - 1, -1):
        candidate = ipaddress.IPv4Address(value) if network.version == 4 else ipaddress.IPv6Address(value)
        if candidate not in taken:
            return str(candidate)
    raise ValueError(f"no free host address left in {network}")


def _ipam_view(client: docker.DockerClient, name: str, subnet: ipaddress.IPv4Network
               ) -> tuple[str, str, str | None]:
    """Subnet, gateway and reserved unreachable address as the engine reports them for the created
    network (``docker network inspect``: IPAM.Config), falling back to what was asked for."""
    gateway = str(subnet.network_address + 1)
    try:
        configs = client.networks.get(name).attrs.get("IPAM", {}).get("Config") or []
    except DockerException as exc:
        raise InfrastructureError(f"could not inspect network {name}: {exc}") from exc
    for config in configs:
        if config.get("Subnet") and ipaddress.ip_network(config["Subnet"], strict=False).version == 4:
            aux = config.get("AuxiliaryAddresses") or {}
            return config["Subnet"], config.get("Gateway") or gateway, aux.get(UNREACHABLE_ROLE)
    return str(subnet), gateway, None


def _choose_unreachable(client: docker.DockerClient, network_name: str, subnet: ipaddress.IPv4Network,
                        addresses: Mapping[str, str]) -> str:
    ipam_subnet, gateway, reserved = _ipam_view(client, network_name, subnet)
    used = {gateway, *addresses.values()}
    if reserved is not None and reserved not in used:
        return reserved
    try:
        return unreachable_address(ipam_subnet, used)
    except ValueError as exc:
        raise InfrastructureError(f"network {network_name}: no address left for address_of: unreachable: {exc}"
                                  ) from exc


def build_images(images: ImageStore, plan: TopologyPlan) -> dict[str, str]:
    """The image each role runs; built (or found by content hash) before anything starts."""
    result = {role: images.image("dns") for role in plan.infrastructure}
    for host in plan.hosts:
        if host.mta is None or host.config_dir is None:
            continue
        mta_image = images.image(host.mta.name)
        generated = host.mta.role_files(host.config_dir, host.settings, host.tls_offer)
        result[host.role] = images.role_image(host.mta.name, host.base_role, host.config_dir, mta_image,
                                              host.mta.config_target, generated)
    return result


def _create_network(client: docker.DockerClient, run_id: str, labels: dict[str, str], plan: TopologyPlan
                    ) -> tuple[Network, ipaddress.IPv4Network]:
    subnets: list[ipaddress.IPv4Network] = [
        s for s in SUBNET_POOL.subnets(new_prefix=24) if isinstance(s, ipaddress.IPv4Network)]
    for _ in range(20):
        subnet = random.choice(subnets)
        gateway = str(subnet.network_address + 1)
        # Reserved in the engine's IPAM as an auxiliary address, so no container (nor one attached
        # later with a dynamic address) is ever given the unreachable address.
        try:
            unreachable = unreachable_address(str(subnet), {gateway, *plan_addresses(plan, subnet).values()})
        except ValueError as exc:
            raise InfrastructureError(f"no address left for address_of: unreachable in {subnet}: {exc}") from exc
        network = Network(docker_client_kw=ENGINE_CLIENT, docker_network_kw={
            "driver": "bridge",
            "internal": True,  # nothing inside can reach anything outside the run
            "labels": labels,
            "ipam": IPAMConfig(pool_configs=[IPAMPool(subnet=str(subnet), gateway=gateway,
                                                      aux_addresses={UNREACHABLE_ROLE: unreachable})]),
        })
        network.name = f"mailflow-{run_id}"
        try:
            network.create()
            return network, subnet
        except APIError as exc:
            if "overlap" in str(exc).lower():
                continue
            raise InfrastructureError(f"could not create network {network.name}: {exc}") from exc
    raise InfrastructureError("could not find a free /24 for the run's network in 172.28.0.0/14 (20 tries)")


def create_network(client: docker.DockerClient, plan: TopologyPlan, *, run_id: str, keep: bool = False
                   ) -> tuple[Topology, dict[str, str]]:
    """Phase one: the run's network, and the address each role will have in it (the unreachable one
    under UNREACHABLE_ROLE, reserved and given to no container). What DNS serves is rendered from these
    addresses by the caller before phase two starts anything."""
    labels = run_labels(run_id, keep=keep)
    try:
        network, subnet = _create_network(client, run_id, labels, plan)
    except DockerException as exc:
        raise InfrastructureError(f"could not create the run's network: {exc}") from exc
    topology = Topology(client, run_id, network.name, subnet, kept=keep)
    topology.network = network
    addresses = plan_addresses(plan, subnet)
    try:
        if any(h.tls is not None for h in plan.hosts):
            topology.tls = RunTls(run_id)
            # Issued now, before anything is rendered or started: a TLSA record is the certificate's digest.
            topology.credentials = {h.role: topology.tls.issue(h.role, h.hostname, h.tls.certificate)
                                    for h in plan.hosts if h.tls is not None}
        if plan.dnssec is not None:
            topology.signer = ZoneSigner(plan.dnssec.signed, plan.dnssec.bogus)
        if UNREACHABLE_ROLE in addresses:
            raise InfrastructureError(f"{UNREACHABLE_ROLE!r} is reserved for address_of and cannot name a role")
        topology.unreachable = _choose_unreachable(client, network.name, subnet, addresses)
    except BaseException:
        with contextlib.suppress(InfrastructureError):
            topology.destroy()
        raise
    return topology, {**addresses, UNREACHABLE_ROLE: topology.unreachable}


def start_hosts(
    topology: Topology,
    plan: TopologyPlan,
    images: Mapping[str, str],
    zones: ZoneSetup,
    wait_dns: Callable[[str, str], None],
    *,
    progress: Progress,
) -> Topology:
    """Phase two: start dns with ``zones``, then the MTAs in parallel, and wait for their greetings and
    for dns to answer (with dnssec: the resolver, the MTAs' DNS, and with mta_sts: the policy host start
    once dns answers, before the MTAs). On any failure everything created so far is removed before the
    error propagates."""
    labels = run_labels(topology.run_id, keep=topology.kept)
    network = topology.network
    assert network is not None, "create_network() first"
    addresses = plan_addresses(plan, topology.subnet)
    try:
        dns_plan = next(h for h in plan.hosts if h.role == DNS_ROLE)
        dns_host = _container(network, dns_plan, images[DNS_ROLE], addresses[DNS_ROLE], labels, dns=None)
        for name, text in zones.files.items():
            dns_host.container.with_copy_into_container(text.encode(), f"/etc/nsd/harness/{name}")
        dns_host.container.start()
        topology.hosts[DNS_ROLE] = dns_host
        resolver_plan = next((h for h in plan.hosts if h.role == RESOLVER_ROLE), None)
        policy_plan = next((h for h in plan.hosts if h.role == POLICY_ROLE), None)
        mtas = [h for h in plan.hosts if h.mta is not None]
        if resolver_plan is None and policy_plan is None:
            # NSD loads its zones while the MTAs start: nothing an MTA does before its greeting asks DNS,
            # and no mail is sent before both are ready.
            with ThreadPoolExecutor(max_workers=1) as pool:
                answering = pool.submit(wait_dns, addresses[DNS_ROLE], zones.probe_zone)
                _start_mtas(topology, mtas, images, addresses, progress)  # an error here is the one reported
                answering.result()
            return topology
        wait_dns(addresses[DNS_ROLE], zones.probe_zone)
        if resolver_plan is not None:
            if zones.resolver_conf is None:
                raise InfrastructureError("a resolver role without its configuration (ZoneSetup.resolver_conf)")
            resolver = _container(network, resolver_plan, images[RESOLVER_ROLE], addresses[RESOLVER_ROLE], labels,
                                  dns=None)
            resolver.container.with_command("/usr/local/bin/resolver-start")
            resolver.container.with_copy_into_container(zones.resolver_conf.encode(), RESOLVER_CONF_PATH)
            resolver.container.start()
            topology.hosts[RESOLVER_ROLE] = resolver
            # A name NSD serves, asked recursively: an answer through Unbound means both are up.
            wait_until_resolving(addresses[RESOLVER_ROLE], NS_HOST, timeout_s=READY_TIMEOUT_S)
        if policy_plan is not None:
            start_policy_host(topology, policy_plan, plan, images[POLICY_ROLE], addresses[POLICY_ROLE], labels)
        _start_mtas(topology, mtas, images, addresses, progress)
        return topology
    except BaseException:
        with contextlib.suppress(InfrastructureError):
            topology.destroy()
        raise


def _start_mtas(topology: Topology, mtas: list[HostPlan], images: Mapping[str, str], addresses: Mapping[str, str],
                progress: Progress) -> None:
    t0 = time.monotonic()
    start_roles(topology, mtas, images, addresses)
    progress.line(f"run {topology.run_id}: {len(mtas)} MTAs greeting after {time.monotonic() - t0:.1f}s")


def start_policy_host(topology: Topology, host_plan: HostPlan, plan: TopologyPlan, image: str, address: str,
                      labels: dict[str, str]) -> None:
    """The MTA-STS policy host: its certificate and the policy copied in, then HTTPS on POLICY_PORT."""
    if plan.mta_sts is None:
        raise InfrastructureError("a policy host without a policy (TopologyPlan.mta_sts)")
    network = topology.network
    assert network is not None, "create_network() first"
    policy = _container(network, host_plan, image, address, labels, dns=None, tls=topology.tls,
                        credentials=topology.credentials.get(POLICY_ROLE))
    policy.container.with_command("/usr/local/bin/policy-start")
    policy.container.with_copy_into_container(plan.mta_sts.policy_text.encode("ascii"), POLICY_PATH, 0o644)
    policy.container.start()
    topology.hosts[POLICY_ROLE] = policy
    wait_for_listener(address, POLICY_PORT, what=f"{POLICY_ROLE} ({host_plan.hostname}) on port {POLICY_PORT}",
                      timeout_s=READY_TIMEOUT_S, logs=lambda: policy.logs(tail=20),
                      container=policy.container.get_wrapped_container())


def start_roles(topology: Topology, hosts: Sequence[HostPlan], images: Mapping[str, str],
                addresses: Mapping[str, str]) -> None:
    """Start MTA roles on the running topology's network, side by side, and wait for their greetings.
    Each joins ``topology.hosts`` as soon as it is created, so a failure leaves nothing untracked."""
    labels = run_labels(topology.run_id, keep=topology.kept)
    network = topology.network
    assert network is not None, "create_network() first"
    dns = _name_server(topology)
    started = [_container(network, h, images[h.role], addresses[h.role], labels, dns=dns, tls=topology.tls,
                          credentials=topology.credentials.get(h.role),
                          gated_command=image_command(topology.client, images[h.role]))
               for h in hosts]
    for host in started:
        topology.hosts[host.role] = host

    def start_one(pair: tuple[Host, HostPlan]) -> None:
        host, plan_host = pair
        host.container.start()
        # Before any client can connect (the greeting is waited for below), in order:
        commands = _setup_commands(topology, plan_host)
        host.setup_commands = tuple(tuple(c) for c in commands)
        setup_problem: InfrastructureError | None = None
        for command in commands:
            try:
                _run_checked(host, command)
            except InfrastructureError as exc:
                # A container that exits at once (a configuration refused) says so below, in the MTA's
                # words; only a running one whose set-up failed is this error.
                setup_problem = exc
                break
        _await_greeting(host, plan_host)
        if setup_problem is not None:
            raise setup_problem
        _check(host, plan_host)

    with ThreadPoolExecutor(max_workers=max(1, len(started))) as pool:
        list(pool.map(start_one, zip(started, hosts, strict=True)))


def _await_greeting(host: Host, plan_host: HostPlan) -> None:
    """Until ``host``'s MTA greets with its role's ready code. The container's state is watched too: one
    that exits meanwhile (a configuration the MTA refuses) is reported at once with its exit code and
    last log lines, as the configuration's error, not after the bound."""
    assert plan_host.mta is not None
    host.ready_code = plan_host.mta.ready_code(plan_host.base_role)
    try:
        wait_for_greeting(host.address, host.ready_code, what=f"{host.role} ({host.hostname})",
                          timeout_s=READY_TIMEOUT_S, logs=lambda: host.logs(tail=20),
                          container=host.container.get_wrapped_container())
    except ContainerExitedError as exc:
        if exc.container_exit_code is None or exc.container_exit_code >= 128:
            raise  # killed (a signal, out of memory) or removed: not the configuration's doing
        raise configuration_error(plan_host, exc.log.splitlines(), str(exc)) from exc


def _setup_commands(topology: Topology, plan_host: HostPlan) -> list[list[str]]:
    """What runs in a role's container once it has started, before its greeting is waited for."""
    driver = plan_host.mta
    assert driver is not None
    name_server = _name_server(topology)
    commands: list[list[str]] = []
    if name_server is not None:
        # Docker's embedded resolver (127.0.0.11) answers the containers' host names itself, from
        # the aliases the engine gives every endpoint (mx.example.test: TTL 600, no RRSIG, no AD),
        # whatever the scenario's DNS says about them; a record or dns_fault for a role's host name
        # would be silently ignored, and a DANE lookup of an MX host could never be secure
        # (docs/dane-notes.md). So every MTA asks the scenario's server (or resolver) directly. glibc
        # rereads a changed resolv.conf; Docker leaves one changed inside the container alone.
        direct = resolver_conf(name_server)
        commands.append(["sh", "-c", f"printf '%s' '{direct}' > /etc/resolv.conf"])
    # Companions of the MTA that resolve names start once resolv.conf says where to ask.
    commands += driver.started_commands(plan_host.tls_offer)
    if plan_host.tls is not None and driver.tls_key_owner is not None:
        commands.append(["chown", driver.tls_key_owner, TLS_KEY])
    return commands


def _name_server(topology: Topology) -> str | None:
    """The address the MTAs ask: with dnssec the validating resolver (glibc told to keep its AD bit),
    else the scenario's DNS server; None before either runs."""
    resolving = RESOLVER_ROLE if RESOLVER_ROLE in topology.hosts else DNS_ROLE
    return topology.address(resolving) if resolving in topology.hosts else None


def _check(host: Host, plan_host: HostPlan) -> None:
    """The implementation's own check of ``host``'s configuration kept with it; a fatal line is the
    configuration's error."""
    assert plan_host.mta is not None
    host.check_warnings = _checked(host, plan_host)
    if any(_FATAL.search(line) for line in host.check_warnings):
        raise configuration_error(plan_host, list(host.check_warnings),
                                  f"{host.role}: {plan_host.mta.name}'s own configuration check failed")


def reconfigurable(old: HostPlan, new: HostPlan) -> bool:
    """Whether a role's running container, made from ``old``, can serve ``new`` in place: only the TLS
    differs (certificate, require, outbound policy, TLSA), and the implementation can reload it. Settings
    and configuration directories can say anything (a listening address, a queue directory), so a role
    whose settings change gets a new container."""
    return (new.mta is not None and old.mta is new.mta and bool(new.mta.reconfigure_command)
            and dataclasses.replace(old, tls=new.tls) == new)


def rewritten_files(old: HostPlan, new: HostPlan) -> tuple[dict[str, bytes], list[str]]:
    """What turns the configuration of a container made from ``old`` into ``new``'s: the files to write
    (generated for ``new``, or the role directory's own where only ``old`` generated one) and the files
    to delete (generated for ``old`` only, not in the role directory), by name under the configuration
    target."""
    assert new.mta is not None and new.config_dir is not None and old.config_dir is not None
    before = new.mta.role_files(old.config_dir, old.settings, old.tls_offer)
    after = new.mta.role_files(new.config_dir, new.settings, new.tls_offer)
    files = {name: content for name, content in after.items() if before.get(name) != content}
    removed = []
    for name in sorted(before.keys() - after.keys()):
        original = new.config_dir / name
        if original.is_file():
            files[name] = original.read_bytes()
        else:
            removed.append(name)
    return files, removed


# A role's configuration rewritten in place carries an mtime this far back. Postfix reads main.cf
# (dict_load_file) again and again, 300 ms apart, for as long as its mtime is within a second of the
# read: master's reload then took 1.5-2.4 s instead of 20 ms (measured), every TLS change of a shared
# topology's role. Neither Exim nor OpenSMTPD looks at the time; each reads its file anew when it starts.
CONFIG_AGE_S = 10


def reconfigure_role(topology: Topology, old: HostPlan, new: HostPlan) -> None:
    """``new`` (``reconfigurable`` from ``old``) on the role's running container: the configuration files
    that differ rewritten, a certificate of its own from the run's CA (as a new container gets), the
    implementation's own reload, the set-up for ``new`` (a policy daemon), and back once it greets and
    its configuration check has said its piece. The container, its address, capture and mail
    watch stay. Raises InfrastructureError (ConfigurationError) when any of it fails."""
    driver = new.mta
    assert driver is not None and reconfigurable(old, new)
    host = topology.hosts[new.role]
    files, removed = rewritten_files(old, new)
    if files:
        host.put_files(driver.config_target, files, age_s=CONFIG_AGE_S)
    if removed:
        _run_checked(host, ["rm", "-f", *(driver.config_target.rstrip("/") + "/" + name for name in removed)])
    if new.tls is None:
        topology.credentials.pop(new.role, None)
        _run_checked(host, ["rm", "-rf", TLS_DIR])
    else:
        issue_credentials(topology, new)
        credentials, tls = topology.credentials[new.role], topology.tls
        assert tls is not None
        _run_checked(host, ["mkdir", "-p", TLS_DIR])
        host.put_files(TLS_DIR, {Path(TLS_CERT).name: credentials.cert_pem, Path(TLS_KEY).name: credentials.key_pem,
                                 Path(TLS_CA).name: tls.ca_pem})
        # As a new container has it (the set-up gives it to the implementation's key owner, if any).
        _run_checked(host, ["chmod", "600", TLS_KEY])
    _run_checked(host, ["sh", "-c", driver.reconfigure_command])
    host.setup_commands = tuple(tuple(c) for c in _setup_commands(topology, new))
    redo_setup(host)
    _await_greeting(host, new)
    _check(host, new)


# An implementation's own configuration check gives the same lines for every container made from one
# image and plan (the configuration is the image's; the plan adds settings, TLS and the host name), and
# `postfix check` takes about a second (most of it CPU): a bundled matrix ran it 41 times for 21
# distinct images and plans, 31 s of its topologies' time. So it runs once per image and plan: in a
# process (_CHECKED), and across runs in the check cache on disk, both keyed by the image's id (its
# content, whatever its tag), the check command and the plan, so a rebuilt image or another plan is
# checked again. The lines are kept as the container says them; each role shows them with its own
# configuration directory.
_CHECKED: dict[str, list[str]] = {}
_CHECKED_LOCK = threading.Lock()
CACHE_ENV = "MAILFLOW_HARNESS_CACHE"


def check_cache_dir() -> Path:
    """Where checks are kept across runs: $MAILFLOW_HARNESS_CACHE, else the user's cache directory."""
    root = os.environ.get(CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / \
        "mailflow-harness"
    return Path(root) / "checks"


def _checked(host: Host, plan: HostPlan) -> tuple[str, ...]:
    """The lines of ``plan``'s implementation's check that warn or complain, for ``host`` made from it."""
    return tuple(_as_configured(plan, _stored_check(host, plan)))


def _stored_check(host: Host, plan: HostPlan) -> list[str]:
    """The check's lines from this process, from the cache on disk, or from the check run now (and then
    kept in both). The disk only saves time: a file that cannot be read or written is as if there were
    none. A container whose image id is unknown is checked every time."""
    assert plan.mta is not None
    image_id = str(host.container.get_wrapped_container().attrs.get("Image") or "")
    if not image_id:
        return plan.mta.check(_Exec(host))
    tls = None if plan.tls is None else [plan.tls.certificate, plan.tls.require, plan.tls.outbound, plan.tls.tlsa]
    # The command too: a harness that checks otherwise does not take an older one's lines.
    key = json.dumps([image_id, plan.mta.name, plan.mta.check_command, plan.role, plan.hostname, plan.like, tls,
                      sorted(plan.settings.items())])
    with _CHECKED_LOCK:
        known = _CHECKED.get(key)
    if known is not None:
        return known
    path = check_cache_dir() / f"{hashlib.sha256(key.encode()).hexdigest()}.json"
    lines: list[str] | None = None
    with contextlib.suppress(OSError, ValueError):
        stored = json.loads(path.read_text())
        if isinstance(stored, dict) and stored.get("key") == key and isinstance(stored.get("lines"), list):
            lines = [str(line) for line in stored["lines"]]
    if lines is None:
        lines = plan.mta.check(_Exec(host))
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            # Whole or not at all: runs side by side may write the same entry.
            with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as out:
                json.dump({"key": key, "lines": lines}, out)
            os.replace(out.name, path)
    with _CHECKED_LOCK:
        _CHECKED[key] = lines
    return lines


def redo_setup(host: Host) -> None:
    """What ``start_roles`` ran in ``host``'s container before its first greeting, again: after a start
    or restart the engine has written a new resolv.conf (nameserver 127.0.0.11, the embedded resolver
    that answers role host names itself; measured on engine 20.10), and the MTA's companion daemons
    ended with the old container process."""
    for command in host.setup_commands:
        _run_checked(host, list(command))


def close_start_gate(host: Host) -> None:
    """Hold ``host``'s MTA at the start gate when its container starts next (running or not now)."""
    host.put_files("/", {START_GATE.lstrip("/"): b""})


def open_start_gate(host: Host) -> None:
    """Let ``host``'s MTA start (its container is running, waiting at the gate)."""
    _run_checked(host, ["rm", "-f", START_GATE])


def remove_container(container: DockerContainer, what: str) -> None:
    """Remove ``container`` now (killed if running), its anonymous volumes with it; gone already is done."""
    try:
        container.get_wrapped_container().remove(force=True, v=True)
    except NotFound:
        pass
    except DockerException as exc:
        raise InfrastructureError(f"could not remove {what}: {exc}") from exc


def remove_host(topology: Topology, role: str) -> None:
    """``role``'s container gone from the topology, with its credentials; a role it does not have is done
    (its capture goes with it)."""
    host = topology.hosts.pop(role, None)
    topology.credentials.pop(role, None)
    if host is not None:
        host.close_shells()
        remove_container(host.container, f"{role}'s container")


def issue_credentials(topology: Topology, plan: HostPlan) -> None:
    """A new certificate and key for a role started on a running topology, from the run's CA (made now
    if no role offered TLS before)."""
    if plan.tls is None:
        raise InfrastructureError(f"{plan.role}: no certificate to issue (it offers no TLS)")
    if topology.tls is None:
        topology.tls = RunTls(topology.run_id)
    topology.credentials[plan.role] = topology.tls.issue(plan.role, plan.hostname, plan.tls.certificate)


def replace_roles(topology: Topology, hosts: Sequence[HostPlan], images: Mapping[str, str],
                  addresses: Mapping[str, str]) -> None:
    """Each of ``hosts`` (MTA roles) in a new container made from its plan, at its address in
    ``addresses``: the old one, if the topology has the role, removed first (its capture with it); the
    new one started with a certificate of its own when it offers TLS, and greeting. The engine gives a
    container the MAC address made from its IP address, so a neighbour that still has the old container
    in its ARP cache reaches the new one at the same address as it would a fresh one."""
    for plan_host in hosts:
        remove_host(topology, plan_host.role)
        if plan_host.tls is not None:
            issue_credentials(topology, plan_host)
    start_roles(topology, hosts, images, {h.role: addresses[h.role] for h in hosts})


def replace_policy_host(topology: Topology, plan: TopologyPlan, images: Mapping[str, str], address: str) -> None:
    """The MTA-STS policy host as ``plan`` has it: the running one, if any, removed; a new one, if the
    plan has one, started at ``address`` with a certificate of its own from the run's CA and listening."""
    remove_host(topology, POLICY_ROLE)
    host_plan = next((h for h in plan.hosts if h.role == POLICY_ROLE), None)
    if host_plan is None:
        return
    issue_credentials(topology, host_plan)
    start_policy_host(topology, host_plan, plan, images[POLICY_ROLE], address,
                      run_labels(topology.run_id, keep=topology.kept))


_FATAL = re.compile(r"\b(fatal|panic)\b", re.IGNORECASE)


def tar_files(data: bytes) -> dict[str, bytes]:
    """Every regular file of a tar stream (an archive copy out of a container), by member name."""
    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar.getmembers():
            if member.isfile():
                extracted = tar.extractfile(member)
                if extracted is not None:
                    files[member.name] = extracted.read()
    return files


class _Exec:
    """A running host as a driver's CommandRunner for its check: output whatever the exit status."""

    def __init__(self, host: Host) -> None:
        self.host = host

    def __call__(self, argv: list[str]) -> str:
        try:
            result = self.host.shell.run(argv)
        except DockerException as exc:
            raise InfrastructureError(f"`{' '.join(argv)}` on {self.host.role} failed: {exc}") from exc
        return (result.stdout + result.stderr).decode("utf-8", "replace")


def _run_checked(host: Host, argv: list[str]) -> None:
    try:
        result = host.shell.run(argv)
    except DockerException as exc:
        raise InfrastructureError(f"`{' '.join(argv)}` on {host.role} failed: {exc}") from exc
    if result.exit_code != 0:
        output = (result.stdout + result.stderr).decode("utf-8", "replace").strip()
        raise InfrastructureError(f"`{' '.join(argv)}` on {host.role} exited {result.exit_code}: {output}")


def _as_configured(plan: HostPlan, lines: Sequence[str]) -> list[str]:
    """``lines`` with the container's configuration path shown as the role's configuration directory."""
    if plan.config_dir is None or plan.mta is None or not plan.mta.config_target:
        return list(lines)
    here = str(plan.config_dir).rstrip("/") + "/"
    return [line.replace(plan.mta.config_target, here) for line in lines]


def configuration_error(plan: HostPlan, lines: Sequence[str], detail: str) -> ConfigurationError:
    """The MTA's complaint about a role's configuration, with the container's paths shown as the
    configuration directory's (``/etc/postfix/main.cf, line 3`` -> ``<dir>/main.cf, line 3``)."""
    assert plan.mta is not None
    complaints = _as_configured(plan, [line.strip() for line in lines if COMPLAINT.search(line)]
                                or [line.strip() for line in lines[-3:]])
    cause = complaints[0] if complaints else detail.splitlines()[0]
    where = f" ({plan.config_dir})" if plan.config_dir is not None else ""
    text = (f"configuration error: {plan.role}{where} on {plan.mta.name}: {cause}\n"
            + "\n".join(f"  {c}" for c in complaints[1:12]) + f"\n--- {detail}")
    return ConfigurationError(plan.role, cause, text)


def limits(memory: str = MEMORY_LIMIT, pids: int = PIDS_LIMIT) -> dict[str, object]:
    """Memory (swap included) and process bounds, as container create options."""
    return {"mem_limit": memory, "memswap_limit": memory, "pids_limit": pids}


def confinement(capabilities: Sequence[str], *, no_new_privileges: bool = True) -> dict[str, object]:
    """Every capability dropped but ``capabilities``; no privilege gained through exec unless told."""
    options: dict[str, object] = {"cap_drop": ["ALL"], "cap_add": sorted(capabilities)}
    if no_new_privileges:
        options["security_opt"] = [NO_NEW_PRIVILEGES]
    return options


def container_options(plan: HostPlan) -> dict[str, object]:
    """The bounds and privileges of a role's container (the dns role's when ``plan.mta`` is None): an MTA
    role's has the capture's capabilities too, which its entrypoint keeps from the MTA (mta_entrypoint)."""
    if plan.mta is None:
        return {**limits(), **confinement(DNS_CAPABILITIES)}
    return {**limits(), **confinement(sorted({*plan.mta.capabilities, *CAPTURE_CAPS}),
                                      no_new_privileges=plan.mta.no_new_privileges)}


def confined(capabilities: Sequence[str]) -> tuple[str, ...]:
    """The prefix that runs a command in an MTA role's container with ``capabilities`` (the MTA's own) as
    its bounding set and nothing inheritable: neither it nor anything it runs can gain another one."""
    keep = "".join(f",+{c.lower()}" for c in sorted(capabilities))
    return ("setpriv", f"--bounding-set=-all{keep}", "--inh-caps=-all")


def mta_entrypoint(capabilities: Sequence[str]) -> list[str]:
    """An MTA role's entrypoint (its image's command follows as arguments): the capture started and
    listening, then the start gate, then the command, confined to the MTA's ``capabilities``."""
    return ["/bin/sh", "-c", _CAPTURE_START, "mta-entrypoint", *confined(capabilities)]


def resolver_conf(address: str) -> str:
    """An MTA's resolv.conf: the scenario's DNS server (with dnssec:, the validating resolver) itself,
    and glibc (>= 2.31) told to keep the AD bit of its answers, which it clears otherwise. A server that
    does not answer is given up on after 1 s, three times, not glibc's 5 s twice: the server is on the
    same bridge and answers in milliseconds, so only a scenario's `answer: timeout` waits that long, and
    it then waits 3 s per lookup instead of 10 (the verdict, a temporary failure, is the same)."""
    ipaddress.ip_address(address)  # nothing but an address goes into the shell command
    return f"nameserver {address}\noptions trust-ad timeout:1 attempts:3\n"


def _container(network: Network, plan: HostPlan, image: str, address: str, labels: dict[str, str],
               *, dns: str | None, tls: RunTls | None = None, credentials: Credentials | None = None,
               gated_command: Sequence[str] | None = None) -> Host:
    """``gated_command``: the image's own command, run behind the start gate (START_GATE)."""
    kwargs: dict[str, object] = {
        **container_options(plan),
        "sysctls": UNPRIVILEGED_PORTS,
        "labels": {**labels, ROLE_LABEL: plan.role},
        "hostname": plan.hostname,
        # No network aliases of ours: Docker's embedded resolver answers aliases before our DNS server,
        # and the scenario's DNS must be the only truth about names. (The engine still adds the host
        # name as one: MTAs therefore skip 127.0.0.11, see start_roles.)
        "networking_config": {network.name: EndpointConfig("1.41", ipv4_address=address)},
    }
    if dns is not None:
        kwargs["dns"] = [dns]
    if gated_command is not None:
        assert plan.mta is not None
        kwargs["entrypoint"] = mta_entrypoint(plan.mta.capabilities)
    container = (RoleContainer(image, name=f"mailflow-{labels['mailflow-harness.run']}-{plan.role}",
                                 docker_client_kw=ENGINE_CLIENT)
                 .with_network(network)
                 .with_kwargs(**kwargs))
    if gated_command is not None:
        container.with_command(list(gated_command))
    if plan.tls is not None:
        if tls is None:
            raise InfrastructureError(f"{plan.role} offers TLS but the run has no CA (create_network makes it)")
        if credentials is None:
            credentials = tls.issue(plan.role, plan.hostname, plan.tls.certificate)
        # Copied in after the container is created, before it starts, owned by root: Postfix's smtpd and
        # OpenSMTPD's parent read it as root before they drop privileges; an MTA that reads it as another
        # user (Exim) gets it chowned in start_roles (the driver's tls_key_owner).
        container.with_copy_into_container(credentials.cert_pem, TLS_CERT, 0o644)
        container.with_copy_into_container(credentials.key_pem, TLS_KEY, 0o600)
        container.with_copy_into_container(tls.ca_pem, TLS_CA, 0o644)
    return Host(plan.role, plan.hostname, address, image, plan.mta.name if plan.mta else None, container,
                start_gate=gated_command is not None,
                confinement=confined(plan.mta.capabilities) if gated_command is not None and plan.mta else ())


def image_command(client: docker.DockerClient, image: str) -> list[str]:
    """What a container of ``image`` runs when nothing is said (its entrypoint, then its command). Images
    are tagged by content, so one look per image and process."""
    with _image_commands_lock:
        known = _image_commands.get(image)
    if known is not None:
        return known
    try:
        config = client.images.get(image).attrs.get("Config") or {}
    except DockerException as exc:
        raise InfrastructureError(f"could not inspect the image {image}: {exc}") from exc
    command = [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])]
    if not command:
        raise InfrastructureError(f"the image {image} says nothing to run (no ENTRYPOINT or CMD)")
    with _image_commands_lock:
        _image_commands[image] = command
    return command


class RoleContainer(DockerContainer):
    """A role's container whose files (``with_copy_into_container``) go in before its start in one
    archive, not one each: the engine extracts every archive in a process of its own (dockerd executed
    again, about 0.15 s on 2 busy cores), and a dns container has a file per zone. A bundled matrix made
    212 such calls. The files carry the time they were copied in, not 1970 (NSD skips such a zone)."""

    def __init__(self, image: str, **kwargs: Any) -> None:
        super().__init__(image, **kwargs)
        self._pending: list[tuple[bytes, str, int]] = []

    def _transfer_into_container(self, transferable: Any, destination_in_container: str, mode: int) -> None:
        # testcontainers calls this once per file, between creating the container and starting it.
        if not isinstance(transferable, bytes):
            raise TypeError(f"only bytes are copied into a role's container, not {type(transferable).__name__}")
        self._pending.append((transferable, destination_in_container, mode))
        if len(self._pending) < len(self._transferable_specs):
            return
        files, self._pending = self._pending, []
        archive = fresh_archive((destination.lstrip("/"), content, mode) for content, destination, mode in files)
        wrapped = self.get_wrapped_container()
        if not wrapped.put_archive(path="/", data=archive):
            raise InfrastructureError(f"the engine did not take {', '.join(d for _, d, _ in files)} into "
                                      f"{wrapped.name}")


def describe(topology: Topology) -> list[dict[str, str]]:
    return [{"role": h.role, "hostname": h.hostname, "address": h.address, "container": h.container_id[:12],
             "image": h.image} for h in topology.hosts.values()]

