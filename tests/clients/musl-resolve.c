/* getaddrinfo through musl's stub resolver, which sends the A and AAAA
 * queries in parallel from one unconnected socket. Prints one address a line. */
#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

int main(int argc, char **argv) {
	if (argc != 2) {
		fprintf(stderr, "usage: %s NAME\n", argv[0]);
		return 2;
	}
	struct addrinfo hints, *result, *ai;
	memset(&hints, 0, sizeof hints);
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	int rc = getaddrinfo(argv[1], NULL, &hints, &result);
	if (rc != 0) {
		fprintf(stderr, "getaddrinfo %s: %s (%d)\n", argv[1], gai_strerror(rc), rc);
		return 1;
	}
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
