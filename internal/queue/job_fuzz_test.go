package queue_test

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/resoundhq/resound/internal/queue"
	"github.com/resoundhq/resound/protocol"
)

// FuzzJob decodes a job as a worker does (JSON, then Validate with the
// default limits). A job that validates must fit the limits, encode and
// decode to the same job, and split into per-channel jobs that validate
// too and whose subjects name its app. The corpus holds what the HTTP API
// and the Go producer publish, and jobs written by hand to NATS.
func FuzzJob(f *testing.F) {
	f.Add([]byte(`{"app_id":"123456","events":[{"name":"App\\Events\\OrderShipped","data":"{\"id\":1}","channels":["private-orders.1","orders"],"socket_id":"123.456"}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		lim := protocol.DefaultLimits
		var job queue.Job
		if json.Unmarshal(b, &job) != nil || job.Validate(lim) != nil {
			return
		}
		if job.AppID == "" || len(job.Events) == 0 || len(job.Events) > lim.MaxBatch {
			t.Fatalf("accepted app %q with %d events", job.AppID, len(job.Events))
		}
		for _, ev := range job.Events {
			switch {
			case len(ev.Data) > lim.MaxDataBytes, ev.Name == "", len(ev.Name) > lim.MaxEventName,
				len(ev.Channels) == 0, len(ev.Channels) > lim.MaxChannels:
				t.Fatalf("accepted event %q: %d bytes of data, %d channels", ev.Name, len(ev.Data), len(ev.Channels))
			case !utf8.ValidString(ev.Name) || !utf8.ValidString(ev.Data):
				t.Fatalf("accepted event %q with data %q, not UTF-8", ev.Name, ev.Data)
			}
			for _, ch := range ev.Channels {
				if !protocol.ValidChannelName(ch) {
					t.Fatalf("accepted channel %q", ch)
				}
			}
		}
		enc, err := json.Marshal(&job)
		if err != nil {
			t.Fatal(err)
		}
		var again queue.Job
		if err := json.Unmarshal(enc, &again); err != nil || !reflect.DeepEqual(again, job) {
			t.Fatalf("job %+v re-encoded as %s decoded as %+v, %v", job, enc, again, err)
		}
		checkSplit(t, &job, lim)
	})
}

// checkSplit: one job per channel, each event in its place, each valid,
// each on a subject of one app token and one key token that give the app
// and the channel back.
func checkSplit(t *testing.T, job *queue.Job, lim protocol.Limits) {
	want := map[string][]string{} // channel -> event names in order
	for _, ev := range job.Events {
		for _, ch := range ev.Channels {
			want[ch] = append(want[ch], ev.Name)
		}
	}
	parts := queue.Split(job)
	if len(parts) != len(want) {
		t.Fatalf("%d channels split into %d jobs", len(want), len(parts))
	}
	for _, p := range parts {
		if p.AppID != job.AppID || len(p.Events) == 0 {
			t.Fatalf("part %+v of app %q", p, job.AppID)
		}
		ch := p.Events[0].Channels[0]
		var names []string
		for _, ev := range p.Events {
			if len(ev.Channels) != 1 || ev.Channels[0] != ch {
				t.Fatalf("part for %q holds channels %q", ch, ev.Channels)
			}
			names = append(names, ev.Name)
		}
		if !reflect.DeepEqual(names, want[ch]) {
			t.Fatalf("part for %q holds events %q, want %q", ch, names, want[ch])
		}
		if err := p.Validate(lim); err != nil {
			t.Fatalf("part for %q does not validate: %v", ch, err)
		}
		subject := queue.Subject(p.AppID, ch)
		if toks := strings.Split(subject, "."); len(toks) != 4 || strings.ContainsAny(subject, " \t\r\n*>") {
			t.Fatalf("subject %q of app %q channel %q is not resound.jobs.<app>.<key>", subject, p.AppID, ch)
		}
		// The stream appends the partition to the stored subject.
		if app, ok := queue.AppOfSubject(subject + ".3"); !ok || app != job.AppID {
			t.Fatalf("AppOfSubject(%q) = %q, %v, want %q", subject+".3", app, ok, job.AppID)
		}
	}
}
