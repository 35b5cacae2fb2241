package loadgen

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// progressWatch reads a run's JSON log lines and keeps the last progress
// line's counts: how a harness follows a load generator.
type progressWatch struct {
	mu   sync.Mutex
	last map[string]any
}

func (w *progressWatch) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil && m["message"] == "progress" {
			w.mu.Lock()
			w.last = m
			w.mu.Unlock()
		}
	}
}

func (w *progressWatch) get(key string) int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	v, _ := w.last[key].(float64)
	return int64(v)
}

func (w *progressWatch) await(t *testing.T, key string, want int64) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for w.get(key) < want {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d, want %d", key, w.get(key), want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A run driven the way bench/million drives one: every connection on its
// own channel (every second one a presence channel) and on the all
// channel; the fan-out starts on "send"; a phase; broadcasts on the all
// channel from outside; "stop". Every event reaches every connection
// exactly once, on both channels.
func TestHarnessDriven(t *testing.T) {
	url := startNode(t)
	const conns, channels, broadcasts = 60, 6, 3
	ctlR, ctlW := io.Pipe()
	logR, logW := io.Pipe()
	w := &progressWatch{}
	go w.read(logR)
	cfg := Config{Mode: ModeFanout, URL: url, AppID: itAppID, Key: itKey, Secret: itSecret, Run: "harness",
		Conns: conns, Channels: channels, PresenceEvery: 2, All: true, Control: ctlR, Rate: 200,
		Duration: time.Minute, ProgressInterval: 20 * time.Millisecond}
	var s *Summary
	var err error
	done := make(chan struct{})
	go func() {
		defer close(done)
		s, err = Run(context.Background(), cfg, zerolog.New(logW).Level(zerolog.InfoLevel))
		_ = logW.Close()
	}()
	command := func(c string) {
		if _, err := fmt.Fprintln(ctlW, c); err != nil {
			t.Fatal(err)
		}
	}

	w.await(t, "subscribed", conns)
	time.Sleep(200 * time.Millisecond)
	if n := w.get("deliveries"); n != 0 {
		t.Fatalf("%d deliveries before send", n)
	}
	command("send")
	w.await(t, "deliveries", 100)
	command("phase broadcast")
	b, err := NewBroadcaster(url, itAppID, itKey, itSecret, AllChannel("harness"))
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= broadcasts; i++ {
		if seq, err := b.Send(context.Background()); err != nil || seq != int64(i) {
			t.Fatalf("broadcast %d: %d, %v", i, seq, err)
		}
	}
	w.await(t, "all_deliveries", conns*broadcasts)
	command("stop")
	<-done
	if err != nil {
		t.Fatalf("run: %v", err)
	}

	f, a := s.Fanout, s.All
	if s.Conns.Subscribed != conns || s.Conns.Failed != 0 || len(s.Conns.Failures) != 0 || f.Missing != 0 || f.Duplicates != 0 ||
		f.Deliveries != f.EventsSent*conns/channels || f.Deliveries == 0 {
		t.Fatalf("conns %+v fanout %+v", s.Conns, *f)
	}
	if a == nil || a.Channel != "lg-harness-all" || a.Subscribed != conns || a.Deliveries != conns*broadcasts || a.Duplicates != 0 ||
		a.Unexpected != 0 || len(a.Events) != broadcasts || s.AllLatencyMs == nil || s.AllLatencyMs.Count != conns*broadcasts {
		t.Fatalf("all %+v latency %+v", a, s.AllLatencyMs)
	}
	for _, e := range a.Events {
		if e.Deliveries != conns || e.LastLatencyMs <= 0 || e.LastRecvMs < e.FirstRecvMs {
			t.Fatalf("event %+v", e)
		}
	}
	if p, ok := s.PhaseLatencyMs["broadcast"]; !ok || p.Count == 0 || p.Count > s.LatencyMs.Count {
		t.Fatalf("phases %+v (all %+v)", s.PhaseLatencyMs, s.LatencyMs)
	}

	// A merge of two such summaries adds them up.
	m, err := Merge([]*Summary{s, s})
	if err != nil || m.All.Deliveries != 2*a.Deliveries || m.All.Events[0].Deliveries != 2*conns ||
		m.PhaseLatencyMs["broadcast"].Count != 2*s.PhaseLatencyMs["broadcast"].Count {
		t.Fatalf("merged: %v %+v", err, m.All)
	}
}

// The clients of a server that went away spread evenly over the others on
// their first reconnection attempt, and a client whose attempts keep
// failing tries every other server in turn.
func TestRedialSpreads(t *testing.T) {
	const n, channels, conns = 10, 1000, 100000
	landed := map[int32]int{}
	for k := 0; k < conns; k++ {
		if tgt := wsTarget(k, channels, n); tgt == 3 {
			landed[nextTarget(&conn{idx: int32(k), tgt: tgt}, n)]++
		}
	}
	if len(landed) != n-1 || landed[3] != 0 {
		t.Fatalf("landed on %v", landed)
	}
	lo, hi := conns, 0
	for _, v := range landed {
		lo, hi = min(lo, v), max(hi, v)
	}
	if hi-lo > hi/10 {
		t.Fatalf("uneven: %v", landed)
	}
	// Retries: every target in turn.
	c := &conn{idx: 7, tgt: 3, retries: 1}
	seen := map[int32]bool{}
	for range n {
		c.tgt = nextTarget(c, n)
		seen[c.tgt] = true
	}
	if len(seen) != n {
		t.Fatalf("retries visit %v", seen)
	}
	// Two targets: the other one.
	if got := nextTarget(&conn{idx: 5, tgt: 1}, 2); got != 0 {
		t.Fatalf("of two: %d", got)
	}
}

func TestMessageFields(t *testing.T) {
	m := []byte(`{"event":"lg","channel":"lg-r-all","data":"{\"seq\":1,\"ts\":2,\"channel\":\"x\"}"}`)
	if !onChannel(m, "lg-r-all") || onChannel(m, "lg-r-al") || onChannel(m, "lg-r-all2") {
		t.Fatal("onChannel")
	}
	if onChannel([]byte(`{"event":"lg","data":"{\"channel\":\"lg-r-all\"}"}`), "lg-r-all") {
		t.Fatal("onChannel read a key inside the data")
	}
	for _, est := range []string{
		`{"event":"pusher:connection_established","data":"{\"socket_id\":\"1234.5678\",\"activity_timeout\":30}"}`,
		`{"event":"pusher:connection_established","data":{"socket_id": "1234.5678"}}`,
	} {
		if id := socketIDOf([]byte(est)); id != "1234.5678" {
			t.Fatalf("socket id %q of %s", id, est)
		}
	}
	if socketIDOf([]byte(`{"event":"x"}`)) != "" {
		t.Fatal("socket id of nothing")
	}
	// Every n-th channel of each shard is a presence channel.
	cfg := Config{Mode: ModeIdle, Key: "k", Secret: "s", Run: "r", Conns: 40, Channels: 40, PresenceEvery: 5, Shard: 1, Shards: 4, All: true}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	pl := makePlan(&cfg)
	var presence []int
	for _, ch := range pl.channels {
		if pl.names[ch] == fmt.Sprintf("presence-lg-r-%d", ch) {
			presence = append(presence, ch)
		}
	}
	if len(pl.channels) != 10 || fmt.Sprint(presence) != "[1 21]" {
		t.Fatalf("channels %v, presence %v", pl.channels, presence)
	}
	for _, bad := range []Config{
		{Mode: ModeChurn, Key: "k", Run: "r", Channels: 1, Rate: 1, Duration: time.Second, All: true},
		{Mode: ModeIdle, Key: "k", Run: "r", Conns: 1, Channels: 1, PresenceEvery: 2},
		{Mode: ModeFanout, Key: "k", AppID: "1", Secret: "s", Run: "r", Conns: 2, Channels: 1, Events: 1, All: true, ShardBy: ShardConns},
	} {
		if err := bad.Validate(); err == nil {
			t.Errorf("accepted %+v", bad)
		}
	}
}
