package httpapi_test

import (
	"context"
	"crypto/hmac"
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/resoundhq/resound/internal/config"
	"github.com/resoundhq/resound/internal/httpapi"
	"github.com/resoundhq/resound/internal/natsembed/natstest"
	"github.com/resoundhq/resound/internal/queue"
	"github.com/resoundhq/resound/protocol"
)

const (
	appID  = "123456"
	appKey = "app-key"
	secret = "app-secret"
)

// now is the API's fixed clock.
var now = time.Unix(1_700_000_000, 0)

// fakePublisher records the jobs it is given, or fails with err.
type fakePublisher struct {
	mu   sync.Mutex
	jobs []*queue.Job
	err  error
}

func (p *fakePublisher) Publish(_ context.Context, job *queue.Job) (uint64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return 0, p.err
	}
	p.jobs = append(p.jobs, job)
	return uint64(len(p.jobs)), nil
}

func (p *fakePublisher) published() []*queue.Job {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]*queue.Job(nil), p.jobs...)
}

func testApps(t *testing.T) *config.Apps {
	t.Helper()
	apps, err := config.NewApps([]config.App{
		{ID: appID, Key: appKey, Secret: secret},
		{ID: "654321", Key: "other-key", Secret: "other-secret"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return apps
}

func newAPI(t *testing.T, pub httpapi.Publisher, tweak func(*httpapi.Options)) *httpapi.API {
	t.Helper()
	opts := httpapi.Options{
		Apps:         testApps(t),
		Publisher:    pub,
		Limits:       protocol.DefaultLimits,
		MaxBodyBytes: 64 << 10,
		Now:          func() time.Time { return now },
		Log:          zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel),
	}
	if tweak != nil {
		tweak(&opts)
	}
	return httpapi.New(opts)
}

// signed describes a request to sign the way pusher-http-php does.
type signed struct {
	method string
	// path is what the client signs: /apps/{id}/...
	path string
	// prefix is put in front of path in the URL only (REVERB_SERVER_PATH).
	prefix string
	body   string
	// key, secret and version default to the app's and "1.0"; skew moves
	// auth_timestamp from the API's clock.
	key, secret, version string
	skew                 time.Duration
	// query holds parameters signed with the rest (info, filter_by_prefix).
	query url.Values
	// mutate edits the parameters after signing.
	mutate func(url.Values)
}

func (s signed) request() *http.Request {
	if s.method == "" {
		s.method = http.MethodPost
	}
	if s.key == "" {
		s.key = appKey
	}
	if s.secret == "" {
		s.secret = secret
	}
	if s.version == "" {
		s.version = "1.0"
	}
	q := url.Values{}
	for k, v := range s.query {
		q[k] = v
	}
	q.Set("auth_key", s.key)
	q.Set("auth_timestamp", strconv.FormatInt(now.Add(s.skew).Unix(), 10))
	q.Set("auth_version", s.version)
	if s.body != "" {
		q.Set("body_md5", protocol.BodyMD5([]byte(s.body)))
	}
	q.Set("auth_signature", protocol.SignRequest(s.secret, s.method, s.path, q))
	if s.mutate != nil {
		s.mutate(q)
	}
	r := httptest.NewRequest(s.method, s.prefix+s.path+"?"+q.Encode(), strings.NewReader(s.body))
	r.Header.Set("Content-Type", "application/json")
	return r
}

type response struct {
	status int
	header http.Header
	body   string
}

func serve(h http.Handler, r *http.Request) response {
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return response{status: w.Code, header: w.Result().Header, body: w.Body.String()}
}

// checkJSON checks the content type and, for an error status, that the
// body is {"error":"..."} with a non-empty message.
func checkJSON(t *testing.T, r response) {
	t.Helper()
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q, want application/json", ct)
	}
	if !json.Valid([]byte(r.body)) {
		t.Errorf("body %q is not JSON", r.body)
	}
	if r.status >= 400 {
		var e map[string]any
		if err := json.Unmarshal([]byte(r.body), &e); err != nil {
			t.Fatalf("error body %q: %v", r.body, err)
		}
		msg, ok := e["error"].(string)
		if !ok || msg == "" || len(e) != 1 {
			t.Errorf("error body %q is not {\"error\":\"...\"}", r.body)
		}
	}
}

const trigger = `{"name":"App\\Events\\OrderShipped","data":"{\"id\":1}","channels":["orders.1","private-orders"],"socket_id":"12.34"}`

func eventsPath(id string) string { return "/apps/" + id + "/events" }

func TestSignedTriggerIsQueued(t *testing.T) {
	pub := &fakePublisher{}
	api := newAPI(t, pub, nil)
	r := serve(api, signed{path: eventsPath(appID), body: trigger}.request())
	checkJSON(t, r)
	if r.status != http.StatusOK || r.body != "{}" {
		t.Fatalf("got %d %s, want 200 {}", r.status, r.body)
	}
	jobs := pub.published()
	if len(jobs) != 1 {
		t.Fatalf("%d jobs published, want 1", len(jobs))
	}
	want := protocol.Trigger{Name: `App\Events\OrderShipped`, Data: `{"id":1}`, Channels: []string{"orders.1", "private-orders"}, SocketID: "12.34"}
	job := jobs[0]
	if job.AppID != appID || len(job.Events) != 1 || !sameTrigger(job.Events[0], want) {
		t.Fatalf("job = %+v, want app %s with %+v", job, appID, want)
	}
}

func sameTrigger(a, b protocol.Trigger) bool {
	return a.Name == b.Name && a.Data == b.Data && a.SocketID == b.SocketID && a.Info == b.Info &&
		strings.Join(a.Channels, "\x00") == strings.Join(b.Channels, "\x00")
}

// phpSign signs as pusher-http-php's build_auth_query_params does, written
// out here independently of the protocol package: ksort the parameters,
// implode them as k=v&k=v, sign "METHOD\npath\nquery" with HMAC-SHA256.
func phpSign(method, path, body string, ts int64) url.Values {
	params := map[string]string{
		"auth_key":       appKey,
		"auth_timestamp": strconv.FormatInt(ts, 10),
		"auth_version":   "1.0",
	}
	if body != "" {
		sum := md5.Sum([]byte(body))
		params["body_md5"] = hex.EncodeToString(sum[:])
	}
	keys := make([]string, 0, len(params))
	for k := range params {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + params[k]
	}
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(method + "\n" + path + "\n" + strings.Join(parts, "&")))
	q := url.Values{}
	for k, v := range params {
		q.Set(k, v)
	}
	q.Set("auth_signature", hex.EncodeToString(mac.Sum(nil)))
	return q
}

func TestIndependentlySignedRequestIsAccepted(t *testing.T) {
	pub := &fakePublisher{}
	api := newAPI(t, pub, nil)
	q := phpSign(http.MethodPost, eventsPath(appID), trigger, now.Unix())
	r := serve(api, httptest.NewRequest(http.MethodPost, eventsPath(appID)+"?"+q.Encode(), strings.NewReader(trigger)))
	if r.status != http.StatusOK || len(pub.published()) != 1 {
		t.Fatalf("got %d %s, want 200 and a job", r.status, r.body)
	}
}

func TestAuthentication(t *testing.T) {
	cases := []struct {
		name   string
		req    signed
		status int
	}{
		{"valid", signed{}, 200},
		{"599 s behind", signed{skew: -599 * time.Second}, 200},
		{"599 s ahead", signed{skew: 599 * time.Second}, 200},
		{"600 s behind", signed{skew: -600 * time.Second}, 200},
		{"601 s behind", signed{skew: -601 * time.Second}, 401},
		{"601 s ahead", signed{skew: 601 * time.Second}, 401},
		{"wrong secret", signed{secret: "not-the-secret"}, 401},
		{"another app's secret", signed{secret: "other-secret"}, 401},
		{"wrong auth_key", signed{key: "nope"}, 401},
		{"another app's key", signed{key: "other-key"}, 401},
		{"auth_version 2.0", signed{version: "2.0"}, 401},
		{"no auth_version", signed{mutate: func(q url.Values) { q.Del("auth_version") }}, 401},
		{"no auth_key", signed{mutate: func(q url.Values) { q.Del("auth_key") }}, 401},
		{"no auth_timestamp", signed{mutate: func(q url.Values) { q.Del("auth_timestamp") }}, 401},
		{"no auth_signature", signed{mutate: func(q url.Values) { q.Del("auth_signature") }}, 401},
		{"no parameters", signed{mutate: func(q url.Values) {
			for k := range q {
				q.Del(k)
			}
		}}, 401},
		{"timestamp not a number", signed{mutate: func(q url.Values) { q.Set("auth_timestamp", "yesterday") }}, 401},
		{"signature not hex", signed{mutate: func(q url.Values) { q.Set("auth_signature", "zz") }}, 401},
		{"body_md5 of another body", signed{mutate: func(q url.Values) {
			q.Set("body_md5", protocol.BodyMD5([]byte("other")))
		}}, 401},
		{"no body_md5", signed{mutate: func(q url.Values) { q.Del("body_md5") }}, 401},
		{"extra unsigned parameter", signed{mutate: func(q url.Values) { q.Set("name", "x") }}, 401},
		{"signed for another path", signed{mutate: func(q url.Values) {
			q.Set("auth_signature", protocol.SignRequest(secret, "POST", "/apps/"+appID+"/batch_events", q))
		}}, 401},
		{"signed for GET", signed{mutate: func(q url.Values) {
			q.Set("auth_signature", protocol.SignRequest(secret, "GET", eventsPath(appID), q))
		}}, 401},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pub := &fakePublisher{}
			api := newAPI(t, pub, nil)
			req := tc.req
			req.path = eventsPath(appID)
			req.body = trigger
			r := serve(api, req.request())
			checkJSON(t, r)
			if r.status != tc.status {
				t.Fatalf("got %d %s, want %d", r.status, r.body, tc.status)
			}
			if n := len(pub.published()); (tc.status == 200) != (n == 1) {
				t.Fatalf("%d jobs published for status %d", n, r.status)
			}
		})
	}
}

func TestBodyMD5IsCheckedBeforeTheBodyIsUsed(t *testing.T) {
	// A request signed for one body but sent with another.
	pub := &fakePublisher{}
	api := newAPI(t, pub, nil)
	req := signed{path: eventsPath(appID), body: trigger}.request()
	other := `{"name":"evil","data":"x","channels":["orders.1"]}`
	req.Body = io.NopCloser(strings.NewReader(other))
	req.ContentLength = int64(len(other))
	r := serve(api, req)
	checkJSON(t, r)
	if r.status != http.StatusUnauthorized || len(pub.published()) != 0 {
		t.Fatalf("got %d %s with %d jobs, want 401 and none", r.status, r.body, len(pub.published()))
	}
}

func TestPathPrefix(t *testing.T) {
	pub := &fakePublisher{}
	api := newAPI(t, pub, func(o *httpapi.Options) { o.PathPrefix = "/reverb" })
	cases := []struct {
		name   string
		req    *http.Request
		status int
	}{
		// pusher-http-php signs /apps/... and sends /reverb/apps/...
		{"prefixed URL, signed without prefix", signed{prefix: "/reverb", path: eventsPath(appID), body: trigger}.request(), 200},
		{"no prefix", signed{path: eventsPath(appID), body: trigger}.request(), 404},
		{"signed with the prefix", signed{prefix: "/reverb", path: eventsPath(appID), body: trigger, mutate: func(q url.Values) {
			q.Set("auth_signature", protocol.SignRequest(secret, "POST", "/reverb"+eventsPath(appID), q))
		}}.request(), 401},
		{"prefix as a word prefix", signed{prefix: "/reverberate", path: eventsPath(appID), body: trigger}.request(), 404},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := serve(api, tc.req)
			checkJSON(t, r)
			if r.status != tc.status {
				t.Fatalf("%s %s: got %d %s, want %d", tc.req.Method, tc.req.URL.Path, r.status, r.body, tc.status)
			}
		})
	}
	if n := len(pub.published()); n != 1 {
		t.Fatalf("%d jobs published, want 1", n)
	}
}

func TestRouting(t *testing.T) {
	cases := []struct {
		name   string
		req    *http.Request
		status int
		allow  string
		error  string
	}{
		{"unknown app", signed{path: eventsPath("999"), body: trigger}.request(), 404, "", "No matching application for ID [999]."},
		{"GET events", signed{method: http.MethodGet, path: eventsPath(appID)}.request(), 405, "POST", ""},
		{"PUT batch_events", signed{method: http.MethodPut, path: "/apps/" + appID + "/batch_events", body: `{"batch":[]}`}.request(), 405, "POST", ""},
		{"unknown action", signed{method: http.MethodGet, path: "/apps/" + appID + "/nothing"}.request(), 404, "", ""},
		{"root", httptest.NewRequest(http.MethodGet, "/", nil), 404, "", ""},
		{"apps without id", httptest.NewRequest(http.MethodGet, "/apps/", nil), 404, "", ""},
		{"websocket path", httptest.NewRequest(http.MethodGet, "/app/"+appKey, nil), 404, "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pub := &fakePublisher{}
			r := serve(newAPI(t, pub, nil), tc.req)
			checkJSON(t, r)
			if r.status != tc.status {
				t.Fatalf("got %d %s, want %d", r.status, r.body, tc.status)
			}
			if got := r.header.Get("Allow"); got != tc.allow {
				t.Errorf("Allow = %q, want %q", got, tc.allow)
			}
			if tc.error != "" && !strings.Contains(r.body, tc.error) {
				t.Errorf("body %s does not say %q", r.body, tc.error)
			}
			if len(pub.published()) != 0 {
				t.Error("a job was published")
			}
		})
	}
}

func TestBodyTooLarge(t *testing.T) {
	const max = 1024
	big := `{"name":"e","channels":["c"],"data":"` + strings.Repeat("x", max) + `"}`
	exact := `{"name":"e","channels":["c"],"data":"` + strings.Repeat("x", max-len(`{"name":"e","channels":["c"],"data":""}`)) + `"}`
	if len(exact) != max {
		t.Fatalf("exact body is %d bytes", len(exact))
	}
	cases := []struct {
		name    string
		body    string
		chunked bool // no Content-Length: the limit must hold while reading
		status  int
	}{
		{"over, with Content-Length", big, false, 413},
		{"over, chunked", big, true, 413},
		{"exactly the limit", exact, false, 200},
		{"exactly the limit, chunked", exact, true, 200},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pub := &fakePublisher{}
			api := newAPI(t, pub, func(o *httpapi.Options) {
				o.MaxBodyBytes = max
				o.Limits.MaxDataBytes = 10 * max
			})
			req := signed{path: eventsPath(appID), body: tc.body}.request()
			if tc.chunked {
				req.ContentLength = -1
			}
			r := serve(api, req)
			checkJSON(t, r)
			if r.status != tc.status {
				t.Fatalf("got %d %s, want %d", r.status, r.body, tc.status)
			}
			if (tc.status == 200) != (len(pub.published()) == 1) {
				t.Fatalf("%d jobs published", len(pub.published()))
			}
		})
	}
}

func TestPublisherErrorIs503(t *testing.T) {
	pub := &fakePublisher{err: fmt.Errorf("%w: stream full", queue.ErrUnavailable)}
	api := newAPI(t, pub, nil)
	for _, req := range []*http.Request{
		signed{path: eventsPath(appID), body: trigger}.request(),
		signed{path: "/apps/" + appID + "/batch_events", body: `{"batch":[{"name":"e","channel":"c","data":"d"}]}`}.request(),
	} {
		r := serve(api, req)
		checkJSON(t, r)
		if r.status != http.StatusServiceUnavailable {
			t.Fatalf("%s: got %d %s, want 503", req.URL.Path, r.status, r.body)
		}
	}
}

// blockingPublisher never stores anything; it returns when ctx ends.
type blockingPublisher struct{}

func (blockingPublisher) Publish(ctx context.Context, _ *queue.Job) (uint64, error) {
	<-ctx.Done()
	return 0, ctx.Err()
}

func TestPublishTimeoutIs503(t *testing.T) {
	api := newAPI(t, blockingPublisher{}, func(o *httpapi.Options) { o.PublishTimeout = 50 * time.Millisecond })
	r := serve(api, signed{path: eventsPath(appID), body: trigger}.request())
	checkJSON(t, r)
	if r.status != http.StatusServiceUnavailable {
		t.Fatalf("got %d %s, want 503", r.status, r.body)
	}
}

func batchBody(n int) string {
	items := make([]map[string]any, n)
	for i := range items {
		items[i] = map[string]any{"name": fmt.Sprintf("ev-%d", i), "channel": fmt.Sprintf("ch-%d", i%3), "data": fmt.Sprint(i)}
	}
	items[0]["socket_id"] = "1.2"
	b, _ := json.Marshal(map[string]any{"batch": items})
	return string(b)
}

func TestBatchEvents(t *testing.T) {
	t.Run("10 events are one job, in order", func(t *testing.T) {
		pub := &fakePublisher{}
		r := serve(newAPI(t, pub, nil), signed{path: "/apps/" + appID + "/batch_events", body: batchBody(10)}.request())
		checkJSON(t, r)
		if r.status != http.StatusOK {
			t.Fatalf("got %d %s, want 200", r.status, r.body)
		}
		jobs := pub.published()
		if len(jobs) != 1 || len(jobs[0].Events) != 10 || jobs[0].AppID != appID {
			t.Fatalf("published %+v, want one job of 10 events", jobs)
		}
		for i, ev := range jobs[0].Events {
			want := protocol.Trigger{Name: fmt.Sprintf("ev-%d", i), Channels: []string{fmt.Sprintf("ch-%d", i%3)}, Data: fmt.Sprint(i)}
			if i == 0 {
				want.SocketID = "1.2"
			}
			if !sameTrigger(ev, want) {
				t.Fatalf("event %d = %+v, want %+v", i, ev, want)
			}
		}
	})
	for _, tc := range []struct {
		name string
		body string
	}{
		{"11 events", batchBody(11)},
		{"empty batch", `{"batch":[]}`},
		{"no batch", `{}`},
		{"an invalid item", `{"batch":[{"name":"e","channel":"c","data":"d"},{"name":"pusher:x","channel":"c","data":"d"}]}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pub := &fakePublisher{}
			r := serve(newAPI(t, pub, nil), signed{path: "/apps/" + appID + "/batch_events", body: tc.body}.request())
			checkJSON(t, r)
			if r.status != http.StatusBadRequest || len(pub.published()) != 0 {
				t.Fatalf("got %d %s with %d jobs, want 400 and none", r.status, r.body, len(pub.published()))
			}
		})
	}
}

func TestInvalidTriggers(t *testing.T) {
	cases := []struct {
		name   string
		body   string
		status int
	}{
		{"not JSON", `{nope`, 400},
		{"array", `[]`, 400},
		{"reserved name", `{"name":"pusher:x","data":"d","channels":["c"]}`, 400},
		{"data object", `{"name":"e","data":{"a":1},"channels":["c"]}`, 400},
		{"no channels", `{"name":"e","data":"d"}`, 400},
		{"bad channel", `{"name":"e","data":"d","channels":["a b"]}`, 400},
		{"bad socket_id", `{"name":"e","data":"d","channels":["c"],"socket_id":"abc"}`, 400},
		{"data too large", `{"name":"e","data":"` + strings.Repeat("x", 10241) + `","channels":["c"]}`, 413},
		{"single channel field", `{"name":"e","data":"d","channel":"c"}`, 200},
		{"invalid UTF-8 in data", "{\"name\":\"e\",\"data\":\"\xff\xfe\",\"channels\":[\"c\"]}", 400},
		{"invalid UTF-8 in the name", "{\"name\":\"e\xc0\",\"data\":\"d\",\"channels\":[\"c\"]}", 400},
		{"escaped lone surrogate", `{"name":"e","data":"\udfff","channels":["c"]}`, 200}, // valid UTF-8 text: JSON decodes it to U+FFFD
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pub := &fakePublisher{}
			r := serve(newAPI(t, pub, nil), signed{path: eventsPath(appID), body: tc.body}.request())
			checkJSON(t, r)
			if r.status != tc.status {
				t.Fatalf("got %d %s, want %d", r.status, r.body, tc.status)
			}
		})
	}
}

// The probes (/up, /livez) and the operations routes are not the API's:
// the process that owns them mounts them (internal/ops). Under the API's
// prefix they are unknown paths.
func TestAPIServesNoOpsRoutes(t *testing.T) {
	for _, prefix := range []string{"", "/reverb"} {
		api := newAPI(t, &fakePublisher{}, func(o *httpapi.Options) { o.PathPrefix = prefix })
		for _, path := range []string{"/up", "/livez", "/metrics", "/debug/pprof/", "/debug/pprof/heap", "/debug/pprof/cmdline"} {
			r := serve(api, httptest.NewRequest(http.MethodGet, prefix+path, nil))
			checkJSON(t, r)
			if r.status != http.StatusNotFound {
				t.Errorf("GET %s%s: got %d %s, want 404", prefix, path, r.status, r.body)
			}
		}
	}
}

// TestRealPublisherStoresTheJob runs the API over a real HTTP server and
// the real queue.Publisher on an embedded JetStream: a 200 means the job is
// in the stream.
func TestRealPublisherStoresTheJob(t *testing.T) {
	_, js := natstest.JetStream(t, "httpapi-test")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := queue.EnsureStream(ctx, js, queue.StreamOptions{MaxBytes: 16 << 20, MaxAge: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	api := newAPI(t, queue.NewPublisher(js), func(o *httpapi.Options) {
		o.Now = nil // a real server, a real clock
		o.PathPrefix = "/reverb"
	})
	srv := httptest.NewServer(api)
	t.Cleanup(srv.Close)

	post := func(path, body string) (int, string) {
		q := phpSign(http.MethodPost, path, body, time.Now().Unix())
		resp, err := http.Post(srv.URL+"/reverb"+path+"?"+q.Encode(), "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	if status, body := post(eventsPath(appID), trigger); status != http.StatusOK || body != "{}" {
		t.Fatalf("got %d %s, want 200 {}", status, body)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// A trigger on two channels is stored as one job per channel, each on
	// its channel's subject plus the partition.
	if info.State.Msgs != 2 {
		t.Fatalf("stream %s holds %d messages after a 200, want 2 (one per channel)", queue.StreamName, info.State.Msgs)
	}
	for i, ch := range []string{"orders.1", "private-orders"} {
		msg, err := stream.GetMsg(ctx, info.State.FirstSeq+uint64(i))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(msg.Subject, queue.Subject(appID, ch)+".") {
			t.Errorf("job subject %q, want %q plus a partition", msg.Subject, queue.Subject(appID, ch))
		}
		var job queue.Job
		if err := json.Unmarshal(msg.Data, &job); err != nil {
			t.Fatal(err)
		}
		want := protocol.Trigger{Name: `App\Events\OrderShipped`, Data: `{"id":1}`, Channels: []string{ch}, SocketID: "12.34"}
		if job.AppID != appID || len(job.Events) != 1 || !sameTrigger(job.Events[0], want) {
			t.Fatalf("stored job %+v, want %+v", job, want)
		}
		if err := job.Validate(protocol.DefaultLimits); err != nil {
			t.Fatalf("stored job does not validate: %v", err)
		}
	}

	// Without the stream nothing can be stored: 503, never 200.
	if err := js.DeleteStream(ctx, queue.StreamName); err != nil {
		t.Fatal(err)
	}
	status, body := post(eventsPath(appID), trigger)
	if status != http.StatusServiceUnavailable {
		t.Fatalf("without the stream: got %d %s, want 503", status, body)
	}
	var e struct{ Error string }
	if json.Unmarshal([]byte(body), &e) != nil || e.Error == "" {
		t.Fatalf("503 body %q is not a JSON error", body)
	}
	if _, err := js.Stream(ctx, queue.StreamName); !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Fatalf("the failed publish created the stream again: %v", err)
	}
}

// Every route answers 405 with its method in Allow for another method, an
// unknown app 404 before that, and a path that is not canonical 404 in
// JSON (the mux would redirect it in HTML).
func TestRoutesOnTheMux(t *testing.T) {
	api := queryAPI(t)
	for _, tc := range []struct {
		method, path, allow string
	}{
		{http.MethodPost, "/events", ""},
		{http.MethodPost, "/batch_events", ""},
		{http.MethodGet, "/channels", ""},
		{http.MethodGet, "/channels/presence-lobby", ""},
		{http.MethodGet, "/channels/presence-lobby/users", ""},
		{http.MethodGet, "/connections", ""},
		{http.MethodPost, "/users/42/terminate_connections", ""},
	} {
		other := http.MethodPut
		r := serve(api, signed{method: other, path: "/apps/" + appID + tc.path}.request())
		checkJSON(t, r)
		if r.status != http.StatusMethodNotAllowed || r.header.Get("Allow") != tc.method {
			t.Errorf("PUT %s: got %d Allow %q, want 405 Allow %q", tc.path, r.status, r.header.Get("Allow"), tc.method)
		}
		r = serve(api, signed{method: other, path: "/apps/999" + tc.path}.request())
		checkJSON(t, r)
		if r.status != http.StatusNotFound || !strings.Contains(r.body, "[999]") {
			t.Errorf("PUT %s of an unknown app: got %d %s, want 404 naming it", tc.path, r.status, r.body)
		}
		r = serve(api, signed{method: tc.method, path: "/apps/" + appID + tc.path}.request())
		checkJSON(t, r)
		if r.status == http.StatusNotFound || r.status == http.StatusMethodNotAllowed {
			t.Errorf("%s %s: got %d %s", tc.method, tc.path, r.status, r.body)
		}
	}
	for _, path := range []string{
		"//apps/" + appID + "/events",
		"/apps/" + appID + "/../" + appID + "/events",
		"/apps/" + appID + "/events/",
		"/apps/" + appID,
		"/apps/999/nothing",
	} {
		r := serve(api, signed{path: path, body: trigger}.request())
		checkJSON(t, r)
		if r.status != http.StatusNotFound {
			t.Errorf("POST %s: got %d %s, want 404", path, r.status, r.body)
		}
	}
}

// REVERB_SERVER_PATH is a literal in the mux's patterns, whatever it holds.
func TestPathPrefixIsLiteral(t *testing.T) {
	for _, prefix := range []string{"/re{v}erb", "/a/b", "/r%41", "/ré"} {
		pub := &fakePublisher{}
		api := newAPI(t, pub, func(o *httpapi.Options) { o.PathPrefix = prefix })
		req := signed{path: eventsPath(appID), body: trigger}.request()
		req.URL.Path = prefix + req.URL.Path
		req.URL.RawPath = ""
		r := serve(api, req)
		checkJSON(t, r)
		if r.status != http.StatusOK || len(pub.published()) != 1 {
			t.Errorf("prefix %q: got %d %s with %d jobs, want 200 and one", prefix, r.status, r.body, len(pub.published()))
		}
	}
}
