package protocol

import "testing"

// The signature was computed apart from Go:
// echo -n "$body" | openssl dgst -sha256 -hmac secret.
func TestSignWebhook(t *testing.T) {
	body := AppendWebhookBody(nil, 1700000000000, []WebhookEvent{{Name: WebhookChannelOccupied, Channel: "c"}})
	if got, want := string(body), `{"time_ms":1700000000000,"events":[{"name":"channel_occupied","channel":"c"}]}`; got != want {
		t.Fatalf("body %s, want %s", got, want)
	}
	if got, want := SignWebhook("secret", body), "0ea64b148baf9b1588c662ddcb5ad53ebb39d4d41eebc2a60688deb3459bcaf1"; got != want {
		t.Fatalf("signature %s, want %s", got, want)
	}
	n := 0
	b := AppendWebhookBody(nil, 1, []WebhookEvent{{Name: WebhookSubscriptionCount, Channel: "c", SubscriptionCount: &n}})
	if got, want := string(b), `{"time_ms":1,"events":[{"name":"subscription_count","channel":"c","subscription_count":0}]}`; got != want {
		t.Fatalf("body %s, want %s", got, want)
	}
}

func TestWebhookData(t *testing.T) {
	for raw, want := range map[string]string{`"hi"`: "hi", `{"a":1}`: `{"a":1}`, ``: ``, `"bad`: `"bad`} {
		if got := WebhookData([]byte(raw)); got != want {
			t.Errorf("WebhookData(%s) = %q, want %q", raw, got, want)
		}
	}
}
