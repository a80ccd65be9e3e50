/* getaddrinfo through musl's stub resolver, which sends the A and AAAA
 * queries in parallel from one unconnected socket, to every nameserver at
 * once. Usage: musl-resolve NAME [LOOKUPS]: looks NAME up LOOKUPS times
 * whatever each gives; prints the last lookup's addresses, one a line, and
 * exits 1 if it failed. */
#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

int main(int argc, char **argv) {
	int lookups = argc == 3 ? atoi(argv[2]) : 1;
	if (argc < 2 || argc > 3 || lookups < 1) {
		fprintf(stderr, "usage: %s NAME [LOOKUPS]\n", argv[0]);
		return 2;
	}
	struct addrinfo hints, *result = NULL, *ai;
	memset(&hints, 0, sizeof hints);
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	int rc = 0;
	for (int i = 0; i < lookups; i++) {
		if (result)
			freeaddrinfo(result);
		result = NULL;
		rc = getaddrinfo(argv[1], NULL, &hints, &result);
		if (rc != 0)
			fprintf(stderr, "getaddrinfo %s: %s (%d)\n", argv[1], gai_strerror(rc), rc);
	}
	if (rc != 0)
		return 1;
	for (ai = result; ai; ai = ai->ai_next) {
		char text[INET6_ADDRSTRLEN];
		const void *addr = ai->ai_family == AF_INET
			? (const void *)&((struct sockaddr_in *)ai->ai_addr)->sin_addr
			: (const void *)&((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr;
		printf("%s\n", inet_ntop(ai->ai_family, addr, text, sizeof text));
	}
	freeaddrinfo(result);
	return 0;
}
