/*
 * Login driver for bench/run.py: runs programs the way pam_exec runs the netfence hook.
 *
 *     driver SPECFILE
 *
 * SPECFILE (one directive a line, arguments separated by TABs):
 *     iterations N
 *     step NAME                 starts a step; the following lines belong to it
 *     env NAME=VALUE            the step's environment, in this order (pam_exec's order
 *                               matters to the hook: PAM_TYPE last)
 *     cmd PATH<TAB>ARG...       (argv[0] = PATH) run in order; the step's time is the
 *                               wall time from the first fork to the last wait
 *     stderr PATH               the step's commands write stderr to PATH (appended)
 *                               instead of /dev/null (for profiling runs)
 *     pause MS                  sleep MS milliseconds before every iteration (untimed): logins
 *                               spaced out like real ones (see cgroup_move_after_idle)
 *     hold STEPNAME             after STEPNAME, print "hold ITER PID" and wait for a
 *                               line on stdin before the next step (to keep a session)
 *
 * Every iteration forks a fresh "PAM application" P (a distinct parent, hence a
 * distinct session key), which runs the steps; every command is started like pam_exec
 * starts its program: fork, setsid, stdin/stdout/stderr on /dev/null, every other fd
 * closed, execve with only the given environment; P waits for it with wait4, whose
 * rusage gives that very process's peak RSS. P prints one line per step:
 *     ITER STEP MICROSECONDS STATUS MAXRSS_KB
 * STATUS is the first non-zero exit status of the step's commands (256+signal for a
 * signal), 0 when all succeeded. The driver exits 0 once every P has been reaped.
 *
 * SIGTERM, SIGINT or SIGHUP (or the driver's death, for P) stop the run cleanly: the
 * command running now is waited for (a hook bounds its own time), nothing more is
 * started, P exits, the driver reaps it and exits 4. Nothing is left orphaned.
 */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_ENV 64
#define MAX_STEPS 32
#define MAX_CMDS 4096
#define MAX_ARGS 64

struct cmd { char *argv[MAX_ARGS + 1]; };
struct step { char *name, *err; int first, count, nenv; char *envp[MAX_ENV + 1]; };

static struct cmd cmds[MAX_CMDS];
static int ncmds;
static struct step steps[MAX_STEPS];
static int nsteps;
static long iterations = 1;
static char *hold_after;
static long pause_ms;
static volatile sig_atomic_t stop;

static void on_stop(int sig)
{
    (void)sig;
    stop = 1;
}

static void catch_stop(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop;          /* no SA_RESTART: blocking calls return EINTR */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
}

static void die(const char *what)
{
    fprintf(stderr, "driver: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void parse(const char *path)
{
    FILE *f = fopen(path, "r");
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;

    if (!f)
        die(path);
    while ((len = getline(&line, &cap, f)) > 0) {
        if (line[len - 1] == '\n')
            line[--len] = 0;
        char *sp = strchr(line, ' ');
        if (!sp)
            continue;
        *sp = 0;
        char *arg = strdup(sp + 1);
        if (!strcmp(line, "iterations")) {
            iterations = atol(arg);
        } else if (!strcmp(line, "env") && nsteps && steps[nsteps - 1].nenv < MAX_ENV) {
            struct step *st = &steps[nsteps - 1];
            st->envp[st->nenv++] = arg;
            st->envp[st->nenv] = NULL;
        } else if (!strcmp(line, "step") && nsteps < MAX_STEPS) {
            steps[nsteps].name = arg;
            steps[nsteps].first = ncmds;
            steps[nsteps].count = 0;
            steps[nsteps].nenv = 0;
            steps[nsteps].err = NULL;
            steps[nsteps].envp[0] = NULL;
            nsteps++;
        } else if (!strcmp(line, "cmd") && nsteps && ncmds < MAX_CMDS) {
            int n = 0;
            for (char *tok = strtok(arg, "\t"); tok && n < MAX_ARGS; tok = strtok(NULL, "\t"))
                cmds[ncmds].argv[n++] = tok;
            cmds[ncmds].argv[n] = NULL;
            ncmds++;
            steps[nsteps - 1].count++;
        } else if (!strcmp(line, "stderr") && nsteps) {
            steps[nsteps - 1].err = arg;
        } else if (!strcmp(line, "pause")) {
            pause_ms = atol(arg);
        } else if (!strcmp(line, "hold")) {
            hold_after = arg;
        } else {
            fprintf(stderr, "driver: bad spec line: %s\n", line);
            exit(2);
        }
    }
    free(line);
    fclose(f);
}

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

/* pam_exec's child: stdio on /dev/null, setsid, other fds closed, execve */
static void exec_child(struct cmd *c, char **envp, const char *err)
{
    int null = open("/dev/null", O_RDWR);
    if (null < 0)
        _exit(127);
    dup2(null, 0);
    dup2(null, 1);
    dup2(null, 2);
    if (null > 2)
        close(null);
    if (err) {
        int fd = open(err, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0 && fd != 2) {
            dup2(fd, 2);
            close(fd);
        }
    }
    syscall(SYS_close_range, 3, ~0U, 0);
    setsid();
    execve(c->argv[0], c->argv, envp);
    _exit(127);
}

static void run_parent(long iter)
{
    char out[256];
    for (int s = 0; s < nsteps && !stop; s++) {
        int status_out = 0;
        long maxrss = 0;
        double t0 = now_us();
        for (int i = steps[s].first; i < steps[s].first + steps[s].count && !stop; i++) {
            struct rusage ru;
            int status;
            pid_t pid = fork();
            if (pid < 0)
                die("fork");
            if (pid == 0) {
                signal(SIGTERM, SIG_DFL);
                signal(SIGINT, SIG_DFL);
                signal(SIGHUP, SIG_DFL);
                exec_child(&cmds[i], steps[s].envp, steps[s].err);
            }
            while (wait4(pid, &status, 0, &ru) < 0)
                if (errno != EINTR)
                    die("wait4");
            if (ru.ru_maxrss > maxrss)
                maxrss = ru.ru_maxrss;
            int code = WIFEXITED(status) ? WEXITSTATUS(status) : 256 + WTERMSIG(status);
            if (code && !status_out)
                status_out = code;
        }
        double t1 = now_us();
        if (stop)
            return;
        int n = snprintf(out, sizeof out, "%ld %s %.1f %d %ld\n", iter, steps[s].name,
                         t1 - t0, status_out, maxrss);
        if (write(1, out, n) != n)
            die("write");
        if (hold_after && !strcmp(hold_after, steps[s].name) && s + 1 < nsteps) {
            char buf[64];
            n = snprintf(out, sizeof out, "hold %ld %d\n", iter, (int)getpid());
            if (write(1, out, n) != n)
                die("write");
            if (read(0, buf, sizeof buf) < 0 && errno != EINTR)   /* line or EOF: go on */
                die("read");
        }
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: driver SPECFILE\n");
        return 2;
    }
    parse(argv[1]);
    catch_stop();
    pid_t self = getpid();
    for (long it = 0; it < iterations && !stop; it++) {
        if (pause_ms > 0) {
            struct timespec ts = {pause_ms / 1000, (pause_ms % 1000) * 1000000L};
            while (nanosleep(&ts, &ts) < 0 && errno == EINTR && !stop)
                ;
            if (stop)
                break;
        }
        pid_t pid = fork();
        int status;
        if (pid < 0)
            die("fork");
        if (pid == 0) {
            /* a killed driver: P finishes its current command and exits */
            prctl(PR_SET_PDEATHSIG, SIGTERM);
            if (getppid() != self)
                _exit(1);
            run_parent(it);
            _exit(0);
        }
        int forwarded = 0;
        while (waitpid(pid, &status, 0) < 0) {
            if (errno != EINTR)
                die("waitpid");
            if (stop && !forwarded) {
                kill(pid, SIGTERM);
                forwarded = 1;
            }
        }
        if (!stop && (!WIFEXITED(status) || WEXITSTATUS(status)))
            return 3;
    }
    return stop ? 4 : 0;
}
