package node

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/resoundhq/resound/internal/config"
	"github.com/resoundhq/resound/internal/webhook"
	"github.com/resoundhq/resound/protocol"
)

// The all-in-one gateway's in-process workers send webhooks: a record in
// the webhook stream reaches the app's receiver, signed, and is counted.
func TestAllInOneWorkersSendWebhooks(t *testing.T) {
	var mu sync.Mutex
	var got []protocol.WebhookBody
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		raw, _ := io.ReadAll(r.Body)
		if r.Header.Get("X-Pusher-Key") != appKey || r.Header.Get("X-Pusher-Signature") != protocol.SignWebhook(secret, raw) {
			t.Errorf("webhook not signed with the app's key and secret: %v", r.Header)
		}
		var body protocol.WebhookBody
		if err := json.Unmarshal(raw, &body); err != nil {
			t.Errorf("webhook body %s: %v", raw, err)
		}
		mu.Lock()
		got = append(got, body)
		mu.Unlock()
	}))
	defer srv.Close()
	s := baseSettings(t)
	s.Partitions = 4
	s.WebhookBatchWindow, s.WebhookBatchMax = config.Seconds(10*time.Millisecond), 100
	s.WebhookDelay, s.WebhookRetryFor, s.WebhookTimeout = config.Seconds(time.Second), config.Seconds(time.Minute), config.Seconds(5*time.Second)
	apps, err := config.NewApps([]config.App{{ID: appID, Key: appKey, Secret: secret,
		Webhooks: []config.Webhook{{URL: srv.URL, EventTypes: []string{protocol.WebhookChannelOccupied}}}}})
	if err != nil {
		t.Fatal(err)
	}
	n := startOn(t, &config.Config{Settings: s, Apps: apps}, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel))

	nc, err := n.embedded.Connect("test-publisher")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := json.Marshal(webhook.Record{TimeMS: time.Now().UnixMilli(), Rev: 1,
		Event: protocol.WebhookEvent{Name: protocol.WebhookChannelOccupied, Channel: "chat"}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := js.Publish(ctx, webhook.Subject(appID, "chat", s.Partitions), data); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for n.WebhookSender().AppCounters()[appID].Sent == 0 {
		if time.Now().After(deadline) {
			t.Fatal("timed out waiting for the webhook")
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 1 || len(got[0].Events) != 1 || got[0].Events[0] != (protocol.WebhookEvent{Name: protocol.WebhookChannelOccupied, Channel: "chat"}) {
		t.Errorf("webhooks %+v, want channel_occupied on chat", got)
	}
}
