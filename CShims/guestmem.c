/* Path: CShims/guestmem.c — reading a QEMU guest's memory from the host: who listens on a QMP socket,
 * and which of its RAM pages hold data (what a migration's first pass sends; QEMU sends a zero page
 * as a header only). */
#define _GNU_SOURCE
#include "sluice_sys.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int sluice_unix_socket_peer_pid(const char *path, int32_t *pid) {
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(address.sun_path)) return -ENAMETOOLONG;
    strcpy(address.sun_path, path);
    /* Non-blocking: QEMU's monitor listens with a backlog of one and accepts no second client, so a
     * held socket fails at once (EAGAIN) instead of blocking the caller until the holder leaves. */
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return -errno;
    int rc = 0;
    if (connect(fd, (struct sockaddr *)&address, sizeof(address)) != 0) {
        rc = -errno;
    } else {
        struct ucred credentials;
        socklen_t size = sizeof(credentials);
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &size) != 0) rc = -errno;
        else *pid = credentials.pid;
    }
    close(fd);
    return rc;
}

enum { PAGE = 4096, CHUNK_PAGES = 512 };

static int read_full(int fd, void *buffer, size_t size, off_t offset) {
    size_t done = 0;
    while (done < size) {
        ssize_t n = pread(fd, (char *)buffer + done, size - done, offset + (off_t)done);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        if (n == 0) return -EIO;
        done += (size_t)n;
    }
    return 0;
}

int sluice_mem_scan_range(int32_t pid, uint64_t address, uint64_t length, struct sluice_mem_scan *out) {
    if (sysconf(_SC_PAGESIZE) != PAGE) return -ENOTSUP; /* pagemap is indexed by the host's page size */
    if (address % PAGE != 0 || length % PAGE != 0) return -EINVAL;
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/pagemap", (int)pid);
    int pagemap = open(path, O_RDONLY | O_CLOEXEC);
    if (pagemap < 0) return -errno;
    snprintf(path, sizeof(path), "/proc/%d/mem", (int)pid);
    int memory = open(path, O_RDONLY | O_CLOEXEC);
    if (memory < 0) {
        int rc = -errno;
        close(pagemap);
        return rc;
    }
    static const unsigned char zero[PAGE];
    uint64_t entries[CHUNK_PAGES];
    unsigned char *data = malloc((size_t)CHUNK_PAGES * PAGE);
    int rc = data == NULL ? -ENOMEM : 0;
    struct sluice_mem_scan scan = {.pages = length / PAGE};
    for (uint64_t page = 0; rc == 0 && page < scan.pages; page += CHUNK_PAGES) {
        uint64_t count = scan.pages - page < CHUNK_PAGES ? scan.pages - page : CHUNK_PAGES;
        uint64_t base = address + page * PAGE;
        rc = read_full(pagemap, entries, count * sizeof(uint64_t), (off_t)(base / PAGE * sizeof(uint64_t)));
        if (rc != 0) break;
        /* Only runs of pages in RAM (bit 63) are read: reading a hole would fault it in (a real page for
         * memfd, file or hugetlbfs RAM). A swapped page (bit 62) is counted as data without reading it
         * back in. */
        uint64_t i = 0;
        while (i < count) {
            uint64_t entry = entries[i];
            if ((entry >> 63) & 1) {
                uint64_t run = i;
                while (run < count && ((entries[run] >> 63) & 1)) run++;
                rc = read_full(memory, data, (run - i) * PAGE, (off_t)(base + i * PAGE));
                if (rc != 0) break;
                for (uint64_t k = 0; k < run - i; k++) {
                    scan.present++;
                    if (memcmp(data + k * PAGE, zero, PAGE) != 0) scan.nonzero++;
                }
                i = run;
            } else {
                if ((entry >> 62) & 1) {
                    scan.present++;
                    scan.nonzero++;
                }
                i++;
            }
        }
    }
    free(data);
    close(memory);
    close(pagemap);
    if (rc == 0) *out = scan;
    return rc;
}
