/* Path: scripts/guest/agent.c — Sluice's migration agent, the guest side of issue 13.
 *
 * Runs inside the test guest (scripts/guest/init starts it, respawned if it dies). It finds its
 * virtio-serial port by name (org.sluice.agent.0), reads requests, one JSON object per line, and answers
 * one JSON line each (docs/MIGRATION.md, "The agent's protocol"; the report's fields are
 * Sources/SluiceMigration/AgentReport.swift):
 *   {"id":N,"op":"ping"}    -> {"id":N,"ok":true}
 *   {"id":N,"op":"report"}  -> {"id":N,"ok":true,"report":{...}}
 *   {"id":N,"op":"online"}  -> brings offline CPUs and memory blocks online, then answers like "report"
 *   anything else           -> {"id":N or null,"ok":false,"error":"..."}, and the agent keeps running.
 * The host side may disconnect and reconnect at any time: the agent never exits and never spins.
 *
 * `agent --dirty MIB` is the "guest dirtying memory fast" workload: it writes one byte per 4 KiB page of
 * MIB MiB, forever, at nice 10.
 *
 * Static, libc only: gcc -static -O2 (scripts/guest/build-guest-image.sh). */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define AGENT_PROTOCOL_VERSION 1
#define AGENT_PORT_NAME "org.sluice.agent.0"
#define AGENT_REQUIRES_PATH "/etc/sluice-agent/requires"
#define AGENT_COUNTER_PATH "/run/sluice-counter"
/* A request line longer than this is refused (and skipped up to its newline). */
#define AGENT_LINE_BYTES_MAX 4096
/* Every reply, the report included (cpuinfo flags are the largest part, about 1.5 KiB). */
#define AGENT_REPLY_BYTES_MAX 16384
#define AGENT_FLAGS_COUNT_MAX 512
#define AGENT_REQUIRES_COUNT_MAX 64
#define AGENT_DEVICE_KINDS_MAX 32
/* How long a reply may wait for the host to drain the port before it is dropped. */
#define AGENT_WRITE_WAIT_MS 2000
/* While the host side is disconnected the port polls as readable-with-hangup: sleep this between checks. */
#define AGENT_HANGUP_SLEEP_MS 200
#define AGENT_DIRTY_MIB_MAX 4096

static void logf_console(const char *format, ...) {
    va_list args;
    va_start(args, format);
    fputs("sluice-agent: ", stderr);
    vfprintf(stderr, format, args);
    fputc('\n', stderr);
    va_end(args);
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Reads a small file into buf (NUL-terminated, trailing whitespace kept). Returns bytes read or -1. */
static ssize_t read_file(const char *path, char *buf, size_t size) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    size_t used = 0;
    while (used + 1 < size) {
        ssize_t n = read(fd, buf + used, size - 1 - used);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        used += (size_t)n;
    }
    close(fd);
    buf[used] = '\0';
    return (ssize_t)used;
}

static void trim(char *s) {
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r')) s[--n] = '\0';
}

static int write_file(const char *path, const char *value) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
    ssize_t n = write(fd, value, strlen(value));
    int rc = n < 0 ? -errno : 0;
    close(fd);
    return rc;
}

/* ---- JSON output: a bounded buffer; overflow is remembered and turns the reply into an error. ---- */

struct out {
    char *buf;
    size_t size, used;
    int overflow;
};

static void out_raw(struct out *o, const char *s, size_t n) {
    if (o->used + n + 1 > o->size) { o->overflow = 1; return; }
    memcpy(o->buf + o->used, s, n);
    o->used += n;
    o->buf[o->used] = '\0';
}

static void out_fmt(struct out *o, const char *format, ...) {
    char tmp[256];
    va_list args;
    va_start(args, format);
    int n = vsnprintf(tmp, sizeof tmp, format, args);
    va_end(args);
    if (n < 0 || (size_t)n >= sizeof tmp) { o->overflow = 1; return; }
    out_raw(o, tmp, (size_t)n);
}

static void out_string(struct out *o, const char *s) {
    out_raw(o, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') { char e[2] = {'\\', (char)*p}; out_raw(o, e, 2); }
        /* Control bytes and every byte >= 0x7f as \u00XX: the reply is always valid JSON and UTF-8,
           whatever bytes a model name or the requires file hold. */
        else if (*p < 0x20 || *p >= 0x7f) out_fmt(o, "\\u%04x", *p);
        else out_raw(o, (const char *)p, 1);
    }
    out_raw(o, "\"", 1);
}

/* ---- Reading the guest ---- */

/* Counts the CPUs in a kernel CPU list such as "0-1,3". */
static int count_cpu_list(const char *path) {
    char buf[512];
    if (read_file(path, buf, sizeof buf) < 0) return 0;
    int count = 0;
    char *p = buf;
    while (*p >= '0' && *p <= '9') {
        long first = strtol(p, &p, 10), last = first;
        if (*p == '-') last = strtol(p + 1, &p, 10);
        if (last >= first) count += (int)(last - first + 1);
        if (*p != ',') break;
        p++;
    }
    return count;
}

/* The value after "key\s*:\s*" on the first line of /proc/cpuinfo that starts with key. */
/* 0 when found whole, 1 when cut to fit `size`, -1 when absent. */
static int cpuinfo_field(const char *cpuinfo, const char *key, char *value, size_t size) {
    size_t key_len = strlen(key);
    for (const char *line = cpuinfo; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        if (strncmp(line, key, key_len) != 0) continue;
        const char *p = line + key_len;
        while (*p == ' ' || *p == '\t') p++;
        if (*p != ':') continue;
        p++;
        while (*p == ' ') p++;
        const char *end = strchr(p, '\n');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        int cut = n >= size;
        if (cut) n = size - 1;
        memcpy(value, p, n);
        value[n] = '\0';
        return cut;
    }
    value[0] = '\0';
    return -1;
}

static uint64_t meminfo_kib(const char *key) {
    char buf[4096];
    if (read_file("/proc/meminfo", buf, sizeof buf) < 0) return 0;
    char *line = strstr(buf, key);
    return line ? strtoull(line + strlen(key), NULL, 10) : 0;
}

static uint64_t vmstat_value(const char *key) {
    static char buf[16384];
    if (read_file("/proc/vmstat", buf, sizeof buf) < 0) return 0;
    size_t key_len = strlen(key);
    for (char *line = buf; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        if (strncmp(line, key, key_len) == 0 && line[key_len] == ' ') return strtoull(line + key_len + 1, NULL, 10);
    }
    return 0;
}

static int is_number_name(const char *name, const char *prefix) {
    size_t n = strlen(prefix);
    if (strncmp(name, prefix, n) != 0 || name[n] == '\0') return 0;
    for (const char *p = name + n; *p; p++) if (*p < '0' || *p > '9') return 0;
    return 1;
}

struct memory_blocks { int online, total; };

static struct memory_blocks count_memory_blocks(void) {
    struct memory_blocks blocks = {0, 0};
    DIR *dir = opendir("/sys/devices/system/memory");
    if (!dir) return blocks;
    struct dirent *entry;
    while ((entry = readdir(dir))) {
        if (!is_number_name(entry->d_name, "memory")) continue;
        char path[300], state[64];
        snprintf(path, sizeof path, "/sys/devices/system/memory/%s/state", entry->d_name);
        if (read_file(path, state, sizeof state) < 0) continue;
        blocks.total++;
        if (strncmp(state, "online", 6) == 0) blocks.online++;
    }
    closedir(dir);
    return blocks;
}

static const char *virtio_kind(unsigned long id) {
    switch (id) {
    case 1: return "net";
    case 2: return "block";
    case 3: return "console";
    case 4: return "rng";
    case 5: return "balloon";
    case 8: return "scsi";
    case 9: return "9p";
    case 18: return "input";
    case 19: return "vsock";
    case 24: return "mem";
    case 26: return "fs";
    case 27: return "pmem";
    default: return NULL;
    }
}

static int compare_strings(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Distinct kinds of the guest's virtio devices, sorted; unknown ids as "virtio-N". Returns the count. */
static int virtio_device_kinds(char kinds[][24], int max) {
    int count = 0;
    DIR *dir = opendir("/sys/bus/virtio/devices");
    if (!dir) return 0;
    struct dirent *entry;
    while ((entry = readdir(dir)) && count < max) {
        if (entry->d_name[0] == '.') continue;
        char path[300], id[32], kind[24];
        snprintf(path, sizeof path, "/sys/bus/virtio/devices/%s/device", entry->d_name);
        if (read_file(path, id, sizeof id) < 0) continue;
        unsigned long value = strtoul(id, NULL, 16);
        const char *name = virtio_kind(value);
        if (name) snprintf(kind, sizeof kind, "%s", name);
        else snprintf(kind, sizeof kind, "virtio-%lu", value);
        int seen = 0;
        for (int i = 0; i < count; i++) if (strcmp(kinds[i], kind) == 0) seen = 1;
        if (!seen) memcpy(kinds[count++], kind, sizeof kind);
    }
    closedir(dir);
    char *sorted[AGENT_DEVICE_KINDS_MAX];
    char copy[AGENT_DEVICE_KINDS_MAX][24];
    for (int i = 0; i < count; i++) { memcpy(copy[i], kinds[i], 24); sorted[i] = copy[i]; }
    qsort(sorted, (size_t)count, sizeof sorted[0], compare_strings);
    for (int i = 0; i < count; i++) memcpy(kinds[i], sorted[i], 24);
    return count;
}

/* ---- The dirty-page rate: nr_dirtied sampled about once a second by the main loop. ---- */

static struct {
    uint64_t last_count;
    double last_time;
    double pages_per_second;
    int primed;
} dirty_rate;

static void sample_dirty_rate(void) {
    double now = now_seconds();
    if (dirty_rate.primed && now - dirty_rate.last_time < 1.0) return;
    uint64_t count = vmstat_value("nr_dirtied");
    if (dirty_rate.primed && now > dirty_rate.last_time) {
        dirty_rate.pages_per_second = (double)(count - dirty_rate.last_count) / (now - dirty_rate.last_time);
    }
    dirty_rate.last_count = count;
    dirty_rate.last_time = now;
    dirty_rate.primed = 1;
}

/* ---- The report ---- */

static void append_report(struct out *o) {
    static char cpuinfo[65536];
    static char flags_line[8192];
    char model[256], vendor[64], text[512];
    char *flags[AGENT_FLAGS_COUNT_MAX];
    int flag_count = 0;

    if (read_file("/proc/cpuinfo", cpuinfo, sizeof cpuinfo) < 0) cpuinfo[0] = '\0';
    cpuinfo_field(cpuinfo, "model name", model, sizeof model);
    cpuinfo_field(cpuinfo, "vendor_id", vendor, sizeof vendor);
    /* A cut flags line would drop flags a destination must provide: the report fails instead. */
    if (cpuinfo_field(cpuinfo, "flags", flags_line, sizeof flags_line) > 0) o->overflow = 1;
    char *save = NULL, *f = strtok_r(flags_line, " ", &save);
    for (; f && flag_count < AGENT_FLAGS_COUNT_MAX; f = strtok_r(NULL, " ", &save)) flags[flag_count++] = f;
    if (f) o->overflow = 1;

    out_fmt(o, "{\"version\":%d,\"bootID\":", AGENT_PROTOCOL_VERSION);
    if (read_file("/proc/sys/kernel/random/boot_id", text, sizeof text) < 0) text[0] = '\0';
    trim(text);
    out_string(o, text);
    double uptime = 0;
    if (read_file("/proc/uptime", text, sizeof text) >= 0) uptime = strtod(text, NULL);
    out_fmt(o, ",\"uptimeSeconds\":%.2f,\"cpuModelName\":", uptime);
    out_string(o, model);
    out_raw(o, ",\"cpuVendor\":", 13);
    out_string(o, vendor);

    out_raw(o, ",\"cpuFlags\":[", 13);
    for (int i = 0; i < flag_count; i++) {
        if (i) out_raw(o, ",", 1);
        out_string(o, flags[i]);
    }
    out_raw(o, "],\"requiredFlags\":[", 19);
    static char requires[4096];
    int required_count = 0;
    if (read_file(AGENT_REQUIRES_PATH, requires, sizeof requires) >= 0) {
        for (char *save = NULL, *r = strtok_r(requires, " \t\r\n,", &save);
             r && required_count < AGENT_REQUIRES_COUNT_MAX; r = strtok_r(NULL, " \t\r\n,", &save)) {
            int present = 0;
            for (int i = 0; i < flag_count && !present; i++) present = strcmp(flags[i], r) == 0;
            if (!present) {
                /* Logged once per agent run: the report is asked for often. */
                static int logged_missing;
                if (!logged_missing) logf_console("required flag %s is not in this CPU's flags: left out of the report", r);
                logged_missing = 1;
                continue;
            }
            if (required_count++) out_raw(o, ",", 1);
            out_string(o, r);
        }
    }
    struct memory_blocks blocks = count_memory_blocks();
    uint64_t block_bytes = 0;
    if (read_file("/sys/devices/system/memory/block_size_bytes", text, sizeof text) >= 0) {
        block_bytes = strtoull(text, NULL, 16);
    }
    out_fmt(o, "],\"vcpusOnline\":%d,\"vcpusPresent\":%d,\"memoryTotalKiB\":%llu",
            count_cpu_list("/sys/devices/system/cpu/online"), count_cpu_list("/sys/devices/system/cpu/present"),
            (unsigned long long)meminfo_kib("MemTotal:"));
    out_fmt(o, ",\"memoryBlocksOnline\":%d,\"memoryBlocksTotal\":%d,\"memoryBlockBytes\":%llu,\"devices\":[",
            blocks.online, blocks.total, (unsigned long long)block_bytes);
    char kinds[AGENT_DEVICE_KINDS_MAX][24];
    int kind_count = virtio_device_kinds(kinds, AGENT_DEVICE_KINDS_MAX);
    for (int i = 0; i < kind_count; i++) {
        if (i) out_raw(o, ",", 1);
        out_string(o, kinds[i]);
    }
    out_fmt(o, "],\"dirtiedPagesPerSecond\":%.1f,\"workloadCounter\":", dirty_rate.pages_per_second);
    if (read_file(AGENT_COUNTER_PATH, text, sizeof text) > 0 && text[0] >= '0' && text[0] <= '9') {
        out_fmt(o, "%llu}", strtoull(text, NULL, 10));
    } else {
        out_raw(o, "null}", 5);
    }
}

/* ---- Onlining: every offline memory block, then every offline CPU. Failures go to the console; the
 * report tells. Bringing a hot-added CPU up takes 13-20 s under tcg and sometimes never finishes
 * (docs/MIGRATION.md): each CPU write runs in a child process, waited for at most AGENT_CPU_ONLINE_WAIT_MS,
 * so that the agent keeps answering; a child still blocked in the kernel is reaped later. ---- */

#define AGENT_CPU_ONLINE_WAIT_MS 60000

static void reap_children(void) {
    while (waitpid(-1, NULL, WNOHANG) > 0) {}
}

/* Writes value to path in a child; waits for it up to wait_ms. 0 done, -errno failed, 1 still running. */
static int write_file_bounded(const char *path, const char *value, long wait_ms) {
    pid_t child = fork();
    if (child < 0) return write_file(path, value);
    if (child == 0) _exit(write_file(path, value) < 0 ? 1 : 0);
    for (long waited = 0; waited <= wait_ms; waited += 50) {
        int status;
        if (waitpid(child, &status, WNOHANG) == child) {
            return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -EIO;
        }
        sleep_ms(50);
    }
    return 1;
}

static void online_everything(void) {
    const char *roots[2] = {"/sys/devices/system/memory", "/sys/devices/system/cpu"};
    const char *prefixes[2] = {"memory", "cpu"};
    const char *files[2] = {"state", "online"};
    const char *offline[2] = {"offline", "0"};
    const char *online[2] = {"online", "1"};
    for (int kind = 0; kind < 2; kind++) {
        DIR *dir = opendir(roots[kind]);
        if (!dir) continue;
        struct dirent *entry;
        int brought = 0;
        while ((entry = readdir(dir))) {
            if (!is_number_name(entry->d_name, prefixes[kind])) continue;
            char path[300], state[32];
            snprintf(path, sizeof path, "%s/%s/%s", roots[kind], entry->d_name, files[kind]);
            if (read_file(path, state, sizeof state) < 0) continue; /* cpu0 has no online file */
            trim(state);
            if (strcmp(state, offline[kind]) != 0) continue;
            int rc = kind == 0 ? write_file(path, online[kind]) : write_file_bounded(path, online[kind], AGENT_CPU_ONLINE_WAIT_MS);
            if (rc == 1) logf_console("online %s: still in progress after %d ms; answering without it", entry->d_name, AGENT_CPU_ONLINE_WAIT_MS);
            else if (rc < 0) logf_console("online %s: %s", entry->d_name, strerror(-rc));
            else brought++;
        }
        closedir(dir);
        if (brought) logf_console("brought %d %s%s online", brought, kind == 1 ? "CPU" : "memory block", brought > 1 ? "s" : "");
    }
}

/* ---- Requests: a flat JSON object; only "id" (integer) and "op" (string) matter, others are skipped. ---- */

struct request {
    long long id;
    int has_id;
    char op[64];
};

static const char *skip_ws(const char *p) {
    while (*p == ' ' || *p == '\t' || *p == '\r') p++;
    return p;
}

/* Parses a JSON string at p (after the opening quote is checked); copies up to size-1 bytes. */
static const char *parse_string(const char *p, char *value, size_t size) {
    if (*p != '"') return NULL;
    p++;
    size_t n = 0;
    while (*p && *p != '"') {
        if (*p == '\\') { p++; if (!*p) return NULL; }
        if ((unsigned char)*p < 0x20) return NULL;
        if (n + 1 < size) value[n++] = *p;
        p++;
    }
    if (*p != '"') return NULL;
    value[n] = '\0';
    return p + 1;
}

/* Returns NULL on success, else what is wrong. */
static const char *parse_request(const char *line, struct request *req) {
    memset(req, 0, sizeof *req);
    const char *p = skip_ws(line);
    if (*p++ != '{') return "not a JSON object";
    p = skip_ws(p);
    if (*p == '}') return "no op";
    for (;;) {
        char key[32], text[64];
        p = parse_string(skip_ws(p), key, sizeof key);
        if (!p) return "malformed key";
        p = skip_ws(p);
        if (*p++ != ':') return "missing ':'";
        p = skip_ws(p);
        if (*p == '"') {
            p = parse_string(p, text, sizeof text);
            if (!p) return "malformed string";
            if (strcmp(key, "op") == 0) snprintf(req->op, sizeof req->op, "%s", text);
        } else if ((*p >= '0' && *p <= '9') || *p == '-') {
            char *end;
            long long value = strtoll(p, &end, 10);
            if (end == p) return "malformed number";
            if (*end == '.' || *end == 'e' || *end == 'E') return "non-integer number";
            if (strcmp(key, "id") == 0) { req->id = value; req->has_id = 1; }
            p = end;
        } else if (strncmp(p, "true", 4) == 0 || strncmp(p, "null", 4) == 0) {
            p += 4;
        } else if (strncmp(p, "false", 5) == 0) {
            p += 5;
        } else {
            return "unsupported value (only strings, integers, true, false, null)";
        }
        p = skip_ws(p);
        if (*p == ',') { p++; continue; }
        if (*p == '}') break;
        return "expected ',' or '}'";
    }
    p = skip_ws(p + 1);
    if (*p) return "trailing bytes after the object";
    if (!req->has_id) return "no integer id";
    if (!req->op[0]) return "no op";
    return NULL;
}

static void reply_error(struct out *o, const struct request *req, const char *error) {
    o->used = 0; o->overflow = 0;
    if (req && req->has_id) out_fmt(o, "{\"id\":%lld,\"ok\":false,\"error\":", req->id);
    else out_raw(o, "{\"id\":null,\"ok\":false,\"error\":", 30);
    out_string(o, error);
    out_raw(o, "}\n", 2);
}

static void handle_line(const char *line, struct out *o) {
    struct request req;
    const char *problem = parse_request(line, &req);
    if (problem) { reply_error(o, &req, problem); return; }
    o->used = 0; o->overflow = 0;
    if (strcmp(req.op, "ping") == 0) {
        out_fmt(o, "{\"id\":%lld,\"ok\":true}\n", req.id);
    } else if (strcmp(req.op, "report") == 0 || strcmp(req.op, "online") == 0) {
        if (req.op[0] == 'o') online_everything();
        out_fmt(o, "{\"id\":%lld,\"ok\":true,\"report\":", req.id);
        append_report(o);
        out_raw(o, "}\n", 2);
    } else {
        char error[128];
        snprintf(error, sizeof error, "unknown op '%s' (ping, report, online)", req.op);
        reply_error(o, &req, error);
        return;
    }
    if (o->overflow) reply_error(o, &req, "reply larger than the agent's reply buffer");
}

/* ---- The port ---- */

/* Finds /dev/<vportNpM> whose /sys/class/virtio-ports/<vportNpM>/name is AGENT_PORT_NAME. */
static int find_port(char *dev, size_t size) {
    DIR *dir = opendir("/sys/class/virtio-ports");
    if (!dir) return -1;
    struct dirent *entry;
    int found = -1;
    while ((entry = readdir(dir)) && found < 0) {
        if (entry->d_name[0] == '.') continue;
        char path[300], name[128];
        snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", entry->d_name);
        if (read_file(path, name, sizeof name) < 0) continue;
        trim(name);
        if (strcmp(name, AGENT_PORT_NAME) != 0) continue;
        snprintf(dev, size, "/dev/%s", entry->d_name);
        found = 0;
    }
    closedir(dir);
    return found;
}

/* Writes all of buf, waiting for the host to drain up to AGENT_WRITE_WAIT_MS. 0, or -1 (reply dropped). */
static int write_reply(int fd, const char *buf, size_t n) {
    double deadline = now_seconds() + AGENT_WRITE_WAIT_MS / 1000.0;
    size_t done = 0;
    while (done < n) {
        ssize_t w = write(fd, buf + done, n - done);
        if (w > 0) { done += (size_t)w; continue; }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno != EAGAIN) { logf_console("reply dropped: write: %s", strerror(errno)); return -1; }
        double left = deadline - now_seconds();
        if (left <= 0) { logf_console("reply dropped: the host did not read it within %d ms", AGENT_WRITE_WAIT_MS); return -1; }
        struct pollfd pfd = {fd, POLLOUT, 0};
        poll(&pfd, 1, (int)(left * 1000) + 1);
    }
    return 0;
}

/* Serves one opened port until it fails for good (then the caller reopens it). Never returns on EOF. */
static void serve(int fd) {
    static char line[AGENT_LINE_BYTES_MAX + 1];
    static char reply[AGENT_REPLY_BYTES_MAX];
    struct out o = {reply, sizeof reply, 0, 0};
    size_t used = 0;
    int discarding = 0; /* inside an oversized line: skip to its newline */
    for (;;) {
        sample_dirty_rate();
        reap_children();
        struct pollfd pfd = {fd, POLLIN, 0};
        int rc = poll(&pfd, 1, 1000);
        if (rc < 0 && errno != EINTR) { logf_console("poll: %s", strerror(errno)); return; }
        if (rc <= 0) continue;
        if (pfd.revents & (POLLERR | POLLNVAL)) { logf_console("port error (revents %#x)", pfd.revents); return; }
        char chunk[1024];
        ssize_t n = (pfd.revents & POLLIN) ? read(fd, chunk, sizeof chunk) : 0;
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        if (n < 0) { logf_console("read: %s", strerror(errno)); return; }
        if (n == 0) {
            /* The host side is not connected: the port reports hangup until it is again. A partial line
               from the old connection is dropped. */
            used = 0; discarding = 0;
            sleep_ms(AGENT_HANGUP_SLEEP_MS);
            continue;
        }
        for (ssize_t i = 0; i < n; i++) {
            char c = chunk[i];
            if (c == '\n') {
                if (discarding) {
                    discarding = 0;
                    char error[64];
                    snprintf(error, sizeof error, "request line longer than %d bytes", AGENT_LINE_BYTES_MAX);
                    reply_error(&o, NULL, error);
                } else {
                    line[used] = '\0';
                    used = 0;
                    if (line[0] == '\0' || strspn(line, " \t\r") == strlen(line)) continue; /* blank lines */
                    handle_line(line, &o);
                }
                write_reply(fd, o.buf, o.used);
            } else if (!discarding) {
                if (used == AGENT_LINE_BYTES_MAX) { discarding = 1; used = 0; }
                else if (c == '\0') { discarding = 1; used = 0; } /* never a valid request */
                else line[used++] = c;
            }
        }
    }
}

static _Noreturn void run_agent(void) {
    char dev[300];
    int logged_missing = 0;
    for (;;) {
        if (find_port(dev, sizeof dev) < 0) {
            if (!logged_missing) logf_console("no virtio-serial port named %s yet; waiting", AGENT_PORT_NAME);
            logged_missing = 1;
            sleep_ms(1000);
            continue;
        }
        int fd = open(dev, O_RDWR | O_NONBLOCK | O_CLOEXEC);
        if (fd < 0) {
            logf_console("open %s: %s; retrying", dev, strerror(errno));
            sleep_ms(1000);
            continue;
        }
        logf_console("serving %s on %s", AGENT_PORT_NAME, dev);
        serve(fd);
        close(fd);
        sleep_ms(1000);
    }
}

/* The dirtying workload: one byte per 4 KiB page of mib MiB, forever. */
static int run_dirty(const char *arg) {
    char *end;
    long mib = strtol(arg, &end, 10);
    if (*end || mib <= 0 || mib > AGENT_DIRTY_MIB_MAX) {
        logf_console("--dirty takes MiB in 1...%d, not '%s'", AGENT_DIRTY_MIB_MAX, arg);
        return 2;
    }
    size_t bytes = (size_t)mib << 20;
    volatile unsigned char *memory = malloc(bytes);
    if (!memory) { logf_console("--dirty: cannot allocate %ld MiB", mib); return 1; }
    /* Below the agent and the counter, so that they keep answering while this takes the rest of the CPU. */
    errno = 0;
    if (nice(10) == -1 && errno != 0) logf_console("--dirty: nice: %s", strerror(errno));
    logf_console("dirtying %ld MiB, one byte per 4 KiB page, forever (nice 10)", mib);
    for (unsigned char round = 1;; round++) {
        for (size_t offset = 0; offset < bytes; offset += 4096) memory[offset] = round;
    }
}

int main(int argc, char **argv) {
    setvbuf(stderr, NULL, _IOLBF, 0);
    if (argc == 3 && strcmp(argv[1], "--dirty") == 0) return run_dirty(argv[2]);
    if (argc != 1) {
        fprintf(stderr, "usage: %s            serve the migration agent on %s\n"
                        "       %s --dirty MIB  dirty MIB MiB of memory forever\n", argv[0], AGENT_PORT_NAME, argv[0]);
        return 2;
    }
    run_agent();
}
