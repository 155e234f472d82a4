// go_verify.go ROOT.pem CA.pem DEVICE.pem — Go's crypto/x509 (Debian 12: Go
// 1.19) parses the three certificates (every extension included) and verifies
// the chain device -> production CA -> OEM root.  Exit 0 and one line "OK
// subject", or exit 1 and the error.  Standard library only: built offline.
package main

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
)

func load(path string) *x509.Certificate {
	data, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", path, err)
		os.Exit(1)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		fmt.Fprintf(os.Stderr, "%s: no PEM certificate\n", path)
		os.Exit(1)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: parse: %v\n", path, err)
		os.Exit(1)
	}
	return cert
}

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: go_verify ROOT.pem CA.pem DEVICE.pem")
		os.Exit(2)
	}
	root, ca, dev := load(os.Args[1]), load(os.Args[2]), load(os.Args[3])
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(root)
	inter.AddCert(ca)
	if _, err := dev.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		fmt.Fprintf(os.Stderr, "verify: %v\n", err)
		os.Exit(1)
	}
	fmt.Printf("OK %s (%d extensions)\n", dev.Subject.String(), len(dev.Extensions))
}
