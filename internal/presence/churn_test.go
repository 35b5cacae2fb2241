package presence_test

import (
	"encoding/json"
	"errors"
	"math/rand/v2"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/resoundhq/resound/internal/cluster"
	"github.com/resoundhq/resound/internal/cluster/clustertest"
	"github.com/resoundhq/resound/internal/presence"
)

func TestMaxUserConnections(t *testing.T) {
	s, _, ctx := newStore(t)
	lim := presence.Limits{Members: 10, UserConnections: 3}
	join := func(user, sid string) error {
		_, err := s.JoinLimited(ctx, "app", "presence-tabs", member(user), sid, "gw", lim)
		return err
	}
	for _, sid := range []string{"1.1", "1.2", "1.3"} {
		if err := join("1", sid); err != nil {
			t.Fatalf("join %s: %v", sid, err)
		}
	}
	if err := join("1", "1.4"); !errors.Is(err, presence.ErrUserConnections) {
		t.Fatalf("a 4th connection of user 1: %v, want ErrUserConnections", err)
	}
	// A connection already in is not refused, and other users are not
	// bounded by user 1.
	if err := join("1", "1.2"); err != nil {
		t.Fatalf("re-join at the bound: %v", err)
	}
	if err := join("2", "2.1"); err != nil {
		t.Fatalf("another user: %v", err)
	}
	// Leaving at the bound works, and makes room.
	if last, _, err := s.Leave(ctx, "app", "presence-tabs", "1", "1.1"); err != nil || last {
		t.Fatalf("leave at the bound: last=%v %v", last, err)
	}
	if err := join("1", "1.4"); err != nil {
		t.Fatalf("join after a leave: %v", err)
	}
	// Join bounds at the app setting's default.
	for i := range presence.DefaultMaxUserConnections {
		if _, err := s.Join(ctx, "app", "presence-default", member("1"), "s"+strconv.Itoa(i), "gw", 0); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Join(ctx, "app", "presence-default", member("1"), "one-more", "gw", 0); !errors.Is(err, presence.ErrUserConnections) {
		t.Fatalf("Join past the default bound: %v", err)
	}
}

// TestOneUserManyConnectionsExactlyOnce: connections of one user joining
// from many gateways at once: exactly one sees First; leaving at once:
// exactly one sees last.
func TestOneUserManyConnectionsExactlyOnce(t *testing.T) {
	const n = 12
	gws := clustertest.Gateways(t, n)
	ctx := clustertest.Context(t)
	for round := range 3 {
		var firsts, lasts atomic.Int32
		clustertest.Concurrently(t, n, func(i int) error {
			r, err := presence.New(gws[i].Presence).Join(ctx, "app", "presence-one", member("u"), "s"+strconv.Itoa(i), "gw-"+strconv.Itoa(i), 0)
			if r.First {
				firsts.Add(1)
			}
			return err
		})
		clustertest.Concurrently(t, n, func(i int) error {
			last, _, err := presence.New(gws[i].Presence).Leave(ctx, "app", "presence-one", "u", "s"+strconv.Itoa(i))
			if last {
				lasts.Add(1)
			}
			return err
		})
		if firsts.Load() != 1 || lasts.Load() != 1 {
			t.Fatalf("round %d: %d saw First and %d saw last, want 1 and 1", round, firsts.Load(), lasts.Load())
		}
	}
	clustertest.AwaitSettled(t, ctx, gws[0].Presence, 0)
}

// rawState mirrors the presence key's value, to check it whole.
type rawState struct {
	Members map[string]struct {
		Conns map[string]string `json:"c"`
	} `json:"m"`
}

// TestChurn: gateways join and leave connections of a few users on a few
// channels at once, under the per-user bound. Afterwards every channel's
// key holds exactly the connections still in, a channel emptied has no
// key, no marker outlives its TTL, and each user's First and last
// alternated.
func TestChurn(t *testing.T) {
	const (
		gateways = 6
		steps    = 50
		channels = 3
		users    = 4
		bound    = 4
	)
	gws := clustertest.Gateways(t, gateways)
	ctx := clustertest.Context(t)
	lim := presence.Limits{UserConnections: bound}
	tally := clustertest.NewTally(bound)
	var refused atomic.Int32
	// A holder is a user on a channel.
	holder := func(ch, user string) string { return ch + " " + user }
	clustertest.Concurrently(t, gateways, func(g int) error {
		s, gw := presence.New(gws[g].Presence), "gw-"+strconv.Itoa(g)
		rng := rand.New(rand.NewPCG(uint64(g), 9))
		type conn struct{ ch, user, sid string }
		var mine []conn
		for i := range steps {
			if len(mine) > 0 && rng.IntN(3) == 0 {
				k := rng.IntN(len(mine))
				c := mine[k]
				mine = append(mine[:k], mine[k+1:]...)
				tally.Out(holder(c.ch, c.user), c.sid)
				last, _, err := s.Leave(ctx, "app", c.ch, c.user, c.sid)
				if err != nil {
					return err
				}
				if last {
					tally.Last(holder(c.ch, c.user))
				}
				continue
			}
			c := conn{"presence-" + strconv.Itoa(rng.IntN(channels)), strconv.Itoa(rng.IntN(users)), gw + "." + strconv.Itoa(i)}
			r, err := s.JoinLimited(ctx, "app", c.ch, member(c.user), c.sid, gw, lim)
			if errors.Is(err, presence.ErrUserConnections) {
				refused.Add(1)
				continue
			}
			if err != nil {
				return err
			}
			mine = append(mine, c)
			tally.In(holder(c.ch, c.user), c.sid, gw, r.First)
		}
		return nil
	})
	t.Logf("%d joins refused at the per-user bound", refused.Load())
	tally.Check(t)

	s := presence.New(gws[0].Presence)
	want := map[string]map[string]map[string]string{} // channel -> user -> socket -> gateway
	for h, conns := range tally.Held() {
		ch, user, _ := strings.Cut(h, " ")
		if want[ch] == nil {
			want[ch] = map[string]map[string]string{}
		}
		want[ch][user] = conns
	}
	for c := range channels {
		ch := "presence-" + strconv.Itoa(c)
		e, err := gws[0].Presence.Get(ctx, cluster.Key("app", ch))
		if want[ch] == nil {
			if !errors.Is(err, jetstream.ErrKeyNotFound) {
				t.Errorf("%s emptied, but its key: %v", ch, err)
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		var st rawState
		if err := json.Unmarshal(e.Value(), &st); err != nil {
			t.Fatal(err)
		}
		got := map[string]map[string]string{}
		for id, m := range st.Members {
			got[id] = m.Conns
		}
		if !reflect.DeepEqual(got, want[ch]) {
			t.Errorf("%s holds %v, want %v", ch, got, want[ch])
		}
		members, err := s.Members(ctx, "app", ch)
		if err != nil || len(members) != len(want[ch]) {
			t.Errorf("Members(%s) = %v, %v", ch, ids(members), err)
		}
	}
	clustertest.AwaitSettled(t, ctx, gws[0].Presence, len(want))

	// Everyone leaves: nothing is left, not even markers.
	for ch, us := range want {
		for user, conns := range us {
			for sid := range conns {
				if _, _, err := s.Leave(ctx, "app", ch, user, sid); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	clustertest.AwaitSettled(t, ctx, gws[0].Presence, 0)
}

// TestRemoveGatewaysExceptGoesOnPastABadChannel: a channel whose value
// cannot be read fails the sweep's error, not the other channels.
// A channel whose value does not parse reads as empty: the sweep goes on
// past it, and the next join rewrites it, rather than every join, leave
// and sweep failing on it for good.
func TestABadChannelValueReadsAsEmpty(t *testing.T) {
	s, kv, ctx := newStore(t)
	for _, ch := range []string{"presence-a", "presence-c"} {
		if _, err := s.Join(ctx, "app", ch, member("1"), "1."+ch, "dead", 0); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := kv.Put(ctx, cluster.Key("app", "presence-b"), []byte("not json")); err != nil {
		t.Fatal(err)
	}
	removed, err := s.RemoveGatewaysExcept(ctx, cluster.LiveSet{"live": true})
	if err != nil {
		t.Fatalf("sweep: %v", err)
	}
	var chs []string
	for _, r := range removed {
		chs = append(chs, r.Channel)
	}
	sort.Strings(chs)
	if !reflect.DeepEqual(chs, []string{"presence-a", "presence-c"}) {
		t.Fatalf("removed from %v, want both good channels", chs)
	}
	r, err := s.Join(ctx, "app", "presence-b", member("2"), "2.b", "live", 0)
	if err != nil || !r.First || len(r.Members) != 1 {
		t.Fatalf("join on the bad channel: %+v %v", r, err)
	}
	if last, _, err := s.Leave(ctx, "app", "presence-b", "2", "2.b"); err != nil || !last {
		t.Fatalf("leave: %v %v", last, err)
	}
}
