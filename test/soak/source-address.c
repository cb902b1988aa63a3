/*
 * A test-only LD_PRELOAD shim that gives a member's outgoing TCP connections a source address of
 * its own (RAMPART_TEST_SOURCE_ADDRESS, e.g. 127.0.0.2): before an IPv4 connect() on a socket not
 * yet bound, it binds the socket to that address (any port). The soak's fault proxies then know
 * which member a connection comes from by its remote address, which they cannot read from the
 * bytes once peer traffic is TLS. Loopback answers on all of 127.0.0.0/8, so nothing else is set
 * up. Never built into Rampart; compiled by the soak with the system C compiler.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

int connect(int fd, const struct sockaddr *address, socklen_t length) {
  static int (*real)(int, const struct sockaddr *, socklen_t);
  if (real == NULL) real = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "connect");
  const char *source = getenv("RAMPART_TEST_SOURCE_ADDRESS");
  if (source != NULL && address != NULL && address->sa_family == AF_INET) {
    struct sockaddr_in bound;
    socklen_t bound_length = sizeof(bound);
    memset(&bound, 0, sizeof(bound));
    // Only a socket nobody bound yet (port 0): an explicit bind by the caller wins.
    if (getsockname(fd, (struct sockaddr *)&bound, &bound_length) == 0 && bound.sin_family == AF_INET && bound.sin_port == 0) {
      struct sockaddr_in local;
      memset(&local, 0, sizeof(local));
      local.sin_family = AF_INET;
      local.sin_port = 0;
      if (inet_pton(AF_INET, source, &local.sin_addr) == 1) bind(fd, (struct sockaddr *)&local, sizeof(local));
    }
  }
  return real(fd, address, length);
}
