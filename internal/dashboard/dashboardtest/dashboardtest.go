// Package dashboardtest reads the dashboard's API as a browser does, for
// tests: it logs in, keeping the cookie, and reads Server-Sent Events.
package dashboardtest

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"net/http/cookiejar"
	"strings"
	"testing"
	"time"
)

// Wait bounds how long Await waits for what it looks for.
const Wait = 15 * time.Second

// Event is one Server-Sent Event.
type Event struct{ Name, Data string }

// Login posts body (JSON credentials) to the dashboard at base (its URL,
// without a trailing slash) and returns a client that keeps the session.
func Login(t testing.TB, base, body string) *http.Client {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Post(base+"/api/login", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("login: %d %s", resp.StatusCode, b)
	}
	return c
}

// Events opens an event stream and reads it on a goroutine until the test
// ends; the channel closes when the stream does.
func Events(t testing.TB, c *http.Client, url string) <-chan Event {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		t.Fatalf("%s: %d %s", url, resp.StatusCode, b)
	}
	out := make(chan Event, 1024)
	go func() {
		defer resp.Body.Close()
		defer close(out)
		sc := bufio.NewScanner(resp.Body)
		var ev Event
		for sc.Scan() {
			switch line := sc.Text(); {
			case strings.HasPrefix(line, "event: "):
				ev.Name = line[len("event: "):]
			case strings.HasPrefix(line, "data: "):
				ev.Data = line[len("data: "):]
			case line == "" && ev.Name != "":
				out <- ev
				ev = Event{}
			}
		}
	}()
	return out
}

// Await reads events until match says done; it fails the test if the
// stream ends or Wait passes first.
func Await(t testing.TB, events <-chan Event, what string, match func(Event) bool) {
	t.Helper()
	deadline := time.After(Wait)
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				t.Fatalf("the stream ended before %s", what)
			}
			if match(ev) {
				return
			}
		case <-deadline:
			t.Fatalf("no %s within %v", what, Wait)
		}
	}
}
