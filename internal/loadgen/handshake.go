package loadgen

import (
	"bytes"
	"crypto/sha1"
	"encoding/base64"
	"strconv"
)

const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// maxResponseHeader bounds the upgrade response.
const maxResponseHeader = 8 << 10

// encodeKey returns the Sec-WebSocket-Key for 16 random bytes.
func encodeKey(raw [16]byte) string {
	return base64.StdEncoding.EncodeToString(raw[:])
}

// acceptKey is the Sec-WebSocket-Accept a server must answer to key
// (RFC 6455 §4.2.2).
func acceptKey(key string) string {
	h := sha1.New()
	h.Write([]byte(key))
	h.Write([]byte(wsGUID))
	return base64.StdEncoding.EncodeToString(h.Sum(nil))
}

// appendUpgradeRequest appends the client's opening handshake.
func appendUpgradeRequest(dst []byte, host, path, origin, key string) []byte {
	dst = append(dst, "GET "...)
	dst = append(dst, path...)
	dst = append(dst, " HTTP/1.1\r\nHost: "...)
	dst = append(dst, host...)
	dst = append(dst, "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: "...)
	dst = append(dst, key...)
	if origin != "" {
		dst = append(dst, "\r\nOrigin: "...)
		dst = append(dst, origin...)
	}
	return append(dst, "\r\nUser-Agent: resound-loadgen\r\n\r\n"...)
}

// handshakeError names why an upgrade failed; it is the failure kind in the
// summary.
type handshakeError string

func (e handshakeError) Error() string { return string(e) }

// parseUpgradeResponse checks the server's handshake at the start of b. It
// returns the length of the response head (the bytes after it are already
// WebSocket frames), or 0 if the head is not complete yet.
func parseUpgradeResponse(b []byte, key string) (int, error) {
	end := bytes.Index(b, []byte("\r\n\r\n"))
	if end < 0 {
		if len(b) > maxResponseHeader {
			return 0, handshakeError("handshake_too_long")
		}
		return 0, nil
	}
	head := b[:end]
	line, rest, _ := bytes.Cut(head, []byte("\r\n"))
	// HTTP/1.1 101 Switching Protocols
	proto, status, _ := bytes.Cut(line, []byte(" "))
	if !bytes.HasPrefix(proto, []byte("HTTP/1.")) || len(status) < 3 {
		return 0, handshakeError("handshake_bad_response")
	}
	code := string(status[:3])
	if code != "101" {
		if _, err := strconv.Atoi(code); err != nil {
			return 0, handshakeError("handshake_bad_response")
		}
		return 0, handshakeError("handshake_status_" + code)
	}
	var upgrade, connection, accept bool
	want := acceptKey(key)
	for len(rest) > 0 {
		var l []byte
		l, rest, _ = bytes.Cut(rest, []byte("\r\n"))
		name, value, ok := bytes.Cut(l, []byte(":"))
		if !ok {
			return 0, handshakeError("handshake_bad_response")
		}
		value = bytes.TrimSpace(value)
		switch {
		case bytes.EqualFold(bytes.TrimSpace(name), []byte("Upgrade")):
			upgrade = bytes.EqualFold(value, []byte("websocket"))
		case bytes.EqualFold(bytes.TrimSpace(name), []byte("Connection")):
			for _, tok := range bytes.Split(value, []byte(",")) {
				if bytes.EqualFold(bytes.TrimSpace(tok), []byte("Upgrade")) {
					connection = true
				}
			}
		case bytes.EqualFold(bytes.TrimSpace(name), []byte("Sec-WebSocket-Accept")):
			accept = string(value) == want
			if !accept {
				return 0, handshakeError("handshake_bad_accept")
			}
		}
	}
	if !upgrade || !connection {
		return 0, handshakeError("handshake_not_upgrade")
	}
	if !accept {
		return 0, handshakeError("handshake_bad_accept")
	}
	return end + 4, nil
}
