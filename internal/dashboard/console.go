package dashboard

import (
	"encoding/json"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/resoundhq/resound/internal/console"
	"github.com/resoundhq/resound/internal/wire"
)

// The debug console: while at least one console stream of an app is open
// on this gateway, the gateway holds one NATS subscription to the app's
// entries and renews the app's watch lease, which makes every process
// publish them (internal/console). Each stream has a bounded buffer: a
// browser that reads too slowly loses entries, and is told how many,
// without holding up the subscription or the other browsers.

// watch is one app's console on this gateway.
type watch struct {
	app  string
	sub  *nats.Subscription
	stop chan struct{}

	mu      sync.RWMutex
	streams map[*consoleStream]struct{}
}

// consoleStream is one browser's console.
type consoleStream struct {
	entries chan consoleItem
	// dropped counts the entries left out for this browser alone: its
	// buffer was full.
	dropped atomic.Int64
}

type consoleItem struct {
	data []byte
	// dropped is what the publishing process left out before this entry
	// (its rate cap).
	dropped int
}

// maxEntriesPerWrite bounds the entries written to a browser at once.
const maxEntriesPerWrite = 64

func (d *Dashboard) serveConsole(w http.ResponseWriter, r *http.Request, app string) {
	st, closeStream, ok := d.openStream(w)
	if !ok {
		return
	}
	defer closeStream()
	cs := &consoleStream{entries: make(chan consoleItem, d.opts.StreamBuffer)}
	if err := d.watchConsole(app, cs); err != nil {
		d.opts.Log.Warn().Err(err).Str("app_id", app).Msg("dashboard: subscribing to the console")
		return
	}
	defer d.unwatchConsole(app, cs)
	hb := time.NewTicker(d.opts.Heartbeat)
	defer hb.Stop()
	for {
		select {
		case it := <-cs.entries:
			// Whatever else waits goes out in the same write.
			writeEntry(st, cs, it)
		more:
			for n := 1; n < maxEntriesPerWrite; n++ {
				select {
				case it = <-cs.entries:
					writeEntry(st, cs, it)
				default:
					break more
				}
			}
		case <-hb.C:
			if n := cs.dropped.Swap(0); n > 0 {
				st.event("dropped", dropped(n))
			}
			st.heartbeat()
		case <-r.Context().Done():
			return
		case <-d.opts.Context.Done():
			return
		}
		if st.flush() != nil {
			return
		}
	}
}

// writeEntry queues an entry, after what was dropped before it.
func writeEntry(st *sse, cs *consoleStream, it consoleItem) {
	if n := cs.dropped.Swap(0) + int64(it.dropped); n > 0 {
		st.event("dropped", dropped(n))
	}
	st.event("entry", it.data)
}

func dropped(n int64) []byte {
	return []byte(`{"count":` + strconv.FormatInt(n, 10) + `}`)
}

// watchConsole adds a stream to its app's console, subscribing and
// starting the lease for the first.
func (d *Dashboard) watchConsole(app string, cs *consoleStream) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	wt := d.watches[app]
	if wt == nil {
		wt = &watch{app: app, stop: make(chan struct{}), streams: map[*consoleStream]struct{}{}}
		sub, err := d.opts.Conn.Subscribe(console.Subject(app), wt.deliver)
		if err != nil {
			return err
		}
		wt.sub = sub
		d.watches[app] = wt
		go d.renew(wt)
	}
	wt.mu.Lock()
	wt.streams[cs] = struct{}{}
	wt.mu.Unlock()
	return nil
}

// unwatchConsole removes a stream; the last one ends the subscription and
// stops renewing the lease, which then lapses in every process.
func (d *Dashboard) unwatchConsole(app string, cs *consoleStream) {
	d.mu.Lock()
	defer d.mu.Unlock()
	wt := d.watches[app]
	if wt == nil {
		return
	}
	wt.mu.Lock()
	delete(wt.streams, cs)
	empty := len(wt.streams) == 0
	wt.mu.Unlock()
	if empty {
		_ = wt.sub.Unsubscribe()
		close(wt.stop)
		delete(d.watches, app)
	}
}

// renew says the app is watched at once, then every third of the lease.
func (d *Dashboard) renew(wt *watch) {
	t := time.NewTicker(d.opts.Lease / 3)
	defer t.Stop()
	for {
		b, _ := json.Marshal(wire.ConsoleWatchRequest{App: wt.app, UntilMS: d.opts.Now().Add(d.opts.Lease).UnixMilli()})
		if err := d.opts.Conn.Publish(wire.ConsoleWatch, b); err != nil {
			d.opts.Log.Warn().Err(err).Msg("dashboard: renewing the console watch")
		}
		select {
		case <-t.C:
		case <-wt.stop:
			return
		case <-d.opts.Context.Done():
			return
		}
	}
}

// deliver hands an entry to every stream of the app, on NATS's goroutine:
// it never waits on a browser.
func (wt *watch) deliver(m *nats.Msg) {
	var head struct {
		Dropped int `json:"dropped"`
	}
	if json.Unmarshal(m.Data, &head) != nil {
		return
	}
	it := consoleItem{data: m.Data, dropped: head.Dropped}
	wt.mu.RLock()
	defer wt.mu.RUnlock()
	for cs := range wt.streams {
		select {
		case cs.entries <- it:
		default:
			cs.dropped.Add(1 + int64(it.dropped))
		}
	}
}
