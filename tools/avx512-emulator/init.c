/* Minimal PID 1 for the bochs AVX-512 harness.
 *
 * - mounts /proc, /sys, /dev (devtmpfs), /tmp
 * - stdin  = /dev/null
 * - stdout = /dev/ttyS0 (bochs com1 -> host file out.stdout), raw mode
 * - stderr = /dev/ttyS1 (bochs com2 -> host file out.stderr), raw mode
 * - status lines (START, EXIT=<code>) on /dev/ttyS2 (bochs com3 -> host file
 *   out.status); the kernel console also goes there (console=ttyS2)
 * - argv comes from /harness/argv (NUL separated, argv[0] first),
 *   extra environment from /harness/env (NUL separated NAME=VALUE)
 * - runs /harness/exe, waits, prints EXIT=<code> (128+sig on signal, like sh)
 * - then syncs and powers off (ACPI S5; bochs quits the simulation).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/io.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

static int status_fd = -1;

static void st(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void st(const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n > (int)sizeof buf - 1) n = sizeof buf - 1;
    if (status_fd >= 0) {
        if (write(status_fd, buf, n) < 0) {}
        tcdrain(status_fd);
    }
}

static int open_raw(const char *path) {
    int fd = open(path, O_RDWR | O_NOCTTY);
    if (fd < 0) return -1;
    struct termios t;
    if (tcgetattr(fd, &t) == 0) {
        cfmakeraw(&t);
        cfsetispeed(&t, B115200);
        cfsetospeed(&t, B115200);
        tcsetattr(fd, TCSANOW, &t);
    }
    return fd;
}

/* read a NUL-separated list file into a NULL-terminated vector */
static char **read_list(const char *path, int *count) {
    *count = 0;
    int fd = open(path, O_RDONLY);
    if (fd < 0) { char **v = calloc(1, sizeof(char *)); return v; }
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap + 1);
    for (;;) {
        if (len == cap) { cap *= 2; buf = realloc(buf, cap + 1); }
        ssize_t r = read(fd, buf + len, cap - len);
        if (r <= 0) break;
        len += r;
    }
    close(fd);
    buf[len] = 0;
    int n = 0;
    for (size_t i = 0; i < len; i++) if (buf[i] == 0) n++;
    if (len > 0 && buf[len - 1] != 0) n++;
    char **v = calloc(n + 1, sizeof(char *));
    size_t i = 0; int k = 0;
    while (i < len && k < n) { v[k++] = buf + i; i += strlen(buf + i) + 1; }
    v[k] = NULL;
    *count = k;
    return v;
}

static void finish(void) {
    sync();
    if (status_fd >= 0) tcdrain(status_fd);
    tcdrain(1);
    tcdrain(2);
    /* Bochs-specific: writing "Shutdown" to I/O port 0x8900 ends the
     * simulation immediately (no ACPI needed). */
    if (ioperm(0x8900, 1, 1) == 0) {
        for (const char *p = "Shutdown"; *p; p++) outb(*p, 0x8900);
    }
    reboot(RB_POWER_OFF);
    /* if poweroff failed, halt forever; the host harness kills bochs */
    for (;;) pause();
}

int main(void) {
    mkdir("/proc", 0755); mkdir("/sys", 0755); mkdir("/dev", 0755); mkdir("/tmp", 01777);
    mount("proc", "/proc", "proc", 0, NULL);
    mount("sysfs", "/sys", "sysfs", 0, NULL);
    mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
    mount("tmpfs", "/tmp", "tmpfs", 0, "mode=1777");

    status_fd = open_raw("/dev/ttyS2");
    int out = open_raw("/dev/ttyS0");
    int err = open_raw("/dev/ttyS1");
    int nul = open("/dev/null", O_RDWR);
    if (nul >= 0) dup2(nul, 0);
    if (out >= 0) dup2(out, 1);
    if (err >= 0) dup2(err, 2);
    if (out > 2) close(out);
    if (err > 2) close(err);
    if (nul > 2) close(nul);

    int argc, envc;
    char **argv = read_list("/harness/argv", &argc);
    char **extra = read_list("/harness/env", &envc);
    char *envp[envc + 8];
    int e = 0;
    envp[e++] = "PATH=/harness:/bin:/usr/bin";
    envp[e++] = "HOME=/tmp";
    envp[e++] = "TMPDIR=/tmp";
    envp[e++] = "TERM=dumb";
    for (int i = 0; i < envc; i++) envp[e++] = extra[i];
    envp[e] = NULL;
    if (argc == 0) { argv = (char *[]){"/harness/exe", NULL}; }

    if (chdir("/harness/cwd") != 0) { if (chdir("/") != 0) {} }

    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    st("START\n");
    pid_t pid = fork();
    if (pid == 0) {
        execve("/harness/exe", argv, envp);
        fprintf(stderr, "harness-init: execve /harness/exe failed: %s\n", strerror(errno));
        _exit(127);
    }
    if (pid < 0) { st("HARNESS-ERROR fork: %s\nEXIT=125\n", strerror(errno)); finish(); }
    int code = 125, wst;
    for (;;) {
        pid_t w = wait(&wst);  /* also reaps orphans re-parented to us */
        if (w < 0) { if (errno == EINTR) continue; break; }
        if (w != pid) continue;
        if (WIFEXITED(wst)) code = WEXITSTATUS(wst);
        else if (WIFSIGNALED(wst)) {
            code = 128 + WTERMSIG(wst);
            st("SIGNAL=%d (%s)%s\n", WTERMSIG(wst), strsignal(WTERMSIG(wst)),
               WCOREDUMP(wst) ? " core dumped" : "");
        }
        break;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
    tcdrain(1); tcdrain(2);
    st("GUEST_SECONDS=%.3f\nEXIT=%d\n", secs, code);
    finish();
    return 0;
}
