// Looks a name up with Go's own resolver (not cgo), which sends the A and
// AAAA queries in parallel, each from a socket of its own.
//
// Usage: go-resolve [-n LOOKUPS] [-every DURATION] NAME. Prints the addresses
// of each lookup, one a line; exits 1 if the last lookup failed.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"time"
)

func main() {
	lookups := flag.Int("n", 1, "how many times to look the name up")
	every := flag.Duration("every", time.Second, "time between lookups")
	flag.Parse()
	if flag.NArg() != 1 || *lookups < 1 {
		fmt.Fprintf(os.Stderr, "usage: %s [-n LOOKUPS] [-every DURATION] NAME\n", os.Args[0])
		os.Exit(2)
	}
	resolver := &net.Resolver{PreferGo: true}
	var err error
	for i := 0; i < *lookups; i++ {
		if i > 0 {
			time.Sleep(*every)
		}
		var addrs []net.IPAddr
		addrs, err = resolver.LookupIPAddr(context.Background(), flag.Arg(0))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			continue
		}
		for _, addr := range addrs {
			fmt.Println(addr.IP)
		}
	}
	if err != nil {
		os.Exit(1)
	}
}
