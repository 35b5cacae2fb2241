package loadgen

import (
	"bufio"
	"net"
	"strings"
	"testing"

	"github.com/gobwas/ws"
)

func TestAcceptKeyRFC6455(t *testing.T) {
	// RFC 6455 §1.3.
	if got := acceptKey("dGhlIHNhbXBsZSBub25jZQ=="); got != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		t.Fatalf("acceptKey = %s", got)
	}
	if k := encodeKey([16]byte{'t', 'h', 'e', ' ', 's', 'a', 'm', 'p', 'l', 'e', ' ', 'n', 'o', 'n', 'c', 'e'}); k != "dGhlIHNhbXBsZSBub25jZQ==" {
		t.Fatalf("encodeKey = %s", k)
	}
}

func TestParseUpgradeResponse(t *testing.T) {
	const key = "dGhlIHNhbXBsZSBub25jZQ=="
	good := "HTTP/1.1 101 Switching Protocols\r\nupgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
	n, err := parseUpgradeResponse([]byte(good+"\x81\x00"), key)
	if err != nil || n != len(good) {
		t.Fatalf("good: %d %v", n, err)
	}
	if n, err := parseUpgradeResponse([]byte(good[:40]), key); n != 0 || err != nil {
		t.Fatalf("partial: %d %v", n, err)
	}
	bad := map[string]string{
		"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n":                                    "handshake_status_404",
		strings.Replace(good, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "AAAAAAAAAAAAAAAAAAAAAAAAAAA=", 1): "handshake_bad_accept",
		strings.Replace(good, "upgrade: WebSocket\r\n", "", 1):                                   "handshake_not_upgrade",
		"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n":  "handshake_bad_accept",
		"SSH-2.0-OpenSSH\r\n\r\n": "handshake_bad_response",
	}
	for resp, want := range bad {
		if _, err := parseUpgradeResponse([]byte(resp), key); err == nil || err.Error() != want {
			t.Errorf("%q: got %v, want %s", resp, err, want)
		}
	}
}

// The request and response parser work against gobwas/ws's server
// upgrader, which Resound uses.
func TestHandshakeAgainstGobwas(t *testing.T) {
	client, server := net.Pipe()
	defer client.Close()
	done := make(chan error, 1)
	go func() {
		defer server.Close()
		_, err := ws.Upgrade(server)
		done <- err
	}()
	key := encodeKey([16]byte{9, 8, 7, 6, 5, 4, 3, 2, 1})
	if _, err := client.Write(appendUpgradeRequest(nil, "127.0.0.1:8080", "/app/k?protocol=7", "", key)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(client)
	var resp []byte
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		resp = append(resp, line...)
		if line == "\r\n" {
			break
		}
	}
	if err := <-done; err != nil {
		t.Fatalf("server: %v", err)
	}
	if n, err := parseUpgradeResponse(resp, key); err != nil || n != len(resp) {
		t.Fatalf("parse %q: %d %v", resp, n, err)
	}
}
