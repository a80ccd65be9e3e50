// Looks a name up with Go's own resolver (not cgo), which sends the A and
// AAAA queries in parallel, each from a socket of its own.
package main

import (
	"context"
	"fmt"
	"net"
	"os"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintf(os.Stderr, "usage: %s NAME\n", os.Args[0])
		os.Exit(2)
	}
	resolver := &net.Resolver{PreferGo: true}
	addrs, err := resolver.LookupIPAddr(context.Background(), os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for _, addr := range addrs {
		fmt.Println(addr.IP)
	}
}
