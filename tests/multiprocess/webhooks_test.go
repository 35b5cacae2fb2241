package multiprocess

import (
	"bufio"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/resoundhq/resound/pkg/pushertest"
	"github.com/resoundhq/resound/protocol"
)

// A worker killed with SIGKILL in the middle of delivering webhooks to a
// slow receiver: every webhook still arrives at least once, none is missing
// once duplicates are counted out, and each channel's arrive in the order
// its transitions happened. The records the dead worker had not acked are
// delivered again by the other worker once its lanes move (the registry
// notices within the TTL; JetStream's pin lapses after webhook.PinnedTTL),
// so this test spends most of its time waiting for that.
func TestWebhooksWorkerKilledMidDelivery(t *testing.T) {
	alone(t) // its order after the kill is load-sensitive (see "Running side by side" in procs_test.go)
	const (
		channels = 200
		perEvent = 2                     // client events per channel
		slow     = 50 * time.Millisecond // the receiver's time per request
		batchMax = 5
	)
	rx := newHookReceiver(t, appKey, secret, slow)
	rx.mu.Lock()
	rx.holdAt = (perEvent + 2) * channels / 3 // a third of the events expected
	rx.mu.Unlock()
	env := []string{
		"RESOUND_WEBHOOK_URL=" + rx.srv.URL + "/hooks",
		"RESOUND_WEBHOOK_EVENTS=channel_occupied,channel_vacated,client_event",
		"RESOUND_WEBHOOK_DELAY=0.5",
		"RESOUND_WEBHOOK_BATCH_WINDOW=0.02",
		"RESOUND_WEBHOOK_BATCH_MAX=" + strconv.Itoa(batchMax),
		"RESOUND_WEBHOOK_TIMEOUT=5",
		"RESOUND_WEBHOOK_RETRY_FOR=120",
		"RESOUND_GATEWAY_TTL=3",
	}
	natsURL, monitorURL := startNATS(t)
	c := startCluster(t, clusterSpec{natsURL: natsURL, gateways: 1, workers: 2, workerEnv: env, gatewayEnv: func(int) []string { return env }})
	g := c.gateways[0]

	// Channel i has two subscribers, connections i and i-1, so that its
	// client events are relayed to someone; connection i sends channel i's.
	name := func(i int) string { return fmt.Sprintf("private-hook-%03d", i%channels) }
	conns := make([]*pushertest.Client, channels)
	for i := range conns {
		conns[i] = pushertest.Connect(t, g.addr, appKey)
	}
	for i, cl := range conns {
		for _, ch := range []string{name(i), name(i + 1)} {
			cl.SendJSON(map[string]any{"event": protocol.EventSubscribe, "data": map[string]any{
				"channel": ch, "auth": appKey + ":" + protocol.Sign(secret, cl.SocketID+":"+ch)}})
			if m := cl.Expect(protocol.EventSubscriptionSucceeded); m.Channel != ch {
				t.Fatalf("subscribed to %s, want %s", m.Channel, ch)
			}
		}
	}
	// Within client_event_rate_limit (10/s per connection).
	for i, cl := range conns {
		for n := 1; n <= perEvent; n++ {
			cl.SendJSON(map[string]any{"event": "client-n", "channel": name(i), "data": map[string]int{"n": n}})
		}
	}
	// Each connection gets the client events of its second channel: they
	// were accepted and relayed before anyone leaves.
	for i, cl := range conns {
		for n := 1; n <= perEvent; n++ {
			m, err := cl.Read(20 * time.Second)
			if err != nil || m.Event != "client-n" || m.Channel != name(i+1) {
				t.Fatalf("connection %d, client event %d of %s: got %s (%v)", i, n, name(i+1), m.Raw, err)
			}
		}
	}
	for _, cl := range conns {
		cl.Close()
	}

	// What must arrive: per channel, occupied, the client events, vacated.
	expected := map[hookKey]bool{}
	for i := range channels {
		ch := name(i)
		expected[hookKey{ch, protocol.WebhookChannelOccupied, ""}] = true
		expected[hookKey{ch, protocol.WebhookChannelVacated, ""}] = true
		for n := 1; n <= perEvent; n++ {
			expected[hookKey{ch, protocol.WebhookClientEvent, fmt.Sprintf(`{"n":%d}`, n)}] = true
		}
	}

	// Mid-way, SIGKILL the worker that has a request in flight at the
	// receiver right then (found by the TCP connection's owner in /proc).
	workers := []*proc{c.workers[0], c.workers[1]}
	var killed *proc
	var killedAt int
	waitFor(t, nil, 60*time.Second, "a third of the webhooks delivered and a worker's request in flight", func() bool {
		if rx.received() < len(expected)/3 {
			return false
		}
		for _, port := range rx.inFlight() {
			if p := ownerOfConn(port, rx.port, workers); p != nil {
				killed, killedAt = p, rx.received()
				return true
			}
		}
		return false
	})
	if killedAt >= len(expected) {
		t.Fatalf("everything (%d events) had arrived before the kill", killedAt)
	}
	killed.kill(t)
	close(rx.release)
	survivor := workers[0]
	if survivor == killed {
		survivor = workers[1]
	}
	t.Logf("killed %s with %d of %d webhook events received", killed.name, killedAt, len(expected))

	// Everything arrives: the dead worker's lanes come back after the pin
	// lapses, and what it had not acked is delivered again.
	waitFor(t, survivor, 120*time.Second, "every expected webhook event", func() bool {
		return len(rx.missing(expected)) == 0
	})
	// Every record was acked once delivered: the work-queue stream empties.
	var left int
	waitFor(t, survivor, 60*time.Second, "RESOUND_WEBHOOKS empty (every record acked)", func() bool {
		left = hookStreamMessages(t, monitorURL)
		return left == 0
	})

	r := rx.report(expected, batchMax)
	t.Logf("webhooks: %d requests (%d invalid, %d over %d events), %d events received, %d distinct of %d expected, %d duplicates, %d missing, %d unexpected; %d channels out of order; client_event before channel_occupied on %d channels",
		r.requests, r.invalid, r.oversized, batchMax, r.events, r.distinct, len(expected), r.duplicates, len(r.missing), len(r.unexpected), len(r.outOfOrder), r.clientFirst)
	if r.invalid != 0 || r.oversized != 0 {
		t.Errorf("%d requests failed the signature check, %d had more than %d events", r.invalid, r.oversized, batchMax)
	}
	if len(r.missing) != 0 || len(r.unexpected) != 0 {
		t.Errorf("missing %v; unexpected %v", r.missing, r.unexpected)
	}
	if len(r.outOfOrder) != 0 {
		t.Errorf("out of order on %d channels, e.g. %v", len(r.outOfOrder), r.outOfOrder[:min(3, len(r.outOfOrder))])
	}
	if survivor.exited() {
		t.Fatal("the surviving worker exited")
	}
}

// hookKey identifies one webhook event: its channel, its name, and which
// occurrence of that name on the channel (a client event's data; empty for
// occupied and vacated, which happen once per channel here).
type hookKey struct{ channel, name, occurrence string }

// hookReceiver is an app's webhook endpoint that checks each request's
// signature as Pusher's SDKs do, takes `slow` to answer, and records every
// event of every valid request in arrival order.
type hookReceiver struct {
	srv         *httptest.Server
	port        int
	key, secret string
	slow        time.Duration

	mu       sync.Mutex
	requests int
	invalid  int
	sizes    []int // events per valid request
	events   []hookKey
	flight   map[string]int // remote address → requests in flight from it
	// Once holdAt events have arrived, requests wait for release before
	// they are answered: the kill then finds a request in flight for
	// certain, however the machine schedules the test (running beside the
	// others, the load could finish between two polls).
	holdAt  int
	release chan struct{}
}

func newHookReceiver(t *testing.T, key, secret string, slow time.Duration) *hookReceiver {
	t.Helper()
	rx := &hookReceiver{key: key, secret: secret, slow: slow, flight: map[string]int{}, release: make(chan struct{})}
	rx.srv = httptest.NewServer(http.HandlerFunc(rx.serve))
	t.Cleanup(rx.srv.Close)
	rx.port = rx.srv.Listener.Addr().(*net.TCPAddr).Port
	return rx
}

func (rx *hookReceiver) serve(w http.ResponseWriter, r *http.Request) {
	rx.mu.Lock()
	rx.flight[r.RemoteAddr]++
	rx.mu.Unlock()
	defer func() {
		rx.mu.Lock()
		if rx.flight[r.RemoteAddr]--; rx.flight[r.RemoteAddr] == 0 {
			delete(rx.flight, r.RemoteAddr)
		}
		rx.mu.Unlock()
	}()
	body, err := io.ReadAll(io.LimitReader(r.Body, 4<<20))
	mac := hmac.New(sha256.New, []byte(rx.secret))
	mac.Write(body)
	want := hex.EncodeToString(mac.Sum(nil))
	var payload struct {
		TimeMS int64                   `json:"time_ms"`
		Events []protocol.WebhookEvent `json:"events"`
	}
	valid := err == nil && r.Method == http.MethodPost &&
		r.Header.Get("X-Pusher-Key") == rx.key &&
		r.Header.Get("Content-Type") == "application/json" &&
		hmac.Equal([]byte(r.Header.Get("X-Pusher-Signature")), []byte(want)) &&
		json.Unmarshal(body, &payload) == nil && payload.TimeMS > 0
	rx.mu.Lock()
	rx.requests++
	if !valid {
		rx.invalid++
		rx.mu.Unlock()
		http.Error(w, "invalid webhook", http.StatusUnauthorized)
		return
	}
	rx.sizes = append(rx.sizes, len(payload.Events))
	for _, e := range payload.Events {
		k := hookKey{e.Channel, e.Name, ""}
		if e.Name == protocol.WebhookClientEvent {
			k.occurrence = e.Data
		}
		rx.events = append(rx.events, k)
	}
	hold := rx.holdAt > 0 && len(rx.events) >= rx.holdAt
	rx.mu.Unlock()
	if hold {
		select {
		case <-rx.release:
		case <-r.Context().Done():
			return
		}
	}
	// A slow receiver: the events count as received (an app would act on
	// them) even if the sender is killed before the answer.
	select {
	case <-time.After(rx.slow):
	case <-r.Context().Done():
		return
	}
	w.WriteHeader(http.StatusOK)
}

func (rx *hookReceiver) received() int {
	rx.mu.Lock()
	defer rx.mu.Unlock()
	return len(rx.events)
}

// inFlight is the client ports of the requests being answered now.
func (rx *hookReceiver) inFlight() []int {
	rx.mu.Lock()
	defer rx.mu.Unlock()
	var out []int
	for addr := range rx.flight {
		if _, p, err := net.SplitHostPort(addr); err == nil {
			if n, err := strconv.Atoi(p); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

func (rx *hookReceiver) missing(expected map[hookKey]bool) []hookKey {
	rx.mu.Lock()
	defer rx.mu.Unlock()
	seen := map[hookKey]bool{}
	for _, k := range rx.events {
		seen[k] = true
	}
	var out []hookKey
	for k := range expected {
		if !seen[k] {
			out = append(out, k)
		}
	}
	return out
}

type hookReport struct {
	requests, invalid, oversized int
	events, distinct, duplicates int
	missing, unexpected          []hookKey
	outOfOrder                   []string
	clientFirst                  int // channels whose first client_event came before their occupied
}

// report counts what arrived against what was expected. Order: on each
// channel, the first arrival of each event must follow the first arrival
// of every event before it (occupied, the client events in turn, vacated);
// a later duplicate is a redelivery, which at-least-once allows. Occupied
// and the client events come from different stores (the counts bucket; the
// connection), so their relative order is reported, not required.
func (rx *hookReceiver) report(expected map[hookKey]bool, batchMax int) hookReport {
	rx.mu.Lock()
	defer rx.mu.Unlock()
	r := hookReport{requests: rx.requests, invalid: rx.invalid, events: len(rx.events)}
	for _, n := range rx.sizes {
		if n < 1 || n > batchMax {
			r.oversized++
		}
	}
	first := map[hookKey]int{}
	for i, k := range rx.events {
		if _, ok := first[k]; !ok {
			first[k] = i
		}
	}
	r.distinct = len(first)
	r.duplicates = len(rx.events) - len(first)
	for k := range expected {
		if _, ok := first[k]; !ok {
			r.missing = append(r.missing, k)
		}
	}
	chans := map[string]bool{}
	for k := range first {
		if !expected[k] {
			r.unexpected = append(r.unexpected, k)
		}
		chans[k.channel] = true
	}
	for ch := range chans {
		at := func(name, occ string) int {
			if i, ok := first[hookKey{ch, name, occ}]; ok {
				return i
			}
			return -1
		}
		occ, vac := at(protocol.WebhookChannelOccupied, ""), at(protocol.WebhookChannelVacated, "")
		chain := []int{}
		for n := 1; ; n++ {
			i := at(protocol.WebhookClientEvent, fmt.Sprintf(`{"n":%d}`, n))
			if i < 0 {
				break
			}
			chain = append(chain, i)
		}
		if len(chain) > 0 && occ > chain[0] {
			r.clientFirst++
		}
		ordered := occ < vac
		for j := range chain {
			if (j > 0 && chain[j-1] > chain[j]) || chain[j] > vac {
				ordered = false
			}
		}
		if !ordered {
			r.outOfOrder = append(r.outOfOrder, fmt.Sprintf("%s: occupied #%d, client events %v, vacated #%d", ch, occ, chain, vac))
		}
	}
	return r
}

// ownerOfConn finds which of procs holds the loopback TCP connection from
// local port `port` to `peer`, through /proc (Linux): the inode of the
// socket in /proc/net/tcp, then the process with a descriptor on it.
func ownerOfConn(port, peer int, procs []*proc) *proc {
	inode := ""
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		f, err := os.Open(table)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			// sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
			fields := strings.Fields(sc.Text())
			if len(fields) < 10 || !strings.HasSuffix(fields[1], fmt.Sprintf(":%04X", port)) || !strings.HasSuffix(fields[2], fmt.Sprintf(":%04X", peer)) {
				continue
			}
			inode = fields[9]
		}
		_ = f.Close()
		if inode != "" {
			break
		}
	}
	if inode == "" || inode == "0" {
		return nil
	}
	want := "socket:[" + inode + "]"
	for _, p := range procs {
		if p.exited() {
			continue
		}
		dir := filepath.Join("/proc", strconv.Itoa(p.cmd.Process.Pid), "fd")
		fds, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			if l, err := os.Readlink(filepath.Join(dir, fd.Name())); err == nil && l == want {
				return p
			}
		}
	}
	return nil
}

// hookStreamMessages is the number of records in RESOUND_WEBHOOKS.
func hookStreamMessages(t *testing.T, monitorURL string) int {
	t.Helper()
	for _, a := range jetStream(t, monitorURL).Accounts {
		for _, s := range a.Streams {
			if s.Name == "RESOUND_WEBHOOKS" {
				return s.State.Messages
			}
		}
	}
	t.Fatal("no RESOUND_WEBHOOKS stream")
	return -1
}
