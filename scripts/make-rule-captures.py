#!/usr/bin/python3
"""Writes the captures the rule tests read, with scapy (Debian's python3-scapy): one input capture,
and for each case the rule (a YAML flow mapping, as `sluice replay --rule` takes it) and the capture
sluice must write, built here by scapy with its checksums recomputed by scapy.

Usage: scripts/make-rule-captures.py OUTDIR
  OUTDIR/rules-in.pcap           the input
  OUTDIR/rules-cases.txt         NAME<TAB>RULE per line
  OUTDIR/rules-NAME.pcap         the expected output of each case
  OUTDIR/tcprewrite-in.pcap      input for the tcprewrite comparisons (correct checksums; IPv4 only:
                                 tcprewrite 4.4.3 sets an IPv6 frame's MACs to 33:33:00:00:00:01/02 whatever
                                 its flags, which sluice does not copy)
  OUTDIR/tcprewrite-badsum.pcap  input with wrong IPv4 and UDP checksums (for --fixcsum)

Addresses come from 198.18.0.0/15 and 2001:db8::/32 (documentation/benchmarking ranges) only.
"""
import sys

from scapy.all import ARP, ICMP, IP, IPv6, TCP, UDP, Dot1Q, Ether, Raw, wrpcap

A, B, C = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:0c"


def inputs():
    return [
        Ether(src=A, dst=B) / IP(src="198.18.0.1", dst="198.19.1.2", ttl=64) / TCP(sport=40000, dport=80) / Raw(b"hello"),
        Ether(src=A, dst=B) / Dot1Q(vlan=30, prio=2) / IP(src="198.18.0.2", dst="198.19.1.3") / UDP(sport=5000, dport=60) / Raw(b"dns"),
        Ether(src=A, dst=B) / IPv6(src="2001:db8::1", dst="2001:db8:ff::2", hlim=64) / TCP(sport=40001, dport=443),
        Ether(src=C, dst=B) / IP(src="198.18.0.3", dst="198.18.0.4") / ICMP() / Raw(b"ping"),
        Ether(src=A, dst=B) / IPv6(src="2001:db8::3", dst="2001:db8:1::2") / UDP(sport=1000, dport=2000) / Raw(b"v6"),
        Ether(src=A, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc="198.18.0.1", pdst="198.18.0.9"),
    ]


def rebuilt(packet):
    """The packet with every checksum and length left for scapy to compute."""
    for layer in (IP, TCP, UDP, ICMP):
        if layer in packet:
            del packet[layer].chksum
    return Ether(bytes(packet))


def keep(predicate):
    return lambda packets: [p for p in packets if predicate(p)]


def each(edit):
    def apply(packets):
        out = []
        for p in packets:
            p = p.copy()
            out.append(rebuilt(edit(p) or p))
        return out
    return apply


def set_macs(p):
    p.src, p.dst = "02:00:00:00:00:ee", "02:00:00:00:00:ff"


def push_vlan(p):
    if IP in p and UDP in p and p[IP].src.startswith("198.18."):
        return Ether(src=p.src, dst=p.dst, type=0x8100) / Dot1Q(vlan=7, prio=3, type=0x8100) / p.payload


def pop_vlan(p):
    if Dot1Q in p and p[Dot1Q].vlan == 30:
        return Ether(src=p.src, dst=p.dst, type=p[Dot1Q].type) / p[Dot1Q].payload


def set_vlan(p):
    if Dot1Q in p and p[Dot1Q].vlan == 30:
        p[Dot1Q].vlan = 99


def nat4(p):
    if TCP in p:
        if IP in p:
            p[IP].src = "198.18.5.5"
            p[IP].ttl = 5
        if IPv6 in p:
            p[IPv6].hlim = 5
        p[TCP].dport = 8080


def nat6(p):
    if IPv6 in p:
        p[IPv6].dst = str(p[IPv6].dst).replace("2001:db8:", "2001:db9:", 1)
        p[IPv6].hlim -= 1
        p.getlayer(2).sport = 7


def ipv6_dst(p):
    return IPv6 in p and p[IPv6].dst.startswith("2001:db8:ff:")


CASES = [
    ("drop-tcp", "{match: {protocol: tcp}, action: drop}", keep(lambda p: TCP not in p)),
    ("drop-vlan", "{match: {vlan: 30}, action: drop}", keep(lambda p: Dot1Q not in p)),
    ("drop-src-mac", "{match: {src_mac: '02:00:00:00:00:0c'}, action: drop}", keep(lambda p: p.src != C)),
    ("drop-dst-mac", "{match: {dst_mac: 'ff:ff:ff:ff:ff:ff'}, action: drop}", keep(lambda p: ARP not in p)),
    ("drop-v4-prefix", "{match: {src_prefix: 198.18.0.0/31}, action: drop}",
     keep(lambda p: not (IP in p and p[IP].src in ("198.18.0.0", "198.18.0.1")))),
    ("drop-v6-prefix", "{match: {dst_prefix: '2001:db8:ff::/48'}, action: drop}", keep(lambda p: not ipv6_dst(p))),
    ("drop-port-range", "{match: {dst_port: 50-100}, action: drop}",
     keep(lambda p: not ((TCP in p or UDP in p) and 50 <= p.getlayer(2 if Dot1Q not in p else 3).dport <= 100))),
    ("drop-src-ports", "{match: {protocol: tcp, src_port: 40001-40001}, action: drop}", keep(lambda p: not (TCP in p and p[TCP].sport == 40001))),
    ("count", "{name: icmp, match: {protocol: icmp}, action: count}", lambda packets: packets),
    ("set-macs", "{rewrite: [{set_src_mac: '02:00:00:00:00:ee'}, {set_dst_mac: '02:00:00:00:00:ff'}]}", each(set_macs)),
    ("push-vlan", "{match: {protocol: udp, src_prefix: 198.18.0.0/16}, rewrite: [{push_vlan: {id: 7, priority: 3}}]}", each(push_vlan)),
    ("pop-vlan", "{match: {vlan: 30}, rewrite: [{pop_vlan: true}]}", each(pop_vlan)),
    ("set-vlan", "{match: {vlan: 30}, rewrite: [{set_vlan: 99}]}", each(set_vlan)),
    ("nat4", "{match: {protocol: tcp}, rewrite: [{set_src_ip: 198.18.5.5}, {set_dst_port: 8080}, {set_ttl: 5}]}", each(nat4)),
    ("nat6", "{match: {dst_prefix: '2001:db8::/32'}, rewrite: [{set_dst_ip: '2001:db9::/32'}, {dec_ttl: true}, {set_src_port: 7}]}", each(nat6)),
]


def tcprewrite_inputs():
    return [
        Ether(src=A, dst=B) / IP(src="198.18.1.2", dst="198.19.8.7") / UDP(sport=1000, dport=2000) / Raw(b"x" * 1800),
        Ether(src=A, dst=B) / IP(src="198.18.255.255", dst="198.19.0.0") / TCP(sport=5, dport=6) / Raw(b"y" * 10),
        Ether(src=A, dst=B) / IP(src="198.18.3.4", dst="198.19.5.6") / ICMP() / Raw(b"z" * 1600),
        Ether(src=A, dst=B) / Dot1Q(vlan=5) / IP(src="198.18.0.9", dst="198.19.0.9") / TCP(sport=7, dport=8) / Raw(b"w" * 1200),
        Ether(src=C, dst=B) / IP(src="198.19.0.1", dst="198.18.0.1") / UDP(sport=3, dport=4) / Raw(b"u" * 30),
    ]


def main():
    out = sys.argv[1]
    packets = [Ether(bytes(p)) for p in inputs()]
    for p in packets + tcprewrite_inputs():
        assert bytes(Ether(bytes(p))) == bytes(p), f"scapy does not rebuild {p.summary()} as it read it"
    wrpcap(f"{out}/rules-in.pcap", packets)
    with open(f"{out}/rules-cases.txt", "w") as cases:
        for name, rule, expected in CASES:
            cases.write(f"{name}\t{rule}\n")
            wrpcap(f"{out}/rules-{name}.pcap", expected([Ether(bytes(p)) for p in packets]))
    wrpcap(f"{out}/tcprewrite-in.pcap", [Ether(bytes(p)) for p in tcprewrite_inputs()])
    bad = [Ether(src=A, dst=B) / IP(src="198.18.1.2", dst="198.19.8.7", chksum=0x1234) / UDP(sport=1, dport=2, chksum=0x5555) / Raw(b"x" * 18),
           Ether(src=A, dst=B) / IP(src="198.18.1.3", dst="198.19.8.8") / TCP(sport=1, dport=2, chksum=0x7777) / Raw(b"t" * 5)]
    wrpcap(f"{out}/tcprewrite-badsum.pcap", [Ether(bytes(p)) for p in bad])


if __name__ == "__main__":
    main()
