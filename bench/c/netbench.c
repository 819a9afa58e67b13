/*
 * TCP connection-rate tools for bench/run.py (run inside a benchmark network namespace).
 *
 *     netbench serve PORT               listen on 127.0.0.1:PORT, print "ready",
 *                                       accept and close connections until killed
 *     netbench connect PORT SECONDS     open and close connections to 127.0.0.1:PORT
 *                                       for SECONDS; print "CONNECTS FAILURES SECONDS"
 *     netbench idle N                   fork N processes that sleep, print "ready",
 *                                       sleep; killing it kills them (PDEATHSIG)
 *
 * The client closes with SO_LINGER {1, 0} (a RST instead of FIN/TIME_WAIT), so a run
 * never runs out of ephemeral ports: every connection is SYN, SYN-ACK, ACK, RST, four
 * packets through the output and input hooks.
 */

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static struct sockaddr_in loopback(int port)
{
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return sa;
}

static int serve(int port)
{
    struct sockaddr_in sa = loopback(port);
    int one = 1;
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0 || setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0
        || bind(s, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(s, 4096) < 0) {
        perror("netbench serve");
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        int c = accept4(s, NULL, NULL, SOCK_CLOEXEC);
        if (c >= 0)
            close(c);
        else if (errno != EINTR && errno != ECONNABORTED && errno != EMFILE)
            usleep(1000);
    }
}

static int client(int port, double seconds)
{
    struct sockaddr_in sa = loopback(port);
    struct linger lg = {1, 0};
    long ok = 0, failed = 0;
    double start = now(), end = start + seconds, t = start;

    while (t < end) {
        for (int i = 0; i < 64; i++) {
            int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
            if (s < 0) {
                failed++;
                continue;
            }
            setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
            if (connect(s, (struct sockaddr *)&sa, sizeof sa) == 0)
                ok++;
            else
                failed++;
            close(s);
        }
        t = now();
    }
    printf("%ld %ld %.6f\n", ok, failed, t - start);
    return 0;
}

/* N idle processes: what N logged-in sessions' processes cost a scan of /proc.
 * SIGTERM: kill and reap them all, then exit (no zombies left for init to reap). */
static volatile sig_atomic_t stop;

static void on_term(int sig)
{
    (void)sig;
    stop = 1;
}

static int idle(long n)
{
    pid_t parent = getpid();
    pid_t *pids = calloc(n > 0 ? n : 1, sizeof *pids);
    long made = 0;
    struct sigaction sa;

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    for (; made < n && !stop; made++) {
        pid_t pid = fork();
        if (pid < 0) {
            perror("netbench idle: fork");
            break;
        }
        if (pid == 0) {
            signal(SIGTERM, SIG_DFL);
            signal(SIGINT, SIG_DFL);
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != parent)
                _exit(0);
            for (;;)
                pause();
        }
        pids[made] = pid;
    }
    if (made == n && !stop) {
        printf("ready\n");
        fflush(stdout);
    }
    while (!stop && made == n)
        pause();
    for (long i = 0; i < made; i++)
        kill(pids[i], SIGKILL);
    for (long i = 0; i < made; i++)
        waitpid(pids[i], NULL, 0);
    return made == n ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "serve"))
        return serve(atoi(argv[2]));
    if (argc == 3 && !strcmp(argv[1], "idle"))
        return idle(atol(argv[2]));
    if (argc == 4 && !strcmp(argv[1], "connect"))
        return client(atoi(argv[2]), atof(argv[3]));
    fprintf(stderr, "usage: netbench serve PORT | connect PORT SECONDS | idle N\n");
    return 2;
}
