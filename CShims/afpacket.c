/* Path: CShims/afpacket.c — AF_PACKET sockets, rings and namespaces: thin wrappers, -errno on failure. */
#define _GNU_SOURCE
#include "sluice_afpacket.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

/* The mirrored headers and constants in sluice_afpacket.h must match the kernel's exactly. */
_Static_assert(SLUICE_AFPACKET_TPACKET_V2 == TPACKET_V2, "TPACKET_V2");
_Static_assert(SLUICE_AFPACKET_TPACKET_V3 == TPACKET_V3, "TPACKET_V3");
_Static_assert(SLUICE_AFPACKET_STATUS_KERNEL == TP_STATUS_KERNEL, "TP_STATUS_KERNEL");
_Static_assert(SLUICE_AFPACKET_STATUS_USER == TP_STATUS_USER, "TP_STATUS_USER");
_Static_assert(SLUICE_AFPACKET_STATUS_AVAILABLE == TP_STATUS_AVAILABLE, "TP_STATUS_AVAILABLE");
_Static_assert(SLUICE_AFPACKET_STATUS_SEND_REQUEST == TP_STATUS_SEND_REQUEST, "TP_STATUS_SEND_REQUEST");
_Static_assert(SLUICE_AFPACKET_STATUS_SENDING == TP_STATUS_SENDING, "TP_STATUS_SENDING");
_Static_assert(SLUICE_AFPACKET_STATUS_WRONG_FORMAT == TP_STATUS_WRONG_FORMAT, "TP_STATUS_WRONG_FORMAT");
_Static_assert(SLUICE_AFPACKET_STATUS_VLAN_VALID == TP_STATUS_VLAN_VALID, "TP_STATUS_VLAN_VALID");
_Static_assert(SLUICE_AFPACKET_STATUS_VLAN_TPID_VALID == TP_STATUS_VLAN_TPID_VALID, "TP_STATUS_VLAN_TPID_VALID");
_Static_assert(SLUICE_AFPACKET_FANOUT_HASH == PACKET_FANOUT_HASH, "PACKET_FANOUT_HASH");
_Static_assert(SLUICE_AFPACKET_FANOUT_FLAG_DEFRAG == PACKET_FANOUT_FLAG_DEFRAG, "PACKET_FANOUT_FLAG_DEFRAG");
_Static_assert(SLUICE_AFPACKET_TX_DATA_OFFSET == TPACKET2_HDRLEN - sizeof(struct sockaddr_ll), "TX data offset");

#define SLUICE_SAME_FIELD(ours, field, theirs, kfield)                                                    \
    _Static_assert(offsetof(ours, field) == offsetof(theirs, kfield) &&                                   \
                       sizeof(((ours *)0)->field) == sizeof(((theirs *)0)->kfield),                       \
                   #ours "." #field " mirrors " #theirs "." #kfield)
SLUICE_SAME_FIELD(struct sluice_afpacket_block_header, block_status, struct tpacket_block_desc, hdr.bh1.block_status);
SLUICE_SAME_FIELD(struct sluice_afpacket_block_header, packet_count, struct tpacket_block_desc, hdr.bh1.num_pkts);
SLUICE_SAME_FIELD(struct sluice_afpacket_block_header, first_frame_offset, struct tpacket_block_desc,
                  hdr.bh1.offset_to_first_pkt);
SLUICE_SAME_FIELD(struct sluice_afpacket_block_header, block_length, struct tpacket_block_desc, hdr.bh1.blk_len);
SLUICE_SAME_FIELD(struct sluice_afpacket_block_header, sequence, struct tpacket_block_desc, hdr.bh1.seq_num);
SLUICE_SAME_FIELD(struct sluice_afpacket_v3_frame_header, next_offset, struct tpacket3_hdr, tp_next_offset);
SLUICE_SAME_FIELD(struct sluice_afpacket_v3_frame_header, seconds, struct tpacket3_hdr, tp_sec);
SLUICE_SAME_FIELD(struct sluice_afpacket_v3_frame_header, nanoseconds, struct tpacket3_hdr, tp_nsec);
SLUICE_SAME_FIELD(struct sluice_afpacket_v3_frame_header, snap_length, struct tpacket3_hdr, tp_snaplen);
SLUICE_SAME_FIELD(struct sluice_afpacket_v3_frame_header, wire_length, struct tpacket3_hdr, tp_len);
SLUICE_SAME_FIELD(struct sluice_afpacket_v3_frame_header, status, struct tpacket3_hdr, tp_status);
SLUICE_SAME_FIELD(struct sluice_afpacket_v3_frame_header, mac_offset, struct tpacket3_hdr, tp_mac);
SLUICE_SAME_FIELD(struct sluice_afpacket_v3_frame_header, vlan_tci, struct tpacket3_hdr, hv1.tp_vlan_tci);
SLUICE_SAME_FIELD(struct sluice_afpacket_v3_frame_header, vlan_tpid, struct tpacket3_hdr, hv1.tp_vlan_tpid);
_Static_assert(sizeof(struct sluice_afpacket_v3_frame_header) == sizeof(struct tpacket3_hdr), "tpacket3_hdr size");
SLUICE_SAME_FIELD(struct sluice_afpacket_v2_frame_header, status, struct tpacket2_hdr, tp_status);
SLUICE_SAME_FIELD(struct sluice_afpacket_v2_frame_header, length, struct tpacket2_hdr, tp_len);
SLUICE_SAME_FIELD(struct sluice_afpacket_v2_frame_header, snap_length, struct tpacket2_hdr, tp_snaplen);
SLUICE_SAME_FIELD(struct sluice_afpacket_v2_frame_header, mac_offset, struct tpacket2_hdr, tp_mac);
_Static_assert(sizeof(struct sluice_afpacket_v2_frame_header) == sizeof(struct tpacket2_hdr), "tpacket2_hdr size");

int sluice_afpacket_socket(void) {
    /* Protocol 0: nothing is queued before bind(), so no frame lands outside the ring. */
    int fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
    return fd < 0 ? -errno : fd;
}

int sluice_afpacket_close(int fd) { return close(fd) == 0 ? 0 : -errno; }

int sluice_afpacket_interface_index(const char *name) {
    unsigned int index = if_nametoindex(name);
    return index == 0 ? -errno : (int)index;
}

int sluice_afpacket_interface_mtu(int fd, const char *name) {
    struct ifreq request;
    memset(&request, 0, sizeof(request));
    size_t length = strnlen(name, IFNAMSIZ);
    if (length == 0 || length >= IFNAMSIZ) return -EINVAL;
    memcpy(request.ifr_name, name, length);
    if (ioctl(fd, SIOCGIFMTU, &request) != 0) return -errno;
    return request.ifr_mtu;
}

static int set_int_option(int fd, int option, int value) {
    return setsockopt(fd, SOL_PACKET, option, &value, sizeof(value)) == 0 ? 0 : -errno;
}

int sluice_afpacket_set_version(int fd, int version) { return set_int_option(fd, PACKET_VERSION, version); }
int sluice_afpacket_set_qdisc_bypass(int fd, int on) { return set_int_option(fd, PACKET_QDISC_BYPASS, on); }
int sluice_afpacket_set_loss(int fd, int on) { return set_int_option(fd, PACKET_LOSS, on); }
int sluice_afpacket_set_ignore_outgoing(int fd, int on) { return set_int_option(fd, PACKET_IGNORE_OUTGOING, on); }

int sluice_afpacket_set_rx_ring(int fd, uint32_t block_size, uint32_t block_count, uint32_t frame_size,
                                uint32_t block_timeout_ms) {
    if (frame_size == 0 || block_size < frame_size) return -EINVAL;
    struct tpacket_req3 request;
    memset(&request, 0, sizeof(request));
    request.tp_block_size = block_size;
    request.tp_block_nr = block_count;
    request.tp_frame_size = frame_size;
    request.tp_frame_nr = (block_size / frame_size) * block_count;
    request.tp_retire_blk_tov = block_timeout_ms;
    return setsockopt(fd, SOL_PACKET, PACKET_RX_RING, &request, sizeof(request)) == 0 ? 0 : -errno;
}

int sluice_afpacket_set_tx_ring(int fd, uint32_t block_size, uint32_t block_count, uint32_t frame_size) {
    if (frame_size == 0 || block_size < frame_size) return -EINVAL;
    struct tpacket_req request;
    memset(&request, 0, sizeof(request));
    request.tp_block_size = block_size;
    request.tp_block_nr = block_count;
    request.tp_frame_size = frame_size;
    request.tp_frame_nr = (block_size / frame_size) * block_count;
    return setsockopt(fd, SOL_PACKET, PACKET_TX_RING, &request, sizeof(request)) == 0 ? 0 : -errno;
}

int sluice_afpacket_map(int fd, size_t size, void **map) {
    void *memory = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
    if (memory == MAP_FAILED) return -errno;
    *map = memory;
    return 0;
}

int sluice_afpacket_unmap(void *map, size_t size) { return munmap(map, size) == 0 ? 0 : -errno; }

int sluice_afpacket_bind(int fd, int ifindex, uint16_t protocol) {
    struct sockaddr_ll address;
    memset(&address, 0, sizeof(address));
    address.sll_family = AF_PACKET;
    address.sll_protocol = htons(protocol);
    address.sll_ifindex = ifindex;
    return bind(fd, (struct sockaddr *)&address, sizeof(address)) == 0 ? 0 : -errno;
}

int sluice_afpacket_join_fanout(int fd, uint16_t group, uint16_t mode, uint16_t flags) {
    return set_int_option(fd, PACKET_FANOUT, (int)((uint32_t)group | ((uint32_t)(mode | flags) << 16)));
}

int sluice_afpacket_rx_statistics(int fd, struct sluice_afpacket_rx_stats *stats) {
    struct tpacket_stats_v3 kernel;
    memset(&kernel, 0, sizeof(kernel));
    socklen_t length = sizeof(kernel);
    if (getsockopt(fd, SOL_PACKET, PACKET_STATISTICS, &kernel, &length) != 0) return -errno;
    stats->packets = kernel.tp_packets;
    stats->drops = kernel.tp_drops;
    stats->freeze_queue_count = kernel.tp_freeze_q_cnt;
    return 0;
}

int sluice_afpacket_statistics(int fd, struct sluice_afpacket_rx_stats *stats) {
    struct tpacket_stats kernel;
    memset(&kernel, 0, sizeof(kernel));
    socklen_t length = sizeof(kernel);
    if (getsockopt(fd, SOL_PACKET, PACKET_STATISTICS, &kernel, &length) != 0) return -errno;
    stats->packets = kernel.tp_packets;
    stats->drops = kernel.tp_drops;
    stats->freeze_queue_count = 0;
    return 0;
}

int sluice_afpacket_kick(int fd) {
    ssize_t sent = sendto(fd, NULL, 0, MSG_DONTWAIT, NULL, 0);
    return sent < 0 ? -errno : (int)(sent > INT32_MAX ? INT32_MAX : sent);
}

int sluice_afpacket_poll(int fd, short events, int timeout_ms) {
    struct pollfd entry = {.fd = fd, .events = events, .revents = 0};
    int rc = poll(&entry, 1, timeout_ms);
    if (rc < 0) return -errno;
    return rc > 0 ? 1 : 0;
}

int sluice_afpacket_enter_netns(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
    int rc = setns(fd, CLONE_NEWNET) == 0 ? 0 : -errno;
    close(fd);
    return rc;
}

int sluice_afpacket_page_size(void) { return (int)sysconf(_SC_PAGESIZE); }
