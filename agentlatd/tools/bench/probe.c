/*
 * agentlatd bench probe: the agent loop and the noise sources, in C so that
 * the interpreter's own jitter does not hide a 100 us effect.
 * Compiled at run time by agentlatd/tools/bench/probe.py with the host's gcc.
 *
 * Modes (one per process; every mode is bounded in time, and the packet
 * modes in count):
 *   agent     the agent loop (--ring N: also writes the step ring of
 *             docs/protocol.md, N records): UDP request/reply to a tool server thread whose
 *             socket lives in another network namespace (veth between), a 4 KiB
 *             O_DIRECT read at a random offset of a file, a timer wait. Prints
 *             "ready <pid>" once both threads exist, waits for "go" on stdin,
 *             then writes one line per step to --out:
 *             "<net_ns> <disk_ns> <timer_ns> <total_ns>".
 *             --server 0: no tool-server thread; --dst/--port name a tool
 *             server that is its own process (`serve`, in its own namespace).
 *             --pipe 1: the tool server is a child process the agent forks and
 *             talks to over two pipes (a stdio MCP server); the request/reply
 *             stage is that round trip.
 *   serve     the tool server thread alone (for the Python agent path).
 *             In both, SIGUSR1 toggles the tool's think time between
 *             --think-ns (spun) and --slow-think-ns (slept).
 *   flood     paced UDP sender (sendmmsg batches), --pps for --seconds, at
 *             most --max-packets; prints "sent <n> <seconds>".
 *   sink      UDP receiver (recvmmsg) for --seconds; prints "recv <n> <seconds>".
 *   hog       busy loop for --seconds; prints "loops <n> <seconds>".
 *   writeback buffered writes into a fixed-size file at --mbps, starting
 *             writeback every 4 MiB (sync_file_range WRITE): dirty pages
 *             flushed by the kernel's flusher; prints "written <bytes> <s>".
 * Sockets are opened in the namespace given by --ns/--tool-ns/--agent-ns:
 * the opening thread joins that namespace (setns(2) is per thread for
 * CLONE_NEWNET) and a socket keeps the namespace it was created in.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define REQ_SIZE 64
#define BLOCK 4096
#define BATCH 32

static volatile sig_atomic_t stop_flag;

static void on_signal(int sig) { (void)sig; stop_flag = 1; }

/* SIGUSR1 toggles the tool server between --think-ns and --slow-think-ns: the
 * "slow tool server" cause of agentlatd/tools/bench/causes.py, switched on and
 * off within one traced run */
static volatile sig_atomic_t slow_tool;

static void on_usr1(int sig) { (void)sig; slow_tool = !slow_tool; }

/* SIGUSR2 toggles the agent's disk read (--reads 0: start without): the
 * causes run reads only while it injects writeback, so the other cases' steps
 * carry no loop-device wait of their own */
static volatile sig_atomic_t reads_on = 1;

static void on_usr2(int sig) { (void)sig; reads_on = !reads_on; }

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what) {
    fprintf(stderr, "probe: %s: %s\n", what, strerror(errno));
    exit(2);
}

/* ------------------------------------------------------------ step ring
 * The step markers of docs/protocol.md ("Step markers: the step ring"): one
 * record per agent step in a memfd named agentlatd-steps, no system call per
 * step. This is the reference C writer. */

#define RING_HDR 64
#define RING_REC 48

struct ring_rec {
    uint64_t commit, step, start_ns, end_ns;
    uint32_t tid, flags;
    uint64_t zero;
};

static unsigned char *ring_mem;
static uint32_t ring_cap;

static void ring_open(uint32_t capacity) {
    size_t size = RING_HDR + (size_t)capacity * RING_REC;
    if (capacity < 2 || (capacity & (capacity - 1))) {
        fprintf(stderr, "probe: --ring must be a power of two >= 2\n");
        exit(2);
    }
    int fd = (int)syscall(SYS_memfd_create, "agentlatd-steps", 1u /* MFD_CLOEXEC */);
    if (fd < 0) die("memfd_create");
    if (ftruncate(fd, (off_t)size) < 0) die("ftruncate ring");
    ring_mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (ring_mem == MAP_FAILED) die("mmap ring");
    /* the fd stays open: readers find the ring as /proc/PID/fd/N */
    ring_cap = capacity;
    uint32_t h[6] = {1, RING_REC, capacity, RING_HDR, (uint32_t)getpid(), 1};
    memcpy(ring_mem, "agstepr1", 8); /* little-endian hosts: the bytes are the u64 */
    memcpy(ring_mem + 8, h, sizeof h);
}

static void ring_step(uint64_t step, uint32_t tid, uint64_t start, uint64_t end, uint32_t flags) {
    if (!ring_mem) return;
    uint64_t *head = (uint64_t *)(ring_mem + 32);
    uint64_t seq = __atomic_fetch_add(head, 1, __ATOMIC_RELAXED);
    struct ring_rec *r = (struct ring_rec *)(ring_mem + RING_HDR + (seq & (ring_cap - 1)) * RING_REC);
    __atomic_store_n(&r->commit, 0, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    r->step = step;
    r->start_ns = start;
    r->end_ns = end;
    r->tid = tid;
    r->flags = flags;
    __atomic_store_n(&r->commit, seq + 1, __ATOMIC_RELEASE);
}

/* options (all modes share one table; unused ones are ignored) */
static const char *o_ns, *o_tool_ns, *o_agent_ns, *o_dst, *o_bind, *o_file, *o_out;
static long o_port = 0, o_steps = 1000, o_think_ns = 20000, o_timer_ns = 50000;
static long o_pps = 100000, o_max_packets = 100000000, o_size = 64, o_mbps = 32;
static long o_file_mb = 64, o_ring = 0, o_server = 1, o_pipe = 0, o_slow_think_ns = 5000000;
static double o_seconds = 5.0;

static void parse(int argc, char **argv) {
    for (int i = 2; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--ns")) o_ns = v;
        else if (!strcmp(k, "--tool-ns")) o_tool_ns = v;
        else if (!strcmp(k, "--agent-ns")) o_agent_ns = v;
        else if (!strcmp(k, "--dst")) o_dst = v;
        else if (!strcmp(k, "--bind")) o_bind = v;
        else if (!strcmp(k, "--file")) o_file = v;
        else if (!strcmp(k, "--out")) o_out = v;
        else if (!strcmp(k, "--port")) o_port = atol(v);
        else if (!strcmp(k, "--steps")) o_steps = atol(v);
        else if (!strcmp(k, "--think-ns")) o_think_ns = atol(v);
        else if (!strcmp(k, "--timer-ns")) o_timer_ns = atol(v);
        else if (!strcmp(k, "--pps")) o_pps = atol(v);
        else if (!strcmp(k, "--max-packets")) o_max_packets = atol(v);
        else if (!strcmp(k, "--size")) o_size = atol(v);
        else if (!strcmp(k, "--mbps")) o_mbps = atol(v);
        else if (!strcmp(k, "--file-mb")) o_file_mb = atol(v);
        else if (!strcmp(k, "--ring")) o_ring = atol(v);
        else if (!strcmp(k, "--server")) o_server = atol(v);
        else if (!strcmp(k, "--pipe")) o_pipe = atol(v);
        else if (!strcmp(k, "--slow-think-ns")) o_slow_think_ns = atol(v);
        else if (!strcmp(k, "--reads")) reads_on = atol(v) != 0;
        else if (!strcmp(k, "--seconds")) o_seconds = atof(v);
        else { fprintf(stderr, "probe: unknown option %s\n", k); exit(2); }
    }
}

static struct sockaddr_in addr_of(const char *ip, long port) {
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    if (!ip || inet_pton(AF_INET, ip, &a.sin_addr) != 1) {
        fprintf(stderr, "probe: bad address %s\n", ip ? ip : "(none)");
        exit(2);
    }
    return a;
}

/* Move the calling thread into the network namespace at `ns_path` (NULL =
 * stay). Network namespaces are per thread (setns(2)), so the agent thread and
 * the tool-server thread of one process can sit on the two ends of a veth. */
static void enter_ns(const char *ns_path) {
    if (!ns_path) return;
    int target = open(ns_path, O_RDONLY | O_CLOEXEC);
    if (target < 0) die("open netns");
    if (setns(target, CLONE_NEWNET) < 0) die("setns");
    close(target);
}

/* A UDP socket created inside the namespace at `ns_path`; the calling thread
 * stays there (a socket keeps the namespace it was created in). */
static int socket_in(const char *ns_path) {
    enter_ns(ns_path);
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) die("socket");
    return s;
}

static void spin_ns(long ns) {
    uint64_t end = now_ns() + (uint64_t)ns;
    while (now_ns() < end) { }
}

static double elapsed_s(uint64_t t0) { return (double)(now_ns() - t0) / 1e9; }

/* ------------------------------------------------------------ tool server */

static int server_fd = -1;

static void *server_main(void *arg) {
    (void)arg;
    char buf[2048];
    struct sockaddr_in peer;
    for (;;) {
        socklen_t pl = sizeof peer;
        ssize_t n = recvfrom(server_fd, buf, sizeof buf, 0, (struct sockaddr *)&peer, &pl);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN) {
                if (stop_flag) break;
                continue;
            }
            break;
        }
        if (n == 4 && !memcmp(buf, "quit", 4)) break;
        /* the tool's think time: spun, or slept when slow (a slow tool waits on
         * something else; it does not take the CPU from the agent) */
        if (slow_tool) {
            struct timespec d = {o_slow_think_ns / 1000000000L, o_slow_think_ns % 1000000000L};
            while (clock_nanosleep(CLOCK_MONOTONIC, 0, &d, &d) == EINTR && !stop_flag) { }
        } else {
            spin_ns(o_think_ns);
        }
        sendto(server_fd, buf, (size_t)n, 0, (struct sockaddr *)&peer, pl);
    }
    return NULL;
}

static void start_server(pthread_t *th) {
    struct sockaddr_in b = addr_of(o_dst, o_port);
    struct timeval tv = {0, 200000};
    server_fd = socket_in(o_tool_ns);
    if (bind(server_fd, (struct sockaddr *)&b, sizeof b) < 0) die("bind server");
    /* periodic wakeups let the thread see stop_flag */
    setsockopt(server_fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (pthread_create(th, NULL, server_main, NULL)) die("pthread_create");
}

static int wait_go(void) {
    char line[64];
    printf("ready %d\n", getpid());
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin)) return -1;
    return strncmp(line, "go", 2) ? -1 : 0;
}

static int mode_serve(void) {
    pthread_t th;
    start_server(&th);
    if (wait_go() < 0) return 1;
    uint64_t t0 = now_ns();
    while (!stop_flag && elapsed_s(t0) < o_seconds) usleep(50000);
    stop_flag = 1;
    pthread_join(th, NULL);
    return 0;
}

/* ------------------------------------------------------------ pipe tool */

/* The tool server as a child over pipes: read a request, think, write it back;
 * exits at EOF (the agent closed its end) or on a short read. */
static pid_t start_pipe_child(int *to_child, int *from_child) {
    int req[2], rep[2];
    if (pipe2(req, O_CLOEXEC) < 0 || pipe2(rep, O_CLOEXEC) < 0) die("pipe2");
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
        char buf[REQ_SIZE];
        close(req[1]);
        close(rep[0]);
        for (;;) {
            ssize_t n = read(req[0], buf, sizeof buf);
            if (n <= 0) {
                if (n < 0 && errno == EINTR && !stop_flag) continue;
                _exit(0);
            }
            spin_ns(o_think_ns);
            if (write(rep[1], buf, (size_t)n) != n) _exit(0);
        }
    }
    close(req[0]);
    close(rep[1]);
    *to_child = req[1];
    *from_child = rep[0];
    return pid;
}

/* ------------------------------------------------------------ agent loop */

static int mode_agent(void) {
    pthread_t th;
    struct sockaddr_in dst, src;
    struct timeval tv = {1, 0};
    int c, fd;
    void *blk;
    off_t nblocks;
    struct stat st;
    uint64_t *rec;
    long n = 0;
    unsigned seed = (unsigned)getpid();

    int to_child = -1, from_child = -1;
    pid_t child = -1;
    if (o_pipe) {
        child = start_pipe_child(&to_child, &from_child);
        c = -1;
    } else {
        dst = addr_of(o_dst, o_port);
        src = addr_of(o_bind, 0);
        if (o_server) start_server(&th);
        c = socket_in(o_agent_ns);
        if (bind(c, (struct sockaddr *)&src, sizeof src) < 0) die("bind agent");
        if (connect(c, (struct sockaddr *)&dst, sizeof dst) < 0) die("connect");
        /* a lost reply must not hang the loop: 1 s, then the step counts as lost */
        setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    }
    fd = open(o_file, O_RDONLY | O_DIRECT | O_CLOEXEC);
    if (fd < 0) die("open O_DIRECT");
    if (fstat(fd, &st) < 0) die("fstat");
    /* a block device (a loop device) has st_size 0: its size is where SEEK_END lands */
    nblocks = (S_ISBLK(st.st_mode) ? lseek(fd, 0, SEEK_END) : st.st_size) / BLOCK;
    if (nblocks < 1) { fprintf(stderr, "probe: file too small\n"); return 2; }
    if (posix_memalign(&blk, BLOCK, BLOCK)) die("posix_memalign");
    rec = calloc((size_t)o_steps * 4, sizeof *rec);
    if (!rec) die("calloc");

    if (o_ring > 0) ring_open((uint32_t)o_ring);
    uint32_t my_tid = (uint32_t)syscall(SYS_gettid);
    if (wait_go() < 0) return 1;
    uint64_t t_start = now_ns();
    char req[REQ_SIZE], rep[2048];
    memset(req, 'a', sizeof req);
    long lost = 0;
    while (n < o_steps && !stop_flag && elapsed_s(t_start) < o_seconds) {
        uint64_t t0 = now_ns();
        memcpy(req, &n, sizeof n);
        ssize_t r;
        if (o_pipe) {
            if (write(to_child, req, sizeof req) != (ssize_t)sizeof req) die("write pipe");
            size_t got = 0;
            while (got < sizeof req) {
                r = read(from_child, rep + got, sizeof req - got);
                if (r <= 0) { if (r < 0 && errno == EINTR && !stop_flag) continue; die("read pipe"); }
                got += (size_t)r;
            }
        } else {
            if (send(c, req, sizeof req, 0) < 0) die("send");
            for (;;) { /* skip a late reply to an earlier, timed-out step */
                r = recv(c, rep, sizeof rep, 0);
                if (r < 0 || (r >= (ssize_t)sizeof n && !memcmp(rep, &n, sizeof n))) break;
            }
            if (r < 0) { lost++; if (errno != EAGAIN && errno != EINTR) die("recv"); continue; }
        }
        uint64_t t1 = now_ns();
        off_t off = (off_t)(rand_r(&seed) % (unsigned)nblocks) * BLOCK;
        if (reads_on && pread(fd, blk, BLOCK, off) != BLOCK) die("pread");
        uint64_t t2 = now_ns();
        struct timespec d = {0, o_timer_ns};
        while (clock_nanosleep(CLOCK_MONOTONIC, 0, &d, &d) == EINTR && !stop_flag) { }
        uint64_t t3 = now_ns();
        rec[n * 4 + 0] = t1 - t0;
        rec[n * 4 + 1] = t2 - t1;
        rec[n * 4 + 2] = t3 - t2;
        rec[n * 4 + 3] = t3 - t0;
        ring_step((uint64_t)n, my_tid, t0, t3, 0);
        n++;
    }
    double secs = elapsed_s(t_start);
    if (o_pipe) {
        close(to_child);
        close(from_child);
        waitpid(child, NULL, 0);
    } else {
        if (o_server) send(c, "quit", 4, 0);
        stop_flag = 1;
        if (o_server) pthread_join(th, NULL);
    }
    FILE *out = fopen(o_out, "w");
    if (!out) die("open --out");
    for (long i = 0; i < n; i++)
        fprintf(out, "%llu %llu %llu %llu\n", (unsigned long long)rec[i * 4],
                (unsigned long long)rec[i * 4 + 1], (unsigned long long)rec[i * 4 + 2],
                (unsigned long long)rec[i * 4 + 3]);
    fclose(out);
    printf("steps %ld %.6f lost %ld\n", n, secs, lost);
    return 0;
}

/* ------------------------------------------------------------ noise */

static int mode_flood(void) {
    struct sockaddr_in dst = addr_of(o_dst, o_port);
    int s = socket_in(o_ns);
    static char payload[BATCH][1500];
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    long size = o_size < 1 ? 1 : (o_size > 1400 ? 1400 : o_size);
    int sndbuf = 4 << 20;
    setsockopt(s, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    if (connect(s, (struct sockaddr *)&dst, sizeof dst) < 0) die("connect flood");
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < BATCH; i++) {
        iov[i].iov_base = payload[i];
        iov[i].iov_len = (size_t)size;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    if (wait_go() < 0) return 1;
    uint64_t t0 = now_ns();
    long sent = 0;
    /* pacing: batch k may leave at t0 + k * BATCH / pps */
    double gap_ns = 1e9 * BATCH / (double)(o_pps > 0 ? o_pps : 1);
    for (long k = 0; !stop_flag && sent < o_max_packets; k++) {
        uint64_t due = t0 + (uint64_t)(gap_ns * (double)k);
        uint64_t t;
        while ((t = now_ns()) < due) {
            if (due - t > 200000) usleep(100);
        }
        if ((double)(t - t0) / 1e9 >= o_seconds) break;
        int r = sendmmsg(s, msgs, BATCH, 0);
        if (r > 0) sent += r;
        else if (r < 0 && errno != ENOBUFS && errno != EAGAIN && errno != ECONNREFUSED && errno != EINTR)
            die("sendmmsg");
    }
    printf("sent %ld %.6f\n", sent, elapsed_s(t0));
    return 0;
}

static int mode_sink(void) {
    struct sockaddr_in b = addr_of(o_bind, o_port);
    int s = socket_in(o_ns);
    static char bufs[BATCH][2048];
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    struct timeval tv = {0, 100000};
    int rcvbuf = 4 << 20;
    setsockopt(s, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (bind(s, (struct sockaddr *)&b, sizeof b) < 0) die("bind sink");
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < BATCH; i++) {
        iov[i].iov_base = bufs[i];
        iov[i].iov_len = sizeof bufs[i];
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    if (wait_go() < 0) return 1;
    uint64_t t0 = now_ns();
    long got = 0;
    while (!stop_flag && elapsed_s(t0) < o_seconds) {
        int r = recvmmsg(s, msgs, BATCH, 0, NULL);
        if (r > 0) got += r;
    }
    printf("recv %ld %.6f\n", got, elapsed_s(t0));
    return 0;
}

static int mode_hog(void) {
    if (wait_go() < 0) return 1;
    uint64_t t0 = now_ns();
    volatile uint64_t x = 0;
    long loops = 0;
    while (!stop_flag) {
        for (int i = 0; i < 100000; i++) x += (uint64_t)i * 2654435761u;
        loops++;
        if (elapsed_s(t0) >= o_seconds) break;
    }
    printf("loops %ld %.6f\n", loops, elapsed_s(t0));
    return 0;
}

#define PIECE (64 << 10)

static int mode_writeback(void) {
    const long chunk = 1 << 20, file_bytes = o_file_mb << 20;
    char *buf = malloc((size_t)chunk);
    if (!buf) die("malloc");
    memset(buf, 'w', (size_t)chunk);
    int fd = open(o_file, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) die("open writeback file");
    if (wait_go() < 0) return 1;
    uint64_t t0 = now_ns();
    long written = 0, off = 0;
    double per_chunk_ns = 1e9 * (double)chunk / ((double)(o_mbps > 0 ? o_mbps : 1) * 1048576.0);
    for (long k = 0; !stop_flag; k++) {
        uint64_t due = t0 + (uint64_t)(per_chunk_ns * (double)k);
        while (now_ns() < due && !stop_flag) usleep(1000);
        if (stop_flag || elapsed_s(t0) >= o_seconds) break;
        /* in PIECE pieces: a kernel booted "Dynamic Preempt: none" does not preempt a
         * task inside pwrite(2), and one 1 MiB page-cache copy held the tool server's
         * CPU (its SCHED_FIFO thread waiting behind it) for hundreds of us: the
         * agent's recv then waited on the tool, not on the queue this injects */
        for (long p = 0; p < chunk; p += PIECE)
            if (pwrite(fd, buf + p, (size_t)PIECE, off + p) != PIECE) die("pwrite");
        written += chunk;
        off = (off + chunk) % file_bytes;
        if (written % (4 * chunk) == 0)
            sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE);
    }
    printf("written %ld %.6f\n", written, elapsed_s(t0));
    close(fd);
    return 0;
}

int main(int argc, char **argv) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: blocking calls return EINTR */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = on_usr1;
    sa.sa_flags = SA_RESTART; /* the toggle must not fail a step's recv */
    sigaction(SIGUSR1, &sa, NULL);
    sa.sa_handler = on_usr2;
    sigaction(SIGUSR2, &sa, NULL);
    if (argc < 2) {
        fprintf(stderr, "usage: probe agent|serve|flood|sink|hog|writeback [--opt value]...\n");
        return 2;
    }
    parse(argc, argv);
    const char *m = argv[1];
    if (!strcmp(m, "agent")) return mode_agent();
    if (!strcmp(m, "serve")) return mode_serve();
    if (!strcmp(m, "flood")) return mode_flood();
    if (!strcmp(m, "sink")) return mode_sink();
    if (!strcmp(m, "hog")) return mode_hog();
    if (!strcmp(m, "writeback")) return mode_writeback();
    fprintf(stderr, "probe: unknown mode %s\n", m);
    return 2;
}
