package loadgen

import (
	"net/url"
	"testing"

	"github.com/resoundhq/resound/protocol"
)

// The Pusher reference's worked example (§2.2), as protocol's test uses it.
func TestSignedQueryMatchesPusherVector(t *testing.T) {
	const (
		key    = "278d425bdf160c739803"
		secret = "7ad3773142a6692b25b8"
		body   = `{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}`
	)
	q := signedQuery(key, secret, "POST", "/apps/3/events", []byte(body), 1353088179, nil)
	want := url.Values{
		"auth_key":       {key},
		"auth_timestamp": {"1353088179"},
		"auth_version":   {"1.0"},
		"body_md5":       {"ec365a775a4cd0599faeb73354201b6f"},
		"auth_signature": {"da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"},
	}
	if q.Encode() != want.Encode() {
		t.Fatalf("query\n%s\nwant\n%s", q.Encode(), want.Encode())
	}
	if !protocol.VerifyRequestSignature(secret, "POST", "/apps/3/events", q, q.Get("auth_signature")) {
		t.Fatal("protocol rejects the signature")
	}
}

func TestTriggerBodies(t *testing.T) {
	tr := &trigger{appID: "1", names: []string{"lg-r-0", "lg-r-1"}, batch: 1}
	path, b := tr.body(nil, []pendingEvent{{ch: 1, seq: 3}}, 99)
	if path != "/apps/1/events" || string(b) != `{"name":"lg","channels":["lg-r-1"],"data":"{\"seq\":3,\"ts\":99}"}` {
		t.Fatalf("%s %s", path, b)
	}
	if _, err := protocol.ParseTrigger(b, protocol.DefaultLimits); err != nil {
		t.Fatalf("protocol rejects %s: %v", b, err)
	}
	tr.batch = 10
	path, b = tr.body(nil, []pendingEvent{{0, 1}, {1, 1}, {0, 2}}, 5)
	if path != "/apps/1/batch_events" {
		t.Fatal(path)
	}
	evs, err := protocol.ParseBatch(b, protocol.DefaultLimits)
	if err != nil || len(evs) != 3 {
		t.Fatalf("protocol rejects %s: %v", b, err)
	}

	// -payload pads the data after seq and ts, which still parse.
	tr.batch, tr.pad = 1, []byte("xxxxx")
	_, b = tr.body(nil, []pendingEvent{{ch: 0, seq: 12}}, 34)
	tg, err := protocol.ParseTrigger(b, protocol.DefaultLimits)
	if err != nil || tg.Data != `{"seq":12,"ts":34,"pad":"xxxxx"}` {
		t.Fatalf("padded %s: %+v %v", b, tg, err)
	}
	frame := protocol.AppendChannelEvent(nil, "lg", "lg-r-0", tg.Data, "")
	if seq, ts, ok := loadEvent(frame); !ok || seq != 12 || ts != 34 {
		t.Fatalf("padded event %s: %d %d %v", frame, seq, ts, ok)
	}
}
