/* LD_PRELOAD=segv.so: on SIGSEGV, the native stack to stderr (backtrace_symbols_fd: library(+offset) per
 * frame, for addr2line), then exit. For crashes inside extension modules, where Python's faulthandler shows
 * only the Python frames.  build: gcc -shared -fPIC -o segv.so dev/python/segv_backtrace.c */
#define _GNU_SOURCE
#include <execinfo.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

static void on_segv(int sig) {
  void* frames[64];
  int n = backtrace(frames, 64);
  backtrace_symbols_fd(frames, n, 2);
  _exit(128 + sig);
}

__attribute__((constructor)) static void install(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_segv;
  sigaction(SIGSEGV, &sa, 0);
}
