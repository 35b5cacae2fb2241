package httpapi_test

import (
	"bytes"
	"context"
	"crypto/subtle"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/rs/zerolog"

	"github.com/resoundhq/resound/internal/cluster"
	"github.com/resoundhq/resound/internal/config"
	"github.com/resoundhq/resound/internal/httpapi"
	"github.com/resoundhq/resound/protocol"
)

// Bits of FuzzAPI's mode argument.
const (
	// fuzzSign: the harness completes the query as pusher-http-php does
	// (auth_key, auth_timestamp, auth_version, body_md5, where the fuzzed
	// query lacks them) and signs it with the app's secret, so that the
	// fuzzer reaches the code behind authentication.
	fuzzSign = 1 << iota
	// fuzzPublishFails: the publisher refuses every job (NATS away).
	fuzzPublishFails
	// fuzzClusterFails: every cluster query fails.
	fuzzClusterFails
	// fuzzPrefix: the API runs under REVERB_SERVER_PATH=/reverb.
	fuzzPrefix
)

// FuzzAPI sends one request, with fuzzed method, path, query and body, to
// the API with an in-memory publisher (no NATS behaviour is under test
// here) and an in-memory cluster. Properties: it never panics; it answers
// JSON; it never answers 5xx but 503 when the publisher or the cluster
// fails; an /apps/ route answers 200, or queues a job, only when the
// request is authentic; a queued job is the app's, validates, and comes
// from a UTF-8 body.
//
// The seed corpus (testdata/fuzz/FuzzAPI) holds requests as
// pusher-http-php and the pusher npm SDK send them, signed with this
// file's app (appKey, secret) at the fixed clock now; mode 0 sends them
// as they are.
func FuzzAPI(f *testing.F) {
	apps, err := config.NewApps([]config.App{{ID: appID, Key: appKey, Secret: secret}})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(http.MethodPost, "/apps/"+appID+"/events", "", []byte(trigger), uint8(fuzzSign))
	f.Add(http.MethodGet, "/apps/"+appID+"/channels", "filter_by_prefix=presence-&info=user_count", []byte(nil), uint8(fuzzSign))
	f.Add(http.MethodGet, "/reverb/up", "", []byte(nil), uint8(fuzzPrefix))
	f.Fuzz(func(t *testing.T, method, path, rawQuery string, body []byte, mode uint8) {
		pub := &fakePublisher{}
		if mode&fuzzPublishFails != 0 {
			pub.err = errors.New("fuzz: publisher down")
		}
		prefix := ""
		if mode&fuzzPrefix != 0 {
			prefix = "/reverb"
		}
		cl := fuzzCluster{fail: mode&fuzzClusterFails != 0}
		api := httpapi.New(httpapi.Options{
			Apps:         apps,
			Publisher:    pub,
			Channels:     cl,
			Presence:     cl,
			Cache:        cl,
			Terminator:   cl,
			Limits:       protocol.DefaultLimits,
			MaxBodyBytes: 16 << 10,
			PathPrefix:   prefix,
			Now:          func() time.Time { return now },
			Log:          zerolog.Nop(),
		})
		signPath, _ := strings.CutPrefix(path, prefix)
		if mode&fuzzSign != 0 {
			rawQuery = signQuery(method, signPath, rawQuery, body)
		}
		r := httptest.NewRequest(http.MethodGet, "/", bytes.NewReader(body))
		r.Method = method
		r.URL = &url.URL{Path: path, RawQuery: rawQuery}
		r.ContentLength = int64(len(body))
		res := serve(api, r)
		checkJSON(t, res)

		failing := mode&(fuzzPublishFails|fuzzClusterFails) != 0
		if res.status >= 500 && !(res.status == http.StatusServiceUnavailable && failing) {
			t.Fatalf("%s %s?%s answered %d %s", method, path, rawQuery, res.status, res.body)
		}
		rest, isApps := strings.CutPrefix(path, prefix+"/apps/")
		jobs := pub.published()
		authentic := authentic(method, signPath, rawQuery, body)
		if isApps && (res.status == http.StatusOK || len(jobs) > 0) && !authentic {
			t.Fatalf("unauthentic %s %s?%s answered %d with %d jobs", method, path, rawQuery, res.status, len(jobs))
		}
		wantJob := res.status == http.StatusOK && isJobRoute(rest) && mode&fuzzPublishFails == 0
		if len(jobs) > 1 || (len(jobs) == 1) != wantJob {
			t.Fatalf("%s %s answered %d with %d jobs", method, path, res.status, len(jobs))
		}
		for _, job := range jobs {
			if !utf8.Valid(body) {
				t.Fatalf("queued a job from a body that is not UTF-8: %q", body)
			}
			if job.AppID != appID {
				t.Fatalf("queued a job of app %q for %s", job.AppID, path)
			}
			if err := job.Validate(protocol.DefaultLimits); err != nil {
				t.Fatalf("queued a job that does not validate: %v", err)
			}
		}
	})
}

func isJobRoute(rest string) bool {
	return rest == appID+"/events" || rest == appID+"/batch_events"
}

// signQuery completes and signs a query as pusher-http-php does: its own
// auth parameters where the fuzzed query lacks them, then auth_signature.
func signQuery(method, path, rawQuery string, body []byte) string {
	q, _ := url.ParseQuery(rawQuery)
	setDefault := func(k, v string) {
		if _, ok := q[k]; !ok {
			q.Set(k, v)
		}
	}
	setDefault("auth_key", appKey)
	setDefault("auth_timestamp", strconv.FormatInt(now.Unix(), 10))
	setDefault("auth_version", "1.0")
	if len(body) > 0 {
		setDefault("body_md5", protocol.BodyMD5(body))
	}
	q.Set("auth_signature", protocol.SignRequest(secret, method, path, q))
	return q.Encode()
}

// authentic is the API's authentication rule, restated: the app's key,
// version 1.0, a timestamp within 600 s of now, body_md5 the body's when
// there is a body, and a valid signature over the path without the prefix
// (the signed string itself is fuzzed against a reference in protocol's
// FuzzRequestSignature).
func authentic(method, path, rawQuery string, body []byte) bool {
	q, _ := url.ParseQuery(rawQuery)
	ts, err := strconv.ParseInt(q.Get("auth_timestamp"), 10, 64)
	if err != nil || ts < now.Unix()-600 || ts > now.Unix()+600 {
		return false
	}
	if q.Get("auth_key") != appKey || q.Get("auth_version") != "1.0" || q.Get("auth_signature") == "" {
		return false
	}
	if len(body) > 0 && subtle.ConstantTimeCompare([]byte(q.Get("body_md5")), []byte(protocol.BodyMD5(body))) != 1 {
		return false
	}
	return protocol.VerifyRequestSignature(secret, method, path, q, q.Get("auth_signature"))
}

// fuzzCluster answers every query from fixed state, or fails.
type fuzzCluster struct{ fail bool }

var errClusterDown = errors.New("fuzz: cluster down")

func (c fuzzCluster) Query(_ context.Context, req cluster.QueryRequest) (cluster.QueryResult, error) {
	if c.fail {
		return cluster.QueryResult{}, errClusterDown
	}
	all := map[string]int{"presence-room": 2, "private-chat": 1, "cache-news": 3, req.Channel: 1}
	res := cluster.QueryResult{Channels: map[string]int{}, Connections: 3, Complete: true}
	for ch, n := range all {
		if ch != "" && strings.HasPrefix(ch, req.Prefix) {
			res.Channels[ch] = n
		}
	}
	return res, nil
}

func (c fuzzCluster) Members(context.Context, string, string) ([]protocol.PresenceMember, error) {
	if c.fail {
		return nil, errClusterDown
	}
	return []protocol.PresenceMember{{ID: "1", Info: []byte(`{"name":"Taylor"}`)}, {ID: "2"}}, nil
}

func (c fuzzCluster) CachedEvent(context.Context, string, string) (*cluster.CachedEvent, time.Duration, error) {
	if c.fail {
		return nil, 0, errClusterDown
	}
	return &cluster.CachedEvent{Event: "App\\Events\\News", Data: `{"id":1}`}, 90 * time.Second, nil
}

func (c fuzzCluster) Terminate(context.Context, string, string) error {
	if c.fail {
		return errClusterDown
	}
	return nil
}
