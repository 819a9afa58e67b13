/*
 * netfence login fast path: the few kernel calls the PAM hook makes.
 *
 * Thin on purpose (see shared/notes/style.md): each function fills a buffer or makes
 * one system call and returns 0 (or a length) on success, -errno on failure. All
 * decisions (which elements, what an error means, retries) are made in Python, in
 * src/netfence/fastpath.py; src/netfence/fastpath_py.py is a byte-identical pure
 * Python twin of every function here.
 *
 * Compiled into the cffi module netfence._fastpath by c_ext/build_fastpath.py, which
 * includes this file verbatim and defines NETFENCE_VERSION.
 */

#ifndef _GNU_SOURCE
#define _GNU_SOURCE             /* pipe2(); Python.h defines it first under cffi */
#endif
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>
#include <linux/netlink.h>

#ifndef NETFENCE_VERSION
#error "NETFENCE_VERSION must be defined by the build script"
#endif

#ifndef NETLINK_NETFILTER
#define NETLINK_NETFILTER 12
#endif

#define NF_PENDING 1            /* errors[i] before message i was answered */
#define NF_DETACH_CLOSE 1       /* nf_batch flag: see nf_release() */
#define NF_SEQ_OFFSET 8         /* offsetof(struct nlmsghdr, nlmsg_seq) */

static const char nf_version_string[] = NETFENCE_VERSION;

/* The package version this module was built from: fastpath.py refuses a stale build. */
static const char *nf_version(void)
{
    return nf_version_string;
}

/*
 * Copy one message template to `out` and patch its sequence number (host order, at
 * byte 8 of the netlink header) and its key bytes (at key_off). Returns the number
 * of bytes written, or -EINVAL / -ENOSPC.
 */
static long nf_fill(uint8_t *out, size_t cap, const uint8_t *tmpl, size_t tlen,
                    uint32_t seq, const uint8_t *key, size_t key_off, size_t key_len)
{
    if (tlen < sizeof(struct nlmsghdr) || key_off < sizeof(struct nlmsghdr)
        || key_off > tlen || key_len > tlen - key_off)
        return -EINVAL;
    if (tlen > cap)
        return -ENOSPC;
    memcpy(out, tmpl, tlen);
    memcpy(out + NF_SEQ_OFFSET, &seq, sizeof(seq));
    if (key_len)
        memcpy(out + key_off, key, key_len);
    return (long)tlen;
}

static long nf_remaining_ms(const struct timespec *deadline)
{
    struct timespec now;

    clock_gettime(CLOCK_MONOTONIC, &now);
    return (deadline->tv_sec - now.tv_sec) * 1000L
           + (deadline->tv_nsec - now.tv_nsec) / 1000000L;
}

/*
 * Record the acks found in one datagram. Returns 0 to go on reading, or a negative
 * errno when the kernel refused the batch as a whole (an error that names the
 * BATCH_BEGIN/END message, or a sequence number we did not send: EPERM without
 * CAP_NET_ADMIN, a failed commit, a malformed batch).
 */
static int nf_acks(const uint8_t *data, size_t len, uint32_t first_seq, uint32_t nmsgs,
                   int32_t *errors, uint32_t *pending)
{
    const struct nlmsghdr *h;
    size_t left = len;

    for (h = (const struct nlmsghdr *)data; NLMSG_OK(h, left); h = NLMSG_NEXT(h, left)) {
        int32_t err;
        uint32_t index;

        if (h->nlmsg_type != NLMSG_ERROR)
            continue;
        if (h->nlmsg_len < NLMSG_LENGTH(sizeof(int32_t)))
            return -EBADMSG;
        memcpy(&err, NLMSG_DATA(h), sizeof(err));
        index = h->nlmsg_seq - first_seq - 1;      /* wraps for begin: out of range */
        if (index < nmsgs) {
            if (errors[index] == NF_PENDING) {
                errors[index] = err;
                (*pending)--;
            }
        } else if (err != 0) {
            return err < 0 ? err : -EPROTO;
        }
    }
    return 0;
}

/*
 * Closing a NETLINK_NETFILTER socket after a batch that deleted something waits for
 * the kernel's deferred frees (an RCU grace period: 8-16 ms measured). With
 * NF_DETACH_CLOSE a forked child holds the socket until this process has exited (a
 * pipe tells it) and pays that wait instead, so pam_exec, which waits for our exit
 * only, does not. The child closes stdin/stdout/stderr first: pam_exec's `stdout`
 * option reads our stdout to EOF. Only async-signal-safe calls after fork().
 */
static void nf_release(int fd, int flags)
{
    int p[2];
    pid_t pid;

    if (!(flags & NF_DETACH_CLOSE) || pipe2(p, O_CLOEXEC) < 0) {
        close(fd);
        return;
    }
    pid = fork();
    if (pid == 0) {
        char c;
        int i;

        close(p[1]);
        for (i = 0; i < 3; i++)
            if (i != fd && i != p[0])
                close(i);
        while (read(p[0], &c, 1) < 0 && errno == EINTR)
            ;
        close(fd);
        _exit(0);
    }
    close(p[0]);
    if (pid < 0)
        close(p[1]);
    /* else p[1] stays open on purpose, until this process exits */
    close(fd);
}

/*
 * Send one prebuilt batch (BATCH_BEGIN with seq first_seq, nmsgs messages that ask for
 * an ack with seqs first_seq+1 .. first_seq+nmsgs, BATCH_END) on a fresh
 * NETLINK_NETFILTER socket and wait for every ack. errors[i] gets 0 or -errno for
 * message i. Returns 0 when every message was answered, -ETIMEDOUT when timeout_ms
 * passed first, -EINTR when a signal (the hook's own alarm) interrupted the wait,
 * the batch-level error, or -errno of a failed socket call. flags: NF_DETACH_CLOSE.
 *
 * The kernel processes the whole batch inside sendto(), so when it returns the acks
 * are already queued; the poll timeout only guards against the unexpected.
 */
static int nf_batch(const uint8_t *buf, size_t len, uint32_t first_seq, uint32_t nmsgs,
                    int32_t *errors, int timeout_ms, int flags)
{
    struct sockaddr_nl kernel;
    struct timespec deadline;
    uint8_t rbuf[16384] __attribute__((aligned(8)));
    uint32_t pending = nmsgs, i;
    int fd, rc = 0;

    for (i = 0; i < nmsgs; i++)
        errors[i] = NF_PENDING;
    memset(&kernel, 0, sizeof(kernel));
    kernel.nl_family = AF_NETLINK;

    fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
    if (fd < 0)
        return -errno;
    if (sendto(fd, buf, len, 0, (struct sockaddr *)&kernel, sizeof(kernel)) < 0) {
        rc = -errno;
        goto out;
    }
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += timeout_ms / 1000;
    deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }

    while (pending) {
        struct sockaddr_nl from;
        socklen_t fromlen = sizeof(from);
        ssize_t n = recvfrom(fd, rbuf, sizeof(rbuf), MSG_DONTWAIT,
                             (struct sockaddr *)&from, &fromlen);

        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct pollfd p = { .fd = fd, .events = POLLIN };
            long wait = nf_remaining_ms(&deadline);
            int r;

            if (wait <= 0) {
                rc = -ETIMEDOUT;
                break;
            }
            r = poll(&p, 1, (int)wait);
            if (r == 0) {
                rc = -ETIMEDOUT;
                break;
            }
            if (r < 0) {
                rc = -errno;
                break;
            }
            continue;
        }
        if (n < 0) {
            rc = -errno;
            break;
        }
        if (from.nl_pid != 0)           /* not from the kernel */
            continue;
        rc = nf_acks(rbuf, (size_t)n, first_seq, nmsgs, errors, &pending);
        if (rc)
            break;
    }
out:
    nf_release(fd, flags);
    return rc;
}

/* ---- cgroup v2: one system call each ------------------------------------------- */

static int cg_mkdir(const char *path, unsigned int mode)
{
    return mkdir(path, (mode_t)mode) < 0 ? -errno : 0;
}

static int cg_rmdir(const char *path)
{
    return rmdir(path) < 0 ? -errno : 0;
}

/* Move a process (its whole thread group) into the cgroup whose cgroup.procs is given. */
static int cg_move(const char *procs, int pid)
{
    char text[24];
    int fd, len, rc = 0;

    len = snprintf(text, sizeof(text), "%d\n", pid);
    fd = open(procs, O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return -errno;
    if (write(fd, text, (size_t)len) != len)
        rc = errno ? -errno : -EIO;
    if (close(fd) < 0 && rc == 0)
        rc = -errno;
    return rc;
}

/* The cgroup id the kernel compares (`socket cgroupv2`): the directory's inode number. */
static int cg_id(const char *path, uint64_t *id)
{
    struct stat st;

    if (stat(path, &st) < 0)
        return -errno;
    *id = (uint64_t)st.st_ino;
    return 0;
}
