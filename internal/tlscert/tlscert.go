// Package tlscert serves a certificate and key from PEM files and picks up
// a new pair when the files change, without a restart: certbot, Herd,
// Valet and cert-manager all renew certificates in place, and a gateway
// holding thousands of sockets should not have to drop them for that.
//
// The files are looked at from the TLS handshake itself
// (tls.Config.GetCertificate), at most once per check interval: no
// goroutine, nothing to stop, and an idle server does no work. A new pair
// that does not load (a half-written file, a key that does not match)
// keeps the old one in service and is logged; it is tried again when the
// files change again.
package tlscert

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
)

// DefaultInterval is how often, at most, the files are looked at.
const DefaultInterval = 5 * time.Second

// Reloader holds the current certificate of a pair of PEM files.
type Reloader struct {
	certFile, keyFile string
	interval          time.Duration
	log               zerolog.Logger
	now               func() time.Time

	cert atomic.Pointer[tls.Certificate]
	// nextCheck is when the files may be looked at again (unix nanos).
	nextCheck atomic.Int64
	// mu serializes checks; a handshake that finds a check running serves
	// the current certificate rather than wait for it.
	mu sync.Mutex
	// seen is the files' state at the last check, whether or not the pair
	// then loaded: a bad pair is not read again until it changes.
	seen fileState
}

// fileState is what tells that a file changed: its size and modification
// time. Renewals replace the file (or a symlink's target), which changes
// both or at least the time.
type fileState struct {
	certSize, keySize int64
	certMod, keyMod   time.Time
}

// Options tune a Reloader.
type Options struct {
	// Interval is how often, at most, the files are looked at; zero is
	// DefaultInterval.
	Interval time.Duration
	Log      zerolog.Logger
	// Now is the clock; nil is time.Now.
	Now func() time.Time
}

// New loads the pair. An error here (a missing file, a bad pair) should
// stop start-up: there is no old certificate to keep.
func New(certFile, keyFile string, opts Options) (*Reloader, error) {
	r := &Reloader{certFile: certFile, keyFile: keyFile, interval: opts.Interval, log: opts.Log, now: opts.Now}
	if r.interval <= 0 {
		r.interval = DefaultInterval
	}
	if r.now == nil {
		r.now = time.Now
	}
	st, err := r.stat()
	if err != nil {
		return nil, err
	}
	cert, err := load(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	r.seen = st
	r.cert.Store(cert)
	r.nextCheck.Store(r.now().Add(r.interval).UnixNano())
	return r, nil
}

// Config is a server configuration that serves the reloader's
// certificate: TLS 1.2 and later (1.0 and 1.1 are deprecated by RFC 8996
// and refused by current browsers anyway), and ALPN http/1.1, the only
// protocol on the port (WebSocket upgrades need HTTP/1.1; the API speaks
// it too).
func (r *Reloader) Config() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		NextProtos:     []string{"http/1.1"},
		GetCertificate: r.GetCertificate,
	}
}

// Certificate is the pair in service.
func (r *Reloader) Certificate() *tls.Certificate { return r.cert.Load() }

// GetCertificate is tls.Config.GetCertificate: the current pair, after
// looking at the files if the interval has passed.
func (r *Reloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if r.now().UnixNano() >= r.nextCheck.Load() {
		r.check()
	}
	return r.cert.Load(), nil
}

// check reloads the pair if the files changed since the last check.
func (r *Reloader) check() {
	if !r.mu.TryLock() {
		return
	}
	defer r.mu.Unlock()
	now := r.now()
	if now.UnixNano() < r.nextCheck.Load() {
		return // another handshake just checked
	}
	r.nextCheck.Store(now.Add(r.interval).UnixNano())
	st, err := r.stat()
	if err != nil {
		// A file briefly missing while it is replaced: keep serving.
		r.log.Warn().Err(err).Msg("TLS certificate files unreadable; keeping the certificate in service")
		return
	}
	if st == r.seen {
		return
	}
	r.seen = st
	cert, err := load(r.certFile, r.keyFile)
	if err != nil {
		r.log.Error().Err(err).Str("cert", r.certFile).Str("key", r.keyFile).
			Msg("new TLS certificate does not load; keeping the one in service")
		return
	}
	r.cert.Store(cert)
	ev := r.log.Info().Str("cert", r.certFile)
	if cert.Leaf != nil {
		ev = ev.Str("subject", cert.Leaf.Subject.String()).Time("not_after", cert.Leaf.NotAfter)
	}
	ev.Msg("TLS certificate reloaded")
}

func (r *Reloader) stat() (fileState, error) {
	c, err := os.Stat(r.certFile)
	if err != nil {
		return fileState{}, err
	}
	k, err := os.Stat(r.keyFile)
	if err != nil {
		return fileState{}, err
	}
	return fileState{certSize: c.Size(), keySize: k.Size(), certMod: c.ModTime(), keyMod: k.ModTime()}, nil
}

// load reads and checks a pair: the key must match the certificate, and
// the leaf must parse (tls.LoadX509KeyPair fills Leaf since Go 1.23).
func load(certFile, keyFile string) (*tls.Certificate, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("TLS certificate %s and key %s: %w", certFile, keyFile, err)
	}
	if cert.Leaf == nil {
		if len(cert.Certificate) == 0 {
			return nil, errors.New("TLS certificate: no certificate in " + certFile)
		}
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("TLS certificate %s: %w", certFile, err)
		}
	}
	return &cert, nil
}
