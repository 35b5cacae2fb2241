package loadgen

import (
	"encoding/json"
	"testing"
)

func TestParseCentrifugo(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want cfReply
	}{
		{`{}`, cfReply{kind: cfPing}},
		{" {} \r", cfReply{kind: cfPing}},
		{`{"id":1,"connect":{"client":"9c3c","version":"6.9.1","ping":25,"pong":true}}`, cfReply{kind: cfConnect}},
		{`{"id":2,"subscribe":{}}`, cfReply{kind: cfSubscribe}},
		{`{ "id" : 2 , "subscribe" : {} }`, cfReply{kind: cfSubscribe}},
		{`{"id":2,"error":{"code":103,"message":"permission denied"}}`, cfReply{kind: cfError, code: 103}},
		{`{"error":{"message":"bad request","code":107}}`, cfReply{kind: cfError, code: 107}},
		{`{"push":{"channel":"lg-r-0","pub":{"data":{"seq":3,"ts":17},"offset":4}}}`, cfReply{kind: cfPub}},
		{`{"push":{"pub":{"data":{}}}}`, cfReply{kind: cfPub}},
		// A channel name holding what looks like a key is skipped as a
		// string.
		{`{"push":{"channel":"a\"pub\":{\\","unsubscribe":{"code":2500}}}`, cfReply{kind: cfUnsubscribe}},
		{`{"push":{"channel":"c","join":{"info":{"user":"1"}}}}`, cfReply{kind: cfOther}},
		{`{"id":3,"rpc":{}}`, cfReply{kind: cfOther}},
		{`[1]`, cfReply{kind: cfMalformed}},
		{`{"id":x}`, cfReply{kind: cfMalformed}},
		{`{"push":{"channel":"unterminated`, cfReply{kind: cfMalformed}},
		{``, cfReply{kind: cfMalformed}},
	} {
		if got := parseCentrifugo([]byte(tc.in)); got != tc.want {
			t.Errorf("%s: %+v, want %+v", tc.in, got, tc.want)
		}
	}
}

func TestCentrifugoPublicationCarriesSeqAndTs(t *testing.T) {
	seq, ts, ok := loadEvent([]byte(`{"push":{"channel":"lg-r-0","pub":{"data":{"seq":42,"ts":1700000000123456789},"offset":7}}}`))
	if !ok || seq != 42 || ts != 1700000000123456789 {
		t.Fatalf("seq %d ts %d ok %v", seq, ts, ok)
	}
}

func TestCentrifugoCommands(t *testing.T) {
	var v struct {
		ID      int            `json:"id"`
		Connect map[string]any `json:"connect"`
	}
	if err := json.Unmarshal(centrifugoConnect, &v); err != nil || v.ID != 1 || v.Connect == nil {
		t.Fatalf("connect %s: %v", centrifugoConnect, err)
	}
	b := appendCentrifugoSubscribe(nil, `lg-"q"`)
	var sub struct {
		ID        int `json:"id"`
		Subscribe struct {
			Channel string `json:"channel"`
		} `json:"subscribe"`
	}
	if err := json.Unmarshal(b, &sub); err != nil || sub.ID != 2 || sub.Subscribe.Channel != `lg-"q"` {
		t.Fatalf("subscribe %s: %v %+v", b, err, sub)
	}
}

func TestCentrifugoTriggerBody(t *testing.T) {
	type publish struct {
		Channel string `json:"channel"`
		Data    struct {
			Seq int64 `json:"seq"`
			Ts  int64 `json:"ts"`
		} `json:"data"`
	}
	tr := &trigger{names: []string{"lg-r-0", "lg-r-1"}, batch: 1, centrifugo: true}
	path, b := tr.body(nil, []pendingEvent{{ch: 1, seq: 5}}, 99)
	var one publish
	if err := json.Unmarshal(b, &one); err != nil || path != "/api/publish" || one.Channel != "lg-r-1" || one.Data.Seq != 5 || one.Data.Ts != 99 {
		t.Fatalf("%s %s: %v %+v", path, b, err, one)
	}

	tr.batch = 10
	path, b = tr.body(nil, []pendingEvent{{ch: 0, seq: 1}, {ch: 1, seq: 1}, {ch: 0, seq: 2}}, 7)
	var batch struct {
		Commands []struct {
			Publish publish `json:"publish"`
		} `json:"commands"`
		Parallel bool `json:"parallel"`
	}
	if err := json.Unmarshal(b, &batch); err != nil || path != "/api/batch" || len(batch.Commands) != 3 || batch.Parallel {
		t.Fatalf("%s %s: %v %+v", path, b, err, batch)
	}
	if p := batch.Commands[2].Publish; p.Channel != "lg-r-0" || p.Data.Seq != 2 || p.Data.Ts != 7 {
		t.Fatalf("third command %+v", p)
	}
}

func TestCentrifugoResult(t *testing.T) {
	tr := &trigger{fails: map[string]int64{}}
	if err := tr.centrifugoResult([]byte(`{"result":{}}`)); err != nil {
		t.Fatal(err)
	}
	if err := tr.centrifugoResult([]byte(`{"replies":[{"publish":{}},{"publish":{}}]}`)); err != nil {
		t.Fatal(err)
	}
	if err := tr.centrifugoResult([]byte(`{"error":{"code":100,"message":"internal server error"}}`)); err != errCentrifugoInternal || tr.fatal != "" {
		t.Fatalf("internal: %v, fatal %q", err, tr.fatal)
	}
	if err := tr.centrifugoResult([]byte(`{"replies":[{"publish":{}},{"error":{"code":102,"message":"unknown channel"}}]}`)); err != errFatalStatus || tr.fatal == "" {
		t.Fatalf("unknown channel: %v, fatal %q", err, tr.fatal)
	}
	if tr.fails["centrifugo_error_100"] != 1 || tr.fails["centrifugo_error_102"] != 1 {
		t.Fatalf("fails %v", tr.fails)
	}
}

func TestValidateProtocol(t *testing.T) {
	c := Config{Mode: ModeFanout, Protocol: ProtocolCentrifugo, URL: "http://127.0.0.1:8000", Secret: "api-key", Conns: 1, Channels: 1, Events: 1, Run: "r"}
	if err := c.Validate(); err != nil {
		t.Fatalf("centrifugo needs no app id or key: %v", err)
	}
	c.Secret = ""
	if err := c.Validate(); err == nil {
		t.Fatal("centrifugo fanout without an API key passed")
	}
	c = Config{Mode: ModeIdle, URL: "http://127.0.0.1:8000", Key: "k", Conns: 1, Channels: 1, Run: "r"}
	if err := c.Validate(); err != nil || c.Protocol != ProtocolPusher {
		t.Fatalf("default protocol %q: %v", c.Protocol, err)
	}
	c.Protocol = "socketio"
	if err := c.Validate(); err == nil {
		t.Fatal("unknown protocol passed")
	}
	tg, err := parseTarget("http://127.0.0.1:8000/prefix/", "k", ProtocolCentrifugo)
	if err != nil || tg.wsPath != "/prefix/connection/websocket" {
		t.Fatalf("target %+v: %v", tg, err)
	}
}
