//go:build linux

package loadgen

import (
	"fmt"
	"reflect"
	"testing"

	"github.com/resoundhq/resound/protocol"
)

func lgEvent(seq int64) []byte {
	return protocol.AppendChannelEvent(nil, "lg", "lg-r-0", fmt.Sprintf(`{"seq":%d,"ts":1}`, seq), "")
}

func TestSequenceAccounting(t *testing.T) {
	p := &poller{st: pollStats{failures: map[string]int64{}}}
	c := &conn{state: stSubscribed}
	var delivered int64
	// 1 2 5 3 3 7 4 6 6 1, then sent = 9: 8 and 9 missing.
	for _, s := range []int64{1, 2, 5, 3, 3, 7, 4, 6, 6, 1} {
		p.onLoad(c, lgEvent(s), &delivered)
	}
	if c.recv != 7 || c.dup != 3 || c.ooo != 3 || c.next != 7 || c.holes != nil || delivered != 7 {
		t.Fatalf("recv %d dup %d ooo %d next %d holes %v delivered %d", c.recv, c.dup, c.ooo, c.next, c.holes, delivered)
	}
	p.settle(c, 9)
	if p.st.expected != 9 || p.st.delivered != 7 || p.st.missing != 2 || p.st.extra != 0 {
		t.Fatalf("settle: %+v", p.st)
	}

	// A hole split in the middle, and events beyond what was acknowledged.
	p = &poller{st: pollStats{failures: map[string]int64{}}}
	c = &conn{state: stSubscribed}
	for _, s := range []int64{1, 10, 5, 12} {
		p.onLoad(c, lgEvent(s), &delivered)
	}
	if want := []span{{2, 4}, {6, 9}, {11, 11}}; !reflect.DeepEqual(c.holes, want) {
		t.Fatalf("holes %v, want %v", c.holes, want)
	}
	p.settle(c, 10) // 12 arrived but was never acknowledged
	if p.st.delivered != 3 || p.st.extra != 1 || p.st.missing != 7 {
		t.Fatalf("settle: %+v", p.st)
	}
	p.onLoad(c, []byte(`{"event":"lg","data":"x"}`), &delivered)
	if p.st.malformed != 1 {
		t.Fatal("malformed not counted")
	}
}

// A connection that is lost and subscribes again: what was sent while it
// was away is its gap, not missing, and everything after is expected.
func TestReconnectAccounting(t *testing.T) {
	newP := func() *poller { return &poller{st: pollStats{failures: map[string]int64{}}} }
	var delivered int64

	p, c := newP(), &conn{state: stSubscribed}
	startEpoch(c, 0)
	for _, s := range []int64{1, 2, 3, 5} { // 4 never comes
		p.onLoad(c, lgEvent(s), &delivered)
	}
	c.state = stWaiting // lost; 6..9 are sent meanwhile
	c.state = stSubscribed
	startEpoch(c, 9)
	// 7 was stored before it was back; 3, which the first subscription
	// had, comes again on the second (sent before it was made: allowed,
	// counted apart); 10 comes twice on the second (a duplicate).
	for _, s := range []int64{7, 10, 3, 11, 13, 12, 10} {
		p.onLoad(c, lgEvent(s), &delivered)
	}
	p.settle(c, 14)
	st := p.st
	if st.gap != 4 || st.gapReceived != 1 || st.expected != 10 || st.delivered != 8 || st.missing != 2 ||
		c.ooo != 1 || c.dup != 1 || c.dupX != 1 || st.subscribersAtEnd != 1 || st.extra != 0 {
		t.Fatalf("back again: %+v ooo %d dup %d dupX %d", st, c.ooo, c.dup, c.dupX)
	}

	// Lost and not back by the end: what followed its last event is gap.
	p, c = newP(), &conn{state: stSubscribed}
	startEpoch(c, 0)
	for _, s := range []int64{1, 2, 3} {
		p.onLoad(c, lgEvent(s), &delivered)
	}
	c.state = stWaiting
	p.settle(c, 10)
	if st := p.st; st.gap != 7 || st.expected != 3 || st.delivered != 3 || st.missing != 0 || st.subscribersAtEnd != 0 {
		t.Fatalf("not back: %+v", st)
	}

	// Subscribed only after five events were sent: those are its gap.
	p, c = newP(), &conn{state: stSubscribed}
	startEpoch(c, 5)
	for _, s := range []int64{6, 7, 9} {
		p.onLoad(c, lgEvent(s), &delivered)
	}
	p.settle(c, 8) // 9 was stored but never acknowledged
	if st := p.st; st.gap != 5 || st.expected != 3 || st.delivered != 2 || st.missing != 1 || st.extra != 1 {
		t.Fatalf("late first subscription: %+v", st)
	}
}

func TestPlanAndFlags(t *testing.T) {
	src, err := ParseSources("127.0.0.2, 127.0.0.254-127.0.1.2,::1")
	if err != nil || len(src) != 7 || src[1].String() != "127.0.0.254" || src[5].String() != "127.0.1.2" || src[6].String() != "::1" {
		t.Fatalf("%v %v", src, err)
	}
	for _, bad := range []string{"127.0.0.5-127.0.0.2", "x", "::1-::2"} {
		if _, err := ParseSources(bad); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
	if i, n, err := ParseShard("2/3"); i != 2 || n != 3 || err != nil {
		t.Fatal(i, n, err)
	}
	for _, bad := range []string{"3/3", "1", "a/b", "-1/2"} {
		if _, _, err := ParseShard(bad); err == nil {
			t.Errorf("accepted shard %q", bad)
		}
	}
	// Shards split connections and channels exactly.
	seen := map[int32]bool{}
	chans := map[int]int{}
	for i := 0; i < 3; i++ {
		c := &Config{Mode: ModeFanout, Conns: 1000, Channels: 7, Shard: i, Shards: 3, Run: "r"}
		pl := makePlan(c)
		for _, s := range pl.conns {
			if seen[s.idx] || int(s.ch) != int(s.idx)%7 || int(s.ch)%3 != i {
				t.Fatalf("conn %+v in shard %d", s, i)
			}
			seen[s.idx] = true
		}
		for _, ch := range pl.channels {
			chans[ch]++
		}
	}
	if len(seen) != 1000 || len(chans) != 7 {
		t.Fatalf("%d conns, %d channels", len(seen), len(chans))
	}
	// Over several WebSocket URLs, a channel's subscribers are on as many
	// different URLs as they can be, even when the URLs divide the
	// channels, and the URLs get equal shares.
	for _, chans := range []int{1, 3, 4, 6} {
		c := &Config{Mode: ModeFanout, Conns: 12, Channels: chans, Shards: 1, Run: "r", WSURLs: []string{"a", "b", "c"}}
		perURL := map[int32]int{}
		urls := map[int32]map[int32]bool{}
		subs := map[int32]int{}
		for _, s := range makePlan(c).conns {
			perURL[s.tgt]++
			if urls[s.ch] == nil {
				urls[s.ch] = map[int32]bool{}
			}
			urls[s.ch][s.tgt] = true
			subs[s.ch]++
		}
		for ch, n := range subs {
			if len(urls[ch]) != min(n, 3) {
				t.Errorf("%d channels: channel %d's %d subscribers are on URLs %v", chans, ch, n, urls[ch])
			}
		}
		if perURL[0] != 4 || perURL[1] != 4 || perURL[2] != 4 {
			t.Errorf("%d channels: connections per URL %v", chans, perURL)
		}
	}
	// -shard-by conns: every shard holds part of each channel; shard 0
	// alone triggers.
	seen = map[int32]bool{}
	for i := 0; i < 3; i++ {
		c := &Config{Mode: ModeFanout, Conns: 10, Channels: 1, Shard: i, Shards: 3, ShardBy: ShardConns, Run: "r"}
		pl := makePlan(c)
		if pl.receiveOnly != (i != 0) || (i == 0) != (len(pl.channels) == 1) {
			t.Fatalf("shard %d: receive only %v, channels %v", i, pl.receiveOnly, pl.channels)
		}
		for _, s := range pl.conns {
			if seen[s.idx] || int(s.idx)%3 != i {
				t.Fatalf("conn %+v in shard %d", s, i)
			}
			seen[s.idx] = true
		}
	}
	if len(seen) != 10 {
		t.Fatalf("%d conns over the conns shards", len(seen))
	}
	c := Config{Mode: ModeIdle, URL: "http://127.0.0.1:1", Key: "k", Conns: 20000, Channels: 2, Run: "r"}
	if err := c.Validate(); err == nil {
		t.Fatal("accepted 20,000 connections in one process")
	}
	c.Shard, c.Shards = 0, 2
	if err := c.Validate(); err != nil {
		t.Fatalf("half of 20,000 refused: %v", err)
	}
}
