package presence_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/resoundhq/resound/internal/cluster"
	"github.com/resoundhq/resound/internal/natsembed/natstest"
	"github.com/resoundhq/resound/internal/presence"
	"github.com/resoundhq/resound/protocol"
)

// newStore returns a presence store on a real JetStream bucket.
func newStore(t *testing.T) (*presence.Store, jetstream.KeyValue, context.Context) {
	t.Helper()
	_, js := natstest.JetStream(t, "presence-test")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	stores, err := cluster.Ensure(ctx, js, cluster.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return presence.New(stores.Presence), stores.Presence, ctx
}

func member(id string) protocol.PresenceMember {
	return protocol.PresenceMember{ID: id, Info: json.RawMessage(fmt.Sprintf(`{"name":"user %s"}`, id))}
}

func ids(ms []protocol.PresenceMember) []string {
	out := []string{}
	for _, m := range ms {
		out = append(out, m.ID)
	}
	return out
}

func TestJoinFirstAndAgain(t *testing.T) {
	s, _, ctx := newStore(t)
	r, err := s.Join(ctx, "app", "presence-room", member("2"), "1.1", "gw-a", 0)
	if err != nil || !r.First {
		t.Fatalf("first join: %+v %v", r, err)
	}
	if got := ids(r.Members); !reflect.DeepEqual(got, []string{"2"}) {
		t.Fatalf("members after first join: %v", got)
	}
	// A second socket of user 2, on another gateway: not First.
	r, err = s.Join(ctx, "app", "presence-room", member("2"), "2.2", "gw-b", 0)
	if err != nil || r.First {
		t.Fatalf("second socket of the same user: %+v %v", r, err)
	}
	if got := ids(r.Members); !reflect.DeepEqual(got, []string{"2"}) {
		t.Fatalf("members are not unique by user: %v", got)
	}
	// More users, joined out of order: the snapshot is sorted by id.
	for _, id := range []string{"10", "1", "b", "a"} {
		if r, err = s.Join(ctx, "app", "presence-room", member(id), "s-"+id, "gw-a", 0); err != nil || !r.First {
			t.Fatalf("join %s: %+v %v", id, r, err)
		}
	}
	want := []string{"1", "10", "2", "a", "b"}
	if got := ids(r.Members); !reflect.DeepEqual(got, want) {
		t.Fatalf("snapshot %v, want %v", got, want)
	}
	if string(r.Members[0].Info) != `{"name":"user 1"}` {
		t.Fatalf("info of 1: %s", r.Members[0].Info)
	}
	got, err := s.Members(ctx, "app", "presence-room")
	if err != nil || !reflect.DeepEqual(ids(got), want) {
		t.Fatalf("Members = %v, %v", ids(got), err)
	}
	// The same socket joining again changes nothing.
	if r, err = s.Join(ctx, "app", "presence-room", member("2"), "1.1", "gw-a", 0); err != nil || r.First || len(r.Members) != 5 {
		t.Fatalf("re-join of the same socket: %+v %v", r, err)
	}
}

func TestMemberInfoNilRoundTrips(t *testing.T) {
	s, _, ctx := newStore(t)
	if _, err := s.Join(ctx, "app", "presence-x", protocol.PresenceMember{ID: "7"}, "1.1", "gw", 0); err != nil {
		t.Fatal(err)
	}
	got, err := s.Members(ctx, "app", "presence-x")
	if err != nil || len(got) != 1 || got[0].ID != "7" || len(got[0].Info) != 0 {
		t.Fatalf("Members = %+v, %v", got, err)
	}
}

func TestMaxMembers(t *testing.T) {
	s, _, ctx := newStore(t)
	for _, id := range []string{"1", "2"} {
		if _, err := s.Join(ctx, "app", "presence-full", member(id), "s"+id, "gw", 2); err != nil {
			t.Fatalf("join %s: %v", id, err)
		}
	}
	if _, err := s.Join(ctx, "app", "presence-full", member("3"), "s3", "gw", 2); !errors.Is(err, presence.ErrFull) {
		t.Fatalf("third user: %v, want ErrFull", err)
	}
	// An existing user may add a socket.
	r, err := s.Join(ctx, "app", "presence-full", member("1"), "s1-bis", "gw", 2)
	if err != nil || r.First || len(r.Members) != 2 {
		t.Fatalf("new socket of an existing user on a full channel: %+v %v", r, err)
	}
	got, _ := s.Members(ctx, "app", "presence-full")
	if !reflect.DeepEqual(ids(got), []string{"1", "2"}) {
		t.Fatalf("members after refusal: %v", ids(got))
	}
	// Once someone leaves, a new user fits.
	if last, _, err := s.Leave(ctx, "app", "presence-full", "2", "s2"); err != nil || !last {
		t.Fatalf("leave: %v %v", last, err)
	}
	if r, err := s.Join(ctx, "app", "presence-full", member("3"), "s3", "gw", 2); err != nil || !r.First {
		t.Fatalf("join after a leave: %+v %v", r, err)
	}
}

func TestLeave(t *testing.T) {
	s, kv, ctx := newStore(t)
	key := cluster.Key("app", "presence-room")
	mustJoin := func(id, sid, gw string) {
		t.Helper()
		if _, err := s.Join(ctx, "app", "presence-room", member(id), sid, gw, 0); err != nil {
			t.Fatal(err)
		}
	}
	mustJoin("1", "1.1", "gw-a")
	mustJoin("1", "1.2", "gw-b")
	mustJoin("2", "2.1", "gw-a")

	e, _ := kv.Get(ctx, key)
	rev := e.Revision()
	// Unknown socket, unknown user, unknown channel: no-ops.
	for _, c := range []struct{ ch, user, sid string }{
		{"presence-room", "1", "9.9"},
		{"presence-room", "nobody", "1.1"},
		{"presence-none", "1", "1.1"},
	} {
		last, _, err := s.Leave(ctx, "app", c.ch, c.user, c.sid)
		if err != nil || last {
			t.Fatalf("Leave(%+v) = %v, %v; want a no-op", c, last, err)
		}
	}
	if e, _ = kv.Get(ctx, key); e.Revision() != rev {
		t.Fatal("a no-op leave wrote the key")
	}
	if _, err := kv.Get(ctx, cluster.Key("app", "presence-none")); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("leaving an empty channel created its key: %v", err)
	}

	if last, _, err := s.Leave(ctx, "app", "presence-room", "1", "1.1"); err != nil || last {
		t.Fatalf("leaving one of two sockets: last=%v %v", last, err)
	}
	if last, _, err := s.Leave(ctx, "app", "presence-room", "1", "1.1"); err != nil || last {
		t.Fatalf("leaving the same socket twice: last=%v %v", last, err)
	}
	got, _ := s.Members(ctx, "app", "presence-room")
	if !reflect.DeepEqual(ids(got), []string{"1", "2"}) {
		t.Fatalf("members %v", ids(got))
	}
	if last, _, err := s.Leave(ctx, "app", "presence-room", "1", "1.2"); err != nil || !last {
		t.Fatalf("leaving the last socket: last=%v %v", last, err)
	}
	if last, _, err := s.Leave(ctx, "app", "presence-room", "2", "2.1"); err != nil || !last {
		t.Fatalf("last member leaving: last=%v %v", last, err)
	}
	// Empty: the key is gone and Members is nil.
	if _, err := kv.Get(ctx, key); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("empty channel's key: %v, want deleted", err)
	}
	if got, err := s.Members(ctx, "app", "presence-room"); err != nil || got != nil {
		t.Fatalf("Members of an empty channel = %v, %v; want nil", got, err)
	}
	// And it can fill again.
	if r, err := s.Join(ctx, "app", "presence-room", member("1"), "1.3", "gw-a", 0); err != nil || !r.First {
		t.Fatalf("re-join of an emptied channel: %+v %v", r, err)
	}
}

func TestChannels(t *testing.T) {
	s, _, ctx := newStore(t)
	if got, err := s.Channels(ctx, "app-1"); err != nil || len(got) != 0 {
		t.Fatalf("Channels of an empty bucket = %v, %v", got, err)
	}
	join := func(app, ch, id, sid string) {
		t.Helper()
		if _, err := s.Join(ctx, app, ch, member(id), sid, "gw", 0); err != nil {
			t.Fatal(err)
		}
	}
	join("app-1", "presence-a", "1", "1.1")
	join("app-1", "presence-a", "1", "1.2") // same user: counted once
	join("app-1", "presence-a", "2", "2.1")
	join("app-1", "presence-b.with.dots", "1", "1.3")
	join("app-1", "presence-gone", "3", "3.1")
	join("app-2", "presence-a", "9", "9.1") // same channel name, other app
	join("app-12", "presence-z", "9", "9.2")
	if _, _, err := s.Leave(ctx, "app-1", "presence-gone", "3", "3.1"); err != nil {
		t.Fatal(err)
	}

	got, err := s.Channels(ctx, "app-1")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int{"presence-a": 2, "presence-b.with.dots": 1}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Channels(app-1) = %v, want %v", got, want)
	}
	got, err = s.Channels(ctx, "app-2")
	if err != nil || !reflect.DeepEqual(got, map[string]int{"presence-a": 1}) {
		t.Fatalf("Channels(app-2) = %v, %v", got, err)
	}
	if got, err = s.Channels(ctx, "app-3"); err != nil || len(got) != 0 {
		t.Fatalf("Channels(app-3) = %v, %v", got, err)
	}
	m, _ := s.Members(ctx, "app-2", "presence-a")
	if !reflect.DeepEqual(ids(m), []string{"9"}) {
		t.Fatalf("app-2 sees app-1's members: %v", ids(m))
	}
}

func TestRemoveGatewaysExcept(t *testing.T) {
	s, _, ctx := newStore(t)
	joined := map[string]uint64{} // the last join's revision, by channel
	join := func(app, ch, id, sid, gw string) {
		t.Helper()
		r, err := s.Join(ctx, app, ch, member(id), sid, gw, 0)
		if err != nil {
			t.Fatal(err)
		}
		joined[ch] = r.Revision
	}
	// user 1: one socket on the live gateway, one on the dead one: stays.
	join("app", "presence-a", "1", "1.1", "live")
	join("app", "presence-a", "1", "1.2", "dead")
	// user 2: only on the dead gateway: leaves.
	join("app", "presence-a", "2", "2.1", "dead")
	// user 3: only on the live gateway.
	join("app", "presence-a", "3", "3.1", "live")
	// A channel only the dead gateway held, in another app: emptied.
	join("other app", "presence-b", "4", "4.1", "dead")
	join("other app", "presence-b", "5", "5.1", "also-dead")
	// A channel untouched.
	join("app", "presence-c", "6", "6.1", "live")

	removed, err := s.RemoveGatewaysExcept(ctx, cluster.LiveSet{"live": true})
	if err != nil {
		t.Fatal(err)
	}
	sort.Slice(removed, func(i, j int) bool {
		a, b := removed[i], removed[j]
		return a.App+"\x00"+a.Channel+"\x00"+a.UserID < b.App+"\x00"+b.Channel+"\x00"+b.UserID
	})
	for i := range removed {
		// The removals' place among their key's changes: after every join.
		if removed[i].Order <= joined[removed[i].Channel] {
			t.Fatalf("removal %+v ordered before the joins (last at %d)", removed[i], joined[removed[i].Channel])
		}
		removed[i].Order = 0
	}
	want := []presence.Removed{
		{App: "app", Channel: "presence-a", UserID: "2"},
		{App: "other app", Channel: "presence-b", UserID: "4"},
		{App: "other app", Channel: "presence-b", UserID: "5"},
	}
	if !reflect.DeepEqual(removed, want) {
		t.Fatalf("removed %+v, want %+v", removed, want)
	}
	m, _ := s.Members(ctx, "app", "presence-a")
	if !reflect.DeepEqual(ids(m), []string{"1", "3"}) {
		t.Fatalf("presence-a keeps %v", ids(m))
	}
	if m, err := s.Members(ctx, "other app", "presence-b"); err != nil || m != nil {
		t.Fatalf("presence-b = %v, %v; want emptied", m, err)
	}
	if m, _ := s.Members(ctx, "app", "presence-c"); !reflect.DeepEqual(ids(m), []string{"6"}) {
		t.Fatalf("presence-c = %v", ids(m))
	}
	// User 1's dead socket is gone: leaving the live one is their last.
	if last, _, err := s.Leave(ctx, "app", "presence-a", "1", "1.1"); err != nil || !last {
		t.Fatalf("user 1's remaining socket: last=%v %v", last, err)
	}
	// A second sweep finds nothing more.
	if removed, err = s.RemoveGatewaysExcept(ctx, cluster.LiveSet{"live": true}); err != nil || len(removed) != 0 {
		t.Fatalf("second sweep: %v %v", removed, err)
	}
}

func TestRemoveGatewaysExceptOnEmptyBucket(t *testing.T) {
	s, _, ctx := newStore(t)
	removed, err := s.RemoveGatewaysExcept(ctx, cluster.LiveSet{"live": true})
	if err != nil || len(removed) != 0 {
		t.Fatalf("RemoveGatewaysExcept on an empty bucket = %v, %v", removed, err)
	}
}

// TestConcurrentSweepsReportEachUserOnce: two gateways sweeping at the
// same time must announce each departed user once between them.
func TestConcurrentSweepsReportEachUserOnce(t *testing.T) {
	s, _, ctx := newStore(t)
	for i := 0; i < 10; i++ {
		id := strconv.Itoa(i)
		if _, err := s.Join(ctx, "app", "presence-a", member(id), "s"+id, "dead", 0); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	results := make([][]presence.Removed, 4)
	errs := make([]error, 4)
	for i := range results {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			results[i], errs[i] = s.RemoveGatewaysExcept(ctx, cluster.LiveSet{"live": true})
		}(i)
	}
	wg.Wait()
	seen := map[string]int{}
	for i, r := range results {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		for _, x := range r {
			seen[x.UserID]++
		}
	}
	if len(seen) != 10 {
		t.Fatalf("users reported: %v, want all 10", seen)
	}
	for id, n := range seen {
		if n != 1 {
			t.Fatalf("user %s reported %d times", id, n)
		}
	}
}

func TestConcurrentJoinsRespectMaxMembers(t *testing.T) {
	s, _, ctx := newStore(t)
	const n, max = 30, 25
	var wg sync.WaitGroup
	errs := make([]error, n)
	start := make(chan struct{})
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			<-start
			id := strconv.Itoa(i)
			_, errs[i] = s.Join(ctx, "app", "presence-crowd", member(id), "s"+id, "gw", max)
		}(i)
	}
	close(start)
	wg.Wait()
	ok, full := 0, 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case errors.Is(err, presence.ErrFull):
			full++
		default:
			t.Fatalf("join: %v", err)
		}
	}
	if ok != max || full != n-max {
		t.Fatalf("%d joined and %d were refused, want %d and %d", ok, full, max, n-max)
	}
	m, err := s.Members(ctx, "app", "presence-crowd")
	if err != nil || len(m) != max {
		t.Fatalf("members: %d, %v", len(m), err)
	}
	// The ones that joined are exactly the ones that did not get ErrFull.
	for i, err := range errs {
		in := false
		for _, x := range m {
			if x.ID == strconv.Itoa(i) {
				in = true
			}
		}
		if in != (err == nil) {
			t.Fatalf("user %d: member=%v, join error=%v", i, in, err)
		}
	}
}

// TestRevisions: Join and Leave report the channel key's revision after
// their change, so that member events can be ordered against snapshots.
func TestRevisions(t *testing.T) {
	s, kv, ctx := newStore(t)
	key := cluster.Key("app", "presence-rev")
	current := func() uint64 {
		t.Helper()
		e, err := kv.Get(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		return e.Revision()
	}
	r1, err := s.Join(ctx, "app", "presence-rev", member("1"), "1.1", "gw", 0)
	if err != nil || r1.Revision == 0 || r1.Revision != current() {
		t.Fatalf("first join revision %d, key at %d (%v)", r1.Revision, current(), err)
	}
	r2, err := s.Join(ctx, "app", "presence-rev", member("2"), "2.1", "gw", 0)
	if err != nil || r2.Revision <= r1.Revision || r2.Revision != current() {
		t.Fatalf("second join revision %d after %d, key at %d (%v)", r2.Revision, r1.Revision, current(), err)
	}
	// Re-joining with the same socket writes nothing: the revision read.
	r3, err := s.Join(ctx, "app", "presence-rev", member("2"), "2.1", "gw", 0)
	if err != nil || r3.Revision != current() {
		t.Fatalf("idempotent join revision %d, key at %d (%v)", r3.Revision, current(), err)
	}
	// A no-op leave reports the revision as it is.
	if last, rev, err := s.Leave(ctx, "app", "presence-rev", "1", "9.9"); err != nil || last || rev != current() {
		t.Fatalf("no-op leave: last=%v rev=%d key at %d (%v)", last, rev, current(), err)
	}
	last, rev, err := s.Leave(ctx, "app", "presence-rev", "1", "1.1")
	if err != nil || !last || rev <= r3.Revision || rev != current() {
		t.Fatalf("leave: last=%v rev=%d key at %d (%v)", last, rev, current(), err)
	}
	// The channel empties: revision 0.
	if last, rev, err := s.Leave(ctx, "app", "presence-rev", "2", "2.1"); err != nil || !last || rev != 0 {
		t.Fatalf("last leave: last=%v rev=%d (%v)", last, rev, err)
	}
	if last, rev, err := s.Leave(ctx, "app", "presence-none", "2", "2.1"); err != nil || last || rev != 0 {
		t.Fatalf("leave of an empty channel: last=%v rev=%d (%v)", last, rev, err)
	}
}

// TestLeaveOrder: a leave's Order places it among the key's changes,
// the one that empties the channel included (its Revision is 0), so
// that member_removed webhooks sort between the member_added around them.
func TestLeaveOrder(t *testing.T) {
	s, _, ctx := newStore(t)
	j1, err := s.Join(ctx, "app", "presence-o", member("1"), "1.1", "gw", 0)
	if err != nil {
		t.Fatal(err)
	}
	l1, err := s.LeaveOrdered(ctx, "app", "presence-o", "1", "1.1")
	if err != nil || !l1.Last || l1.Revision != 0 || l1.Order <= j1.Revision {
		t.Fatalf("emptying leave %+v after join at %d (%v)", l1, j1.Revision, err)
	}
	j2, err := s.Join(ctx, "app", "presence-o", member("1"), "1.2", "gw", 0)
	if err != nil || !j2.First || j2.Revision <= l1.Order {
		t.Fatalf("join again at %d, after the leave's order %d (%v)", j2.Revision, l1.Order, err)
	}
	if _, err := s.Join(ctx, "app", "presence-o", member("2"), "2.1", "gw", 0); err != nil {
		t.Fatal(err)
	}
	l2, err := s.LeaveOrdered(ctx, "app", "presence-o", "1", "1.2")
	if err != nil || !l2.Last || l2.Revision == 0 || l2.Order != l2.Revision {
		t.Fatalf("leave of a channel that stays occupied: %+v (%v)", l2, err)
	}
}
