/*
 * netfence-hook launcher: what pam_exec runs when netfence's static launcher is
 * installed (docs/hook.md, "Environment" and "Time bound").
 *
 * 1. Environment. pam_exec passes the whole PAM environment to the program it runs,
 *    and pam_env with user_readenv=1 fills it from the user's ~/.pam_environment. A
 *    dynamically linked program (python3, /bin/sh, env) would honour LD_PRELOAD or
 *    LD_LIBRARY_PATH from there and run the user's code as root before main(). This
 *    launcher is linked statically, so no dynamic loader runs; it keeps every PAM_*
 *    variable, in order and without any fixed limit (the hook tells pam_exec's own
 *    items from look-alikes by their position, and needs pam_exec's trailing PAM_TYPE:
 *    a table that drops entries past a limit lets a user flood them away), and drops
 *    everything else.
 *
 * 2. Time bound. pam_exec waits for its program forever. The Python hook bounds its
 *    own time with SIGALRM, but a signal mask or disposition inherited through the
 *    login program (masks survive exec of setuid su) or a C call that never returns
 *    (a hung NSS lookup) defeats that. So the launcher resets the signal mask and
 *    every disposition to the default, forks, runs the Python hook "<own path>.py" in
 *    the child, and enforces the deadline in the parent: timeout_ms (argument, else
 *    2000) + GRACE_MS after its own start, GRACE_MS leaving the hook's own alarm the
 *    first word (it cleans up and logs the details). The child reports the budget
 *    and on_error it settled on (the snapshot's settings) over a pipe whose write end
 *    it gets as the argument launcher_fd=N, appended here (any such argument from the
 *    PAM line is dropped). At the deadline the child is SIGKILLed, one key=value line
 *    is logged, and the exit status follows on_error (deny: 1, allow: 0).
 *
 * 3. Logging: syslog (/dev/log, authpriv), else the kernel log (/dev/kmsg), as the
 *    Python hook does; with the `debug` argument also to stderr.
 *
 * Build: cc -static -O2 -o netfence-hook c_ext/hook_launcher.c (setup.py does it).
 */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_TIMEOUT_MS 2000
#define MAX_TIMEOUT_MS 60000
#define GRACE_MS 200            /* after timeout_ms: the hook's own alarm goes first */
#define REAP_MS 200             /* how long to wait for a SIGKILLed child to go */
#define LOG_AUTHPRIV (10 << 3)
#define LOG_ERR 3
#define FD_ARG "launcher_fd="

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_clone3
#define SYS_clone3 435
#endif
#define INTO_CGROUP 0x200000000ULL      /* CLONE_INTO_CGROUP, linux/sched.h (5.7) */

static const char *syslog_path = "/dev/log";
static const char *kmsg_path = "/dev/kmsg";
static int debug;

static long long now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* One log line: syslog over /dev/log (datagram, else stream), else /dev/kmsg. */
static void log_line(int priority, const char *fmt, ...)
{
    char text[900], msg[1024];
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    va_list ap;
    int len, fd, sent = 0;

    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    if (debug) {
        len = snprintf(msg, sizeof msg, "netfence: %s\n", text);
        if (write(2, msg, len) < 0) { /* nothing to do */ }
    }
    len = snprintf(msg, sizeof msg, "<%d>netfence[%d]: %s", LOG_AUTHPRIV | priority,
                   (int)getpid(), text);
    strncpy(addr.sun_path, syslog_path, sizeof addr.sun_path - 1);
    for (int attempt = 0; attempt < 2 && !sent; attempt++) {
        int kind = attempt ? SOCK_STREAM : SOCK_DGRAM, err;
        fd = socket(AF_UNIX, kind | SOCK_CLOEXEC, 0);
        if (fd < 0)
            break;
        if (connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0)
            sent = send(fd, msg, len + (kind == SOCK_STREAM), MSG_NOSIGNAL) > 0;
        err = errno;
        close(fd);
        if (!sent && err != EPROTOTYPE)     /* a stream socket: try again; else give up */
            break;
    }
    if (sent)
        return;
    fd = open(kmsg_path, O_WRONLY | O_CLOEXEC | O_NOCTTY);
    if (fd >= 0) {
        msg[len] = '\n';
        if (write(fd, msg, len + 1) < 0) { /* nowhere left to say it */ }
        close(fd);
    }
}

/* A PAM item for the log line: "-" when empty, bare when plain printable ASCII
   without quotes, = or backslash, else quoted with \xNN escapes; at most 64 bytes
   (the items are the user's text: nothing in them may split or forge a field) */
static void show(char *out, size_t cap, const char *value)
{
    size_t n = 0, len = strnlen(value, 64);
    int plain = len > 0;

    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)value[i];
        if (c <= 0x20 || c >= 0x7f || c == '=' || c == '"' || c == '\'' || c == '\\')
            plain = 0;
    }
    if (!len) {
        snprintf(out, cap, "-");
        return;
    }
    if (plain) {
        snprintf(out, cap, "%.*s", (int)len, value);
        return;
    }
    out[n++] = '\'';
    for (size_t i = 0; i < len && n + 6 < cap; i++) {
        unsigned char c = (unsigned char)value[i];
        if (c < 0x20 || c >= 0x7f || c == '\'' || c == '\\')
            n += snprintf(out + n, cap - n, "\\x%02x", c);
        else
            out[n++] = (char)c;
    }
    out[n++] = '\'';
    out[n] = 0;
}

/* "user=U service=S" from the last PAM_USER and PAM_SERVICE: pam_exec appends its
   own after the PAM environment, so the last ones are its (for the log only) */
static void describe(char *out, size_t cap, char **env, size_t count)
{
    const char *user = "", *service = "";
    char u[300], sv[300];

    for (size_t i = 0; i < count; i++) {
        if (strncmp(env[i], "PAM_USER=", 9) == 0)
            user = env[i] + 9;
        else if (strncmp(env[i], "PAM_SERVICE=", 12) == 0)
            service = env[i] + 12;
    }
    show(u, sizeof u, user);
    show(sv, sizeof sv, service);
    snprintf(out, cap, "user=%s service=%s", u, sv);
}

/* "timeout_ms=N" (1..MAX) -> N, else 0 */
static int parse_timeout(const char *value)
{
    long n = 0;
    if (!*value)
        return 0;
    for (const char *p = value; *p; p++) {
        if (*p < '0' || *p > '9')
            return 0;
        n = n * 10 + (*p - '0');
        if (n > MAX_TIMEOUT_MS)
            return 0;
    }
    return n >= 1 ? (int)n : 0;
}

/* The child's report: "timeout_ms=N on_error=deny|allow\n" */
static void read_report(const char *buf, int *timeout_ms, int *allow)
{
    char copy[128], *save = NULL;
    snprintf(copy, sizeof copy, "%s", buf);
    for (char *word = strtok_r(copy, " \n", &save); word; word = strtok_r(NULL, " \n", &save)) {
        int n;
        if (strncmp(word, "timeout_ms=", 11) == 0 && (n = parse_timeout(word + 11)))
            *timeout_ms = n;
        else if (strcmp(word, "on_error=allow") == 0)
            *allow = 1;
        else if (strcmp(word, "on_error=deny") == 0)
            *allow = 0;
    }
}

static void reset_signals(void)
{
    struct sigaction dfl;
    sigset_t none;

    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; sig++)
        if (sig != SIGKILL && sig != SIGSTOP)
            sigaction(sig, &dfl, NULL);     /* EINVAL for glibc's reserved ones: fine */
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    alarm(0);                           /* an interval timer survives exec: cancel it */
}

/*
 * Resource limits survive exec of setuid su like signal masks do: a user could run
 * `prlimit --fsize=1 su - $USER` so that the hook's records are cut, or starve it of
 * memory, stack, CPU time or file descriptors at a moment of their choosing. Root may
 * raise the hard limits (with CAP_SYS_RESOURCE): put back what a login program would
 * have. A record that still cannot be written whole fails the hook (records.write),
 * never leaves a cut one in place.
 */
static void reset_limits(void)
{
    static const struct { int resource; rlim_t at_least; } wanted[] = {
        {RLIMIT_FSIZE, RLIM_INFINITY}, {RLIMIT_CPU, RLIM_INFINITY},
        {RLIMIT_AS, RLIM_INFINITY}, {RLIMIT_DATA, RLIM_INFINITY},
        {RLIMIT_STACK, 8 << 20}, {RLIMIT_NOFILE, 1024},
    };
    for (size_t i = 0; i < sizeof wanted / sizeof wanted[0]; i++) {
        struct rlimit now;
        rlim_t want = wanted[i].at_least;
        if (getrlimit(wanted[i].resource, &now) != 0 || now.rlim_cur == RLIM_INFINITY
                || (want != RLIM_INFINITY && now.rlim_cur >= want))
            continue;
        struct rlimit raised = {want, now.rlim_max};
        if (now.rlim_max != RLIM_INFINITY && (want == RLIM_INFINITY || now.rlim_max < want))
            raised.rlim_max = want;
        if (setrlimit(wanted[i].resource, &raised) != 0) {
            /* no CAP_SYS_RESOURCE (a container): the soft limit up to the hard one;
               what is still too low makes the hook fail cleanly, per on_error */
            now.rlim_cur = now.rlim_max;
            setrlimit(wanted[i].resource, &now);
        }
    }
}

/* The cgroup2 mount point (first "cgroup2" line of mountinfo) into out. */
static int cgroup2_mount(char *out, size_t cap)
{
    char line[4096];
    FILE *f = fopen("/proc/self/mountinfo", "re");
    int found = 0;

    if (!f)
        return 0;
    while (!found && fgets(line, sizeof line, f)) {
        char *sep = strstr(line, " - "), *field = line;
        if (!sep || strncmp(sep + 3, "cgroup2 ", 8) != 0)
            continue;
        for (int i = 0; i < 4 && field; i++) {       /* field 5: the mount point */
            field = strchr(field, ' ');
            field = field ? field + 1 : NULL;
        }
        char *end = field ? strchr(field, ' ') : NULL;
        if (end && (size_t)(end - field) < cap && !memchr(field, '\\', end - field)) {
            memcpy(out, field, end - field);
            out[end - field] = 0;
            found = 1;
        }
    }
    fclose(f);
    return found;
}

/*
 * The hook must not run in a cgroup the user controls: in a delegated subtree (say
 * `systemd-run --user --scope su - $USER`) the user could freeze it (cgroup.freeze)
 * while it holds the records lock, stopping every login on the host and the deadline
 * with it, or OOM-kill it at a chosen point (memory.max). If the cgroup we were
 * started in, or one above it, is not root's, move to the root cgroup, which has no
 * such controls. Returns 0, or -errno when a move was needed and failed.
 */
static int leave_user_cgroup(void)
{
    char mount[PATH_MAX], walk[PATH_MAX * 2], file[PATH_MAX * 2 + 16];
    char *line = NULL, *own = NULL;
    size_t cap = 0;
    ssize_t len;
    FILE *f = fopen("/proc/self/cgroup", "re");
    int user_owned = 0, fd, rc = 0;
    struct stat st;

    if (!f)
        return 0;
    while ((len = getline(&line, &cap, f)) > 0)
        if (strncmp(line, "0::", 3) == 0) {
            free(own);
            own = strdup(line + 3);
            if (own)
                own[strcspn(own, "\n")] = 0;
        }
    free(line);
    fclose(f);
    if (!own || strcmp(own, "/") == 0 || !cgroup2_mount(mount, sizeof mount)) {
        free(own);
        return 0;
    }
    /* from our cgroup up to (not including) the root: a directory or a freeze file
       that is not root's, or that others may write, is the user's to control; what
       cannot be checked (a path too long, a stat that fails) counts as the user's:
       moving to the root cgroup is harmless */
    if (snprintf(walk, sizeof walk, "%s%s", mount, own) >= (int)sizeof walk)
        user_owned = 1;
    free(own);
    while (!user_owned && strlen(walk) > strlen(mount)) {
        snprintf(file, sizeof file, "%s/cgroup.freeze", walk);
        if (stat(walk, &st) != 0 || st.st_uid != 0 || (st.st_mode & 022))
            user_owned = 1;
        else if (stat(file, &st) == 0 && (st.st_uid != 0 || (st.st_mode & 022)))
            user_owned = 1;
        *strrchr(walk, '/') = 0;
    }
    if (!user_owned)
        return 0;
    snprintf(file, sizeof file, "%s/cgroup.procs", mount);
    fd = open(file, O_WRONLY | O_CLOEXEC);
    if (fd < 0 || write(fd, "0", 1) != 1)
        rc = -errno;
    if (fd >= 0)
        close(fd);
    return rc;
}

/*
 * The first cgroup migration after a quiet spell waits for an RCU grace period
 * (cgroup_threadgroup_rwsem's rcu_sync: 5-15 ms) and for about one more grace period
 * after it the next migration does not. At open the hook moves the PAM application
 * into its session cgroup: start that wait now, while the interpreter starts, in a
 * child that moves itself into the cgroup it is already in (pid 0: the
 * writer; the kernel skips a task whose cgroups do not change) and exits. Nobody
 * waits for it (pam_exec waits for us, we wait for the hook); any failure only
 * costs the time it would have saved. docs/hook.md, "The migration's wait".
 */
static void prime_migrations(void)
{
    char mount[PATH_MAX], file[PATH_MAX * 2 + 16];
    char *line = NULL, *own = NULL;
    size_t cap = 0;
    FILE *f = fopen("/proc/self/cgroup", "re");
    int fd = -1;

    if (!f)
        return;
    while (getline(&line, &cap, f) > 0)
        if (!own && strncmp(line, "0::", 3) == 0 && (own = strdup(line + 3)))
            own[strcspn(own, "\n")] = 0;
    free(line);
    fclose(f);
    if (own && cgroup2_mount(mount, sizeof mount)
        && snprintf(file, sizeof file, "%s%s/cgroup.procs", mount,
                    strcmp(own, "/") == 0 ? "" : own) < (int)sizeof file)
        fd = open(file, O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
    free(own);
    if (fd < 0)
        return;
    if (fork() == 0) {
        ssize_t ignored = write(fd, "0", 1);
        (void)ignored;
        _exit(0);
    }
    close(fd);
}

/*
 * At close the hook moves the PAM application (then itself and the launcher) out of
 * the session cgroup, and that first move waits for the same grace period. A child
 * forked here would be one more task in the session cgroup, which the close counts
 * (the user's release) and must find empty to remove it. So the child is created in
 * the root cgroup of the cgroup2 hierarchy (clone3 with CLONE_INTO_CGROUP: it is
 * never in the session cgroup, not even while it waits), where it moves itself in
 * place and exits. The only cgroup named is the root, from the cgroup2 mount in
 * /proc/self/mountinfo (nothing of the environment); the child moves nothing but
 * itself. Without clone3 or CLONE_INTO_CGROUP (before Linux 5.7, a seccomp filter),
 * no priming: never a fork in the session cgroup. docs/hook.md, "The migration's
 * wait".
 */
static void prime_migrations_from_root(void)
{
    struct {                            /* struct clone_args, CLONE_ARGS_SIZE_VER2 */
        uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size,
                 tls, set_tid, set_tid_size, cgroup;
    } args;
    char mount[PATH_MAX];
    int dir, procs;

    if (!cgroup2_mount(mount, sizeof mount))
        return;
    dir = open(mount, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    if (dir < 0)
        return;
    procs = openat(dir, "cgroup.procs", O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
    if (procs >= 0) {
        memset(&args, 0, sizeof args);
        args.flags = INTO_CGROUP;
        args.exit_signal = SIGCHLD;
        args.cgroup = (uint64_t)dir;
        if (syscall(SYS_clone3, &args, sizeof args) == 0) {
            ssize_t ignored = write(procs, "0", 1);     /* the child: in the root */
            (void)ignored;
            _exit(0);
        }
        close(procs);
    }
    close(dir);
}

/*
 * Scheduling survives exec of setuid su too: `chrt -i 0`, `nice -n 19`, `taskset`,
 * `ionice -c 3` would let a user stretch each hold of the records lock (and starve
 * the launcher's deadline) with a few CPU hogs. Put back the defaults.
 */
static void reset_scheduling(void)
{
    struct sched_param param = {0};
    cpu_set_t all;

    setpriority(PRIO_PROCESS, 0, 0);
    sched_setscheduler(0, SCHED_OTHER, &param);
    CPU_ZERO(&all);
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++)
        CPU_SET(cpu, &all);
    sched_setaffinity(0, sizeof all, &all);     /* the kernel keeps the online ones */
    syscall(SYS_ioprio_set, 1 /* IOPRIO_WHO_PROCESS */, 0,
            (2 << 13) | 4 /* IOPRIO_CLASS_BE, level 4: the default */);
}

int main(int argc, char **argv, char **envp)
{
    long long start = now_ms(), deadline;
    char script[PATH_MAX + 4], fdarg[32], report[128], who[640];
    const char *event = "-";
    char **clean, **args;
    size_t count = 0, kept = 0, got = 0;
    int timeout_ms = DEFAULT_TIMEOUT_MS, allow = 0, nargs = 0, fds[2], pidfd, status;
    ssize_t n;
    pid_t pid, parent;

    reset_signals();
    reset_limits();
    reset_scheduling();
    for (int i = 1; i < argc; i++) {
        int t;
        if (strncmp(argv[i], "timeout_ms=", 11) == 0 && (t = parse_timeout(argv[i] + 11)))
            timeout_ms = t;
        else if (strcmp(argv[i], "on_error=allow") == 0)
            allow = 1;
        else if (strcmp(argv[i], "on_error=deny") == 0)
            allow = 0;
        else if (strcmp(argv[i], "debug") == 0)
            debug = 1;
    }

    for (char **e = envp; *e; e++)
        count += strncmp(*e, "PAM_", 4) == 0;
    clean = calloc(count + 1, sizeof *clean);
    args = calloc(argc + 2, sizeof *args);
    if (!clean || !args) {
        log_line(LOG_ERR, "event=- result=refused error='launcher: out of memory for "
                 "%zu PAM_* variables'", count);
        return 1;
    }
    for (char **e = envp; *e; e++)
        if (strncmp(*e, "PAM_", 4) == 0)
            clean[kept++] = *e;
    clean[kept] = NULL;
    describe(who, sizeof who, clean, kept);
    if (kept && strcmp(clean[kept - 1], "PAM_TYPE=open_session") == 0)
        event = "open";
    else if (kept && strcmp(clean[kept - 1], "PAM_TYPE=close_session") == 0)
        event = "close";

    n = readlink("/proc/self/exe", script, PATH_MAX);
    if (n <= 0 || n >= PATH_MAX) {
        log_line(LOG_ERR, "event=%s result=refused error='launcher: cannot read "
                 "/proc/self/exe'", event);
        return 1;
    }
    memcpy(script + n, ".py", 4);

    if (pipe2(fds, O_CLOEXEC) < 0) {
        log_line(LOG_ERR, "event=%s result=refused error='launcher: pipe: %s'", event,
                 strerror(errno));
        return 1;
    }
    if ((n = leave_user_cgroup()) < 0) {
        log_line(LOG_ERR, "event=%s %s result=refused error='launcher: cannot leave a "
                 "cgroup the user controls: %s'", event, who, strerror((int)-n));
        return 1;
    }
    if (strcmp(event, "open") == 0)
        prime_migrations();
    else if (strcmp(event, "close") == 0)   /* a child born in the root cgroup: none */
        prime_migrations_from_root();       /* in the session cgroup the close counts */
    parent = getpid();
    pid = fork();
    if (pid < 0) {
        log_line(LOG_ERR, "event=%s result=refused error='launcher: fork: %s'", event,
                 strerror(errno));
        return 1;
    }
    if (pid == 0) {
        /* the hook dies with the launcher: nothing runs on unsupervised */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(1);
        int w = fcntl(fds[1], F_DUPFD, 3);       /* without FD_CLOEXEC: inherited */
        if (w < 0)
            _exit(1);
        snprintf(fdarg, sizeof fdarg, FD_ARG "%d", w);
        args[nargs++] = script;
        for (int i = 1; i < argc; i++)
            if (strncmp(argv[i], FD_ARG, sizeof FD_ARG - 1) != 0)
                args[nargs++] = argv[i];
        args[nargs++] = fdarg;
        args[nargs] = NULL;
        execve(script, args, clean);
        _exit(1);      /* exit 1: pam_exec reports PAM_SYSTEM_ERR, the login is refused */
    }
    close(fds[1]);
    pidfd = (int)syscall(SYS_pidfd_open, pid, 0);   /* < 0 before Linux 5.3: poll */

    deadline = start + timeout_ms + GRACE_MS;
    for (;;) {
        struct pollfd pfd[2];
        int nfds = 0, wait_ms;
        long long left;
        pid_t done = waitpid(pid, &status, WNOHANG);

        if (done == pid)
            break;
        left = deadline - now_ms();
        if (left <= 0) {
            long long until;
            kill(pid, SIGKILL);
            /* not an unbounded wait: a child stuck in the kernel (D state) dies late */
            until = now_ms() + REAP_MS;
            while (waitpid(pid, &status, WNOHANG) != pid && now_ms() < until)
                poll(NULL, 0, 5);
            log_line(LOG_ERR, "event=%s %s result=%s on_error=%s error=timeout "
                     "timeout_ms=%d ms=%lld killed=%d", event, who,
                     allow ? "allowed-after-error" : "refused", allow ? "allow" : "deny",
                     timeout_ms, now_ms() - start, (int)pid);
            return allow ? 0 : 1;
        }
        if (fds[0] >= 0) {
            pfd[nfds].fd = fds[0];
            pfd[nfds++].events = POLLIN;
        }
        if (pidfd >= 0) {
            pfd[nfds].fd = pidfd;
            pfd[nfds++].events = POLLIN;
        }
        wait_ms = pidfd >= 0 ? (int)left : (int)(left < 10 ? left : 10);
        if (poll(pfd, nfds, wait_ms) < 0 && errno != EINTR)
            poll(NULL, 0, 5);
        if (fds[0] >= 0 && pfd[0].revents) {
            n = read(fds[0], report + got, sizeof report - 1 - got);
            if (n > 0)
                got += n;
            if (n <= 0 || got == sizeof report - 1 || memchr(report, '\n', got)) {
                report[got] = 0;
                read_report(report, &timeout_ms, &allow);
                deadline = start + timeout_ms + GRACE_MS;
                close(fds[0]);
                fds[0] = -1;
            }
        }
    }
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    log_line(LOG_ERR, "event=%s %s result=%s on_error=%s error='hook killed by signal %d' "
             "ms=%lld", event, who, allow ? "allowed-after-error" : "refused",
             allow ? "allow" : "deny", WTERMSIG(status), now_ms() - start);
    return allow ? 0 : 1;
}
