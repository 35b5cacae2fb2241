package tlscert_test

import (
	"crypto/tls"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/resoundhq/resound/internal/tlscert"
	"github.com/resoundhq/resound/internal/tlscert/tlstest"
)

// served dials addr, verifying against the CA, and returns the serial
// number of the certificate the server showed.
func served(t *testing.T, addr string, ca *tlstest.CA) (*big.Int, error) {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr,
		&tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1", NextProtos: []string{"http/1.1"}})
	if err != nil {
		return nil, err
	}
	defer func() { _ = c.Close() }()
	st := c.ConnectionState()
	if st.NegotiatedProtocol != "http/1.1" {
		t.Errorf("ALPN: got %q, want http/1.1", st.NegotiatedProtocol)
	}
	return st.PeerCertificates[0].SerialNumber, nil
}

// serve runs a TLS server with cfg on a loopback port until the test ends.
// Each connection is handshaken and closed.
func serve(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { _ = ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.(*tls.Conn).Handshake()
			_ = c.Close()
		}
	}()
	return ln.Addr().String()
}

// waitServed waits, within a deadline, until the server shows want.
func waitServed(t *testing.T, addr string, ca *tlstest.CA, want *big.Int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := served(t, addr, ca)
		if err == nil && got.Cmp(want) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("server still shows %v (err %v), want %v", got, err, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestRotatedCertificateIsServed(t *testing.T) {
	dir := t.TempDir()
	ca, files, err := tlstest.Write(dir, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	r, err := tlscert.New(files.Cert, files.Key, tlscert.Options{Interval: 50 * time.Millisecond, Log: zerolog.New(zerolog.NewTestWriter(t))})
	if err != nil {
		t.Fatal(err)
	}
	first := r.Certificate().Leaf.SerialNumber
	addr := serve(t, r.Config())
	waitServed(t, addr, ca, first)

	// A renewal, as certbot or cert-manager makes it: new files in place.
	second, err := ca.WritePair(files.Cert, files.Key, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	waitServed(t, addr, ca, second)

	// And again: every change is picked up, not only the first.
	third, err := ca.WritePair(files.Cert, files.Key, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	waitServed(t, addr, ca, third)
}

func TestBadNewPairKeepsTheOld(t *testing.T) {
	dir := t.TempDir()
	ca, files, err := tlstest.Write(dir, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	clock := time.Now()
	var mu sync.Mutex
	now := func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }
	advance := func() { mu.Lock(); clock = clock.Add(time.Minute); mu.Unlock() }
	r, err := tlscert.New(files.Cert, files.Key, tlscert.Options{Interval: time.Second, Now: now, Log: zerolog.New(zerolog.NewTestWriter(t))})
	if err != nil {
		t.Fatal(err)
	}
	first := r.Certificate().Leaf.SerialNumber
	get := func() *big.Int {
		c, err := r.GetCertificate(&tls.ClientHelloInfo{})
		if err != nil {
			t.Fatal(err)
		}
		return c.Leaf.SerialNumber
	}

	// A certificate whose key is another pair's: refused, the old one stays.
	other := filepath.Join(dir, "other")
	if err := os.Mkdir(other, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := ca.WritePair(filepath.Join(other, "cert.pem"), filepath.Join(other, "key.pem"), "127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(other, "cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(files.Cert, b, 0o644); err != nil {
		t.Fatal(err)
	}
	advance()
	if got := get(); got.Cmp(first) != 0 {
		t.Fatalf("mismatched pair: serving %v, want the old %v", got, first)
	}

	// Garbage, and a missing file: the old one stays.
	if err := os.WriteFile(files.Cert, []byte("not PEM"), 0o644); err != nil {
		t.Fatal(err)
	}
	advance()
	if got := get(); got.Cmp(first) != 0 {
		t.Fatalf("garbage: serving %v, want the old %v", got, first)
	}
	if err := os.Remove(files.Key); err != nil {
		t.Fatal(err)
	}
	advance()
	if got := get(); got.Cmp(first) != 0 {
		t.Fatalf("missing key: serving %v, want the old %v", got, first)
	}

	// A good pair afterwards is taken.
	next, err := ca.WritePair(files.Cert, files.Key, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	advance()
	if got := get(); got.Cmp(next) != 0 {
		t.Fatalf("good pair after bad ones: serving %v, want %v", got, next)
	}
}

// The files are looked at no more often than the interval, however many
// handshakes come: a change shows only once the interval has passed.
func TestChecksAtMostEveryInterval(t *testing.T) {
	dir := t.TempDir()
	ca, files, err := tlstest.Write(dir, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	clock := time.Now()
	r, err := tlscert.New(files.Cert, files.Key, tlscert.Options{Interval: 5 * time.Second, Now: func() time.Time { return clock }})
	if err != nil {
		t.Fatal(err)
	}
	first := r.Certificate().Leaf.SerialNumber
	next, err := ca.WritePair(files.Cert, files.Key, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	clock = clock.Add(4 * time.Second)
	if c, _ := r.GetCertificate(nil); c.Leaf.SerialNumber.Cmp(first) != 0 {
		t.Fatal("files looked at before the interval passed")
	}
	clock = clock.Add(time.Second)
	if c, _ := r.GetCertificate(nil); c.Leaf.SerialNumber.Cmp(next) != 0 {
		t.Fatal("new pair not served once the interval passed")
	}
}

func TestNewRefusesABadPair(t *testing.T) {
	dir := t.TempDir()
	_, files, err := tlstest.Write(dir, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tlscert.New(files.Cert, filepath.Join(dir, "missing.pem"), tlscert.Options{}); err == nil {
		t.Fatal("missing key accepted")
	}
	if _, err := tlscert.New(files.CA, files.Key, tlscert.Options{}); err == nil {
		t.Fatal("a certificate with another's key accepted")
	}
}

func TestConfigRefusesOldTLS(t *testing.T) {
	dir := t.TempDir()
	ca, files, err := tlstest.Write(dir, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	r, err := tlscert.New(files.Cert, files.Key, tlscert.Options{})
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, r.Config())
	c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1", MaxVersion: tls.VersionTLS11})
	if err == nil {
		_ = c.Close()
		t.Fatal("TLS 1.1 handshake succeeded")
	}
}
