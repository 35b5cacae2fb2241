// Command gencert writes a throwaway CA and a server certificate signed by
// it, for the end-to-end tests and benchmarks of native TLS:
//
//	go run ./internal/tlscert/tlstest/gencert -dir /tmp/certs 127.0.0.1 localhost
//
// writes /tmp/certs/ca.pem (for clients to trust, e.g. NODE_EXTRA_CA_CERTS),
// cert.pem and key.pem (RESOUND_TLS_CERT, RESOUND_TLS_KEY), and prints
// their paths as one JSON line.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/resoundhq/resound/internal/tlscert/tlstest"
)

func main() {
	dir := flag.String("dir", ".", "directory to write ca.pem, cert.pem and key.pem into")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: gencert [-dir DIR] [host ...] (default host 127.0.0.1 and localhost)\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	hosts := flag.Args()
	if len(hosts) == 0 {
		hosts = []string{"127.0.0.1", "localhost"}
	}
	if err := run(*dir, hosts); err != nil {
		fmt.Fprintln(os.Stderr, "gencert:", err)
		os.Exit(1)
	}
}

func run(dir string, hosts []string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	_, files, err := tlstest.Write(dir, hosts...)
	if err != nil {
		return err
	}
	fmt.Printf("{\"ca\":%q,\"cert\":%q,\"key\":%q}\n", files.CA, files.Cert, files.Key)
	return nil
}
