package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/resoundhq/resound/internal/attack"
)

// An attackCase is one attack of internal/attack with the soak's
// judgement of it. Unlike tests/adversarial, which runs each attack once
// on a fresh all-in-one gateway with nothing else going on, the soak
// repeats them on a gateway that carries the rest of the load: what an
// attack sees is judged on what must hold whatever else runs (the bound
// bites, the connection gets the right code, nothing bad is relayed), and
// the limit counters must grow by at least what the attack alone causes,
// never exactly, since the other load hits bounds too.
type attackCase struct {
	name  string
	bound string // the setting or rule that bounds it, for the report
	// limits are resound_limit_hits_total labels the attack must bump.
	run func(ctx context.Context, a *attacker) (detail string, minHits map[string]int, problems []string)
}

// attacker runs the attacks against one gateway, each kind from a client
// address of its own, so that one attack's per-address count never spills
// into the next, nor into the other load's.
type attacker struct {
	g       *gatewayProc
	round   int
	sources map[string]string
}

func (a *attacker) source(name string) string {
	if s, ok := a.sources[name]; ok {
		return s
	}
	s := "127.0.1." + strconv.Itoa(len(a.sources)+1)
	a.sources[name] = s
	return s
}

// attackCases is the loop, in order. Sizes are the adversarial suite's
// divided by a few: each must reach its bound, and a cycle should take a
// minute or two, so that an hour repeats each one tens of times.
func attackCases(withPanics bool) []attackCase {
	cases := []attackCase{
		{"endless header", "RESOUND_MAX_REQUEST_HEAD (16 KiB): 431, then close", func(ctx context.Context, a *attacker) (string, map[string]int, []string) {
			t := a.g.target
			body := []byte(`{"name":"e","channels":["c"],"data":"d"}`)
			var ws, api attack.EndlessHeaderResult
			var wg sync.WaitGroup
			wg.Add(2)
			go func() {
				defer wg.Done()
				ws = attack.EndlessHeader(ctx, t.Addr, attack.EndlessHeaderOptions{Sockets: 10, Head: t.WebSocketHead(), Duration: 3 * time.Second, Reconnect: true, Source: a.source("endless-ws")})
			}()
			go func() {
				defer wg.Done()
				api = attack.EndlessHeader(ctx, t.Addr, attack.EndlessHeaderOptions{Sockets: 10, Head: t.APIHead(http.MethodPost, "/events", body), Duration: 3 * time.Second, Reconnect: true, Source: a.source("endless-api")})
			}()
			wg.Wait()
			var p []string
			for _, r := range []struct {
				path string
				res  attack.EndlessHeaderResult
			}{{"WebSocket", ws}, {"API", api}} {
				if r.res.Unclosed > 0 || r.res.Attempts == 0 || r.res.Statuses[http.StatusRequestHeaderFieldsTooLarge] != r.res.Attempts {
					p = append(p, fmt.Sprintf("%s: %d sockets, statuses %v, %d never closed, %d could not connect", r.path, r.res.Attempts, r.res.Statuses, r.res.Unclosed, r.res.DialErrors))
				}
			}
			return fmt.Sprintf("%d + %d sockets answered 431, at most %d KiB sent by one", ws.Attempts, api.Attempts, max(ws.MaxSent, api.MaxSent)>>10),
				map[string]int{"request_head": ws.Attempts + api.Attempts}, p
		}},
		{"slowloris", "RESOUND_MAX_HANDSHAKES (100): 503; RESOUND_HANDSHAKE_TIMEOUT (5 s): close", func(ctx context.Context, a *attacker) (string, map[string]int, []string) {
			res := attack.Slowloris(ctx, a.g.addr, attack.SlowlorisOptions{Sockets: 120, Head: a.g.target.WebSocketHead(), Interval: 300 * time.Millisecond, Timeout: 20 * time.Second, Source: a.source("slowloris")})
			var p []string
			if res.Unclosed > 0 || res.Opened != 120 {
				p = append(p, fmt.Sprintf("%d of 120 opened, %d never closed", res.Opened, res.Unclosed))
			}
			for st := range res.Statuses {
				if st != 0 && st != http.StatusServiceUnavailable && st != http.StatusRequestTimeout {
					p = append(p, fmt.Sprintf("statuses %v", res.Statuses))
				}
			}
			return fmt.Sprintf("120 slow heads: statuses %v", res.Statuses),
				map[string]int{"handshake_timeout": 1, "handshakes": res.Statuses[http.StatusServiceUnavailable]}, p
		}},
		{"idle API connections", "RESOUND_MAX_HTTP_CONNECTIONS (200): 503, then close", func(ctx context.Context, a *attacker) (string, map[string]int, []string) {
			h, err := attack.OpenIdleHTTP(ctx, a.g.target, 210, a.source("idle-http"))
			if err != nil {
				return "", nil, []string{err.Error()}
			}
			time.Sleep(time.Second)
			h.Close(-1)
			var p []string
			refused := h.Statuses[http.StatusServiceUnavailable]
			if refused == 0 || h.RefusedOpen > 0 || h.Statuses[http.StatusOK]+refused != 210 {
				p = append(p, fmt.Sprintf("210 connections: statuses %v, %d refused but left open", h.Statuses, h.RefusedOpen))
			}
			return fmt.Sprintf("210 keep-alive connections: statuses %v", h.Statuses), map[string]int{"http_connections": refused}, p
		}},
		{"connections from one address", "RESOUND_MAX_CONNECTIONS_PER_IP (250): 429", func(ctx context.Context, a *attacker) (string, map[string]int, []string) {
			res := attack.ConnectMany(ctx, a.g.target, 260, attack.DialOptions{Source: a.source("per-ip")})
			res.Conns.Close()
			var p []string
			refused := res.Statuses[http.StatusTooManyRequests]
			if len(res.Conns) > 250 || refused < 10 || len(res.Conns)+refused != 260 || len(res.Errors) > 0 {
				p = append(p, fmt.Sprintf("%d connected, refusals %v, errors %v", len(res.Conns), res.Statuses, firstErrs(res.Errors)))
			}
			return fmt.Sprintf("260 connections: %d accepted, %d refused with 429", len(res.Conns), refused), map[string]int{"connections_per_ip": refused}, p
		}},
		{"ping flood", "one pong held per connection (RFC 6455 §5.5.3)", func(ctx context.Context, a *attacker) (string, map[string]int, []string) {
			res := attack.PingFlood(ctx, a.g.target, attack.PingFloodOptions{Conns: 50, Pings: 2000, Payload: 125, Source: a.source("ping-flood")})
			var p []string
			if res.Conns != 50 || res.Alive != res.Conns {
				p = append(p, fmt.Sprintf("%d of 50 connected, %d still answered, closes %v", res.Conns, res.Alive, res.Closes))
			}
			return fmt.Sprintf("50 connections × 2,000 pings never read: %d alive after, at most %d pongs waiting", res.Alive, res.PongsBuffered), nil, p
		}},
		{"slow readers", "RESOUND_MAX_OUTBOUND (64 KiB): cut off", func(ctx context.Context, a *attacker) (string, map[string]int, []string) {
			res := attack.SlowReaders(ctx, a.g.target, attack.SlowReadersOptions{Conns: 100, Channel: "soak-busy", EventSize: 8000, Events: 60, Source: a.source("slow-readers")})
			var p []string
			// The bound is on what the gateway holds: a reader whose
			// kernel buffers took all 480 KB (the server's send buffer
			// grows with the congestion window, which a busy loopback can
			// open wide) is never over it, and rightly not cut off; it
			// must then have had every event. None may be left stuck.
			if res.Err != nil || res.Stuck > 0 || res.CutOff+res.StillOpen != res.Subscribed || res.CutOff < res.Subscribed*9/10 {
				p = append(p, fmt.Sprintf("%d subscribed, %d cut off, %d got everything, %d stuck, error %v", res.Subscribed, res.CutOff, res.StillOpen, res.Stuck, res.Err))
			}
			return fmt.Sprintf("%d readers that never read: %d cut off", res.Subscribed, res.CutOff), map[string]int{"outbound": res.CutOff}, p
		}},
		{"invalid UTF-8", "close 1007; API 400; nothing relayed", func(ctx context.Context, a *attacker) (string, map[string]int, []string) {
			res := attack.InvalidUTF8(ctx, a.g.target, "private-soak-utf8", 2, a.source("utf8"))
			var p []string
			if res.Err != nil || res.TextClose != 1007 || res.BinaryClose != 1007 || res.APIStatus != http.StatusBadRequest || res.InvalidFrames+res.Relayed+res.Lost > 0 {
				p = append(p, fmt.Sprintf("%+v", res))
			}
			return fmt.Sprintf("senders closed %d/%d, API %d, %d relayed", res.TextClose, res.BinaryClose, res.APIStatus, res.Relayed), map[string]int{"invalid_utf8": 2}, p
		}},
		{"close codes", "only sendable codes answered; errors_total bucketed", func(ctx context.Context, a *attacker) (string, map[string]int, []string) {
			res := attack.CloseCodes(ctx, a.g.target, attack.CloseCases(4000+a.round%10*100, 4100+a.round%10*100), 8, a.source("close-codes"))
			var bad []string
			for _, r := range res {
				if why := r.Bad(); why != "" {
					bad = append(bad, r.Case.Name+": "+why)
				}
			}
			var p []string
			if len(bad) > 0 {
				p = append(p, fmt.Sprintf("%d of %d wrong: %s", len(bad), len(res), strings.Join(bad[:min(len(bad), 5)], "; ")))
			}
			return fmt.Sprintf("%d close frames (valid and invalid codes)", len(res)), map[string]int{"protocol_error": 10}, p
		}},
		{"protocol abuse", "close 1002 / 1009 per RFC 6455", func(ctx context.Context, a *attacker) (string, map[string]int, []string) {
			var p []string
			proto, big := 0, 0
			for _, r := range attack.ProtocolAbuse(ctx, a.g.target, attack.AbuseCases(10000), a.source("abuse")) {
				if r.Err != nil || r.Got.Code != r.Case.Want {
					p = append(p, fmt.Sprintf("%s: closed %d (%v, %v), want %d", r.Case.Name, r.Got.Code, r.Got.Err, r.Err, r.Case.Want))
				}
				if r.Case.Want == 1002 {
					proto++
				} else {
					big++
				}
			}
			return fmt.Sprintf("%d broken frames", proto+big), map[string]int{"protocol_error": proto, "message_size": big}, p
		}},
		{"trickled frame", "reassembly linear in the frame's size", func(ctx context.Context, a *attacker) (string, map[string]int, []string) {
			tr := attack.TrickledMessage(ctx, a.g.target, "soak-trickle", 10000, time.Millisecond, a.source("trickle"))
			var p []string
			if !tr.Answered {
				p = append(p, fmt.Sprintf("a %d-byte frame sent a byte at a time was not answered: %v", tr.Size, tr.Err))
			}
			return fmt.Sprintf("%d bytes, one per segment: answered %v", tr.Size, tr.Answered), nil, p
		}},
		{"channel flood", "RESOUND_MAX_CHANNELS_PER_CONNECTION (50): 4301", func(ctx context.Context, a *attacker) (string, map[string]int, []string) {
			res := attack.ChannelFlood(ctx, a.g.target, 60, "soak-flood-"+strconv.Itoa(a.round)+"-", a.source("channels"))
			var p []string
			if res.Err != nil || len(res.Succeeded) != 50 || len(res.Refused) != 10 || res.ErrorCodes[4301] != 10 || res.DeliveredRefused > 0 {
				p = append(p, fmt.Sprintf("%d succeeded, %d refused, codes %v, delivered %d (+%d refused), error %v",
					len(res.Succeeded), len(res.Refused), res.ErrorCodes, res.Delivered, res.DeliveredRefused, res.Err))
			}
			return fmt.Sprintf("60 subscriptions: %d accepted, %d refused", len(res.Succeeded), len(res.Refused)), map[string]int{"channels_per_connection": 10}, p
		}},
		{"client-event flood", "client_event_rate_limit (10/s): 4301", func(ctx context.Context, a *attacker) (string, map[string]int, []string) {
			res := attack.ClientEventFlood(ctx, a.g.target, "private-soak-chat", 100, a.source("client-events"))
			var p []string
			// The limiter refills while the burst is read, so a slow box
			// lets a few more through; what matters is that the rest are
			// refused, not relayed.
			if res.Err != nil || res.Relayed+res.Refused != 100 || res.Refused < 80 || len(res.OtherErrors) > 0 {
				p = append(p, fmt.Sprintf("%+v", res))
			}
			return fmt.Sprintf("100 client events in one write: %d relayed, %d refused", res.Relayed, res.Refused), map[string]int{"client_event_rate": res.Refused}, p
		}},
		{"one user's presence connections", "max_user_connections (100): 4009", func(ctx context.Context, a *attacker) (string, map[string]int, []string) {
			res := attack.PresenceFlood(ctx, a.g.target, "presence-soak-flood", "mallory", 110, a.source("presence"))
			res.Conns.Close()
			var p []string
			if len(res.Errors) > 0 || res.Succeeded != 100 || len(res.Refused) != 10 {
				p = append(p, fmt.Sprintf("%d joined, %d refused, codes %v, errors %v", res.Succeeded, len(res.Refused), res.ErrorCodes, firstErrs(res.Errors)))
			}
			return fmt.Sprintf("110 connections as one user: %d joined, %d refused", res.Succeeded, len(res.Refused)), map[string]int{"user_connections": 10}, p
		}},
	}
	if withPanics {
		cases = append(cases, attackCase{"injected panics", "recovered: close 1011, the process goes on", func(ctx context.Context, a *attacker) (string, map[string]int, []string) {
			res := attack.Panics(ctx, a.g.target, "soak-fault-dispatch", 2, a.source("panics"))
			var p []string
			if res.Err != nil || res.PollerClose != 1011 || res.AsyncClose != 1011 || !res.WitnessAlive || res.HTTPStatus != http.StatusInternalServerError {
				p = append(p, fmt.Sprintf("%+v", res))
			}
			return fmt.Sprintf("poller %d, async %d, dispatch %v, HTTP %d, upgrade %d", res.PollerClose, res.AsyncClose, res.DispatchCloses, res.HTTPStatus, res.UpgradeStatus), nil, p
		}})
	}
	return cases
}

func firstErrs(errs []error) string {
	var s []string
	for _, e := range errs[:min(len(errs), 3)] {
		s = append(s, e.Error())
	}
	return strings.Join(s, "; ")
}

// AttackRecord is one attack of the loop, as attacks.jsonl keeps it.
type AttackRecord struct {
	Round    int            `json:"round"`
	Name     string         `json:"name"`
	T        float64        `json:"t_s"` // start, seconds since the load started
	Seconds  float64        `json:"seconds"`
	Detail   string         `json:"detail"`
	Hits     map[string]int `json:"limit_hits"` // growth of resound_limit_hits_total per limit
	Problems []string       `json:"problems,omitempty"`
}

// attackLoop runs the cases one after the other, with a pause between
// them, until ctx ends; each record goes to emit as it is made.
func attackLoop(ctx context.Context, g *gatewayProc, cases []attackCase, gap time.Duration, start time.Time, emit func(AttackRecord)) {
	a := &attacker{g: g, sources: map[string]string{}}
	for _, c := range cases {
		a.source(c.name) // fix each kind's address up front
	}
	for round := 0; ; round++ {
		a.round = round
		for _, c := range cases {
			if ctx.Err() != nil {
				return
			}
			began := time.Now()
			before, _ := limitHits(ctx, g.opsAddr)
			// Each attack is bounded on its own; the context only stops
			// the loop between attacks, so that no attack is cut short and
			// misjudged when the load ends.
			actx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			detail, want, problems := c.run(actx, a)
			cancel()
			after, err := limitHits(context.Background(), g.opsAddr)
			rec := AttackRecord{Round: round, Name: c.name, T: began.Sub(start).Seconds(), Seconds: time.Since(began).Seconds(), Detail: detail, Hits: map[string]int{}, Problems: problems}
			if err != nil {
				rec.Problems = append(rec.Problems, "scraping /metrics: "+err.Error())
			}
			for limit, v := range after {
				if d := int(v - before[limit]); d > 0 {
					rec.Hits[limit] = d
				}
			}
			for limit, n := range want {
				if err == nil && rec.Hits[limit] < n {
					rec.Problems = append(rec.Problems, fmt.Sprintf("resound_limit_hits_total{limit=%q} grew by %d, want at least %d", limit, rec.Hits[limit], n))
				}
			}
			emit(rec)
			if !pause(ctx, gap) {
				return
			}
		}
	}
}

// limitHits reads resound_limit_hits_total by limit.
func limitHits(ctx context.Context, opsAddr string) (map[string]float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	m, err := attack.Scrape(ctx, opsAddr)
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for _, s := range m {
		if s.Name == "resound_limit_hits_total" {
			out[s.Labels["limit"]] += s.Value
		}
	}
	return out, nil
}

// AttackSummary is one kind of attack over the run.
type AttackSummary struct {
	Name     string   `json:"name"`
	Bound    string   `json:"bound"`
	Runs     int      `json:"runs"`
	Failed   int      `json:"failed"`
	Last     string   `json:"last"`
	Problems []string `json:"problems,omitempty"` // the first few
}

func summarizeAttacks(cases []attackCase, recs []AttackRecord) []AttackSummary {
	var out []AttackSummary
	for _, c := range cases {
		s := AttackSummary{Name: c.name, Bound: c.bound}
		for _, r := range recs {
			if r.Name != c.name {
				continue
			}
			s.Runs++
			s.Last = r.Detail
			if len(r.Problems) > 0 {
				s.Failed++
				if len(s.Problems) < 3 {
					b, _ := json.Marshal(r.Problems)
					s.Problems = append(s.Problems, fmt.Sprintf("round %d at %.0f s: %s", r.Round, r.T, b))
				}
			}
		}
		out = append(out, s)
	}
	return out
}
