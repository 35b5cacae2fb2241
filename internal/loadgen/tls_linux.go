package loadgen

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// TLS targets (https://, wss://). The pollers speak plain bytes on
// descriptors they poll, which crypto/tls cannot run on, so each TLS
// connection is bridged: the poller gets one end of a socket pair, as if
// it had connected, and two goroutines carry bytes between the other end
// and a tls.Conn to the server. The bridge costs the load generator a
// copy and two goroutines per connection; the server sees a real TLS
// client. A failed TLS dial closes the pair, which the poller sees as the
// server closing before the upgrade.

// clientTLS is the configuration TLS targets are verified with: the
// system's CAs, and those in caFile if given.
func clientTLS(caFile string) (*tls.Config, error) {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if caFile != "" {
		b, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("-ca: %v", err)
		}
		if !pool.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("-ca: no PEM certificate in %s", caFile)
		}
	}
	return &tls.Config{RootCAs: pool, NextProtos: []string{"http/1.1"}, ClientSessionCache: tls.NewLRUClientSessionCache(1024)}, nil
}

// connectTLS starts c's connection through a bridge to its TLS target.
func (p *poller) connectTLS(c *conn, start int64) string {
	r := p.r
	t := &r.targets[c.tgt]
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return errKind(err)
	}
	f := os.NewFile(uintptr(fds[1]), "loadgen-tls-bridge")
	near, err := net.FileConn(f) // a copy of the descriptor, in the Go runtime
	_ = f.Close()
	if err != nil {
		_ = unix.Close(fds[0])
		return "bridge_" + errKind(err)
	}
	d := &net.Dialer{Timeout: r.cfg.ConnectTimeout}
	if n := len(r.cfg.Sources); n > 0 {
		d.LocalAddr = &net.TCPAddr{IP: r.cfg.Sources[int(c.idx)%n].AsSlice()}
	}
	cfg := r.tlsConfig.Clone()
	cfg.ServerName = t.serverName
	go bridge(near, d, t.addr.String(), cfg)
	return p.watchNew(c, fds[0], start)
}

// bridge dials addr over TLS and carries bytes both ways between it and
// near until either side ends, then closes both.
func bridge(near net.Conn, d *net.Dialer, addr string, cfg *tls.Config) {
	defer func() { _ = near.Close() }()
	raw, err := d.Dial("tcp", addr)
	if err != nil {
		return
	}
	if tc, ok := raw.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	far := tls.Client(raw, cfg)
	defer func() { _ = far.Close() }()
	_ = far.SetDeadline(time.Now().Add(d.Timeout))
	if err := far.Handshake(); err != nil {
		return
	}
	_ = far.SetDeadline(time.Time{})
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(near, far)
		// The server closed: let the poller see it.
		if uc, ok := near.(*net.UnixConn); ok {
			_ = uc.CloseWrite()
		}
		close(done)
	}()
	_, _ = io.Copy(far, near)
	// The poller closed its end: close ours, which ends the other copy.
	_ = far.Close()
	<-done
}
