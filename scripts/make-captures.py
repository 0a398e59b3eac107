#!/usr/bin/python3
"""Writes the test captures Sluice did not write itself, with scapy (Debian's python3-scapy).

Usage: scripts/make-captures.py OUTDIR        # the set the tests read
       scripts/make-captures.py --sample FILE  # the bundled sample capture for `make demo`

Addresses come from 198.18.0.0/15 and 2001:db8::/32 (documentation/benchmarking ranges) only.
"""
import os
import random
import sys
from decimal import Decimal

from scapy.all import (ICMP, IP, IPv6, TCP, UDP, Dot1AD, Dot1Q, Ether, ICMPv6EchoRequest, IPv6ExtHdrDestOpt,
                       IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, Raw, fragment, wrpcap)
from scapy.layers.l2 import CookedLinux
from scapy.layers.vxlan import VXLAN
from scapy.utils import PcapNgWriter, PcapWriter

MAC_A, MAC_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"


def stamp(packets, start="1700000000", gap="0.0001"):
    """Timestamps as decimals, so nanosecond digits survive (floats keep about 7 of them)."""
    for index, packet in enumerate(packets):
        packet.time = Decimal(start) + index * Decimal(gap)
    return packets


def udp(i, src="198.18.0.1", dst="198.19.0.1", size=18):
    return Ether(src=MAC_A, dst=MAC_B) / IP(src=src, dst=dst) / UDP(sport=1024 + i % 1000, dport=9) / Raw(bytes(size))


def write_set(out):
    os.makedirs(out, exist_ok=True)
    wrpcap(f"{out}/eth_udp.pcap", stamp([udp(i) for i in range(100)]))
    wrpcap(f"{out}/eth_udp_ns.pcap", stamp([udp(i) for i in range(100)], start="1700000000.123456789"), nano=True)
    vlan = [Ether(src=MAC_A, dst=MAC_B) / Dot1Q(vlan=100 + i % 3) / IP(src="198.18.0.2", dst="198.19.0.2") /
            TCP(sport=40000 + i, dport=80, flags="S") for i in range(30)]
    qinq = [Ether(src=MAC_A, dst=MAC_B) / Dot1AD(vlan=7) / Dot1Q(vlan=200 + i % 2) /
            IP(src="198.18.0.3", dst="198.19.0.3") / UDP(sport=53, dport=5353) / Raw(b"q" * 10) for i in range(20)]
    wrpcap(f"{out}/vlan_qinq.pcap", stamp(vlan + qinq))
    v6 = [Ether(src=MAC_A, dst=MAC_B) / IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrHopByHop() /
          IPv6ExtHdrRouting() / IPv6ExtHdrDestOpt() / UDP(sport=1000 + i, dport=2000) / Raw(b"6" * 20)
          for i in range(20)]
    v6 += [Ether(src=MAC_A, dst=MAC_B) / IPv6(src="2001:db8::1", dst="2001:db8::3") / ICMPv6EchoRequest(id=i)
           for i in range(10)]
    v6 += [Ether(src=MAC_A, dst=MAC_B) / IPv6(src="2001:db8::1", dst="2001:db8::4") /
           IPv6ExtHdrFragment(id=i, m=1, offset=0) / UDP(sport=7, dport=7) / Raw(b"f" * 40) for i in range(5)]
    wrpcap(f"{out}/ipv6_ext.pcap", stamp(v6))
    big = IP(src="198.18.0.4", dst="198.19.0.4", id=4242) / UDP(sport=5000, dport=5001) / Raw(bytes(3000))
    frags = [Ether(src=MAC_A, dst=MAC_B) / f for f in fragment(big, fragsize=1000)]
    frags += [Ether(src=MAC_A, dst=MAC_B) / IP(src="198.18.0.4", dst="198.19.0.4") / ICMP(id=i) for i in range(5)]
    wrpcap(f"{out}/fragments.pcap", stamp(frags))
    sll = [CookedLinux(pkttype=0, lladdrtype=1, lladdrlen=6, src=bytes.fromhex("02000000000a") + b"\0\0", proto=0x0800) /
           IP(src="198.18.0.5", dst="198.19.0.5") / UDP(sport=1, dport=2) / Raw(b"s" * 8) for _ in range(25)]
    wrpcap(f"{out}/sll.pcap", stamp(sll), linktype=113)
    raw = [IP(src="198.18.0.6", dst="198.19.0.6") / TCP(sport=3000 + i, dport=443, flags="A") for i in range(25)]
    wrpcap(f"{out}/rawip.pcap", stamp(raw), linktype=101)
    vx = [Ether(src=MAC_A, dst=MAC_B) / IP(src="198.18.0.7", dst="198.19.0.7") / UDP(sport=49152, dport=4789) /
          VXLAN(vni=42) / Ether(src=MAC_B, dst=MAC_A) / IP(src="198.18.1.1", dst="198.18.1.2") / UDP(sport=9, dport=9)
          for _ in range(10)]
    wrpcap(f"{out}/vxlan.pcap", stamp(vx))
    writer = PcapNgWriter(f"{out}/mixed.pcapng")
    for packet in stamp([udp(i) for i in range(40)] + vlan[:10]):
        writer.write(packet)
    writer.close()
    # A capture cut in the middle of its last record: 99 whole records, then 30 bytes of the 100th.
    with open(f"{out}/eth_udp.pcap", "rb") as whole:
        data = whole.read()
    record = 16 + len(udp(0))
    with open(f"{out}/truncated.pcap", "wb") as cut:
        cut.write(data[: len(data) - record + 30])
    # A record header claiming a length far beyond the snapshot length: corrupt, not merely cut.
    with open(f"{out}/corrupt.pcap", "wb") as bad:
        bad.write(data[: 24 + 3 * record])
        bad.write((1_700_000_000).to_bytes(4, "little") + (0).to_bytes(4, "little") +
                  (0x7FFFFFF0).to_bytes(4, "little") + (0x7FFFFFF0).to_bytes(4, "little"))
        bad.write(data[24 + 4 * record - len(udp(0)):])


def write_sample(path):
    """2000 packets from four sources (MAC, VLAN and prefix differ), mixed protocols, 100 µs apart."""
    rng = random.Random(7)
    packets = []
    for index in range(2000):
        source = index % 4
        mac = f"02:00:00:00:01:0{source}"
        ip = IP(src=f"198.18.{source}.{1 + rng.randrange(200)}", dst=f"198.19.0.{1 + rng.randrange(200)}")
        kind = rng.randrange(4)
        if kind == 0:
            l4 = UDP(sport=rng.randrange(1024, 65535), dport=53) / Raw(bytes(rng.randrange(18, 200)))
        elif kind == 1:
            l4 = TCP(sport=rng.randrange(1024, 65535), dport=443, flags="PA") / Raw(bytes(rng.randrange(0, 300)))
        elif kind == 2:
            l4 = ICMP(id=index)
        else:
            l4 = UDP(sport=4000 + source, dport=4000) / Raw(bytes(64))
        frame = Ether(src=mac, dst=MAC_B)
        if source >= 2:
            frame = frame / Dot1Q(vlan=10 * source)
        packets.append(frame / ip / l4)
    wrpcap(path, stamp(packets))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--sample":
        write_sample(sys.argv[2])
    elif len(sys.argv) == 2:
        write_set(sys.argv[1])
    else:
        sys.exit(__doc__)
