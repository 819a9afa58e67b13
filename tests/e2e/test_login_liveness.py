"""Attacks on what keeps restrictions alive, through real `su` logins (issue 7, findings
2, 3 and 6; docs/security.md): a thread-group leader that exits while its threads keep
connecting, and a `netfence reload` run inside a logout.
"""

import os
import subprocess
import time

import pytest

from conftest import ONE_PROFILE, PORT_A, PORT_B, kill_and_expect_release, read_kv
from support.pamsvc import wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: users, netns, su")

# The main thread leaves with SYS_exit: the process shows State Z (a zombie leader)
# while its worker thread keeps connecting. Each round replaces OUT with
# "n=N t=START pid=PID PORT=ok|refused|..." like conftest's background prober.
LEADER_EXITS_C = r"""
#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <unistd.h>

static char **ports; static int nports; static const char *out;

static const char *probe(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct timeval tv = {1, 0};
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    const char *res = "ok";
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0)
        res = errno == ECONNREFUSED ? "refused" : "dropped";
    close(fd);
    return res;
}

static void *worker(void *arg) {
    char tmp[4096], line[1024];
    (void)arg;
    snprintf(tmp, sizeof tmp, "%s.tmp", out);
    for (long n = 1;; n++) {
        struct timeval now; gettimeofday(&now, 0);
        int len = snprintf(line, sizeof line, "n=%ld t=%ld.%06ld pid=%d", n,
                           (long)now.tv_sec, (long)now.tv_usec, getpid());
        for (int i = 0; i < nports; i++)
            len += snprintf(line + len, sizeof line - len, " %s=%s", ports[i],
                            probe(atoi(ports[i])));
        FILE *f = fopen(tmp, "w");
        if (f) { fprintf(f, "%s\n", line); fclose(f); rename(tmp, out); }
        usleep(100000);
    }
    return 0;
}

int main(int argc, char **argv) {
    pthread_t t;
    out = argv[1]; ports = argv + 2; nports = argc - 2;
    pthread_create(&t, 0, worker, 0);
    syscall(SYS_exit, 0);          /* only this thread ends */
    return 0;
}
"""


@pytest.fixture
def leader_exits(fence):
    """The compiled program, in the test's root-owned directory (users may run it)."""
    src, binary = f"{fence.nf.root}/leader_exits.c", f"{fence.nf.root}/leader_exits"
    with open(src, "w") as handle:
        handle.write(LEADER_EXITS_C)
    subprocess.run(["gcc", "-O2", "-pthread", "-o", binary, src], check=True)
    os.chmod(binary, 0o755)
    return binary


def proc_state(pid):
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("State:"):
                return line.split()[1]
    return None


def after(path, moment):
    """The prober's latest round if it started after `moment`, else None."""
    found = read_kv(path)
    return found if found and float(found["t"]) > moment + 0.05 else None


def test_a_zombie_leader_with_a_live_thread_keeps_user_scope(fence, user, leader_exits):
    """Finding 2: the leader exits (State Z), a worker thread keeps connecting after
    logout. The uid stays restricted while any task of it lives; gc releases it only
    once the thread is gone."""
    fence.echo()
    fence.load(ONE_PROFILE.format(port=PORT_B, user=user.name, scope="user"))
    out = f"{user.home}/zombie-probe"
    with fence.su_shell(user) as shell:
        shell.out(f"nohup {leader_exits} {out} {PORT_A} {PORT_B} "
                  f"</dev/null >/dev/null 2>&1 &")
        first = wait_until(lambda: read_kv(out), what="the leader-exits prober")
        assert (first[str(PORT_A)], first[str(PORT_B)]) == ("ok", "refused")
    assert shell.proc.returncode == 0, shell.stderr()
    logged_out = time.time()
    pid = int(first["pid"])
    assert proc_state(pid) == "Z"                     # the leader is a zombie ...
    assert len(os.listdir(f"/proc/{pid}/task")) >= 1  # ... with a live thread

    assert fence.filled() == {"uid-fence": [user.uid]}
    later = wait_until(lambda: after(out, logged_out), what="a probe after logout")
    assert (later[str(PORT_A)], later[str(PORT_B)]) == ("ok", "refused")
    fence.nf.cli("gc")
    assert fence.filled() == {"uid-fence": [user.uid]}
    after_gc = time.time()
    later = wait_until(lambda: after(out, after_gc), what="a probe after gc")
    assert later[str(PORT_B)] == "refused"

    kill_and_expect_release(fence, user, pid)
    assert fence.cgroup_dirs() in ([], [f"/{fence.nf.cgroup_base}"])


@pytest.mark.parametrize("scope", ["session", "user"])
def test_reload_inside_a_logout_does_not_resurrect_the_session(fence, user, scope):
    """Finding 3: the close's rmdir is held for 3 s (strace fault injection) after its
    elements were destroyed; `netfence reload` runs inside that window. Before the fix
    the reload read the records (still there) and put the elements back, where no
    record and so no gc would ever remove them."""
    fence.load(ONE_PROFILE.format(port=PORT_B, user=user.name, scope=scope))
    strace = ["strace", "-f", "--seccomp-bpf", "-o", "/dev/null", "-e", "trace=rmdir",
              "-e", "inject=rmdir:delay_enter=3000000:when=1"]
    argv = fence._su_argv(user.name, "sleep 0.5", "su-l",
                          {"su-l": fence.stack("timeout_ms=20000")})
    proc = subprocess.Popen(strace + argv, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=fence._ENV,
                            cwd="/")
    try:
        wait_until(lambda: fence.filled(), timeout=20, what="the login's elements")
        # the window: the close destroyed the elements, its rmdir is being delayed
        wait_until(lambda: not fence.filled() and fence.session_records(), timeout=20,
                   interval=0.02, what="the close's delayed rmdir")
        fence.nf.cli("reload")
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    fence.wait_clean(what="the close to finish")
    fence.nf.cli("gc")
    assert fence.filled() == {}, fence.filled()
    assert fence.session_records() == []
    assert os.listdir(f"{fence.nf.run_dir}/users") == []
