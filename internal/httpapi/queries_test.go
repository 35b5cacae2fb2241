package httpapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/resoundhq/resound/internal/cluster"
	"github.com/resoundhq/resound/internal/httpapi"
	"github.com/resoundhq/resound/protocol"
)

// staticCluster answers from fixed state: what the gateways would report.
// The real answers across gateways and NATS are tested in internal/node
// (TestQueriesAcrossGateways); here only what the API makes of them.
type staticCluster struct {
	subs    map[string]int // occupied channels and their subscriptions
	members map[string]int // presence channels and their distinct users
	cached  map[string]cluster.CachedEvent
}

func (c *staticCluster) Query(_ context.Context, req cluster.QueryRequest) (cluster.QueryResult, error) {
	res := cluster.QueryResult{Channels: map[string]int{}, Complete: true}
	for ch, n := range c.subs {
		if (req.Channel == "" || req.Channel == ch) && strings.HasPrefix(ch, req.Prefix) {
			res.Channels[ch] = n
		}
	}
	return res, nil
}

func (c *staticCluster) Members(_ context.Context, _, channel string) ([]protocol.PresenceMember, error) {
	return make([]protocol.PresenceMember, c.members[channel]), nil
}

func (c *staticCluster) CachedEvent(_ context.Context, _, channel string) (*cluster.CachedEvent, time.Duration, error) {
	ev, ok := c.cached[channel]
	if !ok {
		return nil, 0, nil
	}
	return &ev, 90 * time.Second, nil
}

func (c *staticCluster) Terminate(context.Context, string, string) error { return nil }

func queryAPI(t *testing.T) http.Handler {
	t.Helper()
	cl := &staticCluster{
		subs:    map[string]int{"orders": 2, "presence-lobby": 3, "cache-news": 1, "private-cache-x": 1},
		members: map[string]int{"presence-lobby": 2},
		cached:  map[string]cluster.CachedEvent{"cache-news": {Event: "e", Data: `{"n":1}`}},
	}
	return newAPI(t, &fakePublisher{}, func(o *httpapi.Options) { o.Channels, o.Presence, o.Cache, o.Terminator = cl, cl, cl, cl })
}

// TestQueryAttributesAnswerAsReverb: every info combination a Laravel app
// may send answers 200 with the attributes that apply and leaves out the
// others, as Reverb does (issue 12: getChannelInfo('presence-…',
// ['info' => 'subscription_count,user_count']) threw on Resound). Pusher's
// reference answers 400 for some of these; see infoSet.
func TestQueryAttributesAnswerAsReverb(t *testing.T) {
	api := queryAPI(t)
	cases := []struct {
		path, info, prefix string
		want               string
	}{
		// GET /channels/{name}: occupied always.
		{"/channels/presence-lobby", "subscription_count,user_count", "", `{"occupied":true,"user_count":2}`},
		{"/channels/presence-lobby", "user_count,subscription_count,cache", "", `{"occupied":true,"user_count":2}`},
		{"/channels/presence-lobby", "subscription_count", "", `{"occupied":true}`},
		{"/channels/orders", "user_count,subscription_count", "", `{"occupied":true,"subscription_count":2}`},
		{"/channels/orders", "user_count", "", `{"occupied":true}`},
		{"/channels/orders", "cache", "", `{"occupied":true}`},
		{"/channels/orders", "occupied", "", `{"occupied":true}`},
		{"/channels/orders", "", "", `{"occupied":true}`},
		{"/channels/orders", "bogus,subscription_count", "", `{"occupied":true,"subscription_count":2}`},
		{"/channels/orders", " subscription_count , ", "", `{"occupied":true,"subscription_count":2}`},
		{"/channels/cache-news", "cache,subscription_count,user_count", "", `{"cache":{"data":"{\"n\":1}","event":"e","ttl":90},"occupied":true,"subscription_count":1}`},
		{"/channels/private-cache-x", "cache", "", `{"occupied":true}`},
		{"/channels/empty", "subscription_count", "", `{"occupied":false,"subscription_count":0}`},
		{"/channels/presence-empty", "user_count", "", `{"occupied":false,"user_count":0}`},
		// GET /channels: only occupied channels, each with what applies.
		{"/channels", "", "", `{"channels":{"cache-news":{},"orders":{},"presence-lobby":{},"private-cache-x":{}}}`},
		{"/channels", "user_count", "", `{"channels":{"cache-news":{},"orders":{},"presence-lobby":{"user_count":2},"private-cache-x":{}}}`},
		{"/channels", "user_count", "private-", `{"channels":{"private-cache-x":{}}}`},
		{"/channels", "user_count", "presence-", `{"channels":{"presence-lobby":{"user_count":2}}}`},
		{"/channels", "subscription_count,user_count", "", `{"channels":{"cache-news":{"subscription_count":1},"orders":{"subscription_count":2},"presence-lobby":{"user_count":2},"private-cache-x":{"subscription_count":1}}}`},
		{"/channels", "occupied,cache", "cache-", `{"channels":{"cache-news":{"cache":{"data":"{\"n\":1}","event":"e","ttl":90},"occupied":true}}}`},
		{"/channels", "nonsense", "o", `{"channels":{"orders":{}}}`},
	}
	for _, tc := range cases {
		t.Run(tc.path+"?info="+tc.info+"&filter_by_prefix="+tc.prefix, func(t *testing.T) {
			q := url.Values{}
			if tc.info != "" {
				q.Set("info", tc.info)
			}
			if tc.prefix != "" {
				q.Set("filter_by_prefix", tc.prefix)
			}
			r := serve(api, signed{method: http.MethodGet, path: "/apps/" + appID + tc.path, query: q}.request())
			checkJSON(t, r)
			if r.status != http.StatusOK || !sameJSON(t, r.body, tc.want) {
				t.Fatalf("got %d %s, want 200 %s", r.status, r.body, tc.want)
			}
		})
	}
}

// TestTriggerInfoAnswersAsReverb: a trigger's info gets the attributes that
// apply to each channel, and neither an attribute that does not apply nor
// an unknown one refuses the event (Reverb stores it and answers 200).
func TestTriggerInfoAnswersAsReverb(t *testing.T) {
	api := queryAPI(t)
	cases := []struct{ body, want string }{
		{`{"name":"e","data":"d","channels":["orders","presence-lobby","empty"],"info":"subscription_count,user_count"}`,
			`{"channels":{"empty":{"subscription_count":0},"orders":{"subscription_count":2},"presence-lobby":{"user_count":2}}}`},
		{`{"name":"e","data":"d","channels":["orders","empty"],"info":"occupied"}`,
			`{"channels":{"empty":{"occupied":false},"orders":{"occupied":true}}}`},
		{`{"name":"e","data":"d","channel":"cache-news","info":"cache,bogus"}`,
			`{"channels":{"cache-news":{}}}`},
		{`{"batch":[{"name":"e","data":"d","channel":"presence-lobby","info":"subscription_count,user_count"},{"name":"e","data":"d","channel":"orders"}]}`,
			`{"batch":[{"user_count":2},{}]}`},
	}
	for _, tc := range cases {
		t.Run(tc.body, func(t *testing.T) {
			path := eventsPath(appID)
			if strings.HasPrefix(tc.body, `{"batch"`) {
				path = "/apps/" + appID + "/batch_events"
			}
			r := serve(api, signed{path: path, body: tc.body}.request())
			checkJSON(t, r)
			if r.status != http.StatusOK || !sameJSON(t, r.body, tc.want) {
				t.Fatalf("got %d %s, want 200 %s", r.status, r.body, tc.want)
			}
		})
	}
}

func sameJSON(t *testing.T, got, want string) bool {
	t.Helper()
	var g, w any
	if err := json.Unmarshal([]byte(got), &g); err != nil {
		t.Fatalf("body %q: %v", got, err)
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatalf("want %q: %v", want, err)
	}
	gb, _ := json.Marshal(g)
	wb, _ := json.Marshal(w)
	return string(gb) == string(wb)
}

// A route whose answerer is missing is not mounted (404, as an unknown
// route); the others still answer.
func TestRoutesNeedTheirAnswerers(t *testing.T) {
	cl := &staticCluster{subs: map[string]int{"presence-lobby": 1}, members: map[string]int{"presence-lobby": 1}}
	api := newAPI(t, &fakePublisher{}, func(o *httpapi.Options) { o.Presence = cl })
	for _, tc := range []struct {
		method, path string
		status       int
	}{
		{http.MethodGet, "/channels/presence-lobby/users", 200},
		{http.MethodGet, "/channels/presence-lobby", 404},
		{http.MethodGet, "/channels", 404},
		{http.MethodGet, "/connections", 404},
		{http.MethodPost, "/users/1/terminate_connections", 404},
	} {
		r := serve(api, signed{method: tc.method, path: "/apps/" + appID + tc.path}.request())
		checkJSON(t, r)
		if r.status != tc.status {
			t.Errorf("%s %s: got %d %s, want %d", tc.method, tc.path, r.status, r.body, tc.status)
		}
	}
}
