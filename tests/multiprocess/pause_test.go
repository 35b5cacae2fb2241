//go:build unix

package multiprocess

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	kvcluster "github.com/resoundhq/resound/internal/cluster"
	"github.com/resoundhq/resound/internal/natsembed/natstest"
	"github.com/resoundhq/resound/pkg/pushertest"
	"github.com/resoundhq/resound/protocol"
)

// The app of the pause test, from an apps file: capped at pauseConns
// connections, with subscription_count events, so that the test can see
// both counts the other gateways sweep.
const (
	pauseID     = "778899"
	pauseKey    = "pause-key"
	pauseSecret = "pause-secret"
	// The pause test's raw clients: member (gateway 2), observer, watcher,
	// counter and late (gateway 1).
	pauseConns = 5
)

// A gateway paused with SIGSTOP for 12 s, four times RESOUND_GATEWAY_TTL,
// and continued. Meanwhile gateway 1 sweeps what it held, as it should:
// its presence member is removed (member_removed), its signed-in user goes
// offline, its connection slot and subscription count are dropped. Once
// continued, the paused gateway re-asserts them: the member is listed
// again and member_added goes out exactly once, the watchlist says
// online exactly once, and the counts are right again. A fan-out over
// both gateways runs through the pause: what was triggered during it
// reaches the paused gateway's clients once it continues (or, had it
// fallen past the history window, they are told to reconnect with 4200
// and come back), exactly once, in order.
func TestGatewayPausedHeals(t *testing.T) {
	sideBySide(t) // see "Running side by side" in procs_test.go
	apps := filepath.Join(t.TempDir(), "apps.json")
	appsJSON := fmt.Sprintf(`{"apps":[{"app_id":%q,"key":%q,"secret":%q,"max_connections":%d,"subscription_count":true}]}`,
		pauseID, pauseKey, pauseSecret, pauseConns)
	if err := os.WriteFile(apps, []byte(appsJSON), 0o600); err != nil {
		t.Fatal(err)
	}
	const gatewayTTL, pause = 3, 12 * time.Second
	env := []string{"RESOUND_GATEWAY_TTL=" + strconv.Itoa(gatewayTTL), "RESOUND_APPS_FILE=" + apps}
	natsURL, _ := startNATS(t)
	c := startCluster(t, clusterSpec{gateways: 2, workers: 1, natsURL: natsURL, workerEnv: env,
		gatewayEnv: func(int) []string { return env }})
	g1, g2 := c.gateways[0], c.gateways[1]
	api := newAPI(g1.addr, pauseID, pauseKey, pauseSecret)
	kv := countsBucket(t, natsURL)
	const room, counted = "presence-room", "counted-room"

	// User 7 is on the gateway that will be paused: a presence member,
	// signed in, and subscribed to a counted channel.
	observer := pushertest.Connect(t, g1.addr, pauseKey)
	joinPresenceApp(t, observer, pauseKey, pauseSecret, room, "1")
	member := pushertest.Connect(t, g2.addr, pauseKey)
	signIn(t, member, pauseKey, pauseSecret, `{"id":"7"}`)
	joinPresenceApp(t, member, pauseKey, pauseSecret, room, "7")
	subscribeCounted(t, member, counted)
	must(t, "before the pause", memberEvent(observer, protocol.EventMemberAdded, room, "7", 10*time.Second))
	watcher := pushertest.Connect(t, g1.addr, pauseKey)
	signIn(t, watcher, pauseKey, pauseSecret, `{"id":"w","watchlist":["7"]}`)
	must(t, "before the pause", watchlistEvent(watcher, "online", "7", 10*time.Second))
	counter := pushertest.Connect(t, g1.addr, pauseKey)
	subscribeCounted(t, counter, counted)
	must(t, "before the pause", usersAre(api, room, 10*time.Second, "1", "7"))
	must(t, "before the pause", countIs(kv, 2, kvcluster.Key("subs", pauseID, counted), 10*time.Second))
	must(t, "before the pause", countIs(kv, 4, kvcluster.Key("conns", pauseID), 10*time.Second))

	// The fan-out (on the environment's app): 10 subscribers a channel, 5
	// on each gateway; 55 events a channel, 17 s at 100/s: 1 s before the
	// pause, 12 s of pause, 4 s after.
	const conns, channels, events = 10 * 31, 31, 55 * 31
	const onG2 = conns / 2
	lg := startLoadgen(t, c, g1, "pause", "-reconnect", "-conns", strconv.Itoa(conns),
		"-channels", strconv.Itoa(channels), "-rate", "100", "-events", strconv.Itoa(events))
	lg.waitSent(t, 100)

	g2.signal(t, syscall.SIGSTOP)
	paused := time.Now()
	// A stopped process ignores SIGTERM: continue it whatever happens, so
	// that its clean-up can stop it (clean-ups run last first).
	t.Cleanup(func() { _ = g2.cmd.Process.Signal(syscall.SIGCONT) })

	// Gateway 1 sweeps gateway 2 within twice the TTL of its last
	// heartbeat.
	sweepBound := pause
	must(t, "during the pause", memberEvent(observer, protocol.EventMemberRemoved, room, "7", sweepBound))
	must(t, "during the pause", watchlistEvent(watcher, "offline", "7", sweepBound))
	must(t, "during the pause", usersAre(api, room, sweepBound, "1"))
	must(t, "during the pause", countIs(kv, 1, kvcluster.Key("subs", pauseID, counted), sweepBound))
	must(t, "during the pause", countIs(kv, 3, kvcluster.Key("conns", pauseID), sweepBound))
	swept := time.Since(paused)
	if left := pause - swept; left > 0 {
		time.Sleep(left) // the rest of the pause: the fault's length
	} else {
		t.Fatalf("the sweep took %v, the whole pause", swept)
	}
	g2.signal(t, syscall.SIGCONT)
	t.Logf("gateway 2 paused for %v; swept %v into it", time.Since(paused).Round(time.Millisecond), swept.Round(time.Millisecond))
	if p := lg.progress(); p.EventsSent >= events {
		t.Fatalf("the load was over (%d events sent) before gateway 2 continued", p.EventsSent)
	}

	// Healed: member 7 is back, announced once; user 7 is online again;
	// gateway 2's subscription and connection count again. Each check is
	// reported on its own, within one bound for all.
	heal := time.Now().Add(20 * time.Second)
	within := func() time.Duration { return max(time.Until(heal), time.Second) }
	check := func(err error) {
		t.Helper()
		if err != nil {
			t.Errorf("after the pause: %v", err)
		}
	}
	check(memberEvent(observer, protocol.EventMemberAdded, room, "7", within()))
	healed := time.Now()
	check(watchlistEvent(watcher, "online", "7", within()))
	check(usersAre(api, room, within(), "1", "7"))
	check(countIs(kv, 2, kvcluster.Key("subs", pauseID, counted), within()))
	late := pushertest.Connect(t, g1.addr, pauseKey)
	check(countIs(kv, pauseConns, kvcluster.Key("conns", pauseID), within()))
	// What clients see of the counts: the next subscriber is the third,
	// and the next connection is one too many.
	late.SendJSON(map[string]any{"event": protocol.EventSubscribe, "data": map[string]any{"channel": counted}})
	if n := readCount(t, late, counted); n != 3 {
		t.Errorf("after the pause: subscription_count %d, want 3 (user 7, the counter and this one)", n)
	}
	over := pushertest.Dial(t, g1.addr, "/app/"+pauseKey+"?protocol=7&client=go&version=test")
	if m, err := over.Read(10 * time.Second); err != nil || m.Event != protocol.EventError || !strings.Contains(m.DataString(), `"code":4004`) {
		t.Errorf("after the pause: connection %d of an app capped at %d got %s (%v), want pusher:error 4004",
			pauseConns+1, pauseConns, m.Raw, err)
	}
	over.Close()

	s := lg.summary(t)
	defer logSummaryOnFailure(t, s)
	expectExact(t, s, conns, events, conns/channels)
	// Either gateway 2 delivered what was triggered during the pause, or
	// (past its history window) told its clients to reconnect.
	for kind, n := range s.Conns.Failures {
		if kind != "pusher_error_4200" && kind != "server_close_4200" {
			t.Errorf("failure %s ×%d", kind, n)
		}
	}
	if s.Conns.Dropped != s.Conns.Reconnects || s.Conns.Dropped > onG2 || s.Conns.Failures["server_close_4200"] != s.Conns.Dropped ||
		len(s.Fanout.RequestFailures) != 0 {
		t.Errorf("dropped %d, reconnects %d, failures %v, request failures %v; want none, or some of gateway 2's %d clients closed with 4200 and back",
			s.Conns.Dropped, s.Conns.Reconnects, s.Conns.Failures, s.Fanout.RequestFailures, onG2)
	}
	t.Logf("fan-out through the pause: %d deliveries of %d expected, missing %d; %d clients told to reconnect, gap %d",
		s.Fanout.Deliveries, s.Fanout.Expected, s.Fanout.Missing, s.Conns.Dropped, s.Fanout.Gap)

	// Exactly once: two TTLs after the heal (a healing gateway says it
	// all twice, a TTL apart; a late sweep comes within a TTL of its
	// heartbeat's return), nothing more has come about member 7 or user
	// 7, and user 7's connection is alive on gateway 2.
	time.Sleep(time.Until(healed.Add(2 * gatewayTTL * time.Second))) // a window for what must not come
	for _, cl := range []*pushertest.Client{observer, watcher} {
		for _, m := range untilPong(t, cl) {
			t.Errorf("after the heal: %s", m.Raw)
		}
	}
	// User 7's own connection never left, so it is never told it did
	// (Pusher sends member_removed once a user's last connection has
	// gone): pusher-js would drop itself from its own member list.
	for _, m := range untilPong(t, member) {
		if m.Event != protocol.EventSubscriptionCount {
			t.Errorf("user 7's own connection got %s", m.Raw)
		}
	}
	check(usersAre(api, room, time.Second, "1", "7"))
}

// countsBucket opens RESOUND_COUNTS, where the gateways keep each app's
// connection slots and each channel's subscriptions, one count per
// gateway (internal/counts).
func countsBucket(t *testing.T, natsURL string) jetstream.KeyValue {
	t.Helper()
	js := natstest.Dial(t, natsURL, nats.Name("multiprocess-test"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, kvcluster.BucketCounts)
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

// countOf reads a count of the counts bucket: its total, and the value.
func countOf(kv jetstream.KeyValue, key string) (int, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	e, err := kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, "(none)", nil
	}
	if err != nil {
		return 0, "", err
	}
	var per map[string]int
	_ = json.Unmarshal(e.Value(), &per)
	n := 0
	for _, v := range per {
		n += v
	}
	return n, string(e.Value()), nil
}

// countIs waits until the count under key adds up to want.
func countIs(kv jetstream.KeyValue, want int, key string, within time.Duration) error {
	var n int
	var val string
	var err error
	if poll(nil, within, key, func() bool {
		n, val, err = countOf(kv, key)
		return err == nil && n == want
	}) != nil {
		return fmt.Errorf("%s adds up to %d (%s, %v) after %v, want %d; the bucket: %s", key, n, val, err, within, want, dumpBucket(kv))
	}
	return nil
}

// dumpBucket returns every key of kv with its value, for diagnostics.
func dumpBucket(kv jetstream.KeyValue) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	keys, err := kv.Keys(ctx)
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for _, k := range keys {
		e, err := kv.Get(ctx, k)
		if err != nil {
			fmt.Fprintf(&b, "%s: %v; ", k, err)
			continue
		}
		fmt.Fprintf(&b, "%s=%s (rev %d, %s); ", k, e.Value(), e.Revision(), e.Operation())
	}
	return b.String()
}

// must fails the test if err is not nil.
func must(t *testing.T, when string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", when, err)
	}
}

func joinPresenceApp(t *testing.T, c *pushertest.Client, key, sec, channel, userID string) {
	t.Helper()
	cd := fmt.Sprintf(`{"user_id":%q,"user_info":{}}`, userID)
	c.SendJSON(map[string]any{"event": protocol.EventSubscribe, "data": map[string]any{
		"channel": channel, "channel_data": cd,
		"auth": key + ":" + protocol.Sign(sec, c.SocketID+":"+channel+":"+cd)}})
	c.Expect(protocol.EventSubscriptionSucceeded)
}

func signIn(t *testing.T, c *pushertest.Client, key, sec, userData string) {
	t.Helper()
	c.SendJSON(map[string]any{"event": "pusher:signin", "data": map[string]any{
		"auth": key + ":" + protocol.Sign(sec, c.SocketID+"::user::"+userData), "user_data": userData}})
	c.Expect(protocol.EventSigninSuccess)
}

// subscribeCounted subscribes c to a channel of an app with
// subscription_count and waits for the success; the count events are
// left to be read (or not) later.
func subscribeCounted(t *testing.T, c *pushertest.Client, channel string) {
	t.Helper()
	c.SendJSON(map[string]any{"event": protocol.EventSubscribe, "data": map[string]any{"channel": channel}})
	_, err := readUntil(c, 10*time.Second, "subscription_succeeded on "+channel, func(m pushertest.Message) (bool, bool) {
		return m.Event == protocol.EventSubscriptionSucceeded && m.Channel == channel, m.Event == protocol.EventSubscriptionCount
	})
	must(t, "subscribing", err)
}

// readCount reads c's messages until subscription_succeeded on channel
// and then the first subscription_count after it, and returns the count.
func readCount(t *testing.T, c *pushertest.Client, channel string) int {
	t.Helper()
	subscribed := false
	m, err := readUntil(c, 10*time.Second, "subscription_count on "+channel, func(m pushertest.Message) (bool, bool) {
		if m.Event == protocol.EventSubscriptionSucceeded && m.Channel == channel {
			subscribed = true
			return false, true
		}
		return subscribed && m.Event == protocol.EventSubscriptionCount && m.Channel == channel, m.Event == protocol.EventSubscriptionCount
	})
	must(t, "counting", err)
	var d struct {
		N int `json:"subscription_count"`
	}
	if err := m.DataObject(&d); err != nil {
		t.Fatalf("subscription_count %s: %v", m.Raw, err)
	}
	return d.N
}

// readUntil reads c's messages until one is wanted and returns it. match
// says whether a message is wanted, or may be skipped; any other is an
// error, as is nothing wanted within the bound. pusher:ping is always
// skipped.
func readUntil(c *pushertest.Client, within time.Duration, what string, match func(pushertest.Message) (want, skip bool)) (pushertest.Message, error) {
	deadline := time.Now().Add(within)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return pushertest.Message{}, fmt.Errorf("no %s within %v", what, within)
		}
		m, err := c.Read(left)
		if err != nil {
			return pushertest.Message{}, fmt.Errorf("no %s within %v: %v", what, within, err)
		}
		want, skip := match(m)
		switch {
		case want:
			return m, nil
		case skip || m.Event == protocol.EventPing:
		default:
			return m, fmt.Errorf("got %s while waiting for %s", m.Raw, what)
		}
	}
}

// memberEvent waits for member_added or member_removed of userID on
// channel, with nothing else in between.
func memberEvent(c *pushertest.Client, event, channel, userID string, within time.Duration) error {
	m, err := readUntil(c, within, event+" of "+userID, func(m pushertest.Message) (bool, bool) { return m.Event == event, false })
	if err != nil {
		return err
	}
	var d struct {
		UserID string `json:"user_id"`
	}
	if err := m.DataObject(&d); err != nil || m.Channel != channel || d.UserID != userID {
		return fmt.Errorf("got %s, want %s of %q on %s", m.Raw, event, userID, channel)
	}
	return nil
}

// watchlistEvent waits for a watchlist event (online, offline) about
// userID, with nothing else in between.
func watchlistEvent(c *pushertest.Client, name, userID string, within time.Duration) error {
	m, err := readUntil(c, within, "watchlist "+name+" of "+userID, func(m pushertest.Message) (bool, bool) {
		return m.Event == protocol.EventWatchlistEvents, false
	})
	if err != nil {
		return err
	}
	var d struct {
		Events []struct {
			Name    string   `json:"name"`
			UserIDs []string `json:"user_ids"`
		} `json:"events"`
	}
	if err := m.DataObject(&d); err != nil || len(d.Events) != 1 || d.Events[0].Name != name || !slices.Equal(d.Events[0].UserIDs, []string{userID}) {
		return fmt.Errorf("got %s, want watchlist %s of %q", m.Raw, name, userID)
	}
	return nil
}

// untilPong pings c and returns what came before the pong.
func untilPong(t *testing.T, c *pushertest.Client) []pushertest.Message {
	t.Helper()
	c.SendJSON(map[string]any{"event": protocol.EventPing, "data": map[string]any{}})
	var before []pushertest.Message
	for {
		m, err := c.Read(10 * time.Second)
		if err != nil {
			t.Fatalf("waiting for pusher:pong: %v", err)
		}
		if m.Event == protocol.EventPong {
			return before
		}
		before = append(before, m)
	}
}

// usersAre waits until GET /channels/{channel}/users lists exactly ids.
func usersAre(api *pushertest.API, channel string, within time.Duration, ids ...string) error {
	var last string
	if poll(nil, within, "users", func() bool {
		r := api.Do(http.MethodGet, "/channels/"+channel+"/users", nil, nil)
		last = fmt.Sprintf("%d %s", r.Status, r.Body)
		var body struct {
			Users []struct {
				ID string `json:"id"`
			} `json:"users"`
		}
		if r.Status != http.StatusOK || json.Unmarshal(r.Body, &body) != nil {
			return false
		}
		var got []string
		for _, u := range body.Users {
			got = append(got, u.ID)
		}
		slices.Sort(got)
		return slices.Equal(got, ids)
	}) != nil {
		return fmt.Errorf("users of %s: %s after %v, want %v", channel, last, within, ids)
	}
	return nil
}
