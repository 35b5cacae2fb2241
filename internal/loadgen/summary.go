package loadgen

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"sort"
	"strconv"
	"strings"
)

// Summary is the one JSON line a run prints. Counts add up across
// processes; the histograms under "hist" merge exactly, so `loadgen merge`
// recomputes the percentiles of several processes from them.
type Summary struct {
	Mode        string   `json:"mode"`
	Run         string   `json:"run"`
	Processes   int      `json:"processes"`
	Shards      []string `json:"shards"`
	Target      string   `json:"target"`
	Start       string   `json:"start"`
	ElapsedSec  float64  `json:"elapsed_s"`
	Interrupted bool     `json:"interrupted,omitempty"`
	Errors      []string `json:"errors,omitempty"`
	Settings    Settings `json:"settings"`

	Conns       ConnStats   `json:"conns"`
	ConnectMs   Percentiles `json:"connect_ms"`
	SubscribeMs Percentiles `json:"subscribe_ms"`

	Idle      *IdleStats   `json:"idle,omitempty"`
	Fanout    *FanoutStats `json:"fanout,omitempty"`
	LatencyMs *Percentiles `json:"latency_ms,omitempty"`
	TriggerMs *Percentiles `json:"trigger_ms,omitempty"`
	Churn     *ChurnStats  `json:"churn,omitempty"`
	// PhaseLatencyMs is LatencyMs by -control phase.
	PhaseLatencyMs map[string]Percentiles `json:"phase_latency_ms,omitempty"`
	All            *AllStats              `json:"all,omitempty"`
	AllLatencyMs   *Percentiles           `json:"all_latency_ms,omitempty"`

	LoadgenRSSKiB int64 `json:"loadgen_rss_kib"`
	Hist          Hists `json:"hist"`
}

// Settings echoes the run's parameters (of the first process, after a
// merge, except conns which is the sum of what each process held).
type Settings struct {
	Conns       int     `json:"conns"`
	Channels    int     `json:"channels"`
	DurationSec float64 `json:"duration_s"`
	Rate        float64 `json:"rate"`
	Events      int     `json:"events,omitempty"`
	Batch       int     `json:"batch,omitempty"`
	Inflight    int     `json:"inflight,omitempty"`
	Ramp        float64 `json:"ramp"`
	Sources     int     `json:"sources"`
	Pollers     int     `json:"pollers"`
	WSURLs      int     `json:"ws_urls,omitempty"`
	Reconnect   bool    `json:"reconnect,omitempty"`
	ShardBy     string  `json:"shard_by,omitempty"`
	Payload     int     `json:"payload,omitempty"`
}

// ConnStats counts connections. A connection is failed if it never got to
// subscribed, dropped if it did and then was lost before the run closed
// it (with -reconnect, each time it was lost). Failures counts both, by
// kind, and failed reconnection attempts as reconnect_<kind>. Established,
// Subscribed and the connect and subscribe times are of first
// connections; Reconnects counts the subscriptions made again after a
// loss.
type ConnStats struct {
	Planned         int64            `json:"planned"`
	Attempted       int64            `json:"attempted"`
	Established     int64            `json:"established"`
	Subscribed      int64            `json:"subscribed"`
	Failed          int64            `json:"failed"`
	Dropped         int64            `json:"dropped"`
	Reconnects      int64            `json:"reconnects"`
	Failures        map[string]int64 `json:"failures"`
	ClosedClean     int64            `json:"closed_clean"`
	PingsAnswered   int64            `json:"pusher_pings_answered"`
	WSPingsAnswered int64            `json:"ws_pings_answered"`
}

// IdleStats is what idle adds.
type IdleStats struct {
	HeldSec            float64 `json:"held_s"`
	TargetPID          int     `json:"target_pid,omitempty"`
	TargetRSSBeforeKiB int64   `json:"target_rss_before_kib,omitempty"`
	TargetRSSAfterKiB  int64   `json:"target_rss_after_kib,omitempty"`
	KiBPerConn         float64 `json:"target_kib_per_conn,omitempty"`
}

// FanoutStats is what fanout adds. Expected is the sum over subscribed
// connections still open at the end of the events acknowledged on their
// channel; Deliveries counts distinct events received; Missing =
// Expected - Deliveries (never negative); Duplicates are events received
// again; OutOfOrder are events received after a later one on the same
// channel (each is also a distinct delivery). With -reconnect, a
// connection lost on the way is counted too, and Gap is the events sent
// on its channel while it was not subscribed, which Expected leaves out;
// GapReceived counts those that arrived anyway (conn in poller_linux.go
// has the exact rules). Subscribers counts the connections subscribed at
// the end.
type FanoutStats struct {
	Channels        int64            `json:"channels"`
	Subscribers     int64            `json:"subscribers"`
	EventsSent      int64            `json:"events_sent"`
	Requests        int64            `json:"requests"`
	RequestFailures map[string]int64 `json:"request_failures"`
	SendSec         float64          `json:"send_s"`
	EventsPerSec    float64          `json:"events_per_s"`
	Expected        int64            `json:"expected"`
	Deliveries      int64            `json:"deliveries"`
	Missing         int64            `json:"missing"`
	Duplicates      int64            `json:"duplicates"`
	// DuplicatesResent are duplicates of events sent again after a failed
	// request (resentSet): the producer's, not counted in Duplicates.
	DuplicatesResent int64 `json:"duplicates_resent"`
	// DuplicatesAcrossReconnect are events a connection that reconnected
	// received on its new subscription and had had on an earlier one,
	// sent before the new subscription was made (Pusher's contract is per
	// connection): not counted in Duplicates.
	DuplicatesAcrossReconnect int64   `json:"duplicates_across_reconnect"`
	OutOfOrder                int64   `json:"out_of_order"`
	Unexpected                int64   `json:"unexpected"`
	Malformed                 int64   `json:"malformed"`
	Gap                       int64   `json:"gap"`
	GapReceived               int64   `json:"gap_received"`
	ReceiveSec                float64 `json:"receive_s"`
	DeliveriesPerSec          float64 `json:"deliveries_per_s"`
}

// ChurnStats is what churn adds.
type ChurnStats struct {
	WindowSec        float64 `json:"window_s"`
	Completed        int64   `json:"completed"`
	HandshakesPerSec float64 `json:"handshakes_per_s"`
	CompletedPerSec  float64 `json:"completed_per_s"`
}

// Hists are the mergeable histograms (nanoseconds).
type Hists struct {
	Connect   *Hist `json:"connect"`
	Subscribe *Hist `json:"subscribe"`
	Latency   *Hist `json:"latency,omitempty"`
	Trigger   *Hist `json:"trigger,omitempty"`
	// Phases are Latency by -control phase; All is the all channel's.
	Phases map[string]*Hist `json:"phases,omitempty"`
	All    *Hist            `json:"all,omitempty"`
}

// AllStats is what -all adds: the all channel's events, each counted once
// per connection. A connection subscribed to it before an event was sent
// and never lost should get it exactly once: then an event's Deliveries
// equal Subscribed, and Duplicates stay 0.
type AllStats struct {
	Channel string `json:"channel"`
	// Subscribed counts the connections whose first subscription to the
	// channel succeeded.
	Subscribed int64 `json:"subscribed"`
	// Deliveries counts (connection, event) pairs received, each once.
	Deliveries int64 `json:"deliveries"`
	Duplicates int64 `json:"duplicates"`
	// OutOfOrder counts events received after a later one.
	OutOfOrder int64 `json:"out_of_order"`
	// Unexpected counts events that were not numbered 1 to MaxAllEvents.
	Unexpected int64 `json:"unexpected"`
	// Events are by sequence number (Events[n-1] is event n), up to the
	// highest one received.
	Events []AllEvent `json:"events"`
}

// AllEvent is one event of the all channel.
type AllEvent struct {
	Seq        int   `json:"seq"`
	Deliveries int64 `json:"deliveries"`
	// FirstRecvMs and LastRecvMs are the unix times (ms) of its first and
	// last receipt; LastLatencyMs is the longest time from its trigger to a
	// receipt: the time to its last delivery.
	FirstRecvMs   int64   `json:"first_recv_unix_ms"`
	LastRecvMs    int64   `json:"last_recv_unix_ms"`
	LastLatencyMs float64 `json:"last_latency_ms"`
}

func (e *AllEvent) merge(o AllEvent) {
	e.Seq = o.Seq
	if o.Deliveries == 0 {
		return
	}
	if e.Deliveries == 0 || o.FirstRecvMs < e.FirstRecvMs {
		e.FirstRecvMs = o.FirstRecvMs
	}
	e.Deliveries += o.Deliveries
	e.LastRecvMs = max(e.LastRecvMs, o.LastRecvMs)
	e.LastLatencyMs = max(e.LastLatencyMs, o.LastLatencyMs)
}

// event returns Events grown to hold sequence number seq.
func (a *AllStats) event(seq int) []AllEvent {
	for len(a.Events) < seq {
		a.Events = append(a.Events, AllEvent{Seq: len(a.Events) + 1})
	}
	return a.Events
}

func (a *AllStats) merge(o *AllStats) {
	a.Subscribed += o.Subscribed
	a.Deliveries += o.Deliveries
	a.Duplicates += o.Duplicates
	a.OutOfOrder += o.OutOfOrder
	a.Unexpected += o.Unexpected
	for i, e := range o.Events {
		a.Events = a.event(i + 1)
		a.Events[i].merge(e)
	}
}

func addMap(dst *map[string]int64, src map[string]int64) {
	if len(src) == 0 {
		return
	}
	if *dst == nil {
		*dst = map[string]int64{}
	}
	for k, v := range src {
		(*dst)[k] += v
	}
}

func mergeHist(dst **Hist, src *Hist) {
	if src == nil {
		return
	}
	if *dst == nil {
		*dst = &Hist{}
	}
	(*dst).Merge(src)
}

func round3(v float64) float64 { return math.Round(v*1000) / 1000 }

// finish recomputes the digests from the histograms.
func (s *Summary) finish() {
	if s.Hist.Connect == nil {
		s.Hist.Connect = &Hist{}
	}
	if s.Hist.Subscribe == nil {
		s.Hist.Subscribe = &Hist{}
	}
	if s.Conns.Failures == nil {
		s.Conns.Failures = map[string]int64{}
	}
	s.ConnectMs = s.Hist.Connect.Digest()
	s.SubscribeMs = s.Hist.Subscribe.Digest()
	if s.Hist.Latency != nil {
		d := s.Hist.Latency.Digest()
		s.LatencyMs = &d
	}
	if s.Hist.Trigger != nil {
		d := s.Hist.Trigger.Digest()
		s.TriggerMs = &d
	}
	if s.Hist.All != nil {
		d := s.Hist.All.Digest()
		s.AllLatencyMs = &d
	}
	s.PhaseLatencyMs = nil
	for name, h := range s.Hist.Phases {
		if s.PhaseLatencyMs == nil {
			s.PhaseLatencyMs = map[string]Percentiles{}
		}
		s.PhaseLatencyMs[name] = h.Digest()
	}
	if f := s.Fanout; f != nil {
		if f.RequestFailures == nil {
			f.RequestFailures = map[string]int64{}
		}
		f.SendSec, f.ReceiveSec = round3(f.SendSec), round3(f.ReceiveSec)
		f.EventsPerSec, f.DeliveriesPerSec = round3(f.EventsPerSec), round3(f.DeliveriesPerSec)
	}
	if c := s.Churn; c != nil {
		c.HandshakesPerSec, c.CompletedPerSec = round3(c.HandshakesPerSec), round3(c.CompletedPerSec)
	}
	s.ElapsedSec = round3(s.ElapsedSec)
}

// Merge combines summaries of processes that ran at the same time against
// the same deployment. Counts and histograms add up exactly. Rates add up
// too, which is right when the processes ran over the same period. Each
// process's idle RSS samples are of the same target, so the merged
// per-connection figure is (largest "after" − smallest "before") / all
// established connections: right when every process sampled "before"
// ahead of any connection and "after" while all were still open (start
// them together with the same -duration).
func Merge(all []*Summary) (*Summary, error) {
	if len(all) == 0 {
		return nil, errors.New("nothing to merge")
	}
	out := &Summary{Mode: all[0].Mode, Run: all[0].Run, Target: all[0].Target, Start: all[0].Start, Settings: all[0].Settings}
	out.Settings.Conns = 0
	runs := map[string]bool{}
	mixedTargets := false
	for _, s := range all {
		if s.Mode != out.Mode {
			return nil, fmt.Errorf("cannot merge a %s summary with a %s one", s.Mode, out.Mode)
		}
		runs[s.Run] = true
		if s.Start < out.Start {
			out.Start = s.Start
		}
		out.Processes += max(s.Processes, 1)
		out.Shards = append(out.Shards, s.Shards...)
		out.ElapsedSec = max(out.ElapsedSec, s.ElapsedSec)
		out.Interrupted = out.Interrupted || s.Interrupted
		out.Errors = append(out.Errors, s.Errors...)
		out.Settings.Conns += s.Settings.Conns
		c, o := &out.Conns, s.Conns
		c.Planned += o.Planned
		c.Attempted += o.Attempted
		c.Established += o.Established
		c.Subscribed += o.Subscribed
		c.Failed += o.Failed
		c.Dropped += o.Dropped
		c.Reconnects += o.Reconnects
		c.ClosedClean += o.ClosedClean
		c.PingsAnswered += o.PingsAnswered
		c.WSPingsAnswered += o.WSPingsAnswered
		addMap(&c.Failures, o.Failures)
		out.LoadgenRSSKiB += s.LoadgenRSSKiB
		mergeHist(&out.Hist.Connect, s.Hist.Connect)
		mergeHist(&out.Hist.Subscribe, s.Hist.Subscribe)
		mergeHist(&out.Hist.Latency, s.Hist.Latency)
		mergeHist(&out.Hist.Trigger, s.Hist.Trigger)
		mergeHist(&out.Hist.All, s.Hist.All)
		for name, h := range s.Hist.Phases {
			if out.Hist.Phases == nil {
				out.Hist.Phases = map[string]*Hist{}
			}
			d := out.Hist.Phases[name]
			mergeHist(&d, h)
			out.Hist.Phases[name] = d
		}
		if a := s.All; a != nil {
			if out.All == nil {
				out.All = &AllStats{Channel: a.Channel}
			}
			out.All.merge(a)
		}
		if i := s.Idle; i != nil {
			if out.Idle == nil {
				cp := *i
				out.Idle = &cp
			} else {
				d := out.Idle
				d.HeldSec = max(d.HeldSec, i.HeldSec)
				if i.TargetPID != 0 {
					if d.TargetPID == 0 {
						d.TargetPID, d.TargetRSSBeforeKiB = i.TargetPID, i.TargetRSSBeforeKiB
					}
					if i.TargetPID != d.TargetPID {
						// Several gateways: one process's RSS over every
						// process's connections would mean nothing. Each
						// input summary keeps its own.
						mixedTargets = true
					}
					d.TargetRSSBeforeKiB = min(d.TargetRSSBeforeKiB, i.TargetRSSBeforeKiB)
					d.TargetRSSAfterKiB = max(d.TargetRSSAfterKiB, i.TargetRSSAfterKiB)
				}
			}
		}
		if f := s.Fanout; f != nil {
			if out.Fanout == nil {
				out.Fanout = &FanoutStats{}
			}
			d := out.Fanout
			d.Channels += f.Channels
			d.Subscribers += f.Subscribers
			d.EventsSent += f.EventsSent
			d.Requests += f.Requests
			addMap(&d.RequestFailures, f.RequestFailures)
			d.SendSec = max(d.SendSec, f.SendSec)
			d.EventsPerSec += f.EventsPerSec
			d.Expected += f.Expected
			d.Deliveries += f.Deliveries
			d.Missing += f.Missing
			d.Duplicates += f.Duplicates
			d.DuplicatesResent += f.DuplicatesResent
			d.DuplicatesAcrossReconnect += f.DuplicatesAcrossReconnect
			d.OutOfOrder += f.OutOfOrder
			d.Unexpected += f.Unexpected
			d.Malformed += f.Malformed
			d.Gap += f.Gap
			d.GapReceived += f.GapReceived
			d.ReceiveSec = max(d.ReceiveSec, f.ReceiveSec)
			d.DeliveriesPerSec += f.DeliveriesPerSec
		}
		if c := s.Churn; c != nil {
			if out.Churn == nil {
				out.Churn = &ChurnStats{}
			}
			d := out.Churn
			d.WindowSec = max(d.WindowSec, c.WindowSec)
			d.Completed += c.Completed
			d.HandshakesPerSec += c.HandshakesPerSec
			d.CompletedPerSec += c.CompletedPerSec
		}
	}
	if len(runs) > 1 {
		keys := make([]string, 0, len(runs))
		for k := range runs {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		out.Run = strings.Join(keys, ",")
	}
	if d := out.Idle; d != nil && mixedTargets {
		d.TargetPID, d.TargetRSSBeforeKiB, d.TargetRSSAfterKiB = 0, 0, 0
	}
	if d := out.Idle; d != nil && d.TargetPID != 0 && out.Conns.Established > 0 {
		d.KiBPerConn = round3(float64(d.TargetRSSAfterKiB-d.TargetRSSBeforeKiB) / float64(out.Conns.Established))
	}
	out.finish()
	return out, nil
}

// ReadSummaryFile reads a summary: the file's last line that parses as one
// (so a captured stdout with other lines before it works too).
func ReadSummaryFile(path string) (*Summary, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	var lastErr error = errors.New("empty file")
	for i := len(lines) - 1; i >= 0; i-- {
		l := strings.TrimSpace(lines[i])
		if !strings.HasPrefix(l, "{") {
			continue
		}
		var s Summary
		if err := json.Unmarshal([]byte(l), &s); err != nil {
			lastErr = err
			continue
		}
		if s.Mode == "" {
			lastErr = errors.New("not a loadgen summary")
			continue
		}
		return &s, nil
	}
	return nil, fmt.Errorf("%s: no summary line (%v)", path, lastErr)
}

// readRSS returns a process's VmRSS in KiB ("self" for this process).
func readRSS(pid string) (int64, error) {
	b, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) >= 1 {
				return strconv.ParseInt(f[0], 10, 64)
			}
		}
	}
	return 0, errors.New("no VmRSS in /proc/" + pid + "/status")
}
