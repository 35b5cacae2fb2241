// Package tlstest makes throwaway certificates for tests: a CA of its own
// and server certificates it signs, written as PEM files, so that clients
// can be told to trust the CA (Go's x509.CertPool, Node's
// NODE_EXTRA_CA_CERTS) instead of skipping verification.
package tlstest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// CA is a certificate authority that signs test server certificates.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
	// PEM is the CA certificate, for clients to trust.
	PEM []byte
}

// NewCA makes a CA valid for a day either side of now.
func NewCA() (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "Resound test CA"},
		NotBefore:             time.Now().Add(-24 * time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}, nil
}

// Pool is a certificate pool holding the CA alone.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// Issue signs a server certificate for hosts (names or IP addresses) and
// returns it and its key in PEM, and its serial number, which tells one
// issued certificate from the next.
func (ca *CA) Issue(hosts ...string) (certPEM, keyPEM []byte, sn *big.Int, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	sn = serial()
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{CommonName: hosts[0]},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return nil, nil, nil, err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), sn, nil
}

// Files are the paths of a CA and a server pair written by Write.
type Files struct {
	CA, Cert, Key string
}

// Write makes a CA and a server certificate for hosts, and writes ca.pem,
// cert.pem and key.pem into dir.
func Write(dir string, hosts ...string) (*CA, Files, error) {
	ca, err := NewCA()
	if err != nil {
		return nil, Files{}, err
	}
	f := Files{CA: filepath.Join(dir, "ca.pem"), Cert: filepath.Join(dir, "cert.pem"), Key: filepath.Join(dir, "key.pem")}
	if err := os.WriteFile(f.CA, ca.PEM, 0o644); err != nil {
		return nil, Files{}, err
	}
	if _, err := ca.WritePair(f.Cert, f.Key, hosts...); err != nil {
		return nil, Files{}, err
	}
	return ca, f, nil
}

// WritePair issues a certificate for hosts and writes it and its key,
// each by a rename, so that a reader never sees half a file. It returns
// the new certificate's serial number.
func (ca *CA) WritePair(certFile, keyFile string, hosts ...string) (*big.Int, error) {
	if len(hosts) == 0 {
		return nil, fmt.Errorf("tlstest: no host")
	}
	c, k, sn, err := ca.Issue(hosts...)
	if err != nil {
		return nil, err
	}
	if err := writeAtomic(keyFile, k, 0o600); err != nil {
		return nil, err
	}
	if err := writeAtomic(certFile, c, 0o644); err != nil {
		return nil, err
	}
	return sn, nil
}

func writeAtomic(path string, b []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return n
}
