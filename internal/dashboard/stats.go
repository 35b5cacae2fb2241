package dashboard

import (
	"context"
	"encoding/json"
	"net/http"
	"sync"
	"time"

	"github.com/resoundhq/resound/internal/console"
	"github.com/resoundhq/resound/internal/wire"
)

// The figures: while at least one stats stream is open on this gateway,
// one goroutine asks every process for its figures once a second
// (wire.Stats), sums them per app, makes rates of the counters' growth
// per process, and hands each stream the latest figures of its app. With
// no stream open, nothing is asked.

// Stats is one app's figures across the cluster: the data of a "stats"
// event.
type Stats struct {
	TimeMS          int64   `json:"time_ms"`
	App             string  `json:"app"`
	Gateways        int     `json:"gateways"`
	Workers         int     `json:"workers"`
	Connections     int     `json:"connections"`
	Channels        int     `json:"channels"`
	Subscriptions   int     `json:"subscriptions"`
	PresenceMembers int     `json:"presence_members"`
	MessagesInPerS  float64 `json:"messages_in_per_s"`
	DeliveriesPerS  float64 `json:"deliveries_out_per_s"`
	ErrorsPerS      float64 `json:"errors_per_s"`
	Webhooks        Hooks   `json:"webhooks"`
}

// Hooks is the webhooks' health: counters since the workers started, and
// the rate of those sent.
type Hooks struct {
	Sent     int64   `json:"sent"`
	Failed   int64   `json:"failed"`
	Dropped  int64   `json:"dropped"`
	SentPerS float64 `json:"sent_per_s"`
}

// statsStream is one browser's stats: latest holds the newest figures not
// yet sent (older ones are replaced, never queued).
type statsStream struct {
	app    string
	latest chan []byte
}

func (d *Dashboard) serveStats(w http.ResponseWriter, r *http.Request, app string) {
	st, closeStream, ok := d.openStream(w)
	if !ok {
		return
	}
	defer closeStream()
	ss := &statsStream{app: app, latest: make(chan []byte, 1)}
	d.addStats(ss)
	defer d.removeStats(ss)
	hb := time.NewTicker(d.opts.Heartbeat)
	defer hb.Stop()
	for {
		select {
		case b := <-ss.latest:
			st.event("stats", b)
		case <-hb.C:
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

func (d *Dashboard) addStats(ss *statsStream) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stats[ss] = struct{}{}
	if !d.gathered {
		d.gathered = true
		go d.gather()
	}
}

func (d *Dashboard) removeStats(ss *statsStream) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.stats, ss)
}

// statsApps are the apps the open streams show; none stops the gathering.
func (d *Dashboard) statsApps() map[string]bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	apps := map[string]bool{}
	for ss := range d.stats {
		apps[ss.app] = true
	}
	if len(apps) == 0 {
		d.gathered = false
	}
	return apps
}

// sample is one process's answer.
type sample struct {
	kind string
	at   time.Time
	apps map[string]wire.AppStats
}

// gather runs the rounds while streams are open.
func (d *Dashboard) gather() {
	t := time.NewTicker(d.opts.Interval)
	defer t.Stop()
	prev := map[string]sample{}
	for {
		apps := d.statsApps()
		if len(apps) == 0 {
			return
		}
		figures := d.round(apps, prev)
		d.mu.Lock()
		for ss := range d.stats {
			b, ok := figures[ss.app]
			if !ok {
				continue
			}
			select { // replace what the stream has not sent yet
			case <-ss.latest:
			default:
			}
			ss.latest <- b
		}
		d.mu.Unlock()
		select {
		case <-t.C:
		case <-d.opts.Context.Done():
			d.mu.Lock()
			d.gathered = false
			d.mu.Unlock()
			return
		}
	}
}

// round asks every process and every gateway once, and makes each app's
// figures (JSON). prev holds each process's last answer, for the rates;
// round updates it.
func (d *Dashboard) round(apps map[string]bool, prev map[string]sample) map[string][]byte {
	ctx, cancel := context.WithTimeout(d.opts.Context, d.opts.StatsWait)
	defer cancel()
	d.rounds++
	// The distinct channels, asked of the gateways (wire.Query) while the
	// figures come in. Every gateway answers with the names of its
	// channels, which is much for a big app: every fifth round is often
	// enough for a figure that moves slowly; the rounds between show the
	// last count.
	var wg sync.WaitGroup
	var mu sync.Mutex
	if d.opts.Channels != nil {
		for app := range apps {
			if _, ok := d.channels[app]; ok && d.rounds%channelRounds != 0 {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				n, err := d.opts.Channels(ctx, app)
				mu.Lock()
				defer mu.Unlock()
				if err == nil {
					d.channels[app] = n
				} else {
					delete(d.channels, app)
				}
			}()
		}
	}
	cur := d.ask(ctx, len(apps) == 1, apps, prev)
	wg.Wait()
	for app := range d.channels {
		if !apps[app] {
			delete(d.channels, app)
		}
	}
	now := d.opts.Now()
	out := make(map[string][]byte, len(apps))
	for app := range apps {
		s := Stats{TimeMS: now.UnixMilli(), App: app}
		localChannels := 0
		for key, smp := range cur {
			st, ok := smp.apps[app]
			if !ok {
				continue
			}
			switch smp.kind {
			case console.KindGateway:
				s.Gateways++
			case console.KindWorker:
				s.Workers++
			}
			s.Connections += st.Connections
			localChannels += st.Channels
			s.Subscriptions += st.Subscriptions
			s.PresenceMembers += st.PresenceMembers
			s.Webhooks.Sent += st.WebhooksSent
			s.Webhooks.Failed += st.WebhooksFailed
			s.Webhooks.Dropped += st.WebhooksDropped
			p, ok := prev[key]
			if !ok {
				continue // new: its rates count from its next answer
			}
			ps, ok := p.apps[app]
			dt := smp.at.Sub(p.at).Seconds()
			if !ok || dt <= 0 {
				continue
			}
			s.MessagesInPerS += rate(st.MessagesIn, ps.MessagesIn, dt)
			s.DeliveriesPerS += rate(st.DeliveriesOut, ps.DeliveriesOut, dt)
			s.ErrorsPerS += rate(st.Errors, ps.Errors, dt)
			s.Webhooks.SentPerS += rate(st.WebhooksSent, ps.WebhooksSent, dt)
		}
		if n, ok := d.channels[app]; ok {
			s.Channels = n
		} else {
			s.Channels = localChannels // may count a channel once per gateway
		}
		b, _ := json.Marshal(s)
		out[app] = b
	}
	// Keep the processes that did not answer this time for a few rounds:
	// one late answer should not reset their rates.
	for key, smp := range cur {
		prev[key] = smp
	}
	for key, smp := range prev {
		if now.Sub(smp.at) > 10*d.opts.Interval {
			delete(prev, key)
		}
	}
	return out
}

// channelRounds is how often, in rounds, the distinct channels are
// counted anew.
const channelRounds = 5

// rate is a counter's growth per second, rounded to hundredths.
func rate(cur, before int64, dt float64) float64 {
	if cur <= before {
		return 0
	}
	return float64(int64(float64(cur-before)/dt*100+0.5)) / 100
}

// ask publishes a stats request and collects the answers until every
// process that answered last time has answered again, or ctx ends.
func (d *Dashboard) ask(ctx context.Context, one bool, apps map[string]bool, prev map[string]sample) map[string]sample {
	nc := d.opts.Conn
	cur := map[string]sample{}
	inbox := nc.NewRespInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return cur
	}
	defer func() { _ = sub.Unsubscribe() }()
	req := wire.StatsRequest{}
	if one {
		for app := range apps {
			req.App = app
		}
	}
	b, _ := json.Marshal(req)
	if nc.PublishRequest(wire.Stats, inbox, b) != nil {
		return cur
	}
	// Those that answered lately are expected again: once they have, the
	// round ends after a short grace for newcomers. Every tenth round, and
	// the first, waits the whole bound, so that a newcomer slower than
	// the grace is found too.
	waiting := map[string]bool{}
	for key, smp := range prev {
		if d.opts.Now().Sub(smp.at) < 2*d.opts.Interval+d.opts.StatsWait {
			waiting[key] = true
		}
	}
	wholeBound := len(waiting) == 0 || d.rounds%10 == 0
	graced := false
	for {
		m, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			break
		}
		var r wire.StatsReply
		if json.Unmarshal(m.Data, &r) != nil || r.Process == "" {
			continue
		}
		key := r.Kind + "/" + r.Process
		cur[key] = sample{kind: r.Kind, at: d.opts.Now(), apps: r.Apps}
		delete(waiting, key)
		if len(waiting) == 0 && !wholeBound && !graced {
			grace, cancel := context.WithTimeout(ctx, min(50*time.Millisecond, d.opts.StatsWait))
			defer cancel()
			ctx, graced = grace, true
		}
	}
	return cur
}
