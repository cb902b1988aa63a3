/*
 * A test-only LD_PRELOAD shim that makes fsync and fdatasync slow on demand: the "slow disk" fault
 * of the soak (test/soak/soak.test.ts). Each call first reads a delay in milliseconds from the file
 * named by RAMPART_TEST_FSYNC_DELAY_FILE (absent, empty or 0: no delay), sleeps that long, then
 * syncs for real. The soak writes the file to slow one member's disk and empties it to heal.
 * LevelDB syncs from native code, so a Node-level hook could not slow it; this covers both.
 * Never built into Rampart; compiled by the soak with the system C compiler.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static long delay_ms(void) {
  const char *path = getenv("RAMPART_TEST_FSYNC_DELAY_FILE");
  if (path == NULL) return 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  char text[16] = {0};
  ssize_t n = read(fd, text, sizeof(text) - 1);
  close(fd);
  if (n <= 0) return 0;
  long ms = strtol(text, NULL, 10);
  return ms > 0 && ms < 60000 ? ms : 0;
}

static void slow_down(void) {
  long ms = delay_ms();
  if (ms == 0) return;
  struct timespec pause = { ms / 1000, (ms % 1000) * 1000000L };
  while (nanosleep(&pause, &pause) != 0) {
  }
}

int fsync(int fd) {
  static int (*real)(int);
  if (real == NULL) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
  slow_down();
  return real(fd);
}

int fdatasync(int fd) {
  static int (*real)(int);
  if (real == NULL) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
  slow_down();
  return real(fd);
}
