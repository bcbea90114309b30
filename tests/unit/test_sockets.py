"""sample/sockets.py: proc/net/{tcp,udp}[6], proc/net/route, ipv6_route, and the device of a socket.

The text fixtures are in the kernel's own formats (net/ipv4/tcp_ipv4.c
get_tcp4_sock, net/ipv4/udp.c udp4_format_sock, net/ipv6/datagram.c
__ip6_dgram_sock_seq_show, net/ipv4/fib_trie.c fib_route_seq_show,
net/ipv6/route.c ipv6_route_native_seq_show); the route and ipv6_route texts
marked "captured" were read from a namespace on this host (kernel 6.x) with
the routes named beside them. Addresses in proc/net/{tcp,udp,route} are the
raw network-order words printed with %08X, i.e. in host byte order: the
helpers below encode them the way the kernel's printf does, independently of
the parser under test.

The live tests open sockets on loopback only, in this process, and only read
proc: they never touch another device.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentlatd.sample.sockets import (
    DROP,
    RTF_REJECT,
    RTF_UP,
    TCP_LISTEN,
    Addr,
    NetView,
    Route,
    Sock,
    devices_of,
    parse_ipv6_route,
    parse_route,
    parse_sockets,
    read_net_view,
    read_socket_inodes,
    route_dev,
    sock_dev,
)
from agentlatd.sysfs.root import Root

A = ipaddress.ip_address
N = ipaddress.ip_network
LITTLE = pytest.mark.skipif(sys.byteorder != "little", reason="literal hex of a little-endian host")

TCP_HEADER = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
              "timeout inode")
UDP_HEADER = ("   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
              "timeout inode ref pointer drops")
TCP6_HEADER = ("  sl  local_address                         remote_address                        "
               "st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode")
ROUTE_HEADER = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT"
TCP_ESTABLISHED = 0x01
TCP_CLOSE = 0x07  # also an unconnected UDP socket's state


# -- encoders: the kernel's printf, written independently of the parser --------

def hex_addr(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """proc/net/{tcp,udp}[6] form: each 32-bit word of the address as %08X of a host-order u32."""
    p = addr.packed
    return "".join(f"{int.from_bytes(p[i:i + 4], sys.byteorder):08X}" for i in range(0, len(p), 4))


def sock_line(sl: int, local: str, lport: int, remote: str, rport: int, st: int, inode: int,
              udp: bool = True) -> str:
    la, ra = hex_addr(A(local)), hex_addr(A(remote))
    head = f"{sl:5d}: {la}:{lport:04X} {ra}:{rport:04X} {st:02X} 00000000:00000000 00:00000000 00000000"
    tail = f" 1000        0 {inode} 2 0000000000000000 0" if udp else \
        f" 1000        0 {inode} 1 0000000000000000 100 0 0 10 0"
    return head + tail


def route_line(dev: str, net: str, *, gw: str = "0.0.0.0", flags: int = RTF_UP, metric: int = 0) -> str:
    n = ipaddress.IPv4Network(net)
    return (f"{dev}\t{hex_addr(n.network_address)}\t{hex_addr(A(gw))}\t{flags:04X}\t0\t0\t{metric}\t"
            f"{hex_addr(n.netmask)}\t0\t0\t0")


def route_text(*lines: str) -> str:
    return "\n".join((ROUTE_HEADER, *lines)) + "\n"


def v4(net: str, dev: str, metric: int = 0) -> Route:
    return Route(ipaddress.IPv4Network(net), dev, metric)


def v6(net: str, dev: str, metric: int = 0, *, local: bool = False) -> Route:
    return Route(ipaddress.IPv6Network(net), dev, metric, local)


def sock(proto: str, local: str, remote: str, state: int, *, rport: int = 0, inode: int = 1) -> Sock:
    return Sock(proto, A(local), A(remote), rport, state, inode)


# -- parse_sockets ----------------------------------------------------------

@LITTLE
def test_tcp_listener_as_printed_on_x86() -> None:
    # /proc/net/tcp of this host: sshd-like listener on 0.0.0.0:2024
    text = (TCP_HEADER + "\n"
            "   0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 "
            "651 1 00000000b2470b15 100 0 0 10 0\n"
            "   1: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000  1000        0 "
            "98765 1 0000000000000000 20 4 30 10 -1\n")
    s = parse_sockets(text, "tcp")
    assert s == [
        Sock("tcp", A("0.0.0.0"), A("0.0.0.0"), 0, TCP_LISTEN, 651, 2024),
        Sock("tcp", A("127.0.0.1"), A("127.0.0.1"), 0xD2F0, TCP_ESTABLISHED, 98765, 8080),
    ]


@LITTLE
def test_udp_lines_little_endian_words() -> None:
    # 10.1.2.3 is 0A.01.02.03 in network order -> u32 0x0302010A on x86
    text = (UDP_HEADER + "\n"
            "  210: 0302010A:C350 0100000A:1F40 01 00000000:00000000 00:00000000 00000000  1000        0 "
            "4242 2 0000000000000000 0\n"
            "  211: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 "
            "17 2 0000000000000000 0\n")
    a, b = parse_sockets(text, "udp")
    assert (a.local, a.remote, a.remote_port, a.state, a.inode) == (A("10.1.2.3"), A("10.0.0.1"), 8000,
                                                                    TCP_ESTABLISHED, 4242)
    assert (b.local, b.remote, b.state, b.inode) == (A("0.0.0.0"), A("0.0.0.0"), TCP_CLOSE, 17)


@LITTLE
def test_tcp6_words_and_v4_mapped_peer() -> None:
    text = (TCP6_HEADER + "\n"
            # [::]:8080 listener
            "   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A "
            "00000000:00000000 00:00000000 00000000     0        0 24054 1 0000000000000000 100 0 0 10 0\n"
            # [::1]:8080 <- [::1]:40000
            "   1: 00000000000000000000000001000000:1F90 00000000000000000000000001000000:9C40 01 "
            "00000000:00000000 00:00000000 00000000  1000        0 24055 1 0000000000000000 20 4 30 10 -1\n"
            # [2001:db8::5]:443 <- [fe80::1]:1234  (2001:0db8 -> word 0x20010DB8 -> "B80D0120")
            "   2: B80D0120000000000000000005000000:01BB 000080FE000000000000000001000000:04D2 01 "
            "00000000:00000000 00:00000000 00000000  1000        0 24056 1 0000000000000000 20 4 30 10 -1\n"
            # dual-stack socket, IPv4 peer: [::ffff:10.0.0.1] -> 0000FFFF + 0100000A
            "   3: 0000000000000000FFFF00000200000A:1F90 0000000000000000FFFF00000100000A:D431 01 "
            "00000000:00000000 00:00000000 00000000  1000        0 24057 1 0000000000000000 20 4 30 10 -1\n")
    s = parse_sockets(text, "tcp")
    assert [x.inode for x in s] == [24054, 24055, 24056, 24057]
    assert (s[0].local, s[0].state) == (A("::"), TCP_LISTEN)
    assert (s[1].local, s[1].remote, s[1].remote_port) == (A("::1"), A("::1"), 40000)
    assert (s[2].local, s[2].remote, s[2].remote_port) == (A("2001:db8::5"), A("fe80::1"), 1234)
    # the v4-mapped peer comes out as IPv4, so it routes through proc/net/route
    assert s[3].local == A("10.0.0.2") and s[3].remote == A("10.0.0.1")
    assert isinstance(s[3].remote, ipaddress.IPv4Address)


def test_header_only_and_empty_text() -> None:
    assert parse_sockets("", "udp") == []
    assert parse_sockets(UDP_HEADER + "\n", "udp") == []
    # the first line is the header whatever it holds
    assert parse_sockets(sock_line(0, "10.0.0.1", 1, "10.0.0.2", 2, 1, 5), "udp") == []


def test_malformed_lines_are_skipped_not_fatal() -> None:
    good = sock_line(9, "10.0.0.1", 5000, "10.0.0.2", 53, TCP_ESTABLISHED, 777)
    bad = [
        "   1: 0100007F:0035 0100007F:0035 01",  # truncated
        "   2: ZZZZZZZZ:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000 0 0 11 2 0 0",
        "   3: 0100007F:0035 00000000 07 00000000:00000000 00:00000000 00000000 0 0 12 2 0 0",  # no port
        "   4: 0100007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000 0 0 notnum 2 0 0",
        "   5: 0100007F0000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000 0 0 14 2 0 0",
        "   6: 0100007:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000 0 0 15 2 0 0",  # odd hex
        "   7: 0100007F:0035 00000000:0000 XY 00000000:00000000 00:00000000 00000000 0 0 16 2 0 0",
        "",
    ]
    text = "\n".join([UDP_HEADER, *bad, good]) + "\n"
    assert [s.inode for s in parse_sockets(text, "udp")] == [777]


ipv4s = st.ip_addresses(v=4)
ipv6s = st.ip_addresses(v=6)
ports = st.integers(0, 0xFFFF)
inodes = st.integers(1, 2**63)


@settings(max_examples=300, deadline=None)
@given(local=st.one_of(ipv4s, ipv6s), remote=st.one_of(ipv4s, ipv6s), lport=ports, rport=ports,
       state=st.integers(1, 0x0C), inode=inodes)
def test_address_hex_round_trip(local: ipaddress.IPv4Address | ipaddress.IPv6Address,
                                remote: ipaddress.IPv4Address | ipaddress.IPv6Address,
                                lport: int, rport: int, state: int, inode: int) -> None:
    if local.version != remote.version:
        remote = ipaddress.IPv4Address(0) if local.version == 4 else ipaddress.IPv6Address(0)
    line = (f"   0: {hex_addr(local)}:{lport:04X} {hex_addr(remote)}:{rport:04X} {state:02X} "
            f"00000000:00000000 00:00000000 00000000  1000        0 {inode} 2 0000000000000000 0")
    (s,) = parse_sockets(UDP_HEADER + "\n" + line + "\n", "udp")

    def expect(a: Addr) -> Addr:
        return a.ipv4_mapped or a if isinstance(a, ipaddress.IPv6Address) else a

    assert (s.local, s.remote, s.remote_port, s.state, s.inode) == (expect(local), expect(remote),
                                                                    rport, state, inode)


@settings(max_examples=200, deadline=None)
@given(net=st.builds(lambda a, p: ipaddress.IPv4Network((a, p), strict=False), ipv4s, st.integers(0, 32)),
       metric=st.integers(0, 2**31 - 1))
def test_route_hex_round_trip(net: ipaddress.IPv4Network, metric: int) -> None:
    (r,) = parse_route(route_text(route_line("veth7", str(net), metric=metric)))
    assert r == Route(net, "veth7", metric)


# -- parse_route --------------------------------------------------------------

@LITTLE
def test_parse_route_of_this_hosts_format() -> None:
    # captured: default via 192.0.2.1 dev eth0; 192.0.2.0/24 dev eth0 (trailing blanks as printed)
    text = (ROUTE_HEADER + " " * 20 + "\n"
            "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0" + " " * 40 + "\n"
            "eth0\t000200C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0" + " " * 40 + "\n")
    assert parse_route(text) == [v4("0.0.0.0/0", "eth0"), v4("192.0.2.0/24", "eth0", 100)]


@LITTLE
def test_parse_route_keeps_reject_as_drop_skips_down_and_malformed() -> None:
    # captured from a namespace: `ip route add unreachable 10.1.0.0/16` and `prohibit 10.2.0.0/16`
    # print Flags 0201 (RTF_UP | RTF_REJECT)
    text = (ROUTE_HEADER + "\n"
            "*\t0000010A\t00000000\t0201\t0\t0\t0\t0000FFFF\t0\t0\t0\n"
            "*\t0000020A\t00000000\t0201\t0\t0\t0\t0000FFFF\t0\t0\t0\n"
            "va\t0000030A\t00000000\t0001\t0\t0\t5\t0000FFFF\t0\t0\t0\n"
            "vb\t0000030A\t00000000\t0001\t0\t0\t7\t0000FFFF\t0\t0\t0\n"
            "down0\t0000040A\t00000000\t0000\t0\t0\t0\t0000FFFF\t0\t0\t0\n"  # no RTF_UP
            "bad0\tXXXX040A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n"
            "bad1\t0000050A\t00000000\t0001\t0\t0\tmetric\t0000FFFF\t0\t0\t0\n"
            "short\t0000060A\t00000000\t0001\n")
    # reject routes stay, as DROP: they must win the longest-prefix match so that an
    # address under them is unknown rather than routed by a shorter prefix
    assert parse_route(text) == [v4("10.1.0.0/16", DROP, 0), v4("10.2.0.0/16", DROP, 0),
                                 v4("10.3.0.0/16", "va", 5), v4("10.3.0.0/16", "vb", 7)]
    assert RTF_REJECT == 0x0200 and RTF_UP == 0x0001


# -- parse_ipv6_route -----------------------------------------------------------

# captured on this host (fd00::2/64 on eth0, default via fd00::1), network order, plen/metric/flags hex
IPV6_ROUTE = """\
fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000002 00000000 00000001     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000002 00000000 00000003     eth0
00000000000000000000000000000001 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000002 00000000 80200001       lo
ff000000000000000000000000000000 08 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000003 00000000 00000001     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
"""  # noqa: E501


def test_parse_ipv6_route_of_this_hosts_format() -> None:
    assert parse_ipv6_route(IPV6_ROUTE) == [
        v6("fd00::/64", "eth0", 256),
        v6("fe80::/64", "eth0", 256),
        v6("::/0", "eth0", 1024),
        v6("::1/128", "lo", 0, local=True),  # flags 80200001: RTF_LOCAL
        v6("ff00::/8", "eth0", 256),
        # the unreachable default (flags 00200200: RTF_REJECT without RTF_UP) drops packets:
        # kept as DROP, and it loses to the real default by its metric
        v6("::/0", DROP, 0xFFFFFFFF),
    ]


def test_parse_ipv6_route_keeps_reject_as_drop_skips_down_and_malformed() -> None:
    z = "0" * 32
    text = (
        # captured: `ip -6 route add blackhole 2001:db8:1::/48` (dev lo, RTF_REJECT, plen 0x30)
        f"20010db8000100000000000000000000 30 {z} 00 {z} 00000400 00000002 00000000 00200200       lo\n"
        # same prefix up, on a veth: plen 0x30 = 48
        f"20010db8000100000000000000000000 30 {z} 00 {z} 00000400 00000001 00000000 00000001     veth1\n"
        f"20010db8000200000000000000000000 30 {z} 00 {z} 00000400 00000001 00000000 00000201     veth2\n"
        f"20010db8000300000000000000000000 30 {z} 00 {z} 00000400 00000001 00000000 00000000     veth3\n"
        f"20010db800040000000000000000000 30 {z} 00 {z} 00000400 00000001 00000000 00000001     odd\n"
        f"20010db8000500000000000000000000 zz {z} 00 {z} 00000400 00000001 00000000 00000001     badplen\n"
        f"20010db8000600000000000000000000 30 {z} 00 {z}\n")
    assert parse_ipv6_route(text) == [v6("2001:db8:1::/48", DROP, 0x400),
                                      v6("2001:db8:1::/48", "veth1", 0x400),
                                      v6("2001:db8:2::/48", DROP, 0x400)]
    # the blackhole and the up route tie on prefix and metric: unknown, not guessed
    assert route_dev(ipaddress.IPv6Address("2001:db8:1::5"), parse_ipv6_route(text)) is None


# -- route_dev -------------------------------------------------------------------

TABLE = (v4("0.0.0.0/0", "eth0", 100), v4("10.0.0.0/8", "veth1"), v4("10.1.0.0/16", "veth2"),
         v4("10.1.2.0/24", "veth3", 50), v4("10.1.2.0/24", "veth4", 20),
         v4("10.9.0.0/16", "vethA", 5), v4("10.9.0.0/16", "vethB", 5),
         v6("::/0", "eth0", 1024), v6("2001:db8::/32", "veth1", 256), v6("fe80::/64", "veth1", 256))


@pytest.mark.parametrize(("addr", "dev"), [
    ("10.1.5.6", "veth2"),  # /16 beats /8 and the default
    ("10.2.0.1", "veth1"),  # /8
    ("8.8.8.8", "eth0"),  # only the default
    ("10.1.2.7", "veth4"),  # equal /24s: the lower metric
    ("10.9.3.3", None),  # equal /16s, equal metrics, two devices: ambiguous
    ("2001:db8::9", "veth1"),
    ("2001:4860::8888", "eth0"),
    ("fe80::1234", None),  # link-local v6: the scope id is not in the files
    ("0.0.0.0", None),
    ("::", None),
])
def test_route_dev(addr: str, dev: str | None) -> None:
    assert route_dev(A(addr), TABLE) == dev


def test_longest_prefix_beats_lower_metric() -> None:
    assert route_dev(A("10.1.2.3"), [v4("10.0.0.0/8", "wide", 0), v4("10.1.2.0/24", "narrow", 9999)]) \
        == "narrow"


def test_same_device_twice_is_not_ambiguous() -> None:
    # ipv6_route dumps every table: the same prefix on the same device may appear twice
    assert route_dev(A("2001:db8::1"), [v6("2001:db8::/64", "veth1"), v6("2001:db8::/64", "veth1")]) \
        == "veth1"


def test_no_route_and_wrong_family() -> None:
    assert route_dev(A("10.0.0.1"), []) is None
    assert route_dev(A("10.0.0.1"), [v6("::/0", "eth0")]) is None
    assert route_dev(A("2001:db8::1"), [v4("0.0.0.0/0", "eth0")]) is None


def test_route_dev_takes_a_one_shot_iterable() -> None:
    assert route_dev(A("10.1.5.6"), iter(TABLE)) == "veth2"


@LITTLE
def test_reject_route_alone_gives_no_device() -> None:
    routes = parse_route(route_text("*\t0000010A\t00000000\t0201\t0\t0\t0\t0000FFFF\t0\t0\t0"))
    assert route_dev(A("10.1.2.3"), routes) is None


@LITTLE
def test_down_route_gives_no_device() -> None:
    routes = parse_route(route_text(route_line("veth9", "10.4.0.0/16", flags=0)))
    assert route_dev(A("10.4.0.1"), routes) is None


@LITTLE
def test_address_under_a_reject_route_is_unknown_not_the_default() -> None:
    routes = parse_route(route_text(
        route_line("eth0", "0.0.0.0/0", gw="192.0.2.1", flags=0x0003),
        "*\t0000010A\t00000000\t0201\t0\t0\t0\t0000FFFF\t0\t0\t0"))
    assert route_dev(A("10.1.2.3"), routes) is None


@LITTLE
def test_blackhole_route_is_not_a_device() -> None:
    routes = parse_route(route_text("*\t0000000A\t00000000\t0001\t0\t0\t0\t000000FF\t0\t0\t0"))
    assert route_dev(A("10.1.2.3"), routes) is None


def test_peer_on_an_own_ipv6_address_is_received_on_lo() -> None:
    z = "0" * 32
    # captured: 2001:db8::1/64 on va in a namespace
    text = (f"20010db8000000000000000000000000 40 {z} 00 {z} 00000100 00000001 00000000 00000001       va\n"
            f"00000000000000000000000000000001 80 {z} 00 {z} 00000000 00000003 00000000 80200001       lo\n"
            f"20010db8000000000000000000000001 80 {z} 00 {z} 00000000 00000002 00000000 80200001       va\n")
    s = sock("udp", "2001:db8::1", "2001:db8::1", TCP_ESTABLISHED, rport=53)
    assert sock_dev(s, parse_ipv6_route(text)) == "lo"


# -- sock_dev ---------------------------------------------------------------------

@pytest.mark.parametrize(("s", "dev"), [
    # connected UDP: the route to its peer, whatever it is bound to
    (sock("udp", "0.0.0.0", "10.1.9.9", TCP_ESTABLISHED, rport=53), "veth2"),
    (sock("udp", "10.2.0.5", "8.8.8.8", TCP_ESTABLISHED, rport=53), "eth0"),
    # unconnected UDP bound to an address: the route of its own subnet
    (sock("udp", "10.1.0.5", "0.0.0.0", TCP_CLOSE), "veth2"),
    # unconnected wildcard: any device
    (sock("udp", "0.0.0.0", "0.0.0.0", TCP_CLOSE), None),
    (sock("udp", "::", "::", TCP_CLOSE), None),
    # TCP established: the peer
    (sock("tcp", "10.2.0.5", "10.1.2.3", TCP_ESTABLISHED, rport=443), "veth4"),
    # TCP listener bound to an address: its subnet; wildcard listener: unknown
    (sock("tcp", "10.1.0.5", "0.0.0.0", TCP_LISTEN), "veth2"),
    (sock("tcp", "0.0.0.0", "0.0.0.0", TCP_LISTEN), None),
    (sock("tcp", "2001:db8::5", "::", TCP_LISTEN), "veth1"),
    # TCP closing without a peer is not a listener: unknown even when bound
    (sock("tcp", "10.1.0.5", "0.0.0.0", TCP_CLOSE), None),
    # a peer whose route is ambiguous: unknown, NOT the bound address's route
    (sock("udp", "10.1.0.5", "10.9.1.1", TCP_ESTABLISHED, rport=1), None),
    # a link-local v6 peer: unknown
    (sock("udp", "2001:db8::5", "fe80::1", TCP_ESTABLISHED, rport=1), None),
])
def test_sock_dev(s: Sock, dev: str | None) -> None:
    assert sock_dev(s, TABLE) == dev


def test_peer_without_a_route_is_unknown_not_the_bound_subnet() -> None:
    s = sock("udp", "10.1.0.5", "172.16.0.1", TCP_ESTABLISHED, rport=53)
    assert sock_dev(s, [v4("10.0.0.0/8", "veth1")]) is None


def test_sock_dev_consumes_a_generator_once() -> None:
    s = sock("udp", "10.1.0.5", "0.0.0.0", TCP_CLOSE)
    assert sock_dev(s, (r for r in TABLE)) == "veth2"


def test_devices_of_skips_unknown_inodes_and_unknown_devices() -> None:
    view = NetView(
        socks={
            1: sock("udp", "0.0.0.0", "10.1.9.9", TCP_ESTABLISHED, rport=53, inode=1),
            2: sock("tcp", "0.0.0.0", "0.0.0.0", TCP_LISTEN, inode=2),  # wildcard: unknown
            3: sock("tcp", "10.2.0.5", "8.8.4.4", TCP_ESTABLISHED, rport=443, inode=3),
            4: sock("udp", "10.1.0.6", "0.0.0.0", TCP_CLOSE, inode=4),
        },
        routes=TABLE)
    assert devices_of([1, 2, 3, 4, 999], view) == {"veth2", "eth0"}
    assert devices_of([2, 999], view) == set()
    assert devices_of([], view) == set()


# -- read_* on a fixture tree ----------------------------------------------------

def _tree(tmp: str, files: dict[str, str], links: dict[str, str]) -> Root:
    for rel, text in files.items():
        p = os.path.join(tmp, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w") as f:
            f.write(text)
    for rel, target in links.items():
        p = os.path.join(tmp, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        os.symlink(target, p)
    return Root(tmp)


def test_read_socket_inodes_of_a_fixture_fd_table(tmp_path: os.PathLike[str]) -> None:
    root = _tree(str(tmp_path), {}, {
        "proc/77/fd/0": "/dev/null",
        "proc/77/fd/1": "pipe:[5555]",
        "proc/77/fd/3": "socket:[123]",
        "proc/77/fd/4": "socket:[456]",
        "proc/77/fd/5": "socket:[notanumber]",
        "proc/77/fd/6": "anon_inode:[eventpoll]",
        "proc/77/fd/7": "socket:[789",
    })
    assert read_socket_inodes(root, 77) == {123, 456}
    assert read_socket_inodes(root, 78) == set()  # gone


@LITTLE
def test_read_net_view_of_a_fixture_tree(tmp_path: os.PathLike[str]) -> None:
    udp = "\n".join([UDP_HEADER,
                     sock_line(1, "10.20.0.2", 5000, "10.20.0.1", 8000, TCP_ESTABLISHED, 123),
                     sock_line(2, "0.0.0.0", 53, "0.0.0.0", 0, TCP_CLOSE, 0)]) + "\n"  # inode 0
    tcp6 = (TCP6_HEADER + "\n"
            "   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A "
            "00000000:00000000 00:00000000 00000000     0        0 24054 1 0000000000000000 100 0 0 10 0\n")
    root = _tree(str(tmp_path), {
        "proc/net/udp": udp,
        "proc/net/tcp6": tcp6,
        "proc/net/route": route_text(route_line("vethX", "10.20.0.0/24")),
        "proc/net/ipv6_route": IPV6_ROUTE,
    }, {})  # no proc/net/tcp, no udp6: empty
    view = read_net_view(root)
    assert set(view.socks) == {123, 24054}
    assert view.socks[123].proto == "udp"
    assert view.socks[24054].proto == "tcp"  # tcp6 -> "tcp"
    assert v4("10.20.0.0/24", "vethX") in view.routes and v6("::1/128", "lo", local=True) in view.routes
    assert devices_of({123, 24054}, view) == {"vethX", "lo"}


def test_read_net_view_of_an_empty_tree(tmp_path: os.PathLike[str]) -> None:
    view = read_net_view(Root(str(tmp_path)))
    assert view.socks == {} and view.routes == ()


# -- live: this process's own loopback sockets -------------------------------------

@pytest.fixture
def loopback4() -> Iterator[tuple[socket.socket, socket.socket]]:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        u.bind(("127.0.0.1", 0))
        u.connect(("127.0.0.1", 9))  # connect() on UDP sends nothing
        t.bind(("127.0.0.1", 0))
        t.listen(1)
        yield u, t
    finally:
        u.close()
        t.close()


def _ino(s: socket.socket) -> int:
    return os.fstat(s.fileno()).st_ino


def test_live_loopback_sockets_are_read_back_exactly(loopback4: tuple[socket.socket, socket.socket]) -> None:
    u, t = loopback4
    root = Root("/")
    inodes = read_socket_inodes(root, os.getpid())
    assert {_ino(u), _ino(t)} <= inodes
    view = read_net_view(root)
    su, stcp = view.socks[_ino(u)], view.socks[_ino(t)]
    assert (su.proto, su.local, su.remote, su.remote_port, su.state) == (
        "udp", A("127.0.0.1"), A("127.0.0.1"), 9, TCP_ESTABLISHED)
    assert (stcp.proto, stcp.local, stcp.remote, stcp.state) == ("tcp", A("127.0.0.1"), A("0.0.0.0"),
                                                                 TCP_LISTEN)
    # the parser read the kernel's byte order right: the ports match getsockname()
    text = root.read_text("proc/net/udp")
    assert f":{u.getsockname()[1]:04X} " in text


def test_live_ipv4_loopback_sockets_receive_on_lo(loopback4: tuple[socket.socket, socket.socket]) -> None:
    u, t = loopback4
    root = Root("/")
    mine = {_ino(u), _ino(t)}
    assert mine <= read_socket_inodes(root, os.getpid())
    assert devices_of(mine, read_net_view(root)) == {"lo"}


def test_live_ipv6_loopback_socket_receives_on_lo() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this Python")
    u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    t = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        try:
            u.connect(("::1", 9))
            t.bind(("::1", 0))
        except OSError as e:
            pytest.skip(f"no ::1 on lo here: {e}")
        t.listen(1)
        root = Root("/")
        mine = {_ino(u), _ino(t)}
        assert mine <= read_socket_inodes(root, os.getpid())
        view = read_net_view(root)
        assert view.socks[_ino(u)].remote == A("::1")
        assert view.socks[_ino(t)].state == TCP_LISTEN
        assert devices_of(mine, view) == {"lo"}
    finally:
        u.close()
        t.close()


def test_a_bound_address_is_found_on_its_subnets_device_not_lo() -> None:
    """An unconnected server socket bound to a NIC's own address receives on that NIC;
    the local routes (fib_trie LOCAL, IPv6 RTF_LOCAL) say "lo" for the address itself."""
    routes = [v4("198.19.9.0/30", "v0"), v6("2001:db8:9::/64", "v0", 256),
              v6("2001:db8:9::2/128", "lo", 0, local=True)]
    local = [ipaddress.IPv4Network("198.19.9.2/32"), ipaddress.IPv4Network("127.0.0.0/8")]
    udp4 = sock("udp", "198.19.9.2", "0.0.0.0", 7)
    udp6 = sock("udp", "2001:db8:9::2", "::", 7)
    listen = sock("tcp", "198.19.9.2", "0.0.0.0", TCP_LISTEN)
    assert sock_dev(udp4, routes, local) == "v0"
    assert sock_dev(udp6, routes, local) == "v0"
    assert sock_dev(listen, routes, local) == "v0"
    # a peer on that same address is this host talking to itself: lo
    peer = sock("udp", "198.19.9.2", "198.19.9.2", 1, rport=7)
    peer6 = sock("udp", "2001:db8:9::2", "2001:db8:9::2", 1, rport=7)
    assert sock_dev(peer, routes, local) == "lo"
    assert sock_dev(peer6, routes, local) == "lo"
    # loopback stays lo, bound or not
    assert sock_dev(sock("udp", "127.0.0.1", "0.0.0.0", 7), routes, local) == "lo"


@LITTLE
def test_parse_sockets_want_keeps_only_the_inodes_asked_for() -> None:
    text = (UDP_HEADER + "\n"
            "  210: 0302010A:C350 0100000A:1F40 01 00000000:00000000 00:00000000 00000000  1000        0 "
            "4242 2 0000000000000000 0\n"
            "  211: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 "
            "17 2 0000000000000000 0\n"
            "  212: NOTHEX:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 "
            "99 2 0000000000000000 0\n")
    assert [s.inode for s in parse_sockets(text, "udp", want={17})] == [17]
    # a malformed line not asked for is skipped without parsing its addresses
    assert [s.inode for s in parse_sockets(text, "udp", want={4242, 99})] == [4242]
    assert parse_sockets(text, "udp", want=set()) == []
    assert [s.inode for s in parse_sockets(text, "udp")] == [4242, 17]


def test_read_socket_inodes_looks_at_max_fds_descriptors(tmp_path: os.PathLike[str]) -> None:
    root = _tree(str(tmp_path), {}, {f"proc/77/fd/{n}": f"socket:[{1000 + n}]" for n in range(10)})
    assert len(read_socket_inodes(root, 77)) == 10
    assert len(read_socket_inodes(root, 77, max_fds=4)) == 4
