#!/usr/bin/env python3
"""Writes COUNT 64-byte Ethernet/IPv4/UDP frames (198.18.0.0/15) to a pcap file, fast (no scapy).
Usage: write_udp_capture.py FILE [COUNT]"""
import struct
import sys


def checksum(header):
    total = sum(struct.unpack("!10H", header))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


def main(path, count):
    with open(path, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        ether = bytes.fromhex("02000000000b02000000000a0800")
        frames = []
        for flow in range(256):
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 46, flow, 0, 64, 17, 0,
                             bytes([198, 18, 0, flow]), bytes([198, 19, 0, 1]))
            ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
            udp = struct.pack("!HHHH", 1024 + flow, 9, 26, 0) + bytes(18)
            frames.append(ether + ip + udp)  # 14 + 20 + 26 = 60 bytes + 4 FCS on the wire = 64
        for index in range(count):
            frame = frames[index & 255]
            seconds, micros = divmod(index, 1_000_000)
            out.write(struct.pack("<IIII", 1_700_000_000 + seconds, micros, len(frame), 64))
            out.write(frame)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000)
