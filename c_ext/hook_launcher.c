/*
 * netfence-hook launcher: what pam_exec runs when netfence's static launcher is
 * installed (docs/hook.md, "Environment").
 *
 * pam_exec passes the whole PAM environment to the program it runs, and pam_env with
 * user_readenv=1 (Debian's sshd stack) fills it from the user's ~/.pam_environment.
 * A dynamically linked program (python3, /bin/sh, env) would honour LD_PRELOAD or
 * LD_LIBRARY_PATH from there and run the user's code as root before main(). This
 * launcher is linked statically, so no dynamic loader runs; it keeps only the PAM_*
 * variables, in their order (the hook tells pam_exec's own items from look-alikes by
 * their position), and executes the Python hook program "<its own path>.py".
 *
 * Build: cc -static -O2 -o netfence-hook c_ext/hook_launcher.c (setup.py does it).
 */

#include <errno.h>
#include <limits.h>
#include <string.h>
#include <unistd.h>

#define MAX_KEEP 64

int main(int argc, char **argv, char **envp)
{
    char *clean[MAX_KEEP + 1];
    char script[PATH_MAX + 4];
    ssize_t n;
    int kept = 0;

    (void)argc;
    for (char **e = envp; *e && kept < MAX_KEEP; e++)
        if (strncmp(*e, "PAM_", 4) == 0)
            clean[kept++] = *e;
    clean[kept] = NULL;

    n = readlink("/proc/self/exe", script, PATH_MAX);
    if (n <= 0 || n >= PATH_MAX)
        return 1;
    memcpy(script + n, ".py", 4);
    argv[0] = script;
    execve(script, argv, clean);
    return 1;       /* exit 1: pam_exec reports PAM_SYSTEM_ERR, the login is refused */
}
