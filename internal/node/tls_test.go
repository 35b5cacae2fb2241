package node

import (
	"bufio"
	"crypto/tls"
	"io"
	"math/big"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/resoundhq/resound/internal/config"
	"github.com/resoundhq/resound/internal/gateway"
	"github.com/resoundhq/resound/internal/tlscert"
	"github.com/resoundhq/resound/internal/tlscert/tlstest"
	"github.com/resoundhq/resound/pkg/pushertest"
)

// startTLSNode starts an all-in-one node serving TLS with a certificate
// from a test CA, and returns it, the CA and the files.
func startTLSNode(t *testing.T, tweak func(*config.Settings), gw func(tlstest.Files, *gateway.Options)) (*Node, *tlstest.CA, tlstest.Files) {
	t.Helper()
	ca, files, err := tlstest.Write(t.TempDir(), "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	s := baseSettings(t)
	s.AppID, s.AppKey, s.AppSecret = appID, appKey, secret
	s.TLSCert, s.TLSKey = files.Cert, files.Key
	if tweak != nil {
		tweak(&s)
	}
	cfg, err := (&config.Config{Settings: s}).WithApp(config.App{ID: appID, Key: appKey, Secret: secret})
	if err != nil {
		t.Fatal(err)
	}
	var hook func(*gateway.Options)
	if gw != nil {
		hook = func(o *gateway.Options) { gw(files, o) }
	}
	n := startOnWith(t, cfg, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel), hook)
	return n, ca, files
}

func tlsClient(ca *tlstest.CA) *tls.Config {
	return &tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1", NextProtos: []string{"http/1.1"}}
}

// The HTTP API over https://, verified against the CA, on the port that
// would serve ws:// without TLS: health check and a signed trigger.
func TestTLSServesTheHTTPAPI(t *testing.T) {
	n, ca, _ := startTLSNode(t, nil, nil)
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsClient(ca)}}
	resp, err := hc.Get("https://" + n.Addr().String() + "/up")
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.TLS == nil || resp.TLS.NegotiatedProtocol != "http/1.1" || resp.TLS.Version < tls.VersionTLS12 {
		t.Fatalf("GET /up over TLS: %d %+v", resp.StatusCode, resp.TLS)
	}
	api := &pushertest.API{BaseURL: "https://" + n.Addr().String(), AppID: appID, Key: appKey, Secret: secret, Client: hc}
	mustOK(t, api.Trigger([]string{"orders"}, "shipped", `{"id":1}`, ""))
}

// A WebSocket over wss://: connection_established, a subscription, an
// event triggered over https://, and socket_id exclusion, on the reactor
// that serves TLS.
func TestTLSServesWebSockets(t *testing.T) {
	n, ca, _ := startTLSNode(t, nil, nil)
	if got := n.Gateway().Reactor(); got != gateway.ReactorPortable {
		t.Fatalf("reactor %q, want %q for TLS", got, gateway.ReactorPortable)
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsClient(ca)}}
	api := &pushertest.API{BaseURL: "https://" + n.Addr().String(), AppID: appID, Key: appKey, Secret: secret, Client: hc}
	a := pushertest.ConnectTLS(t, n.Addr().String(), appKey, tlsClient(ca))
	b := pushertest.ConnectTLS(t, n.Addr().String(), appKey, tlsClient(ca))
	a.Subscribe("orders")
	b.Subscribe("orders")
	mustOK(t, api.Trigger([]string{"orders"}, "shipped", `{"id":1}`, a.SocketID))
	if m := b.Expect("shipped"); m.DataString() != `{"id":1}` {
		t.Fatalf("got %s", m.Raw)
	}
	mustOK(t, api.Trigger([]string{"orders"}, "shipped", `{"id":2}`, ""))
	if m := a.Expect("shipped"); m.DataString() != `{"id":2}` {
		t.Fatalf("the excluded socket got %s first, want only event 2", m.Raw)
	}
	// An unknown key over TLS: 4001, as over ws://.
	c := pushertest.DialTLS(t, n.Addr().String(), "/app/nope?protocol=7", tlsClient(ca))
	c.ExpectError(4001)
}

// A plain HTTP request on a TLS port is answered 400 in plain text saying
// why, as net/http's TLS server does, and closed.
func TestPlainRequestOnTLSPortIsRefused(t *testing.T) {
	n, _, _ := startTLSNode(t, nil, nil)
	c, err := net.DialTimeout("tcp", n.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "GET /app/"+appKey+" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "TLS") {
		t.Fatalf("got %d %q, want 400 saying the port speaks TLS", resp.StatusCode, body)
	}
}

// The handshake timeout covers the TLS handshake: a socket that opens and
// sends nothing, or stops halfway through its ClientHello, is closed.
func TestTLSHandshakeTimesOut(t *testing.T) {
	n, _, _ := startTLSNode(t, func(s *config.Settings) { s.HandshakeTimeout = config.Seconds(time.Second) }, nil)
	for _, send := range []string{"", "\x16\x03\x01\x02\x00\x01"} {
		c, err := net.DialTimeout("tcp", n.Addr().String(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.WriteString(c, send)
		_ = c.SetReadDeadline(time.Now().Add(15 * time.Second))
		b, err := io.ReadAll(c)
		_ = c.Close()
		if err != nil || len(b) != 0 {
			t.Fatalf("sent %q: read %q, %v; want a close without an answer", send, b, err)
		}
	}
}

// The per-address cap counts sockets still in their TLS handshake: past
// it, a socket is closed before any TLS work is done for it.
func TestTLSHandshakesCountPerAddress(t *testing.T) {
	n, ca, _ := startTLSNode(t, func(s *config.Settings) { s.MaxConnectionsPerIP = 1 }, nil)
	idle, err := net.DialTimeout("tcp", n.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = idle.Close() }()
	// The cap is counted at accept, which happens soon after the dial:
	// wait until a second socket is refused.
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", n.Addr().String(), tlsClient(ca))
		if err != nil {
			break
		}
		_ = c.Close()
		if time.Now().After(deadline) {
			t.Fatal("a second TLS handshake from the address was served past the cap of 1")
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = idle.Close()
	// Its place given back, the address is served again.
	deadline = time.Now().Add(10 * time.Second)
	for {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", n.Addr().String(), tlsClient(ca))
		if err == nil {
			_ = c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the address is not served after its other socket closed: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A certificate renewed under a running gateway is served to the next
// clients, without a restart.
func TestTLSCertificateRotatedUnderRunningGateway(t *testing.T) {
	n, ca, files := startTLSNode(t, nil, func(files tlstest.Files, o *gateway.Options) {
		// The node's own reloader looks at the files every 5 s; this one,
		// on the same files, every 50 ms, so that the test does not wait.
		certs, err := tlscert.New(files.Cert, files.Key, tlscert.Options{Interval: 50 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		o.TLS = certs.Config()
	})
	served := func() (*big.Int, error) {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", n.Addr().String(), tlsClient(ca))
		if err != nil {
			return nil, err
		}
		defer func() { _ = c.Close() }()
		return c.ConnectionState().PeerCertificates[0].SerialNumber, nil
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsClient(ca)}}
	defer hc.CloseIdleConnections()
	for range 2 {
		next, err := ca.WritePair(files.Cert, files.Key, "127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			got, err := served()
			if err == nil && got.Cmp(next) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("gateway serves %v (%v), want the renewed %v", got, err, next)
			}
			time.Sleep(20 * time.Millisecond)
		}
		// And it serves requests with it.
		resp, err := hc.Get("https://" + n.Addr().String() + "/up")
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.TLS.PeerCertificates[0].SerialNumber.Cmp(next) != 0 {
			t.Fatalf("GET /up after the renewal: %d", resp.StatusCode)
		}
		hc.CloseIdleConnections()
	}
}

// firstWritePrefixed sends prefix in the same write as the first bytes
// written to it, as a load balancer's PROXY header arrives with the
// ClientHello behind it.
type firstWritePrefixed struct {
	net.Conn
	prefix []byte
}

func (c *firstWritePrefixed) Write(p []byte) (int, error) {
	if c.prefix != nil {
		b := append(c.prefix, p...)
		c.prefix = nil
		if _, err := c.Conn.Write(b); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	return c.Conn.Write(p)
}

// Behind a trusted proxy that sends a PROXY header, TLS starts after it:
// the header is read off the socket, and the ClientHello bytes read along
// with it go to the TLS handshake. The client the header names is counted
// under the per-address cap.
func TestTLSAfterProxyHeader(t *testing.T) {
	n, ca, _ := startTLSNode(t, func(s *config.Settings) {
		s.ProxyProtocol = true
		s.MaxConnectionsPerIP = 1
		if err := s.TrustedProxies.Decode("127.0.0.1"); err != nil {
			t.Fatal(err)
		}
	}, nil)
	get := func(client string) (*http.Response, error) {
		raw, err := net.DialTimeout("tcp", n.Addr().String(), 5*time.Second)
		if err != nil {
			return nil, err
		}
		t.Cleanup(func() { _ = raw.Close() })
		_ = raw.SetDeadline(time.Now().Add(10 * time.Second))
		tc := tls.Client(&firstWritePrefixed{Conn: raw, prefix: []byte("PROXY TCP4 " + client + " 127.0.0.1 40000 443\r\n")}, tlsClient(ca))
		if _, err := io.WriteString(tc, "GET /up HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			return nil, err
		}
		return http.ReadResponse(bufio.NewReader(tc), nil)
	}
	resp, err := get("203.0.113.7")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /up through the proxy: %v %v", resp, err)
	}
	// That connection is still open (keep-alive): the same client again is
	// past its cap of 1, another client is not.
	if resp, err := get("203.0.113.7"); err == nil {
		t.Fatalf("a second connection of a capped client was served: %d", resp.StatusCode)
	}
	if resp, err := get("203.0.113.8"); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("another client: %v %v", resp, err)
	}
}
