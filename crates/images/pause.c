/*
 * pause: the PID 1 of an agentbox pod sandbox.
 *
 * Holds the namespaces open and does nothing else:
 *   - exits 0 on SIGTERM or SIGINT, so the runtime can stop it cleanly;
 *   - reaps every child that is re-parented to it (SIGCHLD + waitpid loop), so no zombie piles up;
 *   - otherwise sleeps in pause() forever.
 * Built statically by build.rs so it runs in an image that has nothing else.
 */
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int sig) {
    (void)sig;
    _exit(0);
}

static void on_child(int sig) {
    int saved = errno;
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
    errno = saved;
}

static int install(int sig, void (*handler)(int)) {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = handler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    if (sig == SIGCHLD) {
        sa.sa_flags |= SA_NOCLDSTOP;
    }
    return sigaction(sig, &sa, NULL);
}

int main(int argc, char **argv) {
    (void)argv;
    if (argc > 1) {
        /* "pause -v" style invocations: print a name and exit, handy for smoke tests. */
        static const char msg[] = "agentbox-pause\n";
        ssize_t w = write(STDOUT_FILENO, msg, sizeof(msg) - 1);
        (void)w;
        return 0;
    }
    if (install(SIGTERM, on_stop) != 0 || install(SIGINT, on_stop) != 0 ||
        install(SIGCHLD, on_child) != 0) {
        return 1;
    }
    for (;;) {
        pause();
        /* A SIGCHLD may have arrived between two waitpid calls: reap again. */
        while (waitpid(-1, NULL, WNOHANG) > 0) {
        }
    }
    return 0;
}
