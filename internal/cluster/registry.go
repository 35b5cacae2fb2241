package cluster

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"github.com/rs/zerolog"
)

// Registry keeps this process's heartbeat in a bucket (gateways or
// workers) and tells when others appear and disappear.
type Registry struct {
	kv       jetstream.KeyValue
	js       jetstream.JetStream // to check kv's key listing (liveIn)
	ttl      time.Duration
	id       string
	interval time.Duration
	log      zerolog.Logger
	// onLive, when set, is called with the live set after every look.
	onLive func(live map[string]bool)
	// onGone is called with the set of live gateway ids whenever a gateway
	// that was seen alive is gone and this one is among the
	// departureSweepers lowest live ids, and once at start-up, so that
	// state left by gateways that died before this one started is cleaned
	// up too.
	onGone func(ctx context.Context, live map[string]bool)
	// onLapse, when set, is called when this process's heartbeat is back
	// after it lapsed (it could not heartbeat for a TTL, or its key was
	// gone): the others may have swept what it holds, and it must say it
	// again.
	onLapse func(ctx context.Context)

	// rev is the revision of this process's last heartbeat write, 0 if
	// unknown. Written by Register before Run, then only by Run's
	// heartbeat.
	rev uint64
}

// OnLapse sets what to do when this process's heartbeat lapsed and is
// back. Set it before Run.
func (r *Registry) OnLapse(f func(ctx context.Context)) { r.onLapse = f }

// NewGatewayID returns a fresh gateway id.
func NewGatewayID() string { return nuid.Next() }

// NewRegistry returns a registry for the gateway id.
func NewRegistry(stores *Stores, id string, log zerolog.Logger, onGone func(ctx context.Context, live map[string]bool)) *Registry {
	ttl := stores.opts.GatewayTTL
	return &Registry{kv: stores.Gateways, js: stores.js, ttl: ttl, id: id, interval: ttl / 3, log: log, onGone: onGone}
}

// NewWorkerRegistry returns a registry of worker processes; onLive hears
// the live set after every look, to share out the partitions.
func NewWorkerRegistry(stores *Stores, id string, log zerolog.Logger, onLive func(live map[string]bool)) *Registry {
	ttl := min(stores.opts.GatewayTTL, WorkerTTL)
	return &Registry{kv: stores.Workers, js: stores.js, ttl: ttl, id: id, interval: ttl / 3, log: log, onLive: onLive}
}

// WorkerTTL caps how long a dead worker keeps its partitions: heartbeats
// are cheap, and a partition without a worker delays its channels.
const WorkerTTL = 6 * time.Second

// ID is this gateway's id.
func (r *Registry) ID() string { return r.id }

// Live lists the ids of the gateways whose heartbeat has not expired.
func (r *Registry) Live(ctx context.Context) (map[string]bool, error) {
	live, err := liveIn(ctx, r.js, r.kv)
	if err != nil {
		return nil, err
	}
	live[r.id] = true
	return live, nil
}

// LiveGateways lists the gateways whose heartbeat has not expired.
func (s *Stores) LiveGateways(ctx context.Context) (map[string]bool, error) {
	return liveIn(ctx, s.js, s.Gateways)
}

// GatewayLive tells whether one gateway's heartbeat is there: one read of
// its key, for a sweep that found it gone to ask again (SweeperOptions.Recheck).
func (s *Stores) GatewayLive(ctx context.Context, id string) (bool, error) {
	return hasKey(ctx, s.Gateways, id)
}

// hasKey reads one key: whether it holds a value (not removed, not
// expired).
func hasKey(ctx context.Context, kv jetstream.KeyValue, key string) (bool, error) {
	switch _, err := kv.Get(ctx, key); {
	case err == nil:
		return true, nil
	case errors.Is(err, jetstream.ErrKeyNotFound), errors.Is(err, jetstream.ErrKeyDeleted):
		return false, nil
	default:
		return false, err
	}
}

// liveIn lists the keys of a heartbeat bucket whose values are there.
//
// Every key must be in the list: one missing makes its process look gone,
// and a sweep then removes everything it holds (its presence members
// leave, announced to everyone, while their connections stay open). The
// key listing (Keys) alone cannot promise that. It reads the bucket
// through a watcher, whose first pass ends when the server says nothing
// is left to send; a key rewritten while the pass reads it can be counted
// as sent before its new value comes, and is left out. A heartbeat is
// rewritten every third of the TTL, so with tens of processes a listing
// regularly overlaps one: 60 keys rewritten in a loop, a quarter of the
// listings lacked some (nats.py's watcher had the same; its PR 995
// describes it). So the list is checked against the stream's subjects, a
// snapshot the server takes at once, and a key the listing missed is read
// on its own, which also tells a removed key (its marker is still a
// message of the stream) from a live one. Normally the listing is complete
// and that costs one request.
func liveIn(ctx context.Context, js jetstream.JetStream, kv jetstream.KeyValue) (map[string]bool, error) {
	keys, err := kv.Keys(ctx)
	if err != nil && !errors.Is(err, jetstream.ErrNoKeysFound) {
		return nil, err
	}
	live := make(map[string]bool, len(keys)+1)
	for _, k := range keys {
		live[k] = true
	}
	if js == nil {
		return live, nil
	}
	prefix := "$KV." + kv.Bucket() + "."
	st, err := js.Stream(ctx, "KV_"+kv.Bucket())
	if err != nil {
		return nil, err
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(prefix+">"))
	if err != nil {
		return nil, err
	}
	for subject := range info.State.Subjects {
		k := strings.TrimPrefix(subject, prefix)
		if live[k] {
			continue
		}
		there, err := hasKey(ctx, kv, k)
		if err != nil {
			return nil, err
		}
		if there {
			live[k] = true // the listing missed it
		}
	}
	return live, nil
}

// leads reports whether this gateway has the lowest id among the live.
func (r *Registry) leads(live map[string]bool) bool { return r.rank(live) == 0 }

// rank is the number of live gateways whose id is lower than this one's.
func (r *Registry) rank(live map[string]bool) int {
	n := 0
	for id := range live {
		if id < r.id {
			n++
		}
	}
	return n
}

// departureSweepers is how many live gateways sweep when they see one go:
// the lowest ids. Every gateway swept before, and a sweep reads every key
// of the presence, users and counts buckets, so a gateway leaving a
// cluster of G cost G full reads of the shared state, all contending for
// the same keys (60 gateways × 5,000 presence channels: 300,000 reads per
// departure, the million-socket run's drain). Two rather than one, so that
// a sweeper dying with the gateway it sweeps after still leaves one; if
// both die, the next lowest sees them gone and sweeps.
const departureSweepers = 2

// Register writes this gateway's first heartbeat. Call it before the
// gateway takes connections: a sweep by another gateway must never see
// members held by a gateway missing from the registry.
func (r *Registry) Register(ctx context.Context) error {
	rev, err := r.kv.Put(ctx, r.id, []byte(time.Now().UTC().Format(time.RFC3339)))
	if err == nil {
		r.rev = rev
	}
	return err
}

// Run heartbeats until ctx ends, then removes this gateway's key so that
// the others clean up after it at once.
//
// Sweeps (onGone) and the reassertion after a lapse (onLapse) run on a
// goroutine of their own, never on the heartbeat's: they read and write
// the shared state key by key and can take longer than a TTL on a loaded
// cluster (the million-socket run: a sweep of 5,000 presence keys under
// a load average of 270). Run inline, they made the sweeper's own
// heartbeat lapse, the others swept it in turn, and the sweeps cascaded
// through live gateways, taking their presence members. A sweep asked
// for while one runs waits, and only the latest live set is kept.
func (r *Registry) Run(ctx context.Context) {
	var chores sync.WaitGroup
	defer chores.Wait()
	sweeps := make(chan map[string]bool, 1)
	lapses := make(chan struct{}, 1)
	chores.Add(1)
	go func() {
		defer chores.Done()
		for {
			select {
			case live := <-sweeps:
				r.onGone(ctx, live)
			case <-lapses:
				r.log.Warn().Msg("heartbeat lapsed: saying again what this process holds")
				r.onLapse(ctx)
			case <-ctx.Done():
				return
			}
		}
	}()
	lastBeat := time.Now() // Register wrote the first
	lapsed := false
	// A heartbeat is a compare-and-set on the last one's revision: if it
	// takes, the key never expired nor was removed, so no listing could
	// have missed this process and nobody swept what it holds, however
	// late the beat. Only a key really gone is a lapse. Judged by the
	// delay alone (a beat later than the TTL less half an interval), a
	// saturated machine lapsed gateways whose keys were still there, and
	// each lapse wrote again everything its gateway held (the
	// million-socket run's drain: 286 lapses, 18,692 presence writes),
	// loading NATS further. The delay still decides when the revision is
	// unknown (Register failed).
	beat := func() {
		c, cancel := context.WithTimeout(ctx, r.interval)
		defer cancel()
		value := []byte(time.Now().UTC().Format(time.RFC3339))
		gone := false
		if r.rev != 0 {
			rev, err := r.kv.Update(c, r.id, value, r.rev)
			switch {
			case err == nil:
				r.rev = rev
				lastBeat = time.Now()
				return
			case isConflict(err) || errors.Is(err, jetstream.ErrKeyNotFound):
				gone = true // expired, or removed by a sweep: write it afresh
			default:
				if ctx.Err() == nil {
					r.log.Warn().Err(err).Msg("gateway heartbeat")
				}
				return
			}
		}
		rev, err := r.kv.Put(c, r.id, value)
		if err != nil {
			if ctx.Err() == nil {
				r.log.Warn().Err(err).Msg("gateway heartbeat")
			}
			return
		}
		lapsed = lapsed || gone || (r.rev == 0 && time.Since(lastBeat) >= r.ttl-r.interval/2)
		r.rev = rev
		lastBeat = time.Now()
		if lapsed && r.onLapse != nil {
			lapsed = false
			select {
			case lapses <- struct{}{}:
			default: // one is due already
			}
		}
	}
	beat()
	var seen map[string]bool
	first := true
	lastSweep := time.Now()
	t := time.NewTicker(r.interval)
	defer t.Stop()
	for {
		c, cancel := context.WithTimeout(ctx, r.interval)
		live, err := r.Live(c)
		cancel()
		if err == nil {
			gone := first
			sweeper := r.rank(live) < departureSweepers
			for id := range seen {
				if !live[id] && sweeper {
					gone = true
					r.log.Info().Str("gateway", id).Msg("gateway gone; cleaning up after it")
				}
			}
			// A gateway that lived and died between two of our looks was
			// never seen; the live gateway with the lowest id also sweeps
			// once per TTL, so nothing outlives TTL plus a TTL.
			if !gone && r.leads(live) && time.Since(lastSweep) >= r.ttl {
				gone = true
			}
			if gone && r.onGone != nil {
				offerLatest(sweeps, live)
				lastSweep = time.Now()
			}
			if r.onLive != nil {
				r.onLive(live)
			}
			seen, first = live, false
		} else if ctx.Err() == nil {
			r.log.Warn().Err(err).Msg("listing gateways")
		}
		select {
		case <-ctx.Done():
			// Say goodbye, so the others take over at once; if NATS is
			// away, the key simply expires.
			c, cancel := context.WithTimeout(context.Background(), time.Second)
			_ = r.kv.Delete(c, r.id)
			cancel()
			return
		case <-t.C:
			beat()
		}
	}
}

// offerLatest puts v in ch, a channel of capacity one, replacing what is
// waiting there: the newest live set is the one to sweep against.
func offerLatest(ch chan map[string]bool, v map[string]bool) {
	for {
		select {
		case ch <- v:
			return
		default:
			select {
			case <-ch:
			default:
			}
		}
	}
}
