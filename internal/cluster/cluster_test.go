package cluster_test

import (
	"context"
	"encoding/json"
	"errors"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/resoundhq/resound/internal/cluster"
	"github.com/resoundhq/resound/internal/natsembed"
	"github.com/resoundhq/resound/internal/natsembed/natstest"
)

// startJetStream runs a real embedded NATS JetStream server with its own
// file store and returns a connection and its JetStream context.
func startJetStream(t *testing.T) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	return natstest.JetStream(t, "cluster-test")
}

func ensure(t *testing.T, js jetstream.JetStream, opts cluster.Options) *cluster.Stores {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := cluster.Ensure(ctx, js, opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

var tokenChars = regexp.MustCompile(`^[-_=a-zA-Z0-9]+$`)

var awkwardNames = []string{
	"", "plain", "presence-room", "private-chat.1", "a.b.c", ".", "..", "=", "==", "=3D",
	"#server-to-user-42", "a;b", "user@example.com", "a,b", "x=y", "é", "日本語", "emoji-😀",
	"with space", "tab\tnewline\n", "slash/back\\slash", "*", ">", "\x00\xff", "-_", "UPPER-lower_09",
}

func TestTokenRoundTrip(t *testing.T) {
	seen := map[string]string{}
	for _, name := range awkwardNames {
		tok := cluster.Token(name)
		if !tokenChars.MatchString(tok) {
			t.Errorf("Token(%q) = %q: characters outside [-_=a-zA-Z0-9] (a '.' would split the key)", name, tok)
		}
		if strings.Contains(tok, ".") {
			t.Errorf("Token(%q) = %q contains '.'", name, tok)
		}
		back, err := cluster.ParseToken(tok)
		if err != nil || back != name {
			t.Errorf("ParseToken(Token(%q)) = %q, %v", name, back, err)
		}
		if prev, dup := seen[tok]; dup {
			t.Errorf("Token(%q) and Token(%q) collide: %q", prev, name, tok)
		}
		seen[tok] = name
	}
}

func TestKeySplitsIntoTokens(t *testing.T) {
	keyChars := regexp.MustCompile(`^[-_=.a-zA-Z0-9]+$`)
	for _, a := range awkwardNames {
		for _, b := range []string{"", "presence-x.y", "日本", "#server-to-user-1"} {
			k := cluster.Key(a, b)
			if !keyChars.MatchString(k) {
				t.Fatalf("Key(%q, %q) = %q has characters outside [-_=.a-zA-Z0-9]", a, b, k)
			}
			parts := strings.Split(k, ".")
			if len(parts) != 2 {
				t.Fatalf("Key(%q, %q) = %q splits into %d parts", a, b, k, len(parts))
			}
			ga, err1 := cluster.ParseToken(parts[0])
			gb, err2 := cluster.ParseToken(parts[1])
			if err1 != nil || err2 != nil || ga != a || gb != b {
				t.Fatalf("Key(%q, %q) = %q parses back as %q, %q (%v, %v)", a, b, k, ga, gb, err1, err2)
			}
		}
	}
	if k := cluster.Key("subs", "1", "c"); k != "subs.1.c" {
		t.Fatalf("Key of three plain parts = %q", k)
	}
}

func TestParseTokenRejectsBadEscapes(t *testing.T) {
	for _, bad := range []string{"a=", "a=4", "=4", "=zz", "=4g", "=4a"} {
		if got, err := cluster.ParseToken(bad); err == nil {
			t.Errorf("ParseToken(%q) = %q, want an error", bad, got)
		}
	}
}

// TestKeysAreAcceptedByJetStream stores every awkward name as a key of a
// real bucket and lists them back.
func TestKeysAreAcceptedByJetStream(t *testing.T) {
	_, js := startJetStream(t)
	s := ensure(t, js, cluster.Options{})
	ctx := testCtx(t)
	for _, name := range awkwardNames {
		if _, err := s.Presence.Put(ctx, cluster.Key("app", name), []byte(name)); err != nil {
			t.Fatalf("put %q as %q: %v", name, cluster.Key("app", name), err)
		}
	}
	for _, name := range awkwardNames {
		e, err := s.Presence.Get(ctx, cluster.Key("app", name))
		if err != nil || string(e.Value()) != name {
			t.Fatalf("get %q: %v", name, err)
		}
	}
}

// Processes started together on a fresh NATS all create the buckets at
// once, some with other settings (workers and gateways with different
// TTLs, or a rolling change); none of them may fail for it.
func TestEnsureConcurrently(t *testing.T) {
	srv := natstest.Server(t, false)
	const procs = 6
	errs := make([]error, procs)
	var wg sync.WaitGroup
	for i := range procs {
		js, err := jetstream.New(natstest.Conn(t, srv, "proc-"+strconv.Itoa(i)))
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = cluster.Ensure(testCtx(t), js, cluster.Options{GatewayTTL: time.Duration(2+i%2) * time.Second})
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
}

func TestEnsureTwiceIsHarmless(t *testing.T) {
	_, js := startJetStream(t)
	ctx := testCtx(t)
	s1 := ensure(t, js, cluster.Options{GatewayTTL: 3 * time.Second})
	if _, err := s1.Presence.Put(ctx, "kept", []byte("v")); err != nil {
		t.Fatal(err)
	}
	s2 := ensure(t, js, cluster.Options{GatewayTTL: 3 * time.Second})
	e, err := s2.Presence.Get(ctx, "kept")
	if err != nil || string(e.Value()) != "v" {
		t.Fatalf("a second Ensure lost data: %v", err)
	}
	for _, name := range []string{cluster.BucketGateways, cluster.BucketPresence, cluster.BucketUsers, cluster.BucketCounts, cluster.BucketCache} {
		kv, err := js.KeyValue(ctx, name)
		if err != nil {
			t.Fatalf("bucket %s: %v", name, err)
		}
		st, err := kv.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.History() != 1 {
			t.Errorf("bucket %s keeps %d revisions, want 1", name, st.History())
		}
		if name == cluster.BucketGateways && st.TTL() != 3*time.Second {
			t.Errorf("gateways TTL %v, want 3s", st.TTL())
		}
	}
	if s2.CacheTTL() != 30*time.Minute {
		t.Errorf("default cache TTL %v", s2.CacheTTL())
	}
}

func TestMutate(t *testing.T) {
	_, js := startJetStream(t)
	s := ensure(t, js, cluster.Options{})
	kv, ctx := s.Counts, testCtx(t)

	// Absent: f sees nil; a value creates the key.
	var sawOld []byte
	sawCalled := false
	if err := cluster.Mutate(ctx, kv, "k", func(old []byte) ([]byte, error) {
		sawOld, sawCalled = old, true
		return []byte("1"), nil
	}); err != nil {
		t.Fatal(err)
	}
	if !sawCalled || sawOld != nil {
		t.Fatalf("f on an absent key saw %q (called %v), want nil", sawOld, sawCalled)
	}
	e, err := kv.Get(ctx, "k")
	if err != nil || string(e.Value()) != "1" {
		t.Fatalf("after create: %v", err)
	}
	rev := e.Revision()

	// Update.
	if err := cluster.Mutate(ctx, kv, "k", func(old []byte) ([]byte, error) {
		if string(old) != "1" {
			return nil, errors.New("unexpected old " + string(old))
		}
		return []byte("2"), nil
	}); err != nil {
		t.Fatal(err)
	}
	e, err = kv.Get(ctx, "k")
	if err != nil || string(e.Value()) != "2" || e.Revision() <= rev {
		t.Fatalf("after update: %v", err)
	}
	rev = e.Revision()

	// Unchanged: returning old writes nothing.
	if err := cluster.Mutate(ctx, kv, "k", func(old []byte) ([]byte, error) { return old, nil }); err != nil {
		t.Fatal(err)
	}
	e, err = kv.Get(ctx, "k")
	if err != nil || e.Revision() != rev || string(e.Value()) != "2" {
		t.Fatalf("returning old wrote a new revision: rev %d -> %d (%v)", rev, e.Revision(), err)
	}

	// f's error is returned, and nothing is written.
	boom := errors.New("boom")
	if err := cluster.Mutate(ctx, kv, "k", func([]byte) ([]byte, error) { return []byte("3"), boom }); !errors.Is(err, boom) {
		t.Fatalf("Mutate returned %v, want f's error", err)
	}
	if e, _ = kv.Get(ctx, "k"); e.Revision() != rev {
		t.Fatal("a failing f wrote")
	}

	// nil deletes.
	if err := cluster.Mutate(ctx, kv, "k", func([]byte) ([]byte, error) { return nil, nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Get(ctx, "k"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("after delete: %v, want ErrKeyNotFound", err)
	}
	// Deleting an absent key is a no-op.
	if err := cluster.Mutate(ctx, kv, "k", func(old []byte) ([]byte, error) {
		if old != nil {
			return nil, errors.New("deleted key still has a value")
		}
		return nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	// And a deleted key can be created again.
	if err := cluster.Mutate(ctx, kv, "k", func([]byte) ([]byte, error) { return []byte("again"), nil }); err != nil {
		t.Fatalf("re-creating a deleted key: %v", err)
	}
	if e, err = kv.Get(ctx, "k"); err != nil || string(e.Value()) != "again" {
		t.Fatalf("after re-create: %v", err)
	}
}

func TestMutateRev(t *testing.T) {
	_, js := startJetStream(t)
	kv, ctx := ensure(t, js, cluster.Options{}).Counts, testCtx(t)
	set := func(v string) func([]byte) ([]byte, error) {
		return func([]byte) ([]byte, error) {
			if v == "" {
				return nil, nil
			}
			return []byte(v), nil
		}
	}
	rev1, err := cluster.MutateRev(ctx, kv, "k", set("a"))
	if err != nil || rev1 == 0 {
		t.Fatalf("create: rev %d, %v", rev1, err)
	}
	rev2, err := cluster.MutateRev(ctx, kv, "k", set("b"))
	if e, _ := kv.Get(ctx, "k"); err != nil || rev2 <= rev1 || e.Revision() != rev2 {
		t.Fatalf("update: rev %d after %d, %v", rev2, rev1, err)
	}
	same, err := cluster.MutateRev(ctx, kv, "k", func(old []byte) ([]byte, error) { return old, nil })
	if err != nil || same != rev2 {
		t.Fatalf("unchanged: rev %d, want %d (%v)", same, rev2, err)
	}
	if del, err := cluster.MutateRev(ctx, kv, "k", set("")); err != nil || del != 0 {
		t.Fatalf("delete: rev %d, %v", del, err)
	}
	if none, err := cluster.MutateRev(ctx, kv, "absent", set("")); err != nil || none != 0 {
		t.Fatalf("nothing to delete: rev %d, %v", none, err)
	}
	boom := errors.New("boom")
	if r, err := cluster.MutateRev(ctx, kv, "k", func([]byte) ([]byte, error) { return nil, boom }); !errors.Is(err, boom) || r != 0 {
		t.Fatalf("f's error: rev %d, %v", r, err)
	}
}

// TestMutateUnderContention runs 20 goroutines, each with its own NATS
// connection, incrementing one counter: the compare-and-set must lose no
// increment.
func TestMutateUnderContention(t *testing.T) {
	srv := natstest.Server(t, false)
	ctx := testCtx(t)
	const n = 20
	kvs := make([]jetstream.KeyValue, n)
	for i := range kvs {
		js, _ := jetstream.New(natstest.Conn(t, srv, "contender-"+strconv.Itoa(i)))
		kvs[i] = ensure(t, js, cluster.Options{}).Counts
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	start := make(chan struct{})
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(kv jetstream.KeyValue) {
			defer wg.Done()
			<-start
			errs <- cluster.Mutate(ctx, kv, "counter", func(old []byte) ([]byte, error) {
				v := 0
				if old != nil {
					var err error
					if v, err = strconv.Atoi(string(old)); err != nil {
						return nil, err
					}
				}
				return []byte(strconv.Itoa(v + 1)), nil
			})
		}(kvs[i])
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("Mutate: %v", err)
		}
	}
	e, err := kvs[0].Get(ctx, "counter")
	if err != nil {
		t.Fatal(err)
	}
	if string(e.Value()) != strconv.Itoa(n) {
		t.Fatalf("counter = %s after %d concurrent increments", e.Value(), n)
	}
}

// goneCalls records the registry's onGone calls.
type goneCalls struct {
	mu    sync.Mutex
	calls []map[string]bool
	ch    chan struct{}
}

func newGoneCalls() *goneCalls { return &goneCalls{ch: make(chan struct{}, 100)} }

func (g *goneCalls) onGone(_ context.Context, live map[string]bool) {
	cp := make(map[string]bool, len(live))
	for k, v := range live {
		cp[k] = v
	}
	g.mu.Lock()
	g.calls = append(g.calls, cp)
	g.mu.Unlock()
	select {
	case g.ch <- struct{}{}:
	default:
	}
}

// waitFor waits (bounded) for an onGone call whose live set satisfies ok.
func (g *goneCalls) waitFor(t *testing.T, within time.Duration, what string, ok func(live map[string]bool) bool) map[string]bool {
	t.Helper()
	deadline := time.After(within)
	checked := 0
	for {
		g.mu.Lock()
		calls := g.calls
		g.mu.Unlock()
		for ; checked < len(calls); checked++ {
			if ok(calls[checked]) {
				return calls[checked]
			}
		}
		select {
		case <-g.ch:
		case <-deadline:
			t.Fatalf("no onGone call %s within %v; calls: %v", what, within, calls)
		}
	}
}

func runRegistry(t *testing.T, r *cluster.Registry) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return stop
}

func waitLive(t *testing.T, r *cluster.Registry, within time.Duration, what string, ok func(map[string]bool) bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		live, err := r.Live(context.Background())
		if err == nil && ok(live) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("registry never saw %s: %v %v", what, live, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestRegistryLiveIncludesItself(t *testing.T) {
	_, js := startJetStream(t)
	s := ensure(t, js, cluster.Options{GatewayTTL: 3 * time.Second})
	r := cluster.NewRegistry(s, "gw-self", zerolog.Nop(), nil)
	if r.ID() != "gw-self" {
		t.Fatalf("ID %q", r.ID())
	}
	// Before it ever heartbeats.
	live, err := r.Live(testCtx(t))
	if err != nil || !live["gw-self"] || len(live) != 1 {
		t.Fatalf("Live before Run = %v, %v", live, err)
	}
	if a, b := cluster.NewGatewayID(), cluster.NewGatewayID(); a == b || a == "" {
		t.Fatalf("gateway ids %q %q", a, b)
	}
}

func TestRegistryDeletesItsKeyWhenStopped(t *testing.T) {
	_, js := startJetStream(t)
	s := ensure(t, js, cluster.Options{GatewayTTL: 3 * time.Second})
	ctx := testCtx(t)
	r := cluster.NewRegistry(s, "gw-1", zerolog.Nop(), nil)
	stop := runRegistry(t, r)
	other := cluster.NewRegistry(s, "observer", zerolog.Nop(), nil)
	waitLive(t, other, 10*time.Second, "gw-1's heartbeat", func(l map[string]bool) bool { return l["gw-1"] })
	if e, err := s.Gateways.Get(ctx, "gw-1"); err != nil || len(e.Value()) == 0 {
		t.Fatalf("heartbeat key: %v", err)
	}
	stop()
	// Run returned: the key is gone now, not after the TTL.
	if _, err := s.Gateways.Get(ctx, "gw-1"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("after Run returned, Get = %v, want ErrKeyNotFound", err)
	}
	live, err := other.Live(ctx)
	if err != nil || live["gw-1"] {
		t.Fatalf("Live after stop = %v, %v", live, err)
	}
}

func TestRegistryCallsOnGoneAtStartAndWhenAGatewayIsDeleted(t *testing.T) {
	_, js := startJetStream(t)
	s := ensure(t, js, cluster.Options{GatewayTTL: 3 * time.Second})
	ctx := testCtx(t)
	// A fake gateway, alive before the registry starts.
	if _, err := s.Gateways.Put(ctx, "fake", []byte("now")); err != nil {
		t.Fatal(err)
	}
	g := newGoneCalls()
	r := cluster.NewRegistry(s, "gw-real", zerolog.Nop(), g.onGone)
	runRegistry(t, r)
	// The start-up call lists both.
	g.waitFor(t, 10*time.Second, "at start-up listing fake and gw-real", func(l map[string]bool) bool {
		return l["fake"] && l["gw-real"]
	})
	if err := s.Gateways.Delete(ctx, "fake"); err != nil {
		t.Fatal(err)
	}
	live := g.waitFor(t, 15*time.Second, "after fake's key was deleted", func(l map[string]bool) bool { return !l["fake"] })
	if !live["gw-real"] {
		t.Fatalf("onGone's live set lacks the registry itself: %v", live)
	}
}

// Sixty gateways heartbeating at once, as a run of that many does: every
// listing has every one of them. The bucket's key listing alone lacked
// some in about a quarter of the listings (a key rewritten while the
// listing read it), and a gateway missing from one looks gone: the
// others' sweep then removed all its presence members.
func TestLiveListsEveryGatewayWhileAllHeartbeat(t *testing.T) {
	_, js := startJetStream(t)
	s := ensure(t, js, cluster.Options{GatewayTTL: 15 * time.Second})
	ctx := testCtx(t)
	const n = 60
	ids := make([]string, n)
	for i := range ids {
		ids[i] = "gw-" + strconv.Itoa(i)
		if _, err := s.Gateways.Put(ctx, ids[i], []byte("now")); err != nil {
			t.Fatal(err)
		}
	}
	// A gateway that said goodbye: its key's marker is still in the stream.
	if _, err := s.Gateways.Put(ctx, "gone", []byte("now")); err != nil {
		t.Fatal(err)
	}
	if err := s.Gateways.Delete(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				case <-time.After(time.Millisecond):
				}
				_, _ = s.Gateways.Put(ctx, id, []byte("now"))
			}
		}()
	}
	defer func() { close(stop); wg.Wait() }()
	r := cluster.NewRegistry(s, "observer", zerolog.Nop(), nil)
	for i := range 100 {
		live, err := r.Live(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if i%2 == 1 {
			live, err = s.LiveGateways(ctx)
			if err != nil {
				t.Fatal(err)
			}
			live["observer"] = true
		}
		if len(live) != n+1 || live["gone"] {
			var missing []string
			for _, id := range ids {
				if !live[id] {
					missing = append(missing, id)
				}
			}
			t.Fatalf("listing %d: %d live, missing %v, gone listed: %v", i, len(live), missing, live["gone"])
		}
	}
}

func TestRegistryCallsOnGoneWhenAHeartbeatExpires(t *testing.T) {
	_, js := startJetStream(t)
	s := ensure(t, js, cluster.Options{GatewayTTL: 3 * time.Second})
	ctx := testCtx(t)
	if _, err := s.Gateways.Put(ctx, "fake", []byte("now")); err != nil {
		t.Fatal(err)
	}
	g := newGoneCalls()
	r := cluster.NewRegistry(s, "gw-real", zerolog.Nop(), g.onGone)
	runRegistry(t, r)
	g.waitFor(t, 10*time.Second, "at start-up listing fake", func(l map[string]bool) bool { return l["fake"] })
	// fake never heartbeats again: its key expires after the TTL, while
	// gw-real's own heartbeat keeps it alive.
	live := g.waitFor(t, 30*time.Second, "after fake's heartbeat expired", func(l map[string]bool) bool { return !l["fake"] })
	if !live["gw-real"] {
		t.Fatalf("live set %v lacks gw-real", live)
	}
	if got, err := r.Live(ctx); err != nil || !got["gw-real"] || got["fake"] {
		t.Fatalf("Live = %v, %v", got, err)
	}
	// gw-real's key itself never expired (it heartbeats every TTL/3).
	if _, err := s.Gateways.Get(ctx, "gw-real"); err != nil {
		t.Fatalf("gw-real's own key: %v", err)
	}
}

func TestRegistrySeesAnotherRegistryStop(t *testing.T) {
	_, js := startJetStream(t)
	s := ensure(t, js, cluster.Options{GatewayTTL: 3 * time.Second})
	g := newGoneCalls()
	first := cluster.NewRegistry(s, "gw-first", zerolog.Nop(), nil)
	stopFirst := runRegistry(t, first)
	second := cluster.NewRegistry(s, "gw-second", zerolog.Nop(), g.onGone)
	waitLive(t, second, 10*time.Second, "gw-first", func(l map[string]bool) bool { return l["gw-first"] })
	runRegistry(t, second)
	g.waitFor(t, 10*time.Second, "at start-up listing gw-first", func(l map[string]bool) bool { return l["gw-first"] && l["gw-second"] })
	stopFirst()
	live := g.waitFor(t, 15*time.Second, "after gw-first stopped", func(l map[string]bool) bool { return !l["gw-first"] })
	if !live["gw-second"] {
		t.Fatalf("live %v", live)
	}
}

// responder answers queries as a fake gateway would.
func responder(t *testing.T, nc *nats.Conn, reply cluster.QueryReply, delay time.Duration, got chan<- cluster.QueryRequest) {
	t.Helper()
	sub, err := nc.Subscribe(cluster.QuerySubject, func(m *nats.Msg) {
		var req cluster.QueryRequest
		if err := json.Unmarshal(m.Data, &req); err != nil {
			return
		}
		if got != nil {
			select {
			case got <- req:
			default:
			}
		}
		if delay > 0 {
			time.Sleep(delay)
		}
		b, _ := json.Marshal(reply)
		_ = m.Respond(b)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

func liveOf(ids ...string) func(context.Context) (map[string]bool, error) {
	return func(context.Context) (map[string]bool, error) {
		m := map[string]bool{}
		for _, id := range ids {
			m[id] = true
		}
		return m, nil
	}
}

// startQueryServer runs a server for querier tests; each fake gateway
// answers on its own connection to it.
func startQueryServer(t *testing.T) *natsembed.Server {
	t.Helper()
	return natstest.Server(t, false)
}

func conn(t *testing.T, srv *natsembed.Server, name string) *nats.Conn {
	t.Helper()
	return natstest.Conn(t, srv, name)
}

func TestQuerierSumsTheLiveGateways(t *testing.T) {
	srv := startQueryServer(t)
	reqs := make(chan cluster.QueryRequest, 4)
	responder(t, conn(t, srv, "gw-a"), cluster.QueryReply{Gateway: "gw-a", Channels: map[string]int{"orders": 2, "news": 1}, Connections: 3}, 0, reqs)
	// gw-b answers late, but well within the timeout: it must be waited for.
	responder(t, conn(t, srv, "gw-b"), cluster.QueryReply{Gateway: "gw-b", Channels: map[string]int{"orders": 1, "other": 4}, Connections: 5}, 300*time.Millisecond, reqs)
	q := cluster.NewQuerier(conn(t, srv, "api"), liveOf("gw-a", "gw-b"), 20*time.Second)
	want := cluster.QueryRequest{App: "app-1", Prefix: "presence-", ConnectionsOnly: true}
	res, err := q.Query(testCtx(t), want)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Complete {
		t.Fatalf("Complete = false with every live gateway answering: %+v", res)
	}
	if res.Connections != 8 {
		t.Errorf("Connections = %d, want 8", res.Connections)
	}
	wantCh := map[string]int{"orders": 3, "news": 1, "other": 4}
	if len(res.Channels) != len(wantCh) {
		t.Errorf("Channels = %v, want %v", res.Channels, wantCh)
	}
	for ch, n := range wantCh {
		if res.Channels[ch] != n {
			t.Errorf("Channels[%s] = %d, want %d", ch, res.Channels[ch], n)
		}
	}
	for i := 0; i < 2; i++ {
		if got := <-reqs; got != want {
			t.Errorf("responder got %+v, want %+v", got, want)
		}
	}
}

func TestQuerierIgnoresDuplicateAndMalformedReplies(t *testing.T) {
	srv := startQueryServer(t)
	// Two subscribers answering as gw-a: only one answer counts.
	responder(t, conn(t, srv, "gw-a1"), cluster.QueryReply{Gateway: "gw-a", Channels: map[string]int{"c": 1}, Connections: 1}, 0, nil)
	responder(t, conn(t, srv, "gw-a2"), cluster.QueryReply{Gateway: "gw-a", Channels: map[string]int{"c": 1}, Connections: 1}, 0, nil)
	junk := conn(t, srv, "junk")
	sub, err := junk.Subscribe(cluster.QuerySubject, func(m *nats.Msg) { _ = m.Respond([]byte("not json")) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	_ = junk.Flush()
	responder(t, conn(t, srv, "gw-b"), cluster.QueryReply{Gateway: "gw-b", Channels: map[string]int{"c": 2}, Connections: 2}, 200*time.Millisecond, nil)
	q := cluster.NewQuerier(conn(t, srv, "api"), liveOf("gw-a", "gw-b"), 20*time.Second)
	res, err := q.Query(testCtx(t), cluster.QueryRequest{App: "1"})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Complete || res.Connections != 3 || res.Channels["c"] != 3 {
		t.Fatalf("got %+v, want complete, 3 connections, c=3", res)
	}
}

func TestQuerierIncompleteWhenALiveGatewayIsSilent(t *testing.T) {
	srv := startQueryServer(t)
	responder(t, conn(t, srv, "gw-a"), cluster.QueryReply{Gateway: "gw-a", Channels: map[string]int{"orders": 2}, Connections: 2}, 0, nil)
	// gw-b is in the registry but nobody answers for it.
	q := cluster.NewQuerier(conn(t, srv, "api"), liveOf("gw-a", "gw-b"), 500*time.Millisecond)
	res, err := q.Query(testCtx(t), cluster.QueryRequest{App: "1"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Complete {
		t.Fatalf("Complete = true though gw-b never answered: %+v", res)
	}
	if res.Connections != 2 || res.Channels["orders"] != 2 {
		t.Fatalf("the answers that did come are lost: %+v", res)
	}
}

func TestQuerierRegistryError(t *testing.T) {
	srv := startQueryServer(t)
	boom := errors.New("registry down")
	q := cluster.NewQuerier(conn(t, srv, "api"), func(context.Context) (map[string]bool, error) { return nil, boom }, time.Second)
	if _, err := q.Query(testCtx(t), cluster.QueryRequest{App: "1"}); !errors.Is(err, boom) {
		t.Fatalf("Query = %v, want the registry's error", err)
	}
}

// TestQuerierWaitsForLiveGatewaysDespiteAnUnlistedReply: a gateway
// answers queries as soon as it subscribes, before its first heartbeat is
// in the registry. Its reply counts (its subscribers are real) but must
// not stand in for a live gateway that is slower to answer.
func TestQuerierWaitsForLiveGatewaysDespiteAnUnlistedReply(t *testing.T) {
	srv := startQueryServer(t)
	responder(t, conn(t, srv, "gw-a"), cluster.QueryReply{Gateway: "gw-a", Channels: map[string]int{"orders": 1}, Connections: 1}, 0, nil)
	responder(t, conn(t, srv, "gw-new"), cluster.QueryReply{Gateway: "gw-new", Channels: map[string]int{"orders": 1}, Connections: 1}, 0, nil)
	responder(t, conn(t, srv, "gw-b"), cluster.QueryReply{Gateway: "gw-b", Channels: map[string]int{"orders": 1}, Connections: 1}, 500*time.Millisecond, nil)
	q := cluster.NewQuerier(conn(t, srv, "api"), liveOf("gw-a", "gw-b"), 20*time.Second)
	res, err := q.Query(testCtx(t), cluster.QueryRequest{App: "1"})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Complete || res.Channels["orders"] != 3 || res.Connections != 3 {
		t.Fatalf("got %+v; want Complete with orders=3 and 3 connections: gw-b, which is live, answered after 500ms of a 20s timeout", res)
	}
}

func TestAwaitGatewaysWaitsForEveryLiveGateway(t *testing.T) {
	srv := startQueryServer(t)
	answer := func(nc *nats.Conn, id string) {
		sub, err := nc.Subscribe(cluster.ReadySubject, func(m *nats.Msg) { _ = m.Respond([]byte(id)) })
		if err != nil {
			t.Error(err)
			return
		}
		t.Cleanup(func() { _ = sub.Unsubscribe() })
		_ = nc.Flush()
	}
	answer(conn(t, srv, "gw-a"), "gw-a")
	worker := conn(t, srv, "worker")

	// gw-b is listed but silent: the wait ends with the context, unfulfilled.
	short, cancel := context.WithTimeout(testCtx(t), 500*time.Millisecond)
	defer cancel()
	if cluster.AwaitGateways(short, worker, liveOf("gw-a", "gw-b")) {
		t.Fatal("AwaitGateways = true while gw-b never answered")
	}

	// gw-b comes back a few rounds later: the wait ends when it answers.
	done := make(chan bool, 1)
	go func() { done <- cluster.AwaitGateways(testCtx(t), worker, liveOf("gw-a", "gw-b")) }()
	time.Sleep(500 * time.Millisecond)
	select {
	case ok := <-done:
		t.Fatalf("AwaitGateways returned %v before gw-b answered", ok)
	default:
	}
	answer(conn(t, srv, "gw-b"), "gw-b")
	if !<-done {
		t.Fatal("AwaitGateways = false with both gateways answering")
	}

	// A registry that cannot be read yet (JetStream still recovering) is
	// asked again rather than taken as empty.
	var calls int
	flaky := func(ctx context.Context) (map[string]bool, error) {
		calls++
		if calls < 3 {
			return nil, errors.New("jetstream not ready")
		}
		return map[string]bool{"gw-a": true}, nil
	}
	if !cluster.AwaitGateways(testCtx(t), worker, flaky) || calls < 3 {
		t.Fatalf("AwaitGateways over a flaky registry: calls = %d", calls)
	}
}

// TestMutateRevsOrder: Order places every change of a key, removals
// included, in the order the key saw them, which webhooks recorded by
// several gateways rely on.
func TestMutateRevsOrder(t *testing.T) {
	_, js := startJetStream(t)
	kv, ctx := ensure(t, js, cluster.Options{}).Counts, testCtx(t)
	set := func(v string) func([]byte) ([]byte, error) {
		return func([]byte) ([]byte, error) {
			if v == "" {
				return nil, nil
			}
			return []byte(v), nil
		}
	}
	var orders []uint64
	for _, v := range []string{"a", "b", "", "c", "", "d"} {
		r, err := cluster.MutateRevs(ctx, kv, "k", set(v))
		if err != nil {
			t.Fatal(err)
		}
		if v == "" && (r.Written != 0 || r.Read == 0) {
			t.Fatalf("removal: %+v", r)
		}
		orders = append(orders, r.Order())
	}
	for i := 1; i < len(orders); i++ {
		if orders[i] <= orders[i-1] {
			t.Fatalf("orders not increasing: %v", orders)
		}
	}
	// Something else writes the bucket between: the orders still hold.
	if _, err := kv.Put(ctx, "other", []byte("x")); err != nil {
		t.Fatal(err)
	}
	r, err := cluster.MutateRevs(ctx, kv, "k", func(old []byte) ([]byte, error) { return old, nil })
	if err != nil || r.Read != r.Written || r.Order() != orders[len(orders)-1] {
		t.Fatalf("unchanged: %+v, %v; want order %d", r, err, orders[len(orders)-1])
	}
	if r, err := cluster.MutateRevs(ctx, kv, "absent", set("")); err != nil || r != (cluster.Revs{}) || r.Order() != 0 {
		t.Fatalf("nothing: %+v, %v", r, err)
	}
}

// When a gateway goes, only the two live gateways with the lowest ids
// sweep after it: a sweep reads every key of the shared state, and every
// gateway doing it at once made a departure cost the cluster's size in
// full reads.
func TestOnlyTheLowestTwoSweepAfterADeparture(t *testing.T) {
	_, js := startJetStream(t)
	s := ensure(t, js, cluster.Options{GatewayTTL: 3 * time.Second})
	ctx := testCtx(t)
	if _, err := s.Gateways.Put(ctx, "gw-0", []byte("now")); err != nil {
		t.Fatal(err)
	}
	ids := []string{"gw-1", "gw-2", "gw-3"}
	calls := map[string]*goneCalls{}
	for _, id := range ids {
		calls[id] = newGoneCalls()
		runRegistry(t, cluster.NewRegistry(s, id, zerolog.Nop(), calls[id].onGone))
	}
	for _, id := range ids {
		calls[id].waitFor(t, 10*time.Second, id+" at start-up", func(l map[string]bool) bool { return l["gw-0"] })
	}
	// gw-0 stands for a gateway that stopped: its key is deleted.
	if err := s.Gateways.Delete(ctx, "gw-0"); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids[:2] {
		live := calls[id].waitFor(t, 15*time.Second, id+" after gw-0 went", func(l map[string]bool) bool { return !l["gw-0"] })
		if !live["gw-1"] || !live["gw-2"] || !live["gw-3"] {
			t.Fatalf("%s swept with live %v", id, live)
		}
	}
	// gw-3 lists the gateways every second (a third of the TTL): three
	// looks later it has still not swept.
	time.Sleep(3 * time.Second)
	g := calls["gw-3"]
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, l := range g.calls {
		if !l["gw-0"] {
			t.Fatalf("gw-3, third lowest, swept after gw-0: %v", g.calls)
		}
	}
}

// A gateway whose heartbeat key was removed while it heartbeats on time
// (a sweep by another that thought it gone) says again what it holds: its
// next heartbeat finds the key's revision changed. One whose key stays
// does not, however long it runs.
func TestRegistryLapsesWhenItsKeyIsGoneAndOnlyThen(t *testing.T) {
	_, js := startJetStream(t)
	s := ensure(t, js, cluster.Options{GatewayTTL: 3 * time.Second})
	ctx := testCtx(t)
	r := cluster.NewRegistry(s, "gw-1", zerolog.Nop(), nil)
	lapses := make(chan struct{}, 8)
	r.OnLapse(func(context.Context) { lapses <- struct{}{} })
	if err := r.Register(ctx); err != nil {
		t.Fatal(err)
	}
	first, err := s.Gateways.Get(ctx, "gw-1")
	if err != nil {
		t.Fatal(err)
	}
	runRegistry(t, r)
	// Three heartbeats with the key in place (its revision moved on three
	// times): no lapse.
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		e, err := s.Gateways.Get(ctx, "gw-1")
		if err != nil {
			t.Fatal(err)
		}
		if e.Revision() >= first.Revision()+3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("fewer than three heartbeats in 20 s")
		}
	}
	select {
	case <-lapses:
		t.Fatal("a lapse while the key was there")
	default:
	}
	if err := s.Gateways.Delete(ctx, "gw-1"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-lapses:
	case <-time.After(10 * time.Second):
		t.Fatal("no lapse after the key was removed")
	}
	if _, err := s.Gateways.Get(ctx, "gw-1"); err != nil {
		t.Fatalf("the key was not written again: %v", err)
	}
}
