package adversarial

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/resoundhq/resound/internal/attack"
	"github.com/resoundhq/resound/protocol"
)

// 200 connections subscribe to a busy channel and stop reading while
// 8 KB events flow, with RESOUND_MAX_OUTBOUND=64 KiB and
// RESOUND_MAX_OUTBOUND_TOTAL=4 MiB: each is cut off, the process does not
// grow, and the bystander on its own channels gets everything.
func TestSlowReaders(t *testing.T) {
	g, b, before := setup(t, "RESOUND_MAX_OUTBOUND=65536", "RESOUND_MAX_OUTBOUND_TOTAL=4194304")
	ctx := testContext(t, 2*time.Minute)
	rss := attack.WatchRSS(g.pid(), 50*time.Millisecond)
	res := attack.SlowReaders(ctx, g.target, attack.SlowReadersOptions{Conns: 200, EventSize: 8000, Events: 60, Source: attackerIP})
	rssGrowth(t, before, rss, 64*mib)
	t.Logf("slow readers: %+v", res)
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	// A reader whose kernel buffers (the gateway's send buffer grows to
	// megabytes on loopback) took all 480 KB never made the gateway hold
	// anything: it is not cut off, and gets every event once it reads.
	// Every other one must be cut off.
	if res.CutOff+res.StillOpen != res.Subscribed || res.Stuck > 0 || res.CutOff < res.Subscribed*9/10 {
		t.Errorf("of %d readers that never read %d were cut off, %d got everything, %d neither", res.Subscribed, res.CutOff, res.StillOpen, res.Stuck)
	}
	one, all := g.hits(t, before, "outbound"), g.hits(t, before, "outbound_total")
	t.Logf("limit hits: outbound %d, outbound_total %d", one, all)
	if one+all != res.CutOff {
		t.Errorf("limit hits outbound %d + outbound_total %d, want one for each of the %d cut off", one, all, res.CutOff)
	}
	finish(t, g, b, before)
}

// Each injected panic (a gateway built with -tags faultinject) closes the
// connection concerned with 1011 or answers 500, is counted by where it
// happened, and the process and everyone else go on.
func TestPanics(t *testing.T) {
	g, b, before := setup(t)
	ctx := testContext(t, time.Minute)
	res := attack.Panics(ctx, g.target, "fault-dispatch", 2, attackerIP)
	t.Logf("panics: %+v", res)
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	if res.PollerClose != 1011 {
		t.Errorf("a message with %s: closed with %d, want 1011", attack.FaultPoller, res.PollerClose)
	}
	if res.AsyncClose != 1011 {
		t.Errorf("subscribing to %s: closed with %d, want 1011", attack.FaultAsync, res.AsyncClose)
	}
	for i, code := range res.DispatchCloses {
		if code != 1011 {
			t.Errorf("subscriber %d of a channel delivering %s: closed with %d, want 1011", i, attack.FaultDispatch, code)
		}
	}
	if res.HTTPStatus != http.StatusInternalServerError {
		t.Errorf("an API request with %s: panic got %d, want 500", attack.FaultHeader, res.HTTPStatus)
	}
	if res.UpgradeStatus == http.StatusSwitchingProtocols {
		t.Errorf("an upgrade with %s: panic was upgraded, want the socket closed", attack.FaultHeader)
	}
	if !res.WitnessAlive {
		t.Error("a connection open through the panics no longer answers")
	}
	m := g.metrics(t)
	for where, want := range map[string]float64{"poller": 1, "async": 1, "http": 1, "handshake": 1} {
		if got := m.Panics(where) - before.scrape.Panics(where); got != want {
			t.Errorf("resound_panics_total{where=%q} grew by %v, want %v", where, got, want)
		}
	}
	if got := m.Panics("dispatcher") - before.scrape.Panics("dispatcher"); got < 1 {
		t.Errorf("resound_panics_total{where=\"dispatcher\"} grew by %v, want at least 1", got)
	}
	finish(t, g, b, before)
}

// One user opens 110 connections to a presence channel with
// max_user_connections 100 (the default): 100 join, 10 get
// pusher:subscription_error (LimitReached, 403) and pusher:error 4009.
// Once they close, the channel is empty again.
func TestPresenceUserConnections(t *testing.T) {
	g, b, before := setup(t)
	ctx := testContext(t, 2*time.Minute)
	const channel = "presence-room"
	res := attack.PresenceFlood(ctx, g.target, channel, "mallory", 110, attackerIP)
	defer res.Conns.Close()
	t.Logf("presence flood: %d joined, %d refused, errors %v, failures %v", res.Succeeded, len(res.Refused), res.ErrorCodes, res.Errors)
	if len(res.Errors) > 0 {
		t.Fatalf("the flood failed: %v", res.Errors)
	}
	if res.Succeeded != 100 || len(res.Refused) != 10 {
		t.Errorf("%d joined and %d were refused, want 100 and 10", res.Succeeded, len(res.Refused))
	}
	for _, r := range res.Refused {
		if r.Type != "LimitReached" || r.Status != http.StatusForbidden {
			t.Errorf("refusal: %+v, want type LimitReached, status 403", r)
		}
	}
	if res.ErrorCodes[protocol.CodeUnauthorized] != 10 || len(res.ErrorCodes) != 1 {
		t.Errorf("pusher:error codes %v, want 4009 ten times", res.ErrorCodes)
	}
	g.expectHits(t, before, "user_connections", 10)

	// Another user still joins.
	alice := attack.PresenceFlood(ctx, g.target, channel, "alice", 1, otherIP)
	defer alice.Conns.Close()
	if alice.Succeeded != 1 {
		t.Errorf("another user could not join: %+v", alice)
	}

	res.Conns.Close()
	alice.Conns.Close()
	api := g.api(harnessIP)
	waitFor(t, g.proc, 30*time.Second, "an empty presence channel once every member closed", func() bool {
		r := api.Do(http.MethodGet, "/channels/"+channel+"/users", nil, nil)
		var body struct {
			Users []json.RawMessage `json:"users"`
		}
		return r.Status == http.StatusOK && json.Unmarshal(r.Body, &body) == nil && len(body.Users) == 0
	})
	finish(t, g, b, before)
}

// A member sends 100 client events in one write: 10 are relayed (the
// per-second limit), the other 90 get pusher:error 4301.
func TestClientEventFlood(t *testing.T) {
	g, b, before := setup(t)
	ctx := testContext(t, time.Minute)
	res := attack.ClientEventFlood(ctx, g.target, "private-chat", 100, attackerIP)
	t.Logf("client-event flood: %+v", res)
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	if res.Relayed != 10 || res.Refused != 90 || len(res.OtherErrors) > 0 {
		t.Errorf("of 100 client events %d were relayed and %d refused with 4301 (other errors %v), want 10 and 90",
			res.Relayed, res.Refused, res.OtherErrors)
	}
	g.expectHits(t, before, "client_event_rate", 90)
	finish(t, g, b, before)
}
