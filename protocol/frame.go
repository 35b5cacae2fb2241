package protocol

import "unicode/utf8"

// AppendTextFrame appends payload to dst as one unmasked, final WebSocket
// text frame (RFC 6455 §5.2), the form a server sends. Resound builds each
// event's frame once and writes the same bytes to every subscriber, so the
// frame header belongs to the encoded event, not to the socket write.
func AppendTextFrame(dst, payload []byte) []byte {
	return AppendFrame(dst, OpText, payload)
}

// WebSocket opcodes (RFC 6455 §5.2).
const (
	OpContinuation byte = 0x0
	OpText         byte = 0x1
	OpBinary       byte = 0x2
	OpClose        byte = 0x8
	OpPing         byte = 0x9
	OpPong         byte = 0xA
)

// AppendFrame appends one unmasked final frame with the given opcode.
func AppendFrame(dst []byte, opcode byte, payload []byte) []byte {
	n := len(payload)
	dst = append(dst, 0x80|opcode)
	switch {
	case n < 126:
		dst = append(dst, byte(n))
	case n <= 0xFFFF:
		dst = append(dst, 126, byte(n>>8), byte(n))
	default:
		dst = append(dst, 127,
			byte(uint64(n)>>56), byte(uint64(n)>>48), byte(uint64(n)>>40), byte(uint64(n)>>32),
			byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	return append(dst, payload...)
}

// AppendCloseFrame appends a close frame carrying code and reason. The
// reason is cut to fit the 125-byte control-frame limit. A code that must
// not be sent (see ValidCloseCode) becomes 1011: nothing Resound does may
// put one on the wire.
func AppendCloseFrame(dst []byte, code uint16, reason string) []byte {
	if !ValidCloseCode(int(code)) {
		code = CloseInternalError
	}
	if !utf8.ValidString(reason) {
		reason = ""
	}
	if len(reason) > 123 {
		// Cut on a character boundary: the reason must stay valid UTF-8, or
		// browsers fail the connection and the client never sees the code.
		cut := 123
		for cut > 0 && !utf8.RuneStart(reason[cut]) {
			cut--
		}
		reason = reason[:cut]
	}
	body := make([]byte, 0, 2+len(reason))
	body = append(body, byte(code>>8), byte(code))
	body = append(body, reason...)
	return AppendFrame(dst, OpClose, body)
}
