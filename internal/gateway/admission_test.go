package gateway

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/netip"
	"strings"
	"testing"

	"github.com/resoundhq/resound/internal/config"
)

func TestHeadLimiterStopsAnEndlessLine(t *testing.T) {
	endless := io.MultiReader(strings.NewReader("GET /app/key HTTP/1.1\r\nX-A: "), neverEnding('a'))
	l := &headLimiter{r: endless, left: 1000}
	n, err := io.Copy(io.Discard, l)
	if !errors.Is(err, errHeadTooLarge) || n != 1000 {
		t.Fatalf("read %d bytes, err %v; want 1000 and errHeadTooLarge", n, err)
	}
	l.left = -1 // lifted once the head is read
	buf := make([]byte, 10)
	if n, err := l.Read(buf); n != 10 || err != nil {
		t.Fatalf("after lifting: %d %v", n, err)
	}
}

type neverEnding byte

func (b neverEnding) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(b)
	}
	return len(p), nil
}

func TestIPLimiter(t *testing.T) {
	l := newIPLimiter(2)
	a, b := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("::ffff:10.0.0.1")
	s1, ok1 := l.acquire(a)
	s2, ok2 := l.acquire(b) // the same address, IPv4-mapped
	_, ok3 := l.acquire(a)
	if !ok1 || !ok2 || ok3 {
		t.Fatalf("acquire: %v %v %v", ok1, ok2, ok3)
	}
	if _, ok := l.acquire(netip.MustParseAddr("10.0.0.2")); !ok {
		t.Fatal("another address refused")
	}
	l.release(s1)
	if _, ok := l.acquire(a); !ok {
		t.Fatal("a released place was not given back")
	}
	l.release(s2)
	if n := len(l.byIP); n != 2 {
		t.Fatalf("%d addresses tracked", n)
	}
	var none *ipLimiter // no cap
	if s, ok := none.acquire(a); s != nil || !ok {
		t.Fatal("a nil limiter refused")
	}
	none.release(nil)
}

func TestForwardedClient(t *testing.T) {
	var trusted config.CIDRs
	if err := trusted.Decode("10.0.0.0/8, 192.168.1.7"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		xff, want string
	}{
		{"203.0.113.9", "203.0.113.9"},
		{"198.51.100.1, 203.0.113.9", "203.0.113.9"},          // the client can only prepend
		{"203.0.113.9, 10.1.2.3", "203.0.113.9"},              // a second trusted hop appended
		{"203.0.113.9,10.1.2.3 , 192.168.1.7", "203.0.113.9"}, // spaces, several hops
		{"10.1.2.3, 192.168.1.7", "10.1.2.3"},                 // only trusted: the leftmost
		{"bogus, 203.0.113.9", "203.0.113.9"},                 // what the client wrote is not read
		{"203.0.113.9, bogus", ""},                            // a trusted hop wrote nonsense
		{"::ffff:203.0.113.9", "203.0.113.9"},
		{"", ""},
	} {
		got, ok := forwardedClient([]byte(tc.xff), trusted)
		if tc.want == "" {
			if ok {
				t.Errorf("%q: got %v, want none", tc.xff, got)
			}
			continue
		}
		if !ok || got != netip.MustParseAddr(tc.want) {
			t.Errorf("%q: got %v %v, want %s", tc.xff, got, ok, tc.want)
		}
	}
}

func TestRejectResponsesAreHTTP(t *testing.T) {
	for _, r := range [][]byte{response400, response414, response429, response431, response503} {
		if !bytes.HasPrefix(r, []byte("HTTP/1.1 ")) || !bytes.HasSuffix(r, []byte("\r\n\r\n")) {
			t.Errorf("%q", r)
		}
	}
}

func TestReadHead(t *testing.T) {
	long := strings.Repeat("v", 5000)
	req := "POST /apps/1/events HTTP/1.1\r\nHost: x\r\nX-Long: " + long + "\r\n\r\n{\"body\":1}"
	br := bufio.NewReaderSize(strings.NewReader(req), 2048)
	head, err := readHead(br)
	if err != nil || string(head) != req[:len(req)-len(`{"body":1}`)] {
		t.Fatalf("head %q, %v", head, err)
	}
	rest, _ := io.ReadAll(br)
	if string(rest) != `{"body":1}` {
		t.Fatalf("body %q", rest)
	}
	br = bufio.NewReaderSize(&headLimiter{r: io.MultiReader(strings.NewReader("GET / HTTP/1.1\r\nX: "), neverEnding('a')), left: 4096}, 2048)
	if _, err := readHead(br); !errors.Is(err, errHeadTooLarge) {
		t.Fatalf("endless head: %v", err)
	}
}
