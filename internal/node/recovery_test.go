package node

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/resoundhq/resound/internal/config"
	"github.com/resoundhq/resound/internal/history"
	"github.com/resoundhq/resound/pkg/pushertest"
	"github.com/resoundhq/resound/protocol"
)

// startRecovering runs an all-in-one node whose app lets clients resume.
func startRecovering(t *testing.T, tweak func(*config.Settings)) (*Node, *pushertest.API) {
	t.Helper()
	s := baseSettings(t)
	s.HistoryTTL, s.HistoryMaxBytes = config.Seconds(time.Minute), 64<<20
	if tweak != nil {
		tweak(&s)
	}
	on := true
	cfg, err := (&config.Config{Settings: s}).WithApp(config.App{ID: appID, Key: appKey, Secret: secret, Recovery: &on})
	if err != nil {
		t.Fatal(err)
	}
	n := startOn(t, cfg, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel))
	return n, &pushertest.API{BaseURL: "http://" + n.Addr().String(), AppID: appID, Key: appKey, Secret: secret}
}

// awaitHistory waits until the history holds at least n deliveries. All-in-one,
// the workers hand deliveries to the gateway first and publish them for the
// history just after: a client resuming within those milliseconds is told to
// refetch (docs/recovery.md), which is not what these tests are about.
func awaitHistory(t *testing.T, n *Node, count uint64) {
	t.Helper()
	nc, err := n.embedded.Connect("test-history")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		if st, err := js.Stream(ctx, history.StreamName); err == nil {
			if info, err := st.Info(ctx); err == nil && info.State.Msgs >= count {
				return
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the history never held %d deliveries", count)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func subscribeFrom(c *pushertest.Client, channel, position string) {
	data := map[string]any{"channel": channel}
	if position != "" {
		data["position"] = position
	}
	c.SendJSON(map[string]any{"event": protocol.EventSubscribe, "data": data})
}

// A client that comes back with the last position it saw gets, after
// subscription_succeeded, every event it missed, in order, once, then
// pusher_internal:resumed, then new events.
func TestResumeReplaysWhatWasMissed(t *testing.T) {
	n, api := startRecovering(t, nil)
	addr := n.Addr().String()
	a := pushertest.Connect(t, addr, appKey)
	a.Subscribe("news")
	for i := 1; i <= 3; i++ {
		mustOK(t, api.Trigger([]string{"news"}, "e", fmt.Sprint(i), ""))
	}
	var last string
	for i := 1; i <= 3; i++ {
		m := a.Expect("e")
		if m.DataString() != fmt.Sprint(i) || m.Position == "" {
			t.Fatalf("event %d: %s", i, m.Raw)
		}
		last = m.Position
	}
	a.Close()
	for i := 4; i <= 7; i++ {
		mustOK(t, api.Trigger([]string{"news"}, "e", fmt.Sprint(i), ""))
	}
	// The client comes back once the history holds what it missed.
	awaitHistory(t, n, 7)
	b := pushertest.Connect(t, addr, appKey)
	subscribeFrom(b, "news", last)
	b.Expect(protocol.EventSubscriptionSucceeded)
	for i := 4; i <= 7; i++ {
		if m := b.Expect("e"); m.DataString() != fmt.Sprint(i) {
			t.Fatalf("replayed %s, want %d", m.Raw, i)
		}
	}
	m := b.Expect(protocol.EventResumed)
	if !strings.Contains(m.DataString(), `"replayed":4`) {
		t.Fatalf("resumed %s", m.Raw)
	}
	mustOK(t, api.Trigger([]string{"news"}, "e", "8", ""))
	if m := b.Expect("e"); m.DataString() != "8" {
		t.Fatalf("after the replay: %s", m.Raw)
	}
	b.ExpectSilence(200 * time.Millisecond)
}

// Resuming from the last event there is replays nothing; a stock
// subscribe (no position) never sees the extension's events.
func TestResumeFromTheLastEventAndStockClients(t *testing.T) {
	n, api := startRecovering(t, nil)
	addr := n.Addr().String()
	a := pushertest.Connect(t, addr, appKey)
	a.Subscribe("news")
	mustOK(t, api.Trigger([]string{"news"}, "e", "1", ""))
	last := a.Expect("e").Position
	awaitHistory(t, n, 1)
	b := pushertest.Connect(t, addr, appKey)
	subscribeFrom(b, "news", last)
	b.Expect(protocol.EventSubscriptionSucceeded)
	if m := b.Expect(protocol.EventResumed); !strings.Contains(m.DataString(), `"replayed":0`) {
		t.Fatalf("resumed %s", m.Raw)
	}
	stock := pushertest.Connect(t, addr, appKey)
	stock.Subscribe("news")
	mustOK(t, api.Trigger([]string{"news"}, "e", "2", ""))
	b.Expect("e")
	stock.Expect("e")
	stock.ExpectSilence(200 * time.Millisecond)
}

// A position the history no longer holds (or never held) gets
// pusher_internal:resume_failed: the client must refetch. On a cache
// channel the cached event follows as for any subscriber.
func TestResumeFailsPastTheWindow(t *testing.T) {
	n, api := startRecovering(t, func(s *config.Settings) { s.HistoryMaxBytes = 1 << 20 })
	addr := n.Addr().String()
	a := pushertest.Connect(t, addr, appKey)
	a.Subscribe("cache-news")
	a.Expect("pusher:cache_miss")
	mustOK(t, api.Trigger([]string{"cache-news"}, "e", "first", ""))
	first := a.Expect("e").Position
	// Push the first event out of the history: 1 MiB of bigger events.
	big := strings.Repeat("x", 9000)
	for i := 0; i < 130; i++ {
		mustOK(t, api.Trigger([]string{"filler"}, "f", big, ""))
	}
	mustOK(t, api.Trigger([]string{"cache-news"}, "e", "latest", ""))
	// The worker writes the cache after the API's 200: wait for it, as a
	// client subscribing now must get "latest".
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(string(api.Do(http.MethodGet, "/channels/cache-news", nil, url.Values{"info": {"cache"}}).Body), "latest") {
		if time.Now().After(deadline) {
			t.Fatal("the cache never held the latest event")
		}
		time.Sleep(10 * time.Millisecond)
	}
	b := pushertest.Connect(t, addr, appKey)
	subscribeFrom(b, "cache-news", first)
	b.Expect(protocol.EventSubscriptionSucceeded)
	if m := b.Expect("e"); m.DataString() != "latest" {
		t.Fatalf("cached event %s", m.Raw)
	}
	if m := b.Expect(protocol.EventResumeFailed); !strings.Contains(m.DataString(), "expired") {
		t.Fatalf("resume_failed %s", m.Raw)
	}
	c := pushertest.Connect(t, addr, appKey)
	subscribeFrom(c, "news", "12.34")
	c.Expect(protocol.EventSubscriptionSucceeded)
	c.Expect(protocol.EventResumeFailed)
	d := pushertest.Connect(t, addr, appKey)
	subscribeFrom(d, "news", "not a position")
	d.Expect(protocol.EventSubscriptionSucceeded)
	d.Expect(protocol.EventResumeFailed)
}
