// Package clustertest sets up the shared-state buckets on a real embedded
// NATS JetStream for tests, and checks what churn leaves in them.
package clustertest

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/resoundhq/resound/internal/cluster"
	"github.com/resoundhq/resound/internal/natsembed/natstest"
)

// MarkerTTL is the marker TTL of the stores tests get: the least the
// server takes, so that waiting for markers to go is short.
const MarkerTTL = time.Second

// Gateways starts one server and returns n sets of stores on it, each on
// its own connection, as n gateways would have them.
func Gateways(t testing.TB, n int) []*cluster.Stores {
	t.Helper()
	srv := natstest.Server(t, false)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out := make([]*cluster.Stores, n)
	for i := range out {
		js, err := jetstream.New(natstest.Conn(t, srv, "gw-"+strconv.Itoa(i)))
		if err != nil {
			t.Fatal(err)
		}
		if out[i], err = cluster.Ensure(ctx, js, cluster.Options{MarkerTTL: MarkerTTL}); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// Context is a context for one test, bounded so that a wedged test fails
// rather than hangs.
func Context(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// AwaitSettled waits (up to a deadline well past the marker TTL) until the
// bucket's stream holds exactly its live keys: one message per key (the
// buckets keep one revision) and no removal marker. It fails the test if
// the live keys are not want, or if markers outlast the deadline.
func AwaitSettled(t testing.TB, ctx context.Context, b *cluster.Bucket, want int) {
	t.Helper()
	keys, err := b.Keys(ctx)
	if err != nil && !errors.Is(err, jetstream.ErrNoKeysFound) {
		t.Fatal(err)
	}
	if len(keys) != want {
		t.Fatalf("bucket %s has %d keys, want %d: %v", b.Bucket(), len(keys), want, keys)
	}
	deadline := time.Now().Add(MarkerTTL + 20*time.Second)
	for {
		st, err := b.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.Values() == uint64(want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("bucket %s still holds %d messages for %d keys: removal markers outlived their TTL", b.Bucket(), st.Values(), want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Concurrently runs f(0) … f(n-1) on n goroutines released together, and
// fails the test with their errors once all are done.
func Concurrently(t testing.TB, n int, f func(i int) error) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make([]error, n)
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			errs[i] = f(i)
		}()
	}
	close(start)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
}

// Tally is what churn should have left: for each holder (a user on a
// channel, a signed-in user), the connections it holds and how many
// times a store said it was the holder's first and its last.
//
// A connection leaves the tally before the store and joins it after, so
// that at every moment the tally holds no more than the store: a bound
// the store keeps then holds for the tally too, and In checks it.
type Tally struct {
	bound         int
	mu            sync.Mutex
	held          map[string]map[string]string // holder -> socket -> gateway
	firsts, lasts map[string]int
	overBound     bool
}

// NewTally returns an empty tally checking a bound per holder (0: none).
func NewTally(bound int) *Tally {
	return &Tally{bound: bound, held: map[string]map[string]string{}, firsts: map[string]int{}, lasts: map[string]int{}}
}

// In records a connection the store took, and whether it saw the holder's
// first.
func (ty *Tally) In(holder, socketID, gatewayID string, first bool) {
	ty.mu.Lock()
	defer ty.mu.Unlock()
	if ty.held[holder] == nil {
		ty.held[holder] = map[string]string{}
	}
	ty.held[holder][socketID] = gatewayID
	if ty.bound > 0 && len(ty.held[holder]) > ty.bound {
		ty.overBound = true
	}
	if first {
		ty.firsts[holder]++
	}
}

// Out forgets a connection the store is about to drop.
func (ty *Tally) Out(holder, socketID string) {
	ty.mu.Lock()
	defer ty.mu.Unlock()
	delete(ty.held[holder], socketID)
}

// Last records that the store saw a holder's last connection go.
func (ty *Tally) Last(holder string) {
	ty.mu.Lock()
	defer ty.mu.Unlock()
	ty.lasts[holder]++
}

// Held is each holder's connections still in, holders with none left out.
// Call it once the churn is over.
func (ty *Tally) Held() map[string]map[string]string {
	out := map[string]map[string]string{}
	for h, conns := range ty.held {
		if len(conns) > 0 {
			out[h] = conns
		}
	}
	return out
}

// Check fails the test if a holder passed the bound, or if its firsts and
// lasts did not alternate: exactly one first per time a holder came in,
// one last per time it went, so firsts = lasts + (1 if still in).
func (ty *Tally) Check(t testing.TB) {
	t.Helper()
	if ty.overBound {
		t.Errorf("a holder had more than %d connections", ty.bound)
	}
	for h := range ty.firsts {
		still := 0
		if len(ty.held[h]) > 0 {
			still = 1
		}
		if ty.firsts[h] != ty.lasts[h]+still {
			t.Errorf("%s: %d firsts, %d lasts, still in: %d", h, ty.firsts[h], ty.lasts[h], still)
		}
	}
	for h, n := range ty.lasts {
		if ty.firsts[h] == 0 {
			t.Errorf("%s: %d lasts and no first", h, n)
		}
	}
}
