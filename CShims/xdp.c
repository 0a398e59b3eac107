/* Path: CShims/xdp.c — AF_XDP set-up through libxdp (xsk_umem__create, xsk_socket__create) and libbpf
 * (bpf_xdp_query). Thin wrappers: every function returns >= 0 or -errno, nothing is kept here. */
#define _GNU_SOURCE
#include "sluice_xdp.h"

#include <bpf/libbpf.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/stat.h>
#include <stdarg.h>
#include <linux/if_link.h>
#include <linux/if_xdp.h>
#include <net/if.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <xdp/libxdp.h>
#include <xdp/xsk.h>

/* The mirrors in sluice_xdp.h are libxdp's and the kernel's structs, field for field. */
_Static_assert(sizeof(struct sluice_xdp_ring) == sizeof(struct xsk_ring_prod), "ring mirror size");
_Static_assert(sizeof(struct sluice_xdp_ring) == sizeof(struct xsk_ring_cons), "ring mirror size");
_Static_assert(offsetof(struct sluice_xdp_ring, cached_prod) == offsetof(struct xsk_ring_prod, cached_prod), "ring");
_Static_assert(offsetof(struct sluice_xdp_ring, cached_cons) == offsetof(struct xsk_ring_prod, cached_cons), "ring");
_Static_assert(offsetof(struct sluice_xdp_ring, mask) == offsetof(struct xsk_ring_prod, mask), "ring");
_Static_assert(offsetof(struct sluice_xdp_ring, size) == offsetof(struct xsk_ring_prod, size), "ring");
_Static_assert(offsetof(struct sluice_xdp_ring, producer) == offsetof(struct xsk_ring_prod, producer), "ring");
_Static_assert(offsetof(struct sluice_xdp_ring, consumer) == offsetof(struct xsk_ring_prod, consumer), "ring");
_Static_assert(offsetof(struct sluice_xdp_ring, ring) == offsetof(struct xsk_ring_prod, ring), "ring");
_Static_assert(offsetof(struct sluice_xdp_ring, flags) == offsetof(struct xsk_ring_prod, flags), "ring");
_Static_assert(sizeof(struct sluice_xdp_desc) == sizeof(struct xdp_desc), "desc mirror size");
_Static_assert(offsetof(struct sluice_xdp_desc, addr) == offsetof(struct xdp_desc, addr), "desc");
_Static_assert(offsetof(struct sluice_xdp_desc, len) == offsetof(struct xdp_desc, len), "desc");
_Static_assert(offsetof(struct sluice_xdp_desc, options) == offsetof(struct xdp_desc, options), "desc");
_Static_assert(SLUICE_XDP_RING_NEED_WAKEUP == XDP_RING_NEED_WAKEUP, "need-wakeup flag");
_Static_assert(sizeof(struct sluice_xdp_stats) == sizeof(struct xdp_statistics), "statistics mirror");

int sluice_xdp_open(struct sluice_xdp_socket *s, const char *ifname, uint32_t queue, int receive, int mode,
                    uint32_t frame_count, uint32_t frame_size, uint32_t ring_size, int numa_node, int *step) {
    memset(s, 0, sizeof *s);
    s->fd = -1;
    s->netns_fd = -1;
    *step = SLUICE_XDP_STEP_IFINDEX;
    if (if_nametoindex(ifname) == 0) return -errno;
    *step = SLUICE_XDP_STEP_MMAP;
    size_t size = (size_t)frame_count * frame_size;
    void *area = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (area == MAP_FAILED) return -errno;
    if (numa_node >= 0 && numa_node < 64) {
        /* MPOL_PREFERRED (1), before the pages fault in; a hint only, so its failure is ignored. */
        unsigned long mask = 1ul << numa_node;
        (void)syscall(SYS_mbind, area, size, 1, &mask, 64ul, 0u);
    }
    (void)madvise(area, size, MADV_WILLNEED);
    memset(area, 0, size);  /* fault every page in now, NUMA-local to the policy above */
    *step = SLUICE_XDP_STEP_UMEM;
    struct xsk_umem_config umem_config = {
        .fill_size = ring_size, .comp_size = ring_size, .frame_size = frame_size, .frame_headroom = 0, .flags = 0,
    };
    struct xsk_umem *umem = NULL;
    int rc = xsk_umem__create(&umem, area, size, (struct xsk_ring_prod *)&s->fill,
                              (struct xsk_ring_cons *)&s->completion, &umem_config);
    if (rc) {
        munmap(area, size);
        return rc < 0 ? rc : -rc;
    }
    *step = SLUICE_XDP_STEP_SOCKET;
    struct xsk_socket_config config;
    memset(&config, 0, sizeof config);
    config.rx_size = receive ? ring_size : 0;
    config.tx_size = receive ? 0 : ring_size;
    config.libxdp_flags = receive ? 0 : XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD;
    config.xdp_flags = mode == SLUICE_XDP_MODE_NATIVE ? XDP_FLAGS_DRV_MODE
                     : mode == SLUICE_XDP_MODE_GENERIC ? XDP_FLAGS_SKB_MODE : 0;
    /* Copy mode: veth and most drivers here have no zero-copy; need-wakeup spares syscalls when busy. */
    config.bind_flags = XDP_COPY | XDP_USE_NEED_WAKEUP;
    struct xsk_socket *xsk = NULL;
    rc = xsk_socket__create(&xsk, ifname, queue, umem, receive ? (struct xsk_ring_cons *)&s->rx : NULL,
                            receive ? NULL : (struct xsk_ring_prod *)&s->tx, &config);
    if (rc) {
        xsk_umem__delete(umem);
        munmap(area, size);
        memset(s, 0, sizeof *s);
        s->fd = -1;
        s->netns_fd = -1;
        return rc < 0 ? rc : -rc;
    }
    s->netns_fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);  /* -1: close stays in place */
    s->umem = umem;
    s->xsk = xsk;
    s->area = area;
    s->area_size = size;
    s->frame_size = frame_size;
    s->frame_count = frame_count;
    s->fd = xsk_socket__fd(xsk);
    s->mode = receive ? mode : SLUICE_XDP_MODE_NONE;
    return 0;
}

/* 1 if the calling thread's network namespace is the one `fd` refers to (or that cannot be told). */
static int sluice_xdp_in_netns(int fd) {
    struct stat mine, theirs;
    if (stat("/proc/thread-self/ns/net", &mine) != 0 || fstat(fd, &theirs) != 0) return 1;
    return mine.st_ino == theirs.st_ino && mine.st_dev == theirs.st_dev;
}

void sluice_xdp_close(struct sluice_xdp_socket *s) {
    int back = -1;
    if (s->netns_fd >= 0 && !sluice_xdp_in_netns(s->netns_fd)) {
        back = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
        if (back >= 0 && setns(s->netns_fd, CLONE_NEWNET) != 0) {
            close(back);
            back = -1;
        }
    }
    if (s->xsk) xsk_socket__delete((struct xsk_socket *)s->xsk);
    if (s->umem) xsk_umem__delete((struct xsk_umem *)s->umem);
    if (s->area) munmap(s->area, s->area_size);
    if (back >= 0) {
        (void)setns(back, CLONE_NEWNET);
        close(back);
    }
    if (s->netns_fd >= 0) close(s->netns_fd);
    memset(s, 0, sizeof *s);
    s->fd = -1;
    s->netns_fd = -1;
}

int sluice_xdp_statistics(int fd, struct sluice_xdp_stats *stats) {
    struct xdp_statistics kernel;
    memset(&kernel, 0, sizeof kernel);
    socklen_t length = sizeof kernel;
    if (getsockopt(fd, SOL_XDP, XDP_STATISTICS, &kernel, &length) != 0) return -errno;
    stats->rx_dropped = kernel.rx_dropped;
    stats->rx_invalid_descs = kernel.rx_invalid_descs;
    stats->tx_invalid_descs = kernel.tx_invalid_descs;
    stats->rx_ring_full = kernel.rx_ring_full;
    stats->rx_fill_ring_empty_descs = kernel.rx_fill_ring_empty_descs;
    stats->tx_ring_empty_descs = kernel.tx_ring_empty_descs;
    return 0;
}

int sluice_xdp_tx_learn_refused(struct sluice_xdp_socket *s, uint32_t bad_option, uint32_t rounds,
                                uint64_t *invalid) {
    struct sluice_xdp_stats before, after;
    int rc = sluice_xdp_statistics(s->fd, &before);
    if (rc) return rc;
    *invalid = before.tx_invalid_descs;
    uint32_t index;
    if (s->frame_size < 60 || sluice_xdp_prod_reserve(&s->tx, 1, &index) != 1) return -ENOSPC;
    memset(s->area, 0, 60);
    struct sluice_xdp_desc *desc = sluice_xdp_desc_at(&s->tx, index);
    desc->addr = 0;
    desc->len = 60;
    desc->options = bad_option;
    sluice_xdp_prod_submit(&s->tx, 1);
    for (uint32_t round = 0; round < rounds; round++) {
        (void)sluice_xdp_kick_tx(s->fd);  /* -EAGAIN and the like: the next round kicks again */
        uint32_t first;
        if (sluice_xdp_cons_peek(&s->completion, 1, &first) == 1) {
            uint64_t address = *sluice_xdp_addr_at(&s->completion, first);
            sluice_xdp_cons_release(&s->completion, 1);
            if (address / s->frame_size != 0) return -EPROTO;  /* not ours: frame 0 may still come */
            if (sluice_xdp_statistics(s->fd, &after) != 0) return -ENOMSG;
            *invalid = after.tx_invalid_descs;
            return after.tx_invalid_descs == before.tx_invalid_descs + 1 ? 1 : -ENOMSG;
        }
        usleep(100);
    }
    if (sluice_xdp_prod_outstanding(&s->tx) != 0) return -EPROTO;
    if (sluice_xdp_statistics(s->fd, &after) != 0) return -EPROTO;
    *invalid = after.tx_invalid_descs;
    return after.tx_invalid_descs == before.tx_invalid_descs + 1 ? 0 : -EPROTO;
}

int sluice_xdp_kick_tx(int fd) {
    return sendto(fd, NULL, 0, MSG_DONTWAIT, NULL, 0) < 0 ? -errno : 0;
}

int sluice_xdp_kick_rx(int fd) {
    return recvfrom(fd, NULL, 0, MSG_DONTWAIT, NULL, NULL) < 0 ? -errno : 0;
}

int sluice_xdp_poll_rx(int fd, int timeout_ms) {
    struct pollfd p = { .fd = fd, .events = POLLIN, .revents = 0 };
    int rc = poll(&p, 1, timeout_ms);
    return rc < 0 ? -errno : rc;
}

const char *sluice_xdp_object_path(void) {
    const char *path = getenv("LIBXDP_OBJECT_PATH");
    return path ? path : "/usr/lib/x86_64-linux-gnu/bpf (libxdp's BPF_OBJECT_PATH)";
}

int sluice_xdp_attached_mode(const char *ifname) {
    unsigned index = if_nametoindex(ifname);
    if (index == 0) return -errno;
    LIBBPF_OPTS(bpf_xdp_query_opts, opts);
    int rc = bpf_xdp_query((int)index, 0, &opts);
    if (rc) return rc < 0 ? rc : -rc;
    switch (opts.attach_mode) {
    case XDP_ATTACHED_DRV: return SLUICE_XDP_MODE_NATIVE;
    case XDP_ATTACHED_SKB: return SLUICE_XDP_MODE_GENERIC;
    case XDP_ATTACHED_MULTI: return opts.drv_prog_id ? SLUICE_XDP_MODE_NATIVE : SLUICE_XDP_MODE_GENERIC;
    default: return 0;
    }
}

/* libbpf and libxdp print their own diagnostics (a missing bpffs, the dispatcher fallback) to stderr;
 * the service logs its own account instead, so both are silenced once per process. */
static int sluice_xdp_quiet(enum libbpf_print_level level, const char *format, va_list args) {
    (void)level; (void)format; (void)args;
    return 0;
}
static int sluice_xdp_quiet_xdp(enum libxdp_print_level level, const char *format, va_list args) {
    (void)level; (void)format; (void)args;
    return 0;
}
void sluice_xdp_silence_library_logs(void) {
    libbpf_set_print(sluice_xdp_quiet);
    libxdp_set_print(sluice_xdp_quiet_xdp);
}
