"""A cgroup migration (a pid written to a cgroup.procs file) whose kernel wait runs
in a thread: the hook moves the PAM application into its session cgroup while it
writes the records and sends the batch (cgroups.py says why). posix, errno and
_thread only: the hook imports it.
"""

import _thread
import errno
import posix


class Migration:
    """A write of one pid to a cgroup.procs file, the kernel's wait in a thread.

    The file is opened here and only the write is left to the thread, which is
    handed the GIL at once (`started`): a thread that needed the GIL back between
    two system calls would wait for the main thread's switch interval (5 ms) and
    start the kernel's wait that much later. wait() returns 0 or -errno, as
    fastpath.cg_move; the hook's alarm interrupts it (a lock acquire is
    interruptible), wait(quiet=True) waits whatever signal comes."""

    def __init__(self, procs, pid):
        self.rc = -errno.EIO                # until the write says otherwise
        self._done = _thread.allocate_lock()
        self._done.acquire()
        try:
            fd = posix.open(procs, posix.O_WRONLY | posix.O_CLOEXEC | posix.O_NOFOLLOW)
        except OSError as err:
            self.rc = -err.errno
            self._done.release()
            return
        started = _thread.allocate_lock()
        started.acquire()
        try:
            _thread.start_new_thread(self._write, (fd, b"%d\n" % pid, started))
        except RuntimeError:                # no thread to be had: write it here
            self._write(fd, b"%d\n" % pid, started)
            return
        try:
            started.acquire()               # the thread runs up to its write
        except BaseException:               # the alarm: the write goes on all the same
            self.wait(quiet=True)
            raise

    def _write(self, fd, text, started):
        started.release()
        try:
            posix.write(fd, text)
            self.rc = 0
        except OSError as err:
            self.rc = -err.errno
        finally:
            try:
                posix.close(fd)
            except OSError as err:
                self.rc = self.rc or -err.errno
            self._done.release()

    def wait(self, quiet=False):
        while True:
            try:
                self._done.acquire()        # a raise here means: not acquired
                break
            except BaseException:           # noqa: BLE001 - the alarm, mostly
                if not quiet:
                    raise
        self._done.release()
        return self.rc
