/*
 * Baseline for bench/launcher.py: the hook launcher as it was before issue 7 (keep the
 * PAM_* variables, execute "<own path>.py"), without its fixed 64-entry table (which
 * was the flaw, not a cost) and without the supervision the real launcher
 * (c_ext/hook_launcher.c) adds: signal reset, fork, report pipe, deadline. The
 * difference between the two is what the hard time bound costs a login.
 * Not for use as a hook: it has no time bound.
 */

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv, char **envp)
{
    char script[PATH_MAX + 4], **clean;
    size_t count = 0, kept = 0;
    ssize_t n;

    (void)argc;
    for (char **e = envp; *e; e++)
        count += strncmp(*e, "PAM_", 4) == 0;
    clean = calloc(count + 1, sizeof *clean);
    if (!clean)
        return 1;
    for (char **e = envp; *e; e++)
        if (strncmp(*e, "PAM_", 4) == 0)
            clean[kept++] = *e;
    n = readlink("/proc/self/exe", script, PATH_MAX);
    if (n <= 0 || n >= PATH_MAX)
        return 1;
    memcpy(script + n, ".py", 4);
    argv[0] = script;
    execve(script, argv, clean);
    return 1;
}
