package attack

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/gobwas/ws"

	"github.com/resoundhq/resound/pkg/pushertest"
	"github.com/resoundhq/resound/protocol"
)

// Conns is a set of open connections an attack leaves for its caller to
// close (a per-IP cap holds only while they stay).
type Conns []*Conn

// Close closes them all.
func (cs Conns) Close() {
	for _, c := range cs {
		c.Close()
	}
}

// ConnectResult is the outcome of ConnectMany.
type ConnectResult struct {
	Conns Conns
	// Statuses counts refused handshakes by HTTP status.
	Statuses map[int]int
	// Errors holds failures that were not a refusal with a status.
	Errors []error
}

// ConnectMany opens n WebSocket connections one after the other with o,
// keeping those that were accepted.
func ConnectMany(ctx context.Context, t Target, n int, o DialOptions) ConnectResult {
	res := ConnectResult{Statuses: map[int]int{}}
	for range n {
		c, err := t.Connect(ctx, o)
		var se StatusError
		switch {
		case err == nil:
			res.Conns = append(res.Conns, c)
		case errors.As(err, &se):
			res.Statuses[int(se)]++
		default:
			res.Errors = append(res.Errors, err)
		}
	}
	return res
}

// ProxyV1 is a PROXY protocol v1 header naming client as the source.
func ProxyV1(client, server string, clientPort, serverPort int) []byte {
	return []byte(fmt.Sprintf("PROXY TCP4 %s %s %d %d\r\n", client, server, clientPort, serverPort))
}

// SubscriptionError is a pusher:subscription_error's data.
type SubscriptionError struct {
	Channel string
	Type    string `json:"type"`
	Error   string `json:"error"`
	Status  int    `json:"status"`
}

// outcomes reads until each of channels has a subscription outcome,
// counting pusher:error codes on the way.
func outcomes(c *Conn, channels []string, timeout time.Duration) (ok []string, refused []SubscriptionError, codes map[int]int, err error) {
	want := map[string]bool{}
	for _, ch := range channels {
		want[ch] = true
	}
	codes = map[int]int{}
	deadline := time.Now().Add(timeout)
	for len(want) > 0 {
		m, err := c.ReadMessage(time.Until(deadline))
		if err != nil {
			return ok, refused, codes, err
		}
		switch m.Event {
		case protocol.EventSubscriptionSucceeded:
			if want[m.Channel] {
				delete(want, m.Channel)
				ok = append(ok, m.Channel)
			}
		case "pusher:subscription_error":
			var se SubscriptionError
			_ = m.DataObject(&se)
			se.Channel = m.Channel
			if want[m.Channel] {
				delete(want, m.Channel)
			}
			refused = append(refused, se)
		case protocol.EventError:
			codes[errorCode(m)]++
		}
	}
	return ok, refused, codes, nil
}

func errorCode(m pushertest.Message) int {
	var d struct {
		Code int `json:"code"`
	}
	_ = m.DataObject(&d)
	return d.Code
}

// awaitErrors reads until n pusher:errors (beyond those already counted)
// arrived, adding them to codes; a pusher:error may follow the
// subscription_error it goes with.
func awaitErrors(c *Conn, codes map[int]int, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for got := 0; got < n; {
		m, err := c.ReadMessage(time.Until(deadline))
		if err != nil {
			return err
		}
		if m.Event == protocol.EventError {
			codes[errorCode(m)]++
			got++
		}
	}
	return nil
}

// ChannelFloodResult is what a connection that subscribes to too many
// channels saw.
type ChannelFloodResult struct {
	Succeeded []string
	Refused   []SubscriptionError
	// ErrorCodes counts the pusher:error codes.
	ErrorCodes map[int]int
	// Delivered is how many of the subscribed channels delivered an event
	// triggered on all of them afterwards; DeliveredRefused how many of
	// the refused ones did (must be 0).
	Delivered, DeliveredRefused int
	Err                         error
}

// ChannelFlood subscribes one connection to n public channels at once,
// then triggers an event on every one of them and counts what arrives.
func ChannelFlood(ctx context.Context, t Target, n int, prefix, source string) ChannelFloodResult {
	res := ChannelFloodResult{ErrorCodes: map[int]int{}}
	c, err := t.Connect(ctx, DialOptions{Source: source})
	if err != nil {
		res.Err = err
		return res
	}
	defer c.Close()
	var channels []string
	for i := range n {
		channels = append(channels, prefix+strconv.Itoa(i))
	}
	for _, ch := range channels {
		if err := c.Subscribe(ch, "", ""); err != nil {
			res.Err = err
			return res
		}
	}
	res.Succeeded, res.Refused, res.ErrorCodes, res.Err = outcomes(c, channels, patience)
	if res.Err == nil && len(res.Refused) > 0 {
		res.Err = awaitErrors(c, res.ErrorCodes, len(res.Refused)-countAll(res.ErrorCodes), patience)
	}
	if res.Err != nil {
		return res
	}
	api := t.API(source, false)
	probe, end := prefix+"probe", prefix+"end"
	for i := 0; i < len(channels); i += protocol.DefaultLimits.MaxChannels {
		if r := api.Trigger(channels[i:min(i+protocol.DefaultLimits.MaxChannels, len(channels))], probe, "p", ""); r.Status != http.StatusOK {
			res.Err = fmt.Errorf("trigger: %d %s", r.Status, r.Body)
			return res
		}
	}
	// A marker on one subscribed channel, after its probe.
	if r := api.Trigger(res.Succeeded[:1], end, "e", ""); r.Status != http.StatusOK {
		res.Err = fmt.Errorf("trigger: %d %s", r.Status, r.Body)
		return res
	}
	refused := map[string]bool{}
	for _, r := range res.Refused {
		refused[r.Channel] = true
	}
	seen := map[string]bool{}
	count := func(m pushertest.Message) {
		if m.Event != probe || seen[m.Channel] {
			return
		}
		seen[m.Channel] = true
		if refused[m.Channel] {
			res.DeliveredRefused++
		} else {
			res.Delivered++
		}
	}
	deadline := time.Now().Add(patience)
	for {
		m, err := c.ReadMessage(time.Until(deadline))
		if err != nil {
			res.Err = fmt.Errorf("reading the probes: %w", err)
			return res
		}
		count(m)
		if m.Event == end {
			break
		}
	}
	// The marker was a job of its own, which may have overtaken the
	// probes of other channels: give those a moment more.
	for res.Delivered < len(res.Succeeded) {
		m, err := c.ReadMessage(2 * time.Second)
		if err != nil {
			break
		}
		count(m)
	}
	return res
}

func countAll(m map[int]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// PresenceFloodResult is what one user's connections to a presence
// channel saw.
type PresenceFloodResult struct {
	Succeeded  int
	Refused    []SubscriptionError
	ErrorCodes map[int]int
	// Conns are the connections, open; the caller closes them.
	Conns  Conns
	Errors []error
}

// PresenceFlood opens n connections that each join channel (a presence
// channel) as the same user, one after the other.
func PresenceFlood(ctx context.Context, t Target, channel, userID string, n int, source string) PresenceFloodResult {
	res := PresenceFloodResult{ErrorCodes: map[int]int{}}
	data, _ := json.Marshal(map[string]any{"user_id": userID, "user_info": map[string]any{"name": "flood"}})
	for range n {
		c, err := t.Connect(ctx, DialOptions{Source: source})
		if err != nil {
			res.Errors = append(res.Errors, err)
			continue
		}
		res.Conns = append(res.Conns, c)
		if err := c.Subscribe(channel, t.ChannelAuth(c.SocketID, channel, string(data)), string(data)); err != nil {
			res.Errors = append(res.Errors, err)
			continue
		}
		ok, refused, codes, err := outcomes(c, []string{channel}, patience)
		if err == nil && len(refused) > 0 && countAll(codes) == 0 {
			err = awaitErrors(c, codes, 1, patience)
		}
		if err != nil {
			res.Errors = append(res.Errors, err)
		}
		res.Succeeded += len(ok)
		res.Refused = append(res.Refused, refused...)
		for k, v := range codes {
			res.ErrorCodes[k] += v
		}
	}
	return res
}

// joinPrivate connects and subscribes to a private channel.
func joinPrivate(ctx context.Context, t Target, channel, source string) (*Conn, error) {
	c, err := t.Connect(ctx, DialOptions{Source: source})
	if err != nil {
		return nil, err
	}
	if err := c.Subscribe(channel, t.ChannelAuth(c.SocketID, channel, ""), ""); err != nil {
		c.Close()
		return nil, err
	}
	if _, _, err := c.Await(protocol.EventSubscriptionSucceeded, channel, patience); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// ClientEventFloodResult is what a client-event flood did.
type ClientEventFloodResult struct {
	Sent int
	// Relayed is how many the other member received; Refused how many
	// pusher:error 4301 the sender got.
	Relayed, Refused int
	// OtherErrors counts other pusher:error codes the sender got.
	OtherErrors map[int]int
	Err         error
}

// ClientEventFlood has a member of a private channel send n client events
// in one write; a second member counts what it receives.
func ClientEventFlood(ctx context.Context, t Target, channel string, n int, source string) ClientEventFloodResult {
	res := ClientEventFloodResult{Sent: n, OtherErrors: map[int]int{}}
	sender, err := joinPrivate(ctx, t, channel, source)
	if err != nil {
		res.Err = err
		return res
	}
	defer sender.Close()
	receiver, err := joinPrivate(ctx, t, channel, source)
	if err != nil {
		res.Err = err
		return res
	}
	defer receiver.Close()
	var burst []byte
	for i := range n {
		b, _ := json.Marshal(map[string]any{"event": "client-flood", "channel": channel, "data": map[string]any{"n": i}})
		f, _ := ws.CompileFrame(ws.MaskFrameInPlace(ws.NewTextFrame(b)))
		burst = append(burst, f...)
	}
	if err := sender.WriteRaw(burst, patience); err != nil {
		res.Err = err
		return res
	}
	// The answers to the flood all come before the answer to this ping.
	if err := sender.SendJSON(map[string]any{"event": protocol.EventPing, "data": map[string]any{}}); err != nil {
		res.Err = err
		return res
	}
	deadline := time.Now().Add(patience)
	for {
		m, err := sender.ReadMessage(time.Until(deadline))
		if err != nil {
			res.Err = fmt.Errorf("sender: %w", err)
			return res
		}
		if m.Event == protocol.EventPong {
			break
		}
		if m.Event == protocol.EventError {
			if code := errorCode(m); code == protocol.CodeClientRateLimit {
				res.Refused++
			} else {
				res.OtherErrors[code]++
			}
		}
	}
	// Once the bucket has a token again, a marker from the same sender
	// comes after every relayed event of the flood.
	time.Sleep(1100 * time.Millisecond)
	if err := sender.SendJSON(map[string]any{"event": "client-end", "channel": channel, "data": map[string]any{}}); err != nil {
		res.Err = err
		return res
	}
	deadline = time.Now().Add(patience)
	for {
		m, err := receiver.ReadMessage(time.Until(deadline))
		if err != nil {
			res.Err = fmt.Errorf("receiver: %w", err)
			return res
		}
		if m.Event == "client-end" {
			return res
		}
		if m.Event == "client-flood" {
			res.Relayed++
		}
	}
}

// InvalidUTF8Result is what members of a channel saw while one of them
// sent bytes that are not UTF-8.
type InvalidUTF8Result struct {
	// TextClose and BinaryClose are the closes the senders got for a text
	// and a binary frame whose client event holds 0xFF 0xFE (-1: none).
	TextClose, BinaryClose int
	// APIStatus is the answer to an HTTP API event whose data holds them.
	APIStatus int
	// Members is how many other members watched; InvalidFrames the text
	// frames they received that were not UTF-8; Relayed the bad events
	// that reached them at all; Lost the members whose connection ended.
	Members, InvalidFrames, Relayed, Lost int
	Err                                   error
}

// InvalidUTF8 has members of a private channel watch while one sends a
// client event holding 0xFF 0xFE in a text frame and another in a binary
// frame, and an API call posts such an event. Afterwards a valid client
// event must still reach every member.
func InvalidUTF8(ctx context.Context, t Target, channel string, members int, source string) InvalidUTF8Result {
	res := InvalidUTF8Result{Members: members, TextClose: -1, BinaryClose: -1}
	var watchers []*Conn
	defer func() { Conns(watchers).Close() }()
	for range members {
		c, err := joinPrivate(ctx, t, channel, source)
		if err != nil {
			res.Err = err
			return res
		}
		watchers = append(watchers, c)
	}
	evil := append([]byte(`{"event":"client-evil","channel":"`+channel+`","data":"`), 0xFF, 0xFE)
	evil = append(evil, `"}`...)
	for _, op := range []ws.OpCode{ws.OpText, ws.OpBinary} {
		s, err := joinPrivate(ctx, t, channel, source)
		if err != nil {
			res.Err = err
			return res
		}
		err = s.WriteFrame(ws.NewFrame(op, true, evil))
		code := -1
		if err == nil {
			code = s.AwaitClose(patience).Code
		}
		s.Close()
		if op == ws.OpText {
			res.TextClose = code
		} else {
			res.BinaryClose = code
		}
	}
	body := append([]byte(`{"name":"api-evil","channels":["`+channel+`"],"data":"`), 0xFF, 0xFE)
	body = append(body, `"}`...)
	res.APIStatus = t.API(source, false).Do(http.MethodPost, "/events", body, nil).Status

	// A valid event from a new member must reach everyone, after anything
	// the attack got through.
	s, err := joinPrivate(ctx, t, channel, source)
	if err != nil {
		res.Err = err
		return res
	}
	defer s.Close()
	if err := s.SendJSON(map[string]any{"event": "client-fine", "channel": channel, "data": map[string]any{}}); err != nil {
		res.Err = err
		return res
	}
	for _, w := range watchers {
		deadline := time.Now().Add(patience)
		for {
			f, err := w.ReadFrame(time.Until(deadline))
			if err != nil {
				res.Lost++
				break
			}
			if f.OpCode == ws.OpClose {
				res.Lost++
				break
			}
			if f.OpCode != ws.OpText {
				continue
			}
			if !utf8.Valid(f.Payload) {
				res.InvalidFrames++
			}
			s := string(f.Payload)
			if strings.Contains(s, "client-evil") || strings.Contains(s, "api-evil") {
				res.Relayed++
			}
			if strings.Contains(s, `"client-fine"`) {
				break
			}
		}
	}
	return res
}

// SlowReadersOptions configure SlowReaders.
type SlowReadersOptions struct {
	Conns   int    // default 200
	Channel string // default "busy"
	// EventSize is bytes of data per event; default 8000.
	EventSize int
	// Events is how many are triggered (in batches of 10); default 60.
	Events int
	Source string
}

// SlowReadersResult is what the readers that never read saw.
type SlowReadersResult struct {
	Subscribed int
	Triggered  int
	// CutOff counts connections the server ended; StillOpen those that,
	// read at last, had every event and the end marker; Stuck those that
	// had neither within 30 s.
	CutOff, StillOpen, Stuck int
	Err                      error
}

// SlowReaders subscribes many connections with small socket buffers to a
// channel, stops reading them, and triggers big events there. Each one's
// pending output is bounded (RESOUND_MAX_OUTBOUND) and so is all of them
// together (RESOUND_MAX_OUTBOUND_TOTAL): past either they are cut off.
func SlowReaders(ctx context.Context, t Target, o SlowReadersOptions) SlowReadersResult {
	if o.Conns <= 0 {
		o.Conns = 200
	}
	if o.Channel == "" {
		o.Channel = "busy"
	}
	if o.EventSize <= 0 {
		o.EventSize = 8000
	}
	if o.Events <= 0 {
		o.Events = 60
	}
	var res SlowReadersResult
	var conns Conns
	defer func() { conns.Close() }()
	dial := DialOptions{Source: o.Source, ReadBuffer: 4096, MaxSegment: 1024}
	for range o.Conns {
		c, err := t.Connect(ctx, dial)
		if err != nil {
			res.Err = err
			return res
		}
		conns = append(conns, c)
		if err := c.Subscribe(o.Channel, "", ""); err != nil {
			res.Err = err
			return res
		}
		if _, _, err := c.Await(protocol.EventSubscriptionSucceeded, o.Channel, patience); err != nil {
			res.Err = err
			return res
		}
		res.Subscribed++
	}
	api := t.API(o.Source, false)
	data := strings.Repeat("s", o.EventSize)
	for res.Triggered < o.Events {
		var batch []map[string]any
		for i := 0; i < 10 && res.Triggered+i < o.Events; i++ {
			batch = append(batch, map[string]any{"name": "slow", "channel": o.Channel, "data": data})
		}
		body, _ := json.Marshal(map[string]any{"batch": batch})
		if r := api.Do(http.MethodPost, "/batch_events", body, nil); r.Status != http.StatusOK {
			res.Err = fmt.Errorf("batch_events: %d %s", r.Status, r.Body)
			return res
		}
		res.Triggered += len(batch)
	}
	if r := api.Trigger([]string{o.Channel}, "slow-end", "e", ""); r.Status != http.StatusOK {
		res.Err = fmt.Errorf("trigger: %d %s", r.Status, r.Body)
		return res
	}
	// Now read every connection: it was cut off, or it holds every event
	// and then the marker.
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, err := c.Await("slow-end", o.Channel, patience)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				res.StillOpen++
			case isTimeout(err):
				res.Stuck++
			default:
				res.CutOff++
			}
		}()
	}
	wg.Wait()
	return res
}
