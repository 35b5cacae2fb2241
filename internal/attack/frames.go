package attack

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/gobwas/ws"

	"github.com/resoundhq/resound/protocol"
)

// rawFrame builds a client frame byte by byte, so that it can break every
// rule: opcode and RSV bits as given, masked or not, any length field.
func rawFrame(first byte, masked bool, length uint64, payload []byte) []byte {
	var b []byte
	b = append(b, first)
	maskBit := byte(0)
	if masked {
		maskBit = 0x80
	}
	switch {
	case length < 126:
		b = append(b, maskBit|byte(length))
	case length <= 0xFFFF:
		b = append(b, maskBit|126, byte(length>>8), byte(length))
	default:
		b = append(b, maskBit|127)
		b = binary.BigEndian.AppendUint64(b, length)
	}
	if masked {
		mask := [4]byte{0x12, 0x34, 0x56, 0x78}
		b = append(b, mask[:]...)
		p := append([]byte(nil), payload...)
		ws.Cipher(p, mask, 0)
		return append(b, p...)
	}
	return append(b, payload...)
}

const (
	finBit = 0x80
	rsv1   = 0x40
)

// AbuseCase is one breach of RFC 6455 and the close code it must get.
type AbuseCase struct {
	Name  string
	Bytes []byte
	Want  int
}

// AbuseCases are the protocol breaches of the adversarial suite.
// maxMessage is the app's max_message_size.
func AbuseCases(maxMessage int) []AbuseCase {
	text := []byte(`{"event":"pusher:ping","data":{}}`)
	part := bytes.Repeat([]byte("x"), maxMessage/3+1)
	var frag []byte
	frag = append(frag, rawFrame(byte(protocol.OpText), true, uint64(len(part)), part)...)
	for range 3 {
		frag = append(frag, rawFrame(byte(protocol.OpContinuation), true, uint64(len(part)), part)...)
	}
	frag = append(frag, rawFrame(finBit|byte(protocol.OpContinuation), true, 1, []byte("}"))...)
	return []AbuseCase{
		{"continuation without a start", rawFrame(finBit|byte(protocol.OpContinuation), true, uint64(len(text)), text), 1002},
		{"unmasked frame", rawFrame(finBit|byte(protocol.OpText), false, uint64(len(text)), text), 1002},
		{"reserved data opcode 0x3", rawFrame(finBit|0x3, true, 1, []byte("x")), 1002},
		{"reserved control opcode 0xB", rawFrame(finBit|0xB, true, 1, []byte("x")), 1002},
		{"RSV1 without an extension", rawFrame(finBit|rsv1|byte(protocol.OpText), true, uint64(len(text)), text), 1002},
		{"ping of 126 bytes", rawFrame(finBit|byte(protocol.OpPing), true, 126, bytes.Repeat([]byte("p"), 126)), 1002},
		{"fragmented ping", rawFrame(byte(protocol.OpPing), true, 1, []byte("p")), 1002},
		{"length with the top bit set", rawFrame(finBit|byte(protocol.OpText), true, 1<<63, nil), 1002},
		{"new message inside a fragmented one", append(rawFrame(byte(protocol.OpText), true, 1, []byte("{")),
			rawFrame(finBit|byte(protocol.OpText), true, uint64(len(text)), text)...), 1002},
		{"fragments past max_message_size", frag, 1009},
		{"header announcing 2^62 bytes", rawFrame(finBit|byte(protocol.OpText), true, 1<<62, nil), 1009},
	}
}

// AbuseResult is the close one case got.
type AbuseResult struct {
	Case AbuseCase
	Got  Closed
	Err  error // could not connect or send
}

// ProtocolAbuse runs each case on a connection of its own and reports the
// close each got.
func ProtocolAbuse(ctx context.Context, t Target, cases []AbuseCase, source string) []AbuseResult {
	out := make([]AbuseResult, len(cases))
	var wg sync.WaitGroup
	for i, c := range cases {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i].Case = c
			conn, err := t.Connect(ctx, DialOptions{Source: source})
			if err != nil {
				out[i].Err = err
				return
			}
			defer conn.Close()
			if err := conn.WriteRaw(c.Bytes, 5*time.Second); err != nil {
				out[i].Err = err
				return
			}
			out[i].Got = conn.AwaitClose(patience)
		}()
	}
	wg.Wait()
	return out
}

// TrickleResult is what a trickled message got.
type TrickleResult struct {
	Size int // bytes of the frame, header included
	// Answered is set when the server answered the subscribe it carried.
	Answered bool
	Err      error
}

// TrickledMessage sends one pusher:subscribe padded to size bytes of
// payload, a byte per write (TCP_NODELAY: a segment each) with a pause
// after every tenth, and waits for the answer. Reassembly that copies what it has on every read costs time
// quadratic in the size.
func TrickledMessage(ctx context.Context, t Target, channel string, size int, pause time.Duration, source string) TrickleResult {
	conn, err := t.Connect(ctx, DialOptions{Source: source})
	if err != nil {
		return TrickleResult{Err: err}
	}
	defer conn.Close()
	msg := []byte(`{"event":"pusher:subscribe","data":{"channel":"` + channel + `"},"pad":"`)
	pad := size - len(msg) - 2
	if pad < 0 {
		return TrickleResult{Err: fmt.Errorf("size %d is too small", size)}
	}
	msg = append(msg, strings.Repeat("p", pad)...)
	msg = append(msg, `"}`...)
	frame := rawFrame(finBit|byte(protocol.OpText), true, uint64(len(msg)), msg)
	if tc, ok := conn.NetConn().(interface{ SetNoDelay(bool) error }); ok {
		_ = tc.SetNoDelay(true)
	}
	for i := range frame {
		if ctx.Err() != nil {
			return TrickleResult{Size: len(frame), Err: ctx.Err()}
		}
		if err := conn.WriteRaw(frame[i:i+1], 5*time.Second); err != nil {
			return TrickleResult{Size: len(frame), Err: fmt.Errorf("byte %d: %w", i, err)}
		}
		if pause > 0 && i%10 == 9 {
			time.Sleep(pause)
		}
	}
	_, _, err = conn.Await(protocol.EventSubscriptionSucceeded, channel, patience)
	return TrickleResult{Size: len(frame), Answered: err == nil, Err: err}
}

// CloseCase is a close frame a client sends and what it must get back.
type CloseCase struct {
	Name    string
	Payload []byte
	// Want is the code the server must answer with; 0 accepts any code it
	// may send (RFC 6455 §7.4).
	Want int
}

// CloseCases are distinct valid codes from..to-1 (each a label value an
// unbucketed metric would keep forever) and every invalid close payload.
func CloseCases(from, to int) []CloseCase {
	var out []CloseCase
	for code := from; code < to; code++ {
		out = append(out, CloseCase{Name: fmt.Sprint(code), Payload: ws.NewCloseFrameBody(ws.StatusCode(code), ""), Want: 0})
	}
	for _, code := range []int{0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535} {
		out = append(out, CloseCase{Name: fmt.Sprint(code), Payload: ws.NewCloseFrameBody(ws.StatusCode(code), ""), Want: 1002})
	}
	out = append(out,
		CloseCase{Name: "1-byte payload", Payload: []byte{0x03}, Want: 1002},
		CloseCase{Name: "reason not UTF-8", Payload: append(ws.NewCloseFrameBody(4000, ""), 0xFF, 0xFE), Want: 1007},
		CloseCase{Name: "no payload", Payload: nil, Want: 1000},
	)
	return out
}

// CloseResult is the answer to one close frame.
type CloseResult struct {
	Case CloseCase
	Got  Closed
	Err  error
}

// Bad reports why r breaks the rules, or "".
func (r CloseResult) Bad() string {
	switch {
	case r.Err != nil:
		return r.Err.Error()
	case r.Got.Code == -1:
		return fmt.Sprintf("no close frame (%v)", r.Got.Err)
	case !SendableCloseCode(r.Got.Code):
		return fmt.Sprintf("answered %d, a code that must never be sent", r.Got.Code)
	case r.Case.Want != 0 && r.Got.Code != r.Case.Want:
		return fmt.Sprintf("answered %d, want %d", r.Got.Code, r.Case.Want)
	}
	return ""
}

// CloseCodes connects once per case, concurrency at a time, sends the
// case's close frame and reads the server's answer.
func CloseCodes(ctx context.Context, t Target, cases []CloseCase, concurrency int, source string) []CloseResult {
	out := make([]CloseResult, len(cases))
	work := make(chan int)
	var wg sync.WaitGroup
	for range max(concurrency, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				out[i] = closeOnce(ctx, t, cases[i], source)
			}
		}()
	}
	for i := range cases {
		work <- i
	}
	close(work)
	wg.Wait()
	return out
}

func closeOnce(ctx context.Context, t Target, c CloseCase, source string) CloseResult {
	conn, err := t.Connect(ctx, DialOptions{Source: source})
	if err != nil {
		return CloseResult{Case: c, Err: err}
	}
	defer conn.Close()
	if err := conn.WriteFrame(ws.NewCloseFrame(c.Payload)); err != nil {
		return CloseResult{Case: c, Err: err}
	}
	return CloseResult{Case: c, Got: conn.AwaitClose(patience)}
}

// PingFloodOptions configure PingFlood.
type PingFloodOptions struct {
	Conns int // default 200
	Pings int // per connection; default 2000
	// Payload bytes per ping, at most 125; default 125.
	Payload int
	Source  string
	// OnStall, if set, is called (from the connection's goroutine) each
	// time one connection's pings have not been taken for StallAfter
	// (default 10 s) while it still waits: the moment to look at the
	// stuck socket (ss, the gateway's goroutines) while it is stuck.
	OnStall    func(s Stall)
	StallAfter time.Duration
}

// Stall is a connection whose pings the server stopped taking.
type Stall struct {
	Local, Remote string // the client's socket, as ss shows it
	SocketID      string
	Sent          int           // pings written before the stalled batch
	Waited        time.Duration // since the write began
}

// PingFloodResult is what the flooding connections saw.
type PingFloodResult struct {
	Conns     int   // connected
	PingsSent int64 // over all connections
	// Blocked counts connections whose pings stopped being taken (the
	// server stopped reading them) before all were sent.
	Blocked int
	// Alive counts connections that, after the flood, still answered a
	// pusher:ping; the rest were closed (Closes counts their codes, -1
	// for none).
	Alive  int
	Closes map[int]int
	// PongsBuffered is the most WebSocket pongs one connection found
	// waiting when it finally read (the kernel's buffers hold some).
	PongsBuffered int
	DialErrors    int
	// Failures says, for a few of the connections that were Blocked or
	// not Alive, what their client saw: the error that ended the ping
	// phase, or the send or read that ended the answer phase.
	Failures []string
}

// maxFailures bounds PingFloodResult.Failures: a few examples say what
// happened; all of them say nothing more.
const maxFailures = 5

// PingFlood opens connections that send WebSocket pings and never read
// until the flood is over. A gateway that queues a pong per ping holds
// Pings pongs per connection; RFC 6455 §5.5.3 lets it keep only the
// latest.
func PingFlood(ctx context.Context, t Target, o PingFloodOptions) PingFloodResult {
	if o.Conns <= 0 {
		o.Conns = 200
	}
	if o.Pings <= 0 {
		o.Pings = 2000
	}
	if o.Payload <= 0 || o.Payload > 125 {
		o.Payload = 125
	}
	res := PingFloodResult{Closes: map[int]int{}}
	// Small socket buffers: what the client does not read stays in the
	// server process, not in the kernel.
	dial := DialOptions{Source: o.Source, ReadBuffer: 4096, MaxSegment: 1024}
	var conns []*Conn
	for range o.Conns {
		c, err := t.Connect(ctx, dial)
		if err != nil {
			res.DialErrors++
			continue
		}
		conns = append(conns, c)
	}
	res.Conns = len(conns)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	const batch = 50
	ping := rawFrame(finBit|byte(protocol.OpPing), true, uint64(o.Payload), bytes.Repeat([]byte("P"), o.Payload))
	var burst []byte
	for range batch {
		burst = append(burst, ping...)
	}
	if o.StallAfter <= 0 {
		o.StallAfter = 10 * time.Second
	}
	var mu sync.Mutex
	fail := func(c *Conn, format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		if len(res.Failures) < maxFailures {
			res.Failures = append(res.Failures, fmt.Sprintf("%s (%s, socket %s): ", c.nc.LocalAddr(), time.Now().UTC().Format("15:04:05.000"), c.SocketID)+fmt.Sprintf(format, args...))
		}
	}
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sent := 0
			for sent < o.Pings && ctx.Err() == nil {
				n := min(batch, o.Pings-sent)
				if err := c.writeWatched(burst[:n*len(ping)], o, sent); err != nil {
					partial := ""
					var pe *partialWriteError
					if errors.As(err, &pe) {
						partial = fmt.Sprintf(" (%d of its %d bytes taken, in %v)", pe.written, n*len(ping), pe.waited.Round(time.Millisecond))
					}
					fail(c, "ping phase: writing pings %d-%d%s: %v", sent+1, sent+n, partial, err)
					mu.Lock()
					res.Blocked++
					mu.Unlock()
					break
				}
				sent += n
			}
			mu.Lock()
			res.PingsSent += int64(sent)
			mu.Unlock()
		}()
	}
	wg.Wait()
	// Now read: each connection must still answer a pusher:ping.
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pongs, frames, code := 0, 0, 0
			alive := false
			var texts []string // the last few text frames, for a failure
			if err := c.SendJSON(map[string]any{"event": protocol.EventPing, "data": map[string]any{}}); err == nil {
				deadline := time.Now().Add(patience)
				for {
					f, err := c.ReadFrame(time.Until(deadline))
					if err != nil {
						code = -1
						fail(c, "answer phase: reading after %d frames (%d pongs, texts %q): %v", frames, pongs, texts, err)
						break
					}
					frames++
					if f.OpCode == ws.OpPong {
						pongs++
						continue
					}
					if f.OpCode == ws.OpClose {
						var reason string
						code, reason = CloseCode(f.Payload)
						fail(c, "answer phase: closed with %d %q after %d frames (%d pongs, texts %q)", code, reason, frames, pongs, texts)
						break
					}
					var m struct{ Event string }
					if f.OpCode == ws.OpText && json.Unmarshal(f.Payload, &m) == nil && m.Event == protocol.EventPong {
						alive = true
						break
					}
					if f.OpCode == ws.OpText {
						texts = append(texts[max(len(texts)-2, 0):], string(f.Payload))
					}
				}
			} else {
				code = -1
				fail(c, "answer phase: sending pusher:ping: %v", err)
			}
			mu.Lock()
			res.PongsBuffered = max(res.PongsBuffered, pongs)
			if alive {
				res.Alive++
			} else {
				res.Closes[code]++
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	return res
}

// partialWriteError is a write that failed after the socket took some of
// its bytes.
type partialWriteError struct {
	written int
	waited  time.Duration
	err     error
}

func (e *partialWriteError) Error() string { return e.err.Error() }
func (e *partialWriteError) Unwrap() error { return e.err }

// writeWatched writes b within patience, calling o.OnStall each time the
// socket has taken nothing more for o.StallAfter. sent is the pings
// written before b, for the report.
func (c *Conn) writeWatched(b []byte, o PingFloodOptions, sent int) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	start := time.Now()
	written := 0
	for {
		wait := patience - time.Since(start)
		if o.OnStall != nil {
			wait = min(wait, o.StallAfter)
		}
		_ = c.nc.SetWriteDeadline(time.Now().Add(wait))
		n, err := c.nc.Write(b[written:])
		written += n
		if err == nil {
			return nil
		}
		waited := time.Since(start)
		if !isTimeout(err) || waited >= patience || o.OnStall == nil {
			return &partialWriteError{written: written, waited: waited, err: err}
		}
		o.OnStall(Stall{Local: c.nc.LocalAddr().String(), Remote: c.nc.RemoteAddr().String(),
			SocketID: c.SocketID, Sent: sent, Waited: waited})
	}
}
