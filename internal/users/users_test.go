package users_test

import (
	"encoding/json"
	"errors"
	"math/rand/v2"
	"reflect"
	"sort"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/resoundhq/resound/internal/cluster"
	"github.com/resoundhq/resound/internal/cluster/clustertest"
	"github.com/resoundhq/resound/internal/users"
)

func value(t *testing.T, b *cluster.Bucket, app, user string) map[string]string {
	t.Helper()
	e, err := b.Get(clustertest.Context(t), cluster.Key(app, user))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]string
	if err := json.Unmarshal(e.Value(), &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestSignInAndOut(t *testing.T) {
	b := clustertest.Gateways(t, 1)[0].Users
	s, ctx := users.New(b), clustertest.Context(t)
	online := func(user string) bool {
		t.Helper()
		on, err := s.Online(ctx, "app", user)
		if err != nil {
			t.Fatal(err)
		}
		return on
	}
	if online("1") {
		t.Fatal("online before signing in")
	}
	if first, err := s.SignIn(ctx, "app", "1", "1.1", "gw-a", 0); err != nil || !first {
		t.Fatalf("first sign-in: %v %v", first, err)
	}
	if first, err := s.SignIn(ctx, "app", "1", "1.2", "gw-b", 0); err != nil || first {
		t.Fatalf("second socket: %v %v", first, err)
	}
	// The same socket again: not first, nothing written.
	e, _ := b.Get(ctx, cluster.Key("app", "1"))
	if first, err := s.SignIn(ctx, "app", "1", "1.2", "gw-b", 0); err != nil || first {
		t.Fatalf("same socket again: %v %v", first, err)
	}
	if again, _ := b.Get(ctx, cluster.Key("app", "1")); again.Revision() != e.Revision() {
		t.Fatal("signing the same socket in again wrote the key")
	}
	if got := value(t, b, "app", "1"); !reflect.DeepEqual(got, map[string]string{"1.1": "gw-a", "1.2": "gw-b"}) {
		t.Fatalf("value %v", got)
	}
	if !online("1") || online("2") {
		t.Fatal("Online is wrong")
	}
	// Another app with the same user id is another user.
	if first, err := s.SignIn(ctx, "other", "1", "9.9", "gw-a", 0); err != nil || !first {
		t.Fatalf("same id in another app: %v %v", first, err)
	}
	// Unknown sockets and users: no-ops.
	for _, c := range [][2]string{{"1", "9.9"}, {"nobody", "1.1"}} {
		if last, err := s.SignOut(ctx, "app", c[0], c[1]); err != nil || last {
			t.Fatalf("SignOut(%v) = %v %v", c, last, err)
		}
	}
	if _, err := b.Get(ctx, cluster.Key("app", "nobody")); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("signing out an unknown user created a key: %v", err)
	}
	if last, err := s.SignOut(ctx, "app", "1", "1.1"); err != nil || last {
		t.Fatalf("one of two: %v %v", last, err)
	}
	if last, err := s.SignOut(ctx, "app", "1", "1.2"); err != nil || !last {
		t.Fatalf("the last: %v %v", last, err)
	}
	if online("1") || value(t, b, "app", "1") != nil {
		t.Fatal("user 1 is still there")
	}
	if first, err := s.SignIn(ctx, "app", "1", "1.3", "gw-a", 0); err != nil || !first {
		t.Fatalf("signing in again: %v %v", first, err)
	}
}

func TestMaxUserConnections(t *testing.T) {
	s, ctx := users.New(clustertest.Gateways(t, 1)[0].Users), clustertest.Context(t)
	for _, sid := range []string{"1", "2", "3"} {
		if _, err := s.SignIn(ctx, "app", "u", sid, "gw", 3); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.SignIn(ctx, "app", "u", "4", "gw", 3); !errors.Is(err, users.ErrUserConnections) {
		t.Fatalf("past the bound: %v, want ErrUserConnections", err)
	}
	if _, err := s.SignIn(ctx, "app", "u", "2", "gw", 3); err != nil {
		t.Fatalf("a socket already in, at the bound: %v", err)
	}
	if _, err := s.SignIn(ctx, "app", "v", "1", "gw", 3); err != nil {
		t.Fatalf("another user: %v", err)
	}
	if last, err := s.SignOut(ctx, "app", "u", "1"); err != nil || last {
		t.Fatalf("sign-out at the bound: %v %v", last, err)
	}
	if _, err := s.SignIn(ctx, "app", "u", "4", "gw", 3); err != nil {
		t.Fatalf("after a sign-out: %v", err)
	}
}

// TestOneUserManySocketsExactlyOnce: sockets of one user signing in on
// many gateways at once: exactly one sees first; signing out at once:
// exactly one sees last.
func TestOneUserManySocketsExactlyOnce(t *testing.T) {
	const n = 12
	gws := clustertest.Gateways(t, n)
	ctx := clustertest.Context(t)
	for round := range 3 {
		var firsts, lasts atomic.Int32
		clustertest.Concurrently(t, n, func(i int) error {
			first, err := users.New(gws[i].Users).SignIn(ctx, "app", "u", "s"+strconv.Itoa(i), "gw-"+strconv.Itoa(i), n)
			if first {
				firsts.Add(1)
			}
			return err
		})
		clustertest.Concurrently(t, n, func(i int) error {
			last, err := users.New(gws[i].Users).SignOut(ctx, "app", "u", "s"+strconv.Itoa(i))
			if last {
				lasts.Add(1)
			}
			return err
		})
		if firsts.Load() != 1 || lasts.Load() != 1 {
			t.Fatalf("round %d: %d saw first and %d saw last, want 1 and 1", round, firsts.Load(), lasts.Load())
		}
	}
	clustertest.AwaitSettled(t, ctx, gws[0].Users, 0)
}

// TestChurn: gateways sign sockets of a few users in and out at once,
// under the per-user bound. Afterwards each user's key holds exactly the
// sockets still in, a user gone has no key, no marker outlives its TTL,
// and each user's first and last alternated.
func TestChurn(t *testing.T) {
	const (
		gateways = 6
		steps    = 50
		nUsers   = 5
		bound    = 4
	)
	gws := clustertest.Gateways(t, gateways)
	ctx := clustertest.Context(t)
	tally := clustertest.NewTally(bound)
	var refused atomic.Int32
	clustertest.Concurrently(t, gateways, func(g int) error {
		s, gw := users.New(gws[g].Users), "gw-"+strconv.Itoa(g)
		rng := rand.New(rand.NewPCG(uint64(g), 7))
		type sock struct{ user, sid string }
		var mine []sock
		for i := range steps {
			if len(mine) > 0 && rng.IntN(3) == 0 {
				k := rng.IntN(len(mine))
				c := mine[k]
				mine = append(mine[:k], mine[k+1:]...)
				tally.Out(c.user, c.sid)
				last, err := s.SignOut(ctx, "app", c.user, c.sid)
				if err != nil {
					return err
				}
				if last {
					tally.Last(c.user)
				}
				continue
			}
			c := sock{strconv.Itoa(rng.IntN(nUsers)), gw + "." + strconv.Itoa(i)}
			first, err := s.SignIn(ctx, "app", c.user, c.sid, gw, bound)
			if errors.Is(err, users.ErrUserConnections) {
				refused.Add(1)
				continue
			}
			if err != nil {
				return err
			}
			mine = append(mine, c)
			tally.In(c.user, c.sid, gw, first)
		}
		return nil
	})
	t.Logf("%d sign-ins refused at the per-user bound", refused.Load())
	tally.Check(t)

	b, s := gws[0].Users, users.New(gws[0].Users)
	held := tally.Held()
	for u := range nUsers {
		user := strconv.Itoa(u)
		if got := value(t, b, "app", user); !reflect.DeepEqual(got, held[user]) {
			t.Errorf("user %s holds %v, want %v", user, got, held[user])
		}
		if on, err := s.Online(ctx, "app", user); err != nil || on != (held[user] != nil) {
			t.Errorf("Online(%s) = %v, %v", user, on, err)
		}
	}
	clustertest.AwaitSettled(t, ctx, b, len(held))
	for user, socks := range held {
		for sid := range socks {
			if _, err := s.SignOut(ctx, "app", user, sid); err != nil {
				t.Fatal(err)
			}
		}
	}
	clustertest.AwaitSettled(t, ctx, b, 0)
}

// TestRemoveGatewaysExcept is the gateway's sweep of signed-in users, on
// the store.
func TestRemoveGatewaysExcept(t *testing.T) {
	b := clustertest.Gateways(t, 1)[0].Users
	s, ctx := users.New(b), clustertest.Context(t)
	signIn := func(app, user, sid, gw string) {
		t.Helper()
		if _, err := s.SignIn(ctx, app, user, sid, gw, 0); err != nil {
			t.Fatal(err)
		}
	}
	signIn("app", "1", "1.1", "live") // stays, with one socket
	signIn("app", "1", "1.2", "dead")
	signIn("app", "2", "2.1", "dead") // goes offline
	signIn("app", "3", "3.1", "live") // untouched
	signIn("other app", "4", "4.1", "dead")
	signIn("other app", "5", "5.1", "also-dead")
	if _, err := b.Put(ctx, cluster.Key("app", "bad"), []byte("not json")); err != nil {
		t.Fatal(err)
	}

	offline, err := s.RemoveGatewaysExcept(ctx, cluster.LiveSet{"live": true})
	if err != nil {
		t.Fatal(err)
	}
	sort.Slice(offline, func(i, j int) bool {
		return offline[i].App+"\x00"+offline[i].UserID < offline[j].App+"\x00"+offline[j].UserID
	})
	want := []users.Offline{{App: "app", UserID: "2"}, {App: "other app", UserID: "4"}, {App: "other app", UserID: "5"}}
	if !reflect.DeepEqual(offline, want) {
		t.Fatalf("offline %+v, want %+v", offline, want)
	}
	if got := value(t, b, "app", "1"); !reflect.DeepEqual(got, map[string]string{"1.1": "live"}) {
		t.Fatalf("user 1 holds %v", got)
	}
	if last, err := s.SignOut(ctx, "app", "1", "1.1"); err != nil || !last {
		t.Fatalf("user 1's remaining socket: %v %v", last, err)
	}
	if got := value(t, b, "app", "3"); !reflect.DeepEqual(got, map[string]string{"3.1": "live"}) {
		t.Fatalf("user 3 holds %v", got)
	}
	// A value that does not parse names no gateway: the sweep leaves it as
	// the gateway's did, and the next sign-in of the user rewrites it.
	if offline, err = s.RemoveGatewaysExcept(ctx, cluster.LiveSet{"live": true}); err != nil || len(offline) != 0 {
		t.Fatalf("second sweep: %v %v", offline, err)
	}
	clustertest.AwaitSettled(t, ctx, b, 2) // user 3 and the unreadable value
}

// TestConcurrentSweepsReportEachUserOnce: gateways sweeping at once
// announce each user that went offline once between them.
func TestConcurrentSweepsReportEachUserOnce(t *testing.T) {
	gws := clustertest.Gateways(t, 4)
	ctx := clustertest.Context(t)
	for i := range 10 {
		if _, err := users.New(gws[0].Users).SignIn(ctx, "app", strconv.Itoa(i), "s"+strconv.Itoa(i), "dead", 0); err != nil {
			t.Fatal(err)
		}
	}
	results := make([][]users.Offline, len(gws))
	clustertest.Concurrently(t, len(gws), func(i int) (err error) {
		results[i], err = users.New(gws[i].Users).RemoveGatewaysExcept(ctx, cluster.LiveSet{"live": true})
		return err
	})
	seen := map[string]int{}
	for _, r := range results {
		for _, o := range r {
			seen[o.UserID]++
		}
	}
	if len(seen) != 10 {
		t.Fatalf("reported %v, want all 10", seen)
	}
	for id, n := range seen {
		if n != 1 {
			t.Fatalf("user %s reported %d times", id, n)
		}
	}
	clustertest.AwaitSettled(t, ctx, gws[0].Users, 0)
}
